#include "plan/plan_model.h"

namespace um::plan {

namespace {

// Attention matrices of one layer: {split over TP, replicated over TP}.
std::pair<int64_t, int64_t> attention_params(const PlanModel& m) {
  const int64_t D = m.hidden, H = m.n_heads;
  if (m.attention == AttentionKind::gqa) {
    const int64_t q = D * H * m.head_dim, kv = 2 * D * m.n_kv_heads * m.head_dim;
    const int64_t o = H * m.head_dim * D;
    return {q + kv + o, 0};
  }
  // MLA (design.md 1.4): the down-projections are small and, as in Megatron-Core's MLA, every
  // TP rank holds them whole; the up-projections and Wo are split by heads.
  int64_t split = 0, replicated = 0;
  if (m.q_lora > 0) {
    replicated += D * m.q_lora;                 // q_a_proj
    split += m.q_lora * H * m.d_qk();           // q_b_proj
  } else {
    split += D * H * m.d_qk();                  // q_proj
  }
  replicated += D * (m.kv_lora + m.qk_rope);    // kv_a_proj_with_mqa
  split += m.kv_lora * H * (m.qk_nope + m.v_head);  // kv_b_proj
  split += H * m.v_head * D;                    // o_proj
  return {split, replicated};
}

int64_t norm_params(const PlanModel& m) {
  const int64_t per_d = m.sandwich_norm ? 4 : 2;  // input (+ post-attn, pre-ffn, post-ffn) or input + pre-ffn
  int64_t n = per_d * m.hidden;
  if (m.attention == AttentionKind::mla) n += m.kv_lora + (m.q_lora > 0 ? m.q_lora : 0);
  return n;
}

}  // namespace

LayerParams layer_params(const PlanModel& m, int64_t layer) {
  LayerParams p;
  const int64_t D = m.hidden;
  std::tie(p.attn_split, p.attn_replicated) = attention_params(m);
  p.norms = norm_params(m);
  if (m.is_moe(layer)) {
    p.router = m.n_experts * D + (m.router_scale ? m.n_experts : 0);
    p.shared = 3 * m.shared_width * D;
    p.expert_one = 3 * m.expert_width * D;
    p.experts_all = m.n_experts * p.expert_one;
  } else {
    p.dense_ffn = 3 * m.dense_width * D;
  }
  if (layer >= m.n_layers) p.mtp_extra = 3 * D + 2 * D * D;  // enorm, hnorm, shared_head.norm; eh_proj
  return p;
}

PlanParamCounts plan_param_counts(const PlanModel& m) {
  PlanParamCounts n;
  n.embedding = m.vocab * m.hidden;
  n.lm_head = m.vocab * m.hidden;
  const int64_t head_stored = m.tie_embeddings ? 0 : n.lm_head;
  n.total = n.embedding + m.hidden /* final norm */ + head_stored;
  n.active = m.hidden + n.lm_head;  // final norm and the head (the tied matrix is active as head)
  for (int64_t layer = 0; layer < m.n_units(); ++layer) {
    const LayerParams p = layer_params(m, layer);
    if (layer >= m.n_layers) {
      n.mtp += p.total();
      continue;
    }
    n.total += p.total();
    n.active += p.dense_total() + m.top_k * p.expert_one;
  }
  return n;
}

int64_t matmul_params_per_token(const PlanModel& m) {
  const int64_t head = m.vocab * m.hidden;
  int64_t n = head;
  for (int64_t layer = 0; layer < m.n_units(); ++layer) {
    const LayerParams p = layer_params(m, layer);
    n += p.attn_split + p.attn_replicated + p.router + p.shared + p.dense_ffn + m.top_k * p.expert_one;
    if (layer >= m.n_layers) n += 2 * m.hidden * m.hidden + head;  // eh_proj, LM head again
  }
  return n;
}

double model_flops_per_token(const PlanModel& m, int64_t seq_len) {
  const double n_mm = static_cast<double>(matmul_params_per_token(m));
  const double mean_keys = (static_cast<double>(seq_len) + 1.0) / 2.0;  // causal n̄ (design.md 7)
  const double l_att = static_cast<double>(m.n_layers + m.mtp_depth);
  return 6.0 * n_mm + 6.0 * m.n_heads * static_cast<double>(m.d_qk() + m.d_v()) * mean_keys * l_att;
}

PlanModel plan_model_from_config(const ModelConfig& c, const std::string& name) {
  PlanModel m;
  m.name = name;
  m.attention = AttentionKind::mla;
  m.vocab = c.vocab_size;
  m.hidden = c.hidden_size;
  m.n_layers = c.num_hidden_layers;
  m.n_dense_layers = c.n_routed_experts > 0 ? c.first_k_dense_replace : c.num_hidden_layers;
  m.dense_width = c.intermediate_size;
  m.expert_width = c.moe_intermediate_size;
  m.n_experts = c.n_routed_experts;
  m.shared_width = c.shared_width();
  m.top_k = c.num_experts_per_tok;
  m.n_heads = c.num_attention_heads;
  m.q_lora = c.q_lora_rank;
  m.kv_lora = c.kv_lora_rank;
  m.qk_nope = c.qk_nope_head_dim;
  m.qk_rope = c.qk_rope_head_dim;
  m.v_head = c.v_head_dim;
  m.mtp_depth = c.num_nextn_predict_layers;
  m.tie_embeddings = c.tie_word_embeddings;
  m.sandwich_norm = c.sandwich_norm;
  m.router_scale = c.moe_router_scale;
  m.group_limited = c.topk_method == TopkMethod::group_limited;
  m.n_group = c.n_group;
  m.topk_group = c.topk_group;
  return m;
}

namespace {

// The planner-only section: design.md 1.1 names where they exist, plus `attention` and the GQA
// shape (num_key_value_heads, head_dim, as in HF Llama/Mixtral configs).
PlanModel parse_plan_model_section(const json& j, const std::string& name) {
  JsonReader r(j, "plan_model", "plan");
  PlanModel m;
  m.name = name;
  const std::string attention = r.get<std::string>("attention");
  if (attention == "gqa") m.attention = AttentionKind::gqa;
  else if (attention == "mla") m.attention = AttentionKind::mla;
  else fail("plan", r.path("attention"), ": expected gqa or mla, got \"", attention, "\"");
  m.vocab = r.get<int64_t>("vocab_size");
  m.hidden = r.get<int64_t>("hidden_size");
  m.n_layers = r.get<int64_t>("num_hidden_layers");
  m.n_heads = r.get<int64_t>("num_attention_heads");
  m.n_experts = r.opt<int64_t>("n_routed_experts", 0);
  m.n_dense_layers = r.opt<int64_t>("first_k_dense_replace", m.n_experts > 0 ? 0 : m.n_layers);
  m.dense_width = r.opt<int64_t>("intermediate_size", 0);
  m.expert_width = r.opt<int64_t>("moe_intermediate_size", 0);
  m.shared_width = r.opt<int64_t>("n_shared_experts", 0) * m.expert_width;
  m.top_k = r.opt<int64_t>("num_experts_per_tok", 0);
  if (m.attention == AttentionKind::gqa) {
    m.n_kv_heads = r.get<int64_t>("num_key_value_heads");
    m.head_dim = r.opt<int64_t>("head_dim", m.n_heads > 0 ? m.hidden / m.n_heads : 0);
  } else {
    m.q_lora = r.opt<int64_t>("q_lora_rank", 0);
    m.kv_lora = r.get<int64_t>("kv_lora_rank");
    m.qk_nope = r.get<int64_t>("qk_nope_head_dim");
    m.qk_rope = r.get<int64_t>("qk_rope_head_dim");
    m.v_head = r.get<int64_t>("v_head_dim");
  }
  m.mtp_depth = r.opt<int64_t>("num_nextn_predict_layers", 0);
  m.tie_embeddings = r.opt<bool>("tie_word_embeddings", false);
  m.sandwich_norm = r.opt<bool>("sandwich_norm", false);
  r.finish({"description"});
  return m;
}

}  // namespace

void check_plan_model(const PlanModel& m) {
  auto positive = [&](const char* what, int64_t v) {
    UM_CHECK(v > 0, "plan", "model ", m.name, ": ", what, " must be > 0, got ", v);
  };
  positive("vocab_size", m.vocab);
  positive("hidden_size", m.hidden);
  positive("num_hidden_layers", m.n_layers);
  positive("num_attention_heads", m.n_heads);
  positive("attention head size", m.d_qk());
  UM_CHECK(m.mtp_depth >= 0, "plan", "model ", m.name, ": num_nextn_predict_layers must be >= 0");
  UM_CHECK(m.n_dense_layers >= 0 && m.n_dense_layers <= m.n_layers, "plan", "model ", m.name,
           ": first_k_dense_replace must be in [0, ", m.n_layers, "], got ", m.n_dense_layers);
  if (m.n_dense_layers > 0 || !m.has_experts()) positive("intermediate_size (dense layers)", m.dense_width);
  if (m.has_experts()) {
    positive("moe_intermediate_size", m.expert_width);
    UM_CHECK(m.top_k >= 1 && m.top_k <= m.n_experts, "plan", "model ", m.name,
             ": num_experts_per_tok must be in [1, n_routed_experts=", m.n_experts, "], got ", m.top_k);
  }
  if (m.attention == AttentionKind::gqa) {
    positive("num_key_value_heads", m.n_kv_heads);
    UM_CHECK(m.n_heads % m.n_kv_heads == 0, "plan", "model ", m.name, ": num_key_value_heads=",
             m.n_kv_heads, " does not divide num_attention_heads=", m.n_heads);
  } else {
    positive("kv_lora_rank", m.kv_lora);
    positive("v_head_dim", m.v_head);
  }
}

PlanModel read_plan_model(const json& file, const std::string& name) {
  UM_CHECK(file.is_object(), "plan", name, ": expected a JSON object");
  PlanModel m;
  if (file.contains("plan_model")) {
    UM_CHECK(!file.contains("model"), "plan", name,
             ": give either a `model` or a `plan_model` section, not both");
    m = parse_plan_model_section(file["plan_model"], name);
  } else {
    const bool sectioned = file.contains("model");
    m = plan_model_from_config(parse_model_config(sectioned ? file["model"] : file, sectioned ? "model" : ""),
                               name);
  }
  check_plan_model(m);
  return m;
}

}  // namespace um::plan
