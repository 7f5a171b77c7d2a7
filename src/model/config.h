// The model configuration (design.md 1.1): HF DeepSeek-V3 / openPangu field names, plus ultramoe's
// own keys (init, DSSN constants, MoGE router scale). Parsed strictly: unknown keys, wrong types
// and geometries that do not fit are errors naming the key.
#pragma once

#include <cstdint>
#include <string>

#include "core/json_reader.h"
#include "ops/router.h"

namespace um {

enum class InitMethod : uint8_t { tiny, small, small_scaled, fixed };

struct ModelConfig {
  // geometry
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;               // D
  int64_t num_hidden_layers = 0;         // L (main layers; MTP layers are extra)
  int64_t first_k_dense_replace = 0;     // the first layers use a dense FFN
  int64_t intermediate_size = 0;         // dense FFN width
  int64_t moe_intermediate_size = 0;     // F, width of one expert
  int64_t n_routed_experts = 0;          // E
  int64_t n_shared_experts = 0;          // shared MLP width = n_shared_experts * F
  int64_t num_experts_per_tok = 0;       // K
  int64_t num_attention_heads = 0;       // H
  int64_t q_lora_rank = 0;               // 0: no query compression (q_proj)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t max_position_embeddings = 4096;
  int64_t num_nextn_predict_layers = 0;  // MTP depth

  // routing
  int64_t n_group = 1;
  int64_t topk_group = 1;
  TopkMethod topk_method = TopkMethod::greedy;
  bool aux_free_bias = false;            // topk_method "noaux_tc" turns the aux-free bias on
  ScoreFunc scoring_func = ScoreFunc::sigmoid;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  bool moe_router_scale = false;

  // numerics and norms
  double rope_theta = 10000.0;
  json rope_scaling;                     // null, or a YaRN dict (accepted by inspect/plan only)
  double rms_norm_eps = 1e-6;
  bool sandwich_norm = true;
  bool dssn_depth_scaled = true;
  double dssn_c_attn = 0.283;            // DSSN constants (Pangu Ultra)
  double dssn_c_ffn = 0.432;
  bool dssn_c_attn_auto = false;         // "auto": calibrated at init (design.md 1.2)
  bool dssn_c_ffn_auto = false;
  bool tie_word_embeddings = false;

  // initialisation (design.md 1.3)
  InitMethod init = InitMethod::tiny;
  double init_embedding_std = 0.5;
  double initializer_range = 0.006;

  // derived
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const {  // layer index counts MTP layers after the L main ones
    return n_routed_experts > 0 && layer >= first_k_dense_replace;
  }
  int64_t n_layers_total() const { return num_hidden_layers + num_nextn_predict_layers; }
  int64_t shared_width() const { return n_shared_experts * moe_intermediate_size; }
};

// Parses the `model` section (or a flat HF config.json). `path` prefixes key names in errors.
ModelConfig parse_model_config(const json& j, const std::string& path = "model");
json model_config_to_json(const ModelConfig& c);

const char* topk_method_name(TopkMethod m);
const char* init_method_name(InitMethod m);

}  // namespace um
