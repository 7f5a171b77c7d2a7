// Windows -> model inputs (design.md 1.8: documents, positions, targets, MTP validity), and the
// DSSN "auto" calibration (design.md 1.2).
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "model/batch.h"
#include "model/model.h"

namespace um {
namespace {

TEST(WindowBatch, DocumentsPositionsAndTargets) {
  // one window of T+1 = 9 tokens: "a b EOS BOS c d EOS e f", starting mid-document
  const int32_t E = kEosId, B_ = kBosId;
  const std::vector<int32_t> w = {10, 11, E, B_, 12, 13, E, 14, 15};
  WindowBatch wb;
  build_window_batch(wb, w.data(), 1, 8, 2, 32);
  EXPECT_EQ(wb.main.ids, (std::vector<int32_t>{10, 11, E, B_, 12, 13, E, 14}));
  EXPECT_EQ(wb.main.pos, (std::vector<int32_t>{0, 1, 2, 0, 1, 2, 3, 0}));        // restart after EOS
  EXPECT_EQ(wb.main.seg_start, (std::vector<int32_t>{0, 0, 0, 3, 3, 3, 3, 7}));
  // the token before EOS predicts EOS; the EOS position has no target
  EXPECT_EQ(wb.main.targets, (std::vector<int32_t>{11, E, kIgnore, 12, 13, E, kIgnore, 15}));
  EXPECT_EQ(wb.main.n_valid, 6);
  // depth 1: position i predicts x_{i+2} from x_{i+1}, valid iff no EOS in x_i..x_{i+1}
  const SeqRows& d1 = wb.mtp[0];
  EXPECT_EQ(d1.T, 7);
  EXPECT_EQ(d1.ids, (std::vector<int32_t>{11, E, B_, 12, 13, E, 14}));
  EXPECT_EQ(d1.targets, (std::vector<int32_t>{E, kIgnore, kIgnore, 13, E, kIgnore, kIgnore}));
  EXPECT_EQ(d1.pos, (std::vector<int32_t>{0, 1, 2, 0, 1, 2, 3}));  // the main rows' positions
  const SeqRows& d2 = wb.mtp[1];
  EXPECT_EQ(d2.targets, (std::vector<int32_t>{kIgnore, kIgnore, kIgnore, E, kIgnore, kIgnore}));
  EXPECT_EQ(count_valid_targets(w.data(), 1, 8, 2), (std::vector<int64_t>{6, 3, 1}));
  // padding is never a target
  const std::vector<int32_t> padded = {10, 11, 12, kPadId, kPadId};
  build_window_batch(wb, padded.data(), 1, 4, 0, 32);
  EXPECT_EQ(wb.main.targets, (std::vector<int32_t>{11, 12, kIgnore, kIgnore}));
  // ids outside the vocabulary are an error naming the position
  const std::vector<int32_t> bad = {10, 40, 12};
  try {
    build_window_batch(wb, bad.data(), 1, 2, 0, 32);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("position 1"), std::string::npos);
  }
}

TEST(Dssn, AutoCalibrationSetsGainsFromSublayerStd) {
  json j = json::parse(R"({
    "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3, "first_k_dense_replace": 1,
    "intermediate_size": 48, "moe_intermediate_size": 16, "n_routed_experts": 4,
    "num_experts_per_tok": 2, "num_attention_heads": 2, "kv_lora_rank": 8, "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4, "v_head_dim": 8, "num_nextn_predict_layers": 1,
    "dssn_c_attn": "auto", "dssn_c_ffn": 0.432})");
  ModelConfig c = parse_model_config(j);
  ParamTable t = build_param_table(c);
  ParamStore<double> ps(t);
  init_params(ps, t, c, 7);
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  Model<double> model(c, t, {2, 16, BalanceScope::micro_batch, 0, false});
  std::vector<int32_t> w(2 * 17);
  Philox rng(1, "dssn-windows");
  for (size_t i = 0; i < w.size(); ++i) w[i] = 4 + int32_t(rng.below(i, 60));
  auto [c_attn, c_ffn] = calibrate_dssn(model, ps, t, w.data(), 2, ctx);
  EXPECT_DOUBLE_EQ(c_ffn, 0.432);  // not "auto": the constant stays
  // Under TinyInit the attention output is tiny: far below the paper's 0.283
  EXPECT_GT(c_attn, 0.0);
  EXPECT_LT(c_attn, 0.05);
  for (int l = 0; l < 4; ++l) {  // main layers and the MTP layer
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    EXPECT_DOUBLE_EQ(ps.w[t.at(pre + "post_attention_layernorm.weight").offset], c_attn / std::sqrt(3.0));
    EXPECT_DOUBLE_EQ(ps.w[t.at(pre + "post_mlp_layernorm.weight").offset], 0.432 / std::sqrt(3.0));
  }
  // c is the measured std with all post gains at 1: recompute it independently
  for (int l = 0; l < 4; ++l) {
    const ParamInfo& p = t.at("model.layers." + std::to_string(l) + ".post_attention_layernorm.weight");
    std::fill(ps.w.data() + p.offset, ps.w.data() + p.offset + p.numel, 1.0);
    const ParamInfo& q = t.at("model.layers." + std::to_string(l) + ".post_mlp_layernorm.weight");
    std::fill(ps.w.data() + q.offset, ps.w.data() + q.offset + q.numel, 1.0);
  }
  StepScales sc;
  sc.n_mtp = {1.0};
  model.forward_backward(ps, w.data(), 2, sc, false, ctx);
  std::vector<double> attn, ffn;
  model.sublayer_output_std(2, attn, ffn, ctx);
  EXPECT_NEAR(c_attn, (attn[0] + attn[1] + attn[2]) / 3, 1e-15);
}

}  // namespace
}  // namespace um
