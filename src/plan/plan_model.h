// The model geometry the planner reasons about: layer counts, widths, attention shape and experts,
// with per-layer parameter counts and the design.md 7 model FLOPs per token. It is built from a
// ModelConfig (MLA models: everything ultramoe trains) or from a planner-only `plan_model` section
// that can also describe grouped-query attention (GQA, e.g. Mixtral), which ModelConfig cannot.
// It holds no weights and knows nothing of devices or layouts.
#pragma once

#include <cstdint>
#include <string>

#include "core/json_reader.h"
#include "model/config.h"

namespace um::plan {

enum class AttentionKind : uint8_t { mla, gqa };

struct PlanModel {
  std::string name;
  AttentionKind attention = AttentionKind::mla;
  int64_t vocab = 0;
  int64_t hidden = 0;            // D
  int64_t n_layers = 0;          // L main layers
  int64_t n_dense_layers = 0;    // the first layers use a dense FFN
  int64_t dense_width = 0;       // dense FFN width
  int64_t expert_width = 0;      // F
  int64_t n_experts = 0;         // E routed
  int64_t shared_width = 0;      // width of the shared-expert MLP (n_shared * F)
  int64_t top_k = 0;             // K
  int64_t n_heads = 0;           // H query heads
  int64_t q_lora = 0, kv_lora = 0, qk_nope = 0, qk_rope = 0, v_head = 0;  // MLA
  int64_t n_kv_heads = 0, head_dim = 0;                                   // GQA
  int64_t mtp_depth = 0;
  bool tie_embeddings = false;
  bool sandwich_norm = false;
  bool router_scale = false;     // Pangu Pro's learned per-expert gate scale (E extra gains)
  // node-limited routing (DeepSeek-V3): experts in n_group groups, a token uses <= topk_group
  bool group_limited = false;
  int64_t n_group = 1, topk_group = 1;

  int64_t d_qk() const { return attention == AttentionKind::mla ? qk_nope + qk_rope : head_dim; }
  int64_t d_v() const { return attention == AttentionKind::mla ? v_head : head_dim; }
  bool has_experts() const { return n_experts > 0; }
  // Layer index counts MTP layers after the L main ones; MTP layers are MoE when experts exist.
  bool is_moe(int64_t layer) const { return has_experts() && layer >= n_dense_layers; }
  int64_t n_units() const { return n_layers + mtp_depth; }  // pipeline units (design.md 4: MTP is a stage)
};

// Parameters of one decoder layer, split the way layouts shard them.
struct LayerParams {
  int64_t attn_split = 0;       // attention matrices split over TP (q_b/q, kv_b or k/v, o)
  int64_t attn_replicated = 0;  // MLA down-projections q_a, kv_a: every TP rank holds them whole
  int64_t norms = 0;            // norm gains (replicated)
  int64_t router = 0;
  int64_t shared = 0;           // shared-expert MLP
  int64_t expert_one = 0;       // one routed expert (gate, up, down)
  int64_t experts_all = 0;      // all E routed experts
  int64_t dense_ffn = 0;
  int64_t mtp_extra = 0;        // MTP enorm, hnorm, eh_proj, shared_head.norm

  int64_t dense_total() const { return attn_split + attn_replicated + norms + router + shared + dense_ffn + mtp_extra; }
  int64_t total() const { return dense_total() + experts_all; }
};
LayerParams layer_params(const PlanModel& m, int64_t layer);

struct PlanParamCounts {
  int64_t total = 0;   // design.md 7 total_params (main model, MTP excluded)
  int64_t active = 0;  // design.md 7 active_params
  int64_t mtp = 0;     // MTP modules without the shared embedding/head
  int64_t embedding = 0, lm_head = 0;
};
PlanParamCounts plan_param_counts(const PlanModel& m);

// Matmul parameters one token passes through (design.md 7 N_mm): attention matrices, router, shared
// experts and K routed experts or the dense FFN, the LM head; per MTP depth its eh_proj, layer
// and the LM head again. The embedding lookup is excluded.
int64_t matmul_params_per_token(const PlanModel& m);

// design.md 7 model FLOPs per token, forward + backward, recomputation not counted:
// F = 6 N_mm + 6 H (d_qk + d_v) n̄ L_att,  n̄ = (T+1)/2,  L_att = L + MTP depth.
double model_flops_per_token(const PlanModel& m, int64_t seq_len);

PlanModel plan_model_from_config(const ModelConfig& c, const std::string& name = "");

// A model file for the planner: a run config with a `model` section (or a flat HF-style
// config) read by parse_model_config, or a file with a planner-only `plan_model` section.
PlanModel read_plan_model(const json& file, const std::string& name);

// Geometry checks the cost model relies on (positive sizes, K <= E, ...).
void check_plan_model(const PlanModel& m);

}  // namespace um::plan
