#include "model/config.h"

#include <utility>
#include <vector>

namespace um {

const char* topk_method_name(TopkMethod m) {
  switch (m) {
    case TopkMethod::greedy: return "greedy";
    case TopkMethod::group_limited: return "group_limited";
    case TopkMethod::moge: return "moge";
  }
  return "?";
}

const char* init_method_name(InitMethod m) {
  switch (m) {
    case InitMethod::tiny: return "tiny";
    case InitMethod::small: return "small";
    case InitMethod::small_scaled: return "small_scaled";
    case InitMethod::fixed: return "fixed";
  }
  return "?";
}

namespace {

// openPangu → HF DeepSeek-V3 names (design.md 1.1 import aliases).
const std::pair<const char*, const char*> kAliases[] = {
    {"num_dense_layers", "first_k_dense_replace"},
    {"num_mtp_layers", "num_nextn_predict_layers"},
    {"num_routed_experts", "n_routed_experts"},
    {"num_shared_experts", "n_shared_experts"},
    {"attention_q_lora_dim", "q_lora_rank"},
    {"attention_kv_lora_dim", "kv_lora_rank"},
    {"attention_qk_dim", "qk_nope_head_dim"},
    {"attention_qk_rope_dim", "qk_rope_head_dim"},
    {"attention_v_dim", "v_head_dim"},
};

// HF metadata that carries no model semantics here.
const std::vector<std::string> kIgnoredKeys = {
    "architectures", "model_type", "torch_dtype", "transformers_version", "auto_map",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "_name_or_path",
    "quantization_config", "pretraining_tp", "ep_size"};

double read_dssn_constant(JsonReader& r, const std::string& key, double fallback, bool* is_auto) {
  const json& v = r.raw(key);
  *is_auto = false;
  if (v.is_null()) return fallback;
  if (v.is_string()) {
    UM_CHECK(v.get<std::string>() == "auto", "config", r.path(key),
             ": expected a number or \"auto\", got ", v.dump());
    *is_auto = true;
    return fallback;
  }
  double c = r.convert<double>(v, r.path(key));
  UM_CHECK(c > 0, "config", r.path(key), ": must be > 0, got ", c);
  return c;
}

}  // namespace

ModelConfig parse_model_config(const json& input, const std::string& path) {
  UM_CHECK(input.is_object(), "config", path, ": expected a JSON object");
  json j = input;
  for (const auto& [alias, name] : kAliases) {
    if (!j.contains(alias)) continue;
    UM_CHECK(!j.contains(name), "config", path, ": both ", alias, " and its alias target ", name,
             " are given");
    j[name] = j[alias];
    j.erase(alias);
  }
  JsonReader r(j, path);
  ModelConfig c;
  auto positive = [&](const char* key, int64_t v) {
    UM_CHECK(v > 0, "config", r.path(key), ": must be > 0, got ", v);
    return v;
  };

  c.vocab_size = positive("vocab_size", r.get<int64_t>("vocab_size"));
  c.hidden_size = positive("hidden_size", r.get<int64_t>("hidden_size"));
  c.num_hidden_layers = positive("num_hidden_layers", r.get<int64_t>("num_hidden_layers"));
  c.num_attention_heads = positive("num_attention_heads", r.get<int64_t>("num_attention_heads"));
  c.kv_lora_rank = positive("kv_lora_rank", r.get<int64_t>("kv_lora_rank"));
  c.qk_nope_head_dim = r.get<int64_t>("qk_nope_head_dim");
  c.qk_rope_head_dim = positive("qk_rope_head_dim", r.get<int64_t>("qk_rope_head_dim"));
  c.v_head_dim = positive("v_head_dim", r.get<int64_t>("v_head_dim"));
  c.q_lora_rank = r.opt<int64_t>("q_lora_rank", 0);
  c.first_k_dense_replace = r.opt<int64_t>("first_k_dense_replace", 0);
  c.intermediate_size = r.opt<int64_t>("intermediate_size", 0);
  c.moe_intermediate_size = r.opt<int64_t>("moe_intermediate_size", 0);
  c.n_routed_experts = r.opt<int64_t>("n_routed_experts", 0);
  c.n_shared_experts = r.opt<int64_t>("n_shared_experts", 0);
  c.num_experts_per_tok = r.opt<int64_t>("num_experts_per_tok", 0);
  c.n_group = r.opt<int64_t>("n_group", 1);
  c.topk_group = r.opt<int64_t>("topk_group", 1);
  c.max_position_embeddings = r.opt<int64_t>("max_position_embeddings", 4096);
  c.num_nextn_predict_layers = r.opt<int64_t>("num_nextn_predict_layers", 0);

  std::string method = r.opt<std::string>("topk_method", "greedy");
  if (method == "greedy") c.topk_method = TopkMethod::greedy;
  else if (method == "group_limited") c.topk_method = TopkMethod::group_limited;
  else if (method == "noaux_tc") c.topk_method = TopkMethod::group_limited, c.aux_free_bias = true;
  else if (method == "moge") c.topk_method = TopkMethod::moge;
  else fail("config", r.path("topk_method"), ": expected greedy, group_limited, noaux_tc or moge, got \"", method, "\"");

  std::string scoring = r.opt<std::string>("scoring_func", "sigmoid");
  if (scoring == "sigmoid") c.scoring_func = ScoreFunc::sigmoid;
  else if (scoring == "softmax") c.scoring_func = ScoreFunc::softmax;
  else fail("config", r.path("scoring_func"), ": expected sigmoid or softmax, got \"", scoring, "\"");

  c.norm_topk_prob = r.opt<bool>("norm_topk_prob", c.topk_method != TopkMethod::moge);
  c.routed_scaling_factor = r.opt<double>("routed_scaling_factor", 1.0);
  c.moe_router_scale = r.opt<bool>("moe_router_scale", false);
  c.rope_theta = r.opt<double>("rope_theta", 10000.0);
  c.rope_scaling = r.raw("rope_scaling");
  c.rms_norm_eps = r.opt<double>("rms_norm_eps", 1e-6);
  c.sandwich_norm = r.opt<bool>("sandwich_norm", true);
  c.dssn_depth_scaled = r.opt<bool>("dssn_depth_scaled", true);
  c.dssn_c_attn = read_dssn_constant(r, "dssn_c_attn", 0.283, &c.dssn_c_attn_auto);
  c.dssn_c_ffn = read_dssn_constant(r, "dssn_c_ffn", 0.432, &c.dssn_c_ffn_auto);
  c.tie_word_embeddings = r.opt<bool>("tie_word_embeddings", false);
  c.initializer_range = r.opt<double>("initializer_range", 0.006);
  c.init_embedding_std = r.opt<double>("init_embedding_std", 0.5);

  std::string init = r.opt<std::string>("init", "tiny");
  if (init == "tiny") c.init = InitMethod::tiny;
  else if (init == "small") c.init = InitMethod::small;
  else if (init == "small_scaled") c.init = InitMethod::small_scaled;
  else if (init == "fixed") c.init = InitMethod::fixed;
  else fail("config", r.path("init"), ": expected tiny, small, small_scaled or fixed, got \"", init, "\"");

  std::string act = r.opt<std::string>("hidden_act", "silu");
  UM_CHECK(act == "silu", "config", r.path("hidden_act"), ": only silu is supported, got \"", act, "\"");
  UM_CHECK(!r.opt<bool>("attention_bias", false), "config", r.path("attention_bias"),
           ": only false is supported");
  r.finish(kIgnoredKeys);

  // Geometry checks.
  const std::string p = path.empty() ? "" : path + ".";
  UM_CHECK(c.vocab_size >= 4, "config", p, "vocab_size: must hold the 4 special ids, got ", c.vocab_size);
  UM_CHECK(c.qk_nope_head_dim >= 0, "config", p, "qk_nope_head_dim: must be >= 0, got ", c.qk_nope_head_dim);
  UM_CHECK(c.qk_rope_head_dim % 2 == 0, "config", p, "qk_rope_head_dim: RoPE needs an even size, got ", c.qk_rope_head_dim);
  UM_CHECK(c.q_lora_rank >= 0, "config", p, "q_lora_rank: must be >= 0, got ", c.q_lora_rank);
  UM_CHECK(c.first_k_dense_replace >= 0 && c.first_k_dense_replace <= c.num_hidden_layers, "config", p,
           "first_k_dense_replace: must be in [0, num_hidden_layers=", c.num_hidden_layers, "], got ",
           c.first_k_dense_replace);
  UM_CHECK(c.num_nextn_predict_layers >= 0, "config", p, "num_nextn_predict_layers: must be >= 0, got ",
           c.num_nextn_predict_layers);
  UM_CHECK(c.max_position_embeddings > 0, "config", p, "max_position_embeddings: must be > 0");
  UM_CHECK(c.rope_theta > 0, "config", p, "rope_theta: must be > 0, got ", c.rope_theta);
  UM_CHECK(c.rms_norm_eps > 0, "config", p, "rms_norm_eps: must be > 0, got ", c.rms_norm_eps);
  UM_CHECK(c.init_embedding_std > 0, "config", p, "init_embedding_std: must be > 0");
  UM_CHECK(c.initializer_range > 0, "config", p, "initializer_range: must be > 0");
  UM_CHECK(c.rope_scaling.is_null() || c.rope_scaling.is_object(), "config", p,
           "rope_scaling: expected null or an object, got ", c.rope_scaling.dump());

  const bool has_dense = c.first_k_dense_replace > 0;
  // MTP layers are MoE whenever the model has experts (their index L+k-1 >= first_k_dense_replace).
  const bool has_moe = c.first_k_dense_replace < c.num_hidden_layers || c.n_routed_experts > 0;
  if (has_dense || (c.num_nextn_predict_layers > 0 && !has_moe))
    UM_CHECK(c.intermediate_size > 0, "config", p, "intermediate_size: dense layers need intermediate_size > 0, got ",
             c.intermediate_size);
  if (has_moe) {
    UM_CHECK(c.n_routed_experts > 0, "config", p, "n_routed_experts: MoE layers need experts, got ",
             c.n_routed_experts);
    UM_CHECK(c.moe_intermediate_size > 0, "config", p, "moe_intermediate_size: must be > 0 with experts, got ",
             c.moe_intermediate_size);
    UM_CHECK(c.num_experts_per_tok >= 1 && c.num_experts_per_tok <= c.n_routed_experts, "config", p,
             "num_experts_per_tok: must be in [1, n_routed_experts=", c.n_routed_experts, "], got ",
             c.num_experts_per_tok);
    UM_CHECK(c.n_shared_experts >= 0, "config", p, "n_shared_experts: must be >= 0");
    UM_CHECK(c.n_group >= 1, "config", p, "n_group: must be >= 1, got ", c.n_group);
    if (c.topk_method != TopkMethod::greedy)
      UM_CHECK(c.n_routed_experts % c.n_group == 0, "config", p, "n_group: ", c.n_group,
               " groups do not divide n_routed_experts=", c.n_routed_experts);
    if (c.topk_method == TopkMethod::group_limited) {
      UM_CHECK(c.topk_group >= 1 && c.topk_group <= c.n_group, "config", p, "topk_group: must be in [1, n_group=",
               c.n_group, "], got ", c.topk_group);
      UM_CHECK(c.num_experts_per_tok <= c.topk_group * (c.n_routed_experts / c.n_group), "config", p,
               "num_experts_per_tok: ", c.num_experts_per_tok, " exceeds the experts in topk_group=", c.topk_group,
               " groups of ", c.n_routed_experts / c.n_group);
    }
    if (c.topk_method == TopkMethod::moge) {
      UM_CHECK(c.num_experts_per_tok % c.n_group == 0, "config", p, "num_experts_per_tok: MoGE needs K=",
               c.num_experts_per_tok, " divisible by n_group=", c.n_group);
      UM_CHECK(c.scoring_func == ScoreFunc::softmax, "config", p, "scoring_func: moge requires softmax");
      UM_CHECK(c.routed_scaling_factor == 1.0, "config", p, "routed_scaling_factor: moge requires 1, got ",
               c.routed_scaling_factor);
      UM_CHECK(!c.norm_topk_prob, "config", p, "norm_topk_prob: moge does not renormalise; set it to false");
    }
  }
  return c;
}

json model_config_to_json(const ModelConfig& c) {
  json j;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["first_k_dense_replace"] = c.first_k_dense_replace;
  j["intermediate_size"] = c.intermediate_size;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["n_group"] = c.n_group;
  j["topk_group"] = c.topk_group;
  j["topk_method"] = c.aux_free_bias && c.topk_method == TopkMethod::group_limited
                         ? "noaux_tc" : topk_method_name(c.topk_method);
  j["scoring_func"] = c.scoring_func == ScoreFunc::sigmoid ? "sigmoid" : "softmax";
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["routed_scaling_factor"] = c.routed_scaling_factor;
  j["num_attention_heads"] = c.num_attention_heads;
  j["q_lora_rank"] = c.q_lora_rank;
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = c.rope_scaling;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
  j["sandwich_norm"] = c.sandwich_norm;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["initializer_range"] = c.initializer_range;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["init"] = init_method_name(c.init);
  j["init_embedding_std"] = c.init_embedding_std;
  j["dssn_c_attn"] = c.dssn_c_attn_auto ? json("auto") : json(c.dssn_c_attn);
  j["dssn_c_ffn"] = c.dssn_c_ffn_auto ? json("auto") : json(c.dssn_c_ffn);
  j["dssn_depth_scaled"] = c.dssn_depth_scaled;
  j["moe_router_scale"] = c.moe_router_scale;
  return j;
}

}  // namespace um
