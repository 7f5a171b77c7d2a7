#include "model/params.h"

#include <cmath>
#include <map>

namespace um {

const char* component_name(Component c) {
  switch (c) {
    case Component::embedding: return "embedding";
    case Component::attention: return "attention";
    case Component::norm: return "norms";
    case Component::router: return "router";
    case Component::shared_expert: return "shared_experts";
    case Component::routed_expert: return "routed_experts";
    case Component::dense_ffn: return "dense_ffn";
    case Component::final_norm: return "final_norm";
    case Component::lm_head: return "lm_head";
    case Component::mtp_proj: return "mtp_proj";
  }
  return "?";
}

double matrix_init_std(const ModelConfig& c) {
  const double D = static_cast<double>(c.hidden_size), L = static_cast<double>(c.num_hidden_layers);
  switch (c.init) {
    case InitMethod::tiny: return std::sqrt(1.0 / (2.0 * D * L));
    case InitMethod::small: return std::sqrt(2.0 / (5.0 * D));
    case InitMethod::small_scaled: return std::sqrt(2.0 / (5.0 * D * L));
    case InitMethod::fixed: return c.initializer_range;
  }
  return 0;
}

double post_norm_gain(const ModelConfig& c, double constant) {
  return c.dssn_depth_scaled ? constant / std::sqrt(static_cast<double>(c.num_hidden_layers)) : 1.0;
}

const ParamInfo* ParamTable::find(const std::string& name) const {
  auto it = index.find(name);
  return it == index.end() ? nullptr : &params[it->second];
}

const ParamInfo& ParamTable::at(const std::string& name) const {
  const ParamInfo* p = find(name);
  UM_CHECK(p != nullptr, "params", "no parameter named ", name);
  return *p;
}

const BufferInfo* ParamTable::find_buffer(const std::string& name) const {
  auto it = buffer_index.find(name);
  return it == buffer_index.end() ? nullptr : &buffers[it->second];
}

namespace {

class TableBuilder {
 public:
  explicit TableBuilder(ParamTable& t) : t_(t) {}

  void matrix(const std::string& name, int64_t out, int64_t in, Component comp, int layer,
              int expert = -1) {
    add({name, {out, in}, InitRule::matrix, 0, true, comp, layer, expert});
  }
  void embedding(const std::string& name, int64_t rows, int64_t cols) {
    add({name, {rows, cols}, InitRule::embedding, 0, true, Component::embedding, -1, -1});
  }
  void gain(const std::string& name, int64_t n, double value, Component comp, int layer) {
    add({name, {n}, InitRule::constant, value, false, comp, layer, -1});
  }
  void buffer(const std::string& name, int64_t n, int layer) {
    t_.buffer_index[name] = t_.buffers.size();
    t_.buffers.push_back({name, layer, t_.n_buffer_elements, n});
    t_.n_buffer_elements += n;
  }

 private:
  void add(ParamInfo p) {
    UM_CHECK(!t_.index.count(p.name), "params", "duplicate parameter name ", p.name);
    p.numel = numel_of(p.shape);
    p.offset = t_.n_elements;
    t_.n_elements += p.numel;
    t_.index[p.name] = t_.params.size();
    t_.params.push_back(std::move(p));
  }
  ParamTable& t_;
};

void add_attention(TableBuilder& b, const ModelConfig& c, const std::string& pre, int layer) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  const Component A = Component::attention;
  if (c.q_lora_rank > 0) {
    b.matrix(pre + "self_attn.q_a_proj.weight", c.q_lora_rank, D, A, layer);
    b.gain(pre + "self_attn.q_a_layernorm.weight", c.q_lora_rank, 1.0, Component::norm, layer);
    b.matrix(pre + "self_attn.q_b_proj.weight", H * c.qk_head_dim(), c.q_lora_rank, A, layer);
  } else {
    b.matrix(pre + "self_attn.q_proj.weight", H * c.qk_head_dim(), D, A, layer);
  }
  b.matrix(pre + "self_attn.kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, D, A,
           layer);
  b.gain(pre + "self_attn.kv_a_layernorm.weight", c.kv_lora_rank, 1.0, Component::norm, layer);
  b.matrix(pre + "self_attn.kv_b_proj.weight", H * (c.qk_nope_head_dim + c.v_head_dim),
           c.kv_lora_rank, A, layer);
  b.matrix(pre + "self_attn.o_proj.weight", D, H * c.v_head_dim, A, layer);
}

// A decoder layer's non-expert tensors (design.md 1.2, 1.4, 1.5).
void add_layer(TableBuilder& b, const ModelConfig& c, int layer) {
  const std::string pre = "model.layers." + std::to_string(layer) + ".";
  const int64_t D = c.hidden_size;
  const Component N = Component::norm;
  b.gain(pre + "input_layernorm.weight", D, 1.0, N, layer);
  add_attention(b, c, pre, layer);
  if (c.sandwich_norm) {
    b.gain(pre + "post_attention_layernorm.weight", D, post_norm_gain(c, c.dssn_c_attn), N, layer);
    b.gain(pre + "pre_mlp_layernorm.weight", D, 1.0, N, layer);
  } else {
    b.gain(pre + "post_attention_layernorm.weight", D, 1.0, N, layer);  // the pre-FFN norm
  }
  if (!c.is_moe_layer(layer)) {
    const int64_t I = c.intermediate_size;
    b.matrix(pre + "mlp.gate_proj.weight", I, D, Component::dense_ffn, layer);
    b.matrix(pre + "mlp.up_proj.weight", I, D, Component::dense_ffn, layer);
    b.matrix(pre + "mlp.down_proj.weight", D, I, Component::dense_ffn, layer);
  } else {
    const int64_t E = c.n_routed_experts, Fs = c.shared_width();
    b.matrix(pre + "mlp.gate.weight", E, D, Component::router, layer);
    if (c.moe_router_scale) b.gain(pre + "mlp.router_scale", E, 1.0, Component::router, layer);
    if (Fs > 0) {
      b.matrix(pre + "mlp.shared_experts.gate_proj.weight", Fs, D, Component::shared_expert, layer);
      b.matrix(pre + "mlp.shared_experts.up_proj.weight", Fs, D, Component::shared_expert, layer);
      b.matrix(pre + "mlp.shared_experts.down_proj.weight", D, Fs, Component::shared_expert, layer);
    }
    b.buffer(pre + "mlp.gate.e_score_correction_bias", E, layer);
  }
  if (c.sandwich_norm)
    b.gain(pre + "post_mlp_layernorm.weight", D, post_norm_gain(c, c.dssn_c_ffn), N, layer);
}

void add_mtp_inputs(TableBuilder& b, const ModelConfig& c, int layer) {
  const std::string pre = "model.layers." + std::to_string(layer) + ".";
  const int64_t D = c.hidden_size;
  b.gain(pre + "enorm.weight", D, 1.0, Component::mtp_proj, layer);
  b.gain(pre + "hnorm.weight", D, 1.0, Component::mtp_proj, layer);
  b.matrix(pre + "eh_proj.weight", D, 2 * D, Component::mtp_proj, layer);
}

}  // namespace

bool tail_reads_embedding(const ModelConfig& c) {
  return c.num_nextn_predict_layers > 0 || c.tie_word_embeddings;
}

ParamTable build_param_table(const ModelConfig& c, int ep_rank, int ep_size, int64_t pad,
                             const StageContents* stage) {
  const int64_t E = c.n_routed_experts, D = c.hidden_size, F = c.moe_intermediate_size;
  UM_CHECK(ep_size >= 1 && ep_rank >= 0 && ep_rank < ep_size, "params", "bad EP rank ", ep_rank,
           " of ", ep_size);
  UM_CHECK(E == 0 || E % ep_size == 0, "params", "parallel.ep=", ep_size,
           " does not divide n_routed_experts=", E);
  ParamTable t;
  TableBuilder b(t);
  const int L = static_cast<int>(c.num_hidden_layers);
  const int n_layers = static_cast<int>(c.n_layers_total());
  if (stage)
    UM_CHECK(int(stage->layers.size()) == n_layers, "params", "a stage lists ", stage->layers.size(),
             " layers, the model has ", n_layers);
  auto holds = [&](int layer) { return !stage || stage->layers[layer]; };
  const bool embedding = !stage || stage->embedding || (stage->tail && tail_reads_embedding(c));
  const bool tail = !stage || stage->tail;

  if (embedding) b.embedding("model.embed_tokens.weight", c.vocab_size, D);
  for (int layer = 0; layer < n_layers; ++layer) {
    if (!holds(layer)) continue;
    if (layer >= L) add_mtp_inputs(b, c, layer);
    add_layer(b, c, layer);
    if (layer >= L)
      b.gain("model.layers." + std::to_string(layer) + ".shared_head.norm.weight", D, 1.0,
             Component::mtp_proj, layer);
  }
  if (tail) {
    b.gain("model.norm.weight", D, 1.0, Component::final_norm, -1);
    if (!c.tie_word_embeddings) b.matrix("lm_head.weight", c.vocab_size, D, Component::lm_head, -1);
  }
  auto round_up = [pad](int64_t n) { return pad > 1 ? (n + pad - 1) / pad * pad : n; };
  t.n_elements = round_up(t.n_elements);
  t.n_replicated = t.n_elements;

  t.n_local_experts = E / ep_size;
  t.first_expert = ep_rank * t.n_local_experts;
  for (int layer = 0; layer < n_layers; ++layer) {
    if (!c.is_moe_layer(layer) || !holds(layer)) continue;
    const std::string pre = "model.layers." + std::to_string(layer) + ".mlp.experts.";
    for (int64_t e = t.first_expert; e < t.first_expert + t.n_local_experts; ++e) {
      const std::string x = pre + std::to_string(e) + ".";
      const int ei = static_cast<int>(e);
      b.matrix(x + "gate_proj.weight", F, D, Component::routed_expert, layer, ei);
      b.matrix(x + "up_proj.weight", F, D, Component::routed_expert, layer, ei);
      b.matrix(x + "down_proj.weight", D, F, Component::routed_expert, layer, ei);
    }
  }
  t.n_elements = t.n_replicated + round_up(t.n_elements - t.n_replicated);
  return t;
}

ParamCounts count_params(const ModelConfig& c) {
  const ParamTable t = build_param_table(c);
  const int L = static_cast<int>(c.num_hidden_layers);
  ParamCounts n;
  std::map<Component, int64_t> by;
  const int64_t expert_size = 3 * c.moe_intermediate_size * c.hidden_size;
  for (const ParamInfo& p : t.params) {
    const bool mtp = p.layer >= L;
    if (mtp) {
      n.mtp += p.numel;
      if (p.component != Component::routed_expert) n.mtp_active += p.numel;
      continue;
    }
    n.total += p.numel;
    by[p.component] += p.numel;
    if (p.component == Component::embedding) n.embedding = p.numel;
    if (p.component == Component::lm_head) n.lm_head = p.numel;
    if (p.component != Component::embedding && p.component != Component::routed_expert)
      n.active += p.numel;
  }
  int64_t n_moe_main = 0;
  for (int layer = 0; layer < L; ++layer) n_moe_main += c.is_moe_layer(layer);
  n.active += n_moe_main * c.num_experts_per_tok * expert_size;
  if (c.tie_word_embeddings) {
    n.lm_head = n.embedding;
    n.active += n.embedding;  // the head is the embedding matrix, and it is active
  }
  n.mtp_active += c.num_nextn_predict_layers * (c.n_routed_experts > 0 ? c.num_experts_per_tok * expert_size : 0);
  for (auto& [comp, count] : by) n.by_component.emplace_back(component_name(comp), count);
  return n;
}

}  // namespace um
