// Model config validation, the parameter table (names, counts of the published geometries),
// and initialisation (design.md 1.1, 1.3, 7).
#include <gtest/gtest.h>

#include <cmath>
#include <regex>

#include "core/json_reader.h"
#include "model/config.h"
#include "model/params.h"
#include "model/weights.h"
#include "train/run_config.h"

namespace um {
namespace {

json tiny() {
  return json::parse(R"({
    "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3, "first_k_dense_replace": 1,
    "intermediate_size": 48, "moe_intermediate_size": 16, "n_routed_experts": 8,
    "n_shared_experts": 1, "num_experts_per_tok": 2, "num_attention_heads": 2, "q_lora_rank": 16,
    "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
    "num_nextn_predict_layers": 1})");
}

std::string config_error(json j) {
  try {
    parse_model_config(j, "model");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, ParsesDefaultsAndAliases) {
  ModelConfig c = parse_model_config(tiny());
  EXPECT_EQ(c.topk_method, TopkMethod::greedy);
  EXPECT_EQ(c.init, InitMethod::tiny);
  EXPECT_TRUE(c.sandwich_norm);
  EXPECT_DOUBLE_EQ(c.dssn_c_attn, 0.283);
  json pangu = tiny();
  pangu.erase("first_k_dense_replace");
  pangu["num_dense_layers"] = 1;  // openPangu spelling
  pangu.erase("n_routed_experts");
  pangu["num_routed_experts"] = 8;
  ModelConfig p = parse_model_config(pangu);
  EXPECT_EQ(p.first_k_dense_replace, 1);
  EXPECT_EQ(p.n_routed_experts, 8);
  json both = tiny();
  both["num_dense_layers"] = 1;
  EXPECT_NE(config_error(both).find("both num_dense_layers"), std::string::npos);
  json noaux = tiny();
  noaux["topk_method"] = "noaux_tc";
  noaux["n_group"] = 4;
  noaux["topk_group"] = 2;
  ModelConfig n = parse_model_config(noaux);
  EXPECT_EQ(n.topk_method, TopkMethod::group_limited);
  EXPECT_TRUE(n.aux_free_bias);
  json meta = tiny();
  meta["torch_dtype"] = "bfloat16";  // HF metadata is ignored
  EXPECT_EQ(config_error(meta), "");
}

TEST(ModelConfig, RejectsBadGeometryWithTheKey) {
  struct Case { const char* key; json value; const char* expect; };
  const Case cases[] = {
      {"bogus_key", 1, "unknown key model.bogus_key"},
      {"hidden_size", "big", "model.hidden_size: expected an integer"},
      {"num_experts_per_tok", 9, "num_experts_per_tok: must be in [1, n_routed_experts=8]"},
      {"first_k_dense_replace", 4, "first_k_dense_replace: must be in [0, num_hidden_layers=3]"},
      {"qk_rope_head_dim", 3, "RoPE needs an even size"},
      {"hidden_act", "gelu", "only silu"},
      {"scoring_func", "relu", "expected sigmoid or softmax"},
      {"norm_topk_prob", 1, "expected true or false"},
      {"dssn_c_attn", "fancy", "expected a number or \"auto\""},
      {"num_attention_heads", 0, "must be > 0"},
  };
  for (const Case& c : cases) {
    json j = tiny();
    j[c.key] = c.value;
    EXPECT_NE(config_error(j).find(c.expect), std::string::npos) << c.key << ": " << config_error(j);
  }
  json groups = tiny();
  groups["topk_method"] = "group_limited";
  groups["n_group"] = 3;
  EXPECT_NE(config_error(groups).find("3 groups do not divide n_routed_experts=8"), std::string::npos);
  json moge = tiny();
  moge["topk_method"] = "moge";
  moge["n_group"] = 4;
  moge["num_experts_per_tok"] = 2;
  moge["scoring_func"] = "softmax";
  moge["norm_topk_prob"] = false;
  EXPECT_NE(config_error(moge).find("divisible by n_group=4"), std::string::npos);
  moge["num_experts_per_tok"] = 4;
  EXPECT_EQ(config_error(moge), "");
  moge["norm_topk_prob"] = true;
  EXPECT_NE(config_error(moge).find("moge does not renormalise"), std::string::npos);
  json missing = tiny();
  missing.erase("kv_lora_rank");
  EXPECT_NE(config_error(missing).find("missing required key model.kv_lora_rank"), std::string::npos);
}

TEST(ModelConfig, RoundTripsThroughJson) {
  ModelConfig a = parse_model_config(tiny());
  ModelConfig b = parse_model_config(model_config_to_json(a));
  EXPECT_EQ(model_config_to_json(a), model_config_to_json(b));
}

TEST(ParamTable, NamesShapesAndLayout) {
  ModelConfig c = parse_model_config(tiny());
  ParamTable t = build_param_table(c);
  EXPECT_EQ(shape_str(t.at("model.layers.0.self_attn.q_a_proj.weight").shape), "(16,32)");
  EXPECT_EQ(shape_str(t.at("model.layers.0.self_attn.q_b_proj.weight").shape), "(24,16)");
  EXPECT_EQ(shape_str(t.at("model.layers.0.self_attn.kv_a_proj_with_mqa.weight").shape), "(12,32)");
  EXPECT_EQ(shape_str(t.at("model.layers.0.self_attn.kv_b_proj.weight").shape), "(32,8)");
  EXPECT_EQ(shape_str(t.at("model.layers.0.self_attn.o_proj.weight").shape), "(32,16)");
  EXPECT_EQ(shape_str(t.at("model.layers.0.mlp.gate_proj.weight").shape), "(48,32)");
  EXPECT_EQ(shape_str(t.at("model.layers.1.mlp.gate.weight").shape), "(8,32)");
  EXPECT_EQ(shape_str(t.at("model.layers.2.mlp.experts.7.down_proj.weight").shape), "(32,16)");
  EXPECT_EQ(shape_str(t.at("model.layers.3.eh_proj.weight").shape), "(32,64)");  // MTP layer L+0
  EXPECT_NE(t.find("model.layers.3.mlp.experts.0.up_proj.weight"), nullptr);
  EXPECT_NE(t.find("model.layers.3.shared_head.norm.weight"), nullptr);
  EXPECT_NE(t.find_buffer("model.layers.3.mlp.gate.e_score_correction_bias"), nullptr);
  EXPECT_EQ(t.find("model.layers.0.mlp.gate.weight"), nullptr);  // layer 0 is dense
  // replicated tensors first, then experts; every tensor once, contiguous
  int64_t at = 0;
  for (const ParamInfo& p : t.params) {
    EXPECT_EQ(p.offset, at) << p.name;
    at += p.numel;
    EXPECT_EQ(p.component == Component::routed_expert, p.offset >= t.n_replicated) << p.name;
  }
  EXPECT_EQ(at, t.n_elements);
  // decay exactly on 2-D weights
  for (const ParamInfo& p : t.params) EXPECT_EQ(p.decay, p.shape.size() == 2) << p.name;
  // EP slices hold E/ep experts with their global indices
  ParamTable r1 = build_param_table(c, 1, 4);
  EXPECT_EQ(r1.first_expert, 2);
  EXPECT_NE(r1.find("model.layers.1.mlp.experts.3.gate_proj.weight"), nullptr);
  EXPECT_EQ(r1.find("model.layers.1.mlp.experts.4.gate_proj.weight"), nullptr);
  EXPECT_EQ(r1.n_replicated, t.n_replicated);
  EXPECT_THROW(build_param_table(c, 0, 3), Error);
}

TEST(ParamCounts, PublishedGeometries) {
  auto counts = [](const char* file) {
    json j = read_json_file(std::string(ULTRAMOE_SOURCE_DIR) + "/configs/" + file);
    return count_params(parse_model_config(j["model"]));
  };
  // Pangu Ultra MoE: 718B total / 39B active (paper), design.md 7: 719.1B / 39.2B
  ParamCounts p = counts("pangu-ultra-moe-718b.json");
  EXPECT_NEAR(p.total / 1e9, 719.1, 0.05);
  EXPECT_NEAR(p.active / 1e9, 39.2, 0.05);
  // DeepSeek-V3: 671B / 37B (paper), design.md 7: 671.0B / 36.6B
  ParamCounts d = counts("deepseek-v3-671b.json");
  EXPECT_NEAR(d.total / 1e9, 671.0, 0.05);
  EXPECT_NEAR(d.active / 1e9, 36.6, 0.05);
  // DeepSeek-V3's MTP module: 11.6B without the shared embedding/head, 13.5B with them (the
  // release's 685B - 671B = ~14B counts them)
  EXPECT_NEAR(d.mtp / 1e9, 11.6, 0.05);
  EXPECT_NEAR((d.mtp + d.embedding + d.lm_head) / 1e9, 13.5, 0.05);
}

TEST(ParamCounts, ActiveCountsKExperts) {
  ModelConfig c = parse_model_config(tiny());
  ParamCounts n = count_params(c);
  const int64_t expert = 3 * 16 * 32;
  c.num_experts_per_tok = 3;
  EXPECT_EQ(count_params(c).active - n.active, 2 * expert);  // 2 MoE main layers, one more expert each
  EXPECT_EQ(count_params(c).total, n.total);
}

TEST(Init, TinyInitStandardDeviationsAndDssnGains) {
  ModelConfig c = parse_model_config(tiny());
  c.hidden_size = 64;
  c.n_routed_experts = 4;
  ParamTable t = build_param_table(c);
  ParamStore<double> ps(t);
  init_params(ps, t, c, 123);
  auto stddev = [&](const std::string& name) {
    const ParamInfo& p = t.at(name);
    double s = 0;
    for (int64_t i = 0; i < p.numel; ++i) s += ps.w[p.offset + i] * ps.w[p.offset + i];
    return std::sqrt(s / double(p.numel));
  };
  const double tiny_std = std::sqrt(1.0 / (2.0 * 64 * 3));  // sqrt(1/(2 D L))
  EXPECT_NEAR(stddev("model.layers.1.mlp.experts.2.up_proj.weight") / tiny_std, 1.0, 0.05);
  EXPECT_NEAR(stddev("model.layers.0.self_attn.kv_b_proj.weight") / tiny_std, 1.0, 0.1);
  EXPECT_NEAR(stddev("lm_head.weight") / tiny_std, 1.0, 0.03);
  EXPECT_NEAR(stddev("model.embed_tokens.weight") / 0.5, 1.0, 0.03);
  EXPECT_DOUBLE_EQ(ps.w[t.at("model.layers.1.post_attention_layernorm.weight").offset], 0.283 / std::sqrt(3.0));
  EXPECT_DOUBLE_EQ(ps.w[t.at("model.layers.1.post_mlp_layernorm.weight").offset], 0.432 / std::sqrt(3.0));
  EXPECT_DOUBLE_EQ(ps.w[t.at("model.layers.1.pre_mlp_layernorm.weight").offset], 1.0);
  // values depend only on (seed, name): an EP slice draws the same numbers for its experts
  ParamTable slice = build_param_table(c, 1, 2);
  ParamStore<double> ps2(slice);
  init_params(ps2, slice, c, 123);
  const ParamInfo& a = t.at("model.layers.2.mlp.experts.3.gate_proj.weight");
  const ParamInfo& b = slice.at("model.layers.2.mlp.experts.3.gate_proj.weight");
  for (int64_t i = 0; i < a.numel; ++i) ASSERT_EQ(ps.w[a.offset + i], ps2.w[b.offset + i]);
  // plain sandwich (dssn_depth_scaled false) starts post gains at 1; tied embedding uses the matrix rule
  c.dssn_depth_scaled = false;
  c.tie_word_embeddings = true;
  ParamTable t3 = build_param_table(c);
  ParamStore<double> ps3(t3);
  init_params(ps3, t3, c, 5);
  EXPECT_DOUBLE_EQ(ps3.w[t3.at("model.layers.1.post_mlp_layernorm.weight").offset], 1.0);
  EXPECT_EQ(t3.find("lm_head.weight"), nullptr);
  const ParamInfo& e = t3.at("model.embed_tokens.weight");
  double s = 0;
  for (int64_t i = 0; i < e.numel; ++i) s += ps3.w[e.offset + i] * ps3.w[e.offset + i];
  EXPECT_NEAR(std::sqrt(s / double(e.numel)) / tiny_std, 1.0, 0.03);
}

TEST(RunConfig, StrictSectionsSchedulesAndLr) {
  json j = {{"model", tiny()}, {"train", {{"lr", 1.0}, {"min_lr", 0.1}, {"warmup_steps", 2}, {"decay_steps", 6},
                                          {"batch_size", 4}, {"micro_batch_size", 2}}}, {"data", {{"seq_len", 16}}}};
  RunConfig rc = parse_run_config(j);
  EXPECT_DOUBLE_EQ(learning_rate(rc.train, 1), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(rc.train, 2), 1.0);
  EXPECT_NEAR(learning_rate(rc.train, 4), 0.1 + 0.9 * 0.5, 1e-15);  // halfway through the cosine
  EXPECT_DOUBLE_EQ(learning_rate(rc.train, 6), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(rc.train, 1000), 0.1);
  rc.train.lr_schedule = LrSchedule::wsd;
  rc.train.decay_start = 4;
  rc.train.decay_steps = 4;
  EXPECT_DOUBLE_EQ(learning_rate(rc.train, 4), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(rc.train, 6), 0.55);
  EXPECT_DOUBLE_EQ(learning_rate(rc.train, 9), 0.1);
  StepSchedule s = StepSchedule::parse(json::parse("[[1, 0.3], [5, 0.1]]"), "x");
  EXPECT_DOUBLE_EQ(s.at(4), 0.3);
  EXPECT_DOUBLE_EQ(s.at(5), 0.1);
  EXPECT_THROW(StepSchedule::parse(json::parse("[[5, 0.3], [1, 0.1]]"), "x"), Error);
  // round trip of the resolved config
  EXPECT_EQ(parse_run_config(rc.to_json()).to_json(), rc.to_json());
  auto err = [&](json k) {
    try { parse_run_config(k); } catch (const Error& e) { return std::string(e.what()); }
    return std::string();
  };
  json bad = j;
  bad["train"]["lerning_rate"] = 1;
  EXPECT_NE(err(bad).find("unknown key train.lerning_rate"), std::string::npos);
  bad = j;
  bad["optimizer"] = json::object();
  EXPECT_NE(err(bad).find("unknown section optimizer"), std::string::npos);
  bad = j;
  bad["train"]["micro_batch_size"] = 3;
  EXPECT_NE(err(bad).find("multiple of micro_batch_size=3"), std::string::npos);
  bad = j;
  bad["train"]["balance_scope"] = "batch";
  EXPECT_NE(err(bad).find("train.balance_scope"), std::string::npos);
  bad = j;
  bad["train"]["decay_steps"] = 1;
  EXPECT_NE(err(bad).find("train.decay_steps"), std::string::npos);
}

}  // namespace
}  // namespace um
