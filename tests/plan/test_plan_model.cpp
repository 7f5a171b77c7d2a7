// Planner model geometry: parameter counts against the exact parameter table (count_params) and
// hand-counted Mixtral numbers, and the design.md 7 FLOPs-per-token formula against hand-computed
// values.
#include <gtest/gtest.h>

#include "model/flops.h"
#include "model/params.h"
#include "plan/plan_model.h"
#include "plan_fixtures.h"

namespace um::plan {
namespace {

using testing::shipped_model;
using testing::source_path;

void expect_counts_match_param_table(const std::string& rel) {
  const json file = read_json_file(source_path(rel));
  const ModelConfig c = parse_model_config(file["model"], "model");
  const ParamCounts exact = count_params(c);
  const PlanParamCounts plan = plan_param_counts(plan_model_from_config(c, rel));
  EXPECT_EQ(plan.total, exact.total) << rel;
  EXPECT_EQ(plan.active, exact.active) << rel;
  EXPECT_EQ(plan.mtp, exact.mtp) << rel;
  EXPECT_EQ(plan.embedding, exact.embedding) << rel;
}

TEST(PlanModel, CountsMatchParamTablePangu) { expect_counts_match_param_table("configs/pangu-ultra-moe-718b.json"); }
TEST(PlanModel, CountsMatchParamTableDeepSeekV3) { expect_counts_match_param_table("configs/deepseek-v3-671b.json"); }

TEST(PlanModel, CountsMatchParamTableSmallModels) {
  const ModelConfig c = testing::small_moe_config();
  const ParamCounts exact = count_params(c);
  const PlanParamCounts plan = plan_param_counts(plan_model_from_config(c));
  EXPECT_EQ(plan.total, exact.total);
  EXPECT_EQ(plan.active, exact.active);
  EXPECT_EQ(plan.mtp, exact.mtp);
}

TEST(PlanModel, PublishedTotals) {
  // design.md 7: Pangu Ultra MoE 719.1B / 39.2B, DeepSeek-V3 671.0B / 36.6B
  const PlanParamCounts pangu = plan_param_counts(shipped_model("configs/pangu-ultra-moe-718b.json"));
  EXPECT_NEAR(pangu.total / 1e9, 719.1, 0.05);
  EXPECT_NEAR(pangu.active / 1e9, 39.2, 0.05);
  const PlanParamCounts dsv3 = plan_param_counts(shipped_model("configs/deepseek-v3-671b.json"));
  EXPECT_NEAR(dsv3.total / 1e9, 671.0, 0.05);
  EXPECT_NEAR(dsv3.active / 1e9, 36.6, 0.05);
}

TEST(PlanModel, MixtralCountsByHand) {
  const PlanModel m = shipped_model("configs/mixtral-8x7b.json");
  EXPECT_EQ(m.attention, AttentionKind::gqa);
  // per layer: q 4096^2 + k,v 2*4096*1024 + o 4096^2 = 41,943,040; norms 2*4096; router 8*4096;
  // experts 8 * 3*4096*14336 = 1,409,286,144
  const int64_t attn = 41943040, norms = 8192, router = 32768, expert = 3LL * 4096 * 14336;
  const int64_t embed = 32000LL * 4096;
  const int64_t total = 32 * (attn + norms + router + 8 * expert) + 2 * embed + 4096;
  const int64_t active = 32 * (attn + norms + router + 2 * expert) + embed + 4096;
  const PlanParamCounts n = plan_param_counts(m);
  EXPECT_EQ(n.total, total);
  EXPECT_EQ(total, 46702792704LL);  // "46.7B" (Mixtral paper, arXiv 2401.04088)
  EXPECT_EQ(n.active, active);
  EXPECT_EQ(n.mtp, 0);
}

TEST(PlanModel, FlopsPerTokenMixtralByHand) {
  const PlanModel m = shipped_model("configs/mixtral-8x7b.json");
  const int64_t T = 4096;
  const double n_mm = 32.0 * (41943040 + 32768 + 2.0 * 3 * 4096 * 14336) + 32000.0 * 4096;
  EXPECT_EQ(matmul_params_per_token(m), static_cast<int64_t>(n_mm));
  const double attn = 6.0 * 32 * (128 + 128) * (T + 1) / 2.0 * 32;
  EXPECT_DOUBLE_EQ(model_flops_per_token(m, T), 6.0 * n_mm + attn);
}

TEST(PlanModel, FlopsPerTokenMlaCountsMtpAndRouter) {
  const PlanModel m = testing::small_moe();
  // N_mm by hand: attention matrices (q_a 256x64, q_b 64x(4*48), kv_a 256x48, kv_b 32x(4*64),
  // o (4*32)x256), router 8x256, shared 3*128*256, K=2 experts, dense FFN 3*512*256, head 1000x256,
  // and for the MTP layer eh_proj 2*256*256 and the head again.
  const double attn = 256.0 * 64 + 64 * 4 * 48 + 256.0 * 48 + 32 * 4 * 64 + 4 * 32 * 256;
  const double moe_ffn = 8.0 * 256 + 3 * 128 * 256 + 2 * 3 * 128 * 256;
  const double dense_ffn = 3.0 * 512 * 256, head = 1000.0 * 256;
  const double n_mm = 4 * attn + 1 * dense_ffn + 3 * moe_ffn + head + (attn + moe_ffn + 2 * 256 * 256 + head);
  EXPECT_EQ(matmul_params_per_token(m), static_cast<int64_t>(n_mm));
  const int64_t T = 100;
  const double expected = 6 * n_mm + 6.0 * 4 * (48 + 32) * (T + 1) / 2.0 * (4 + 1);
  EXPECT_DOUBLE_EQ(model_flops_per_token(m, T), expected);
}

TEST(PlanModel, FlopsPerTokenAgreesWithTheTrainersMfu) {
  // two implementations of design.md 7: the planner's and the one `ultramoe train` reports MFU with
  for (const char* rel : {"configs/pangu-ultra-moe-718b.json", "configs/deepseek-v3-671b.json", "configs/tiny.json"}) {
    const ModelConfig c = parse_model_config(read_json_file(source_path(rel))["model"], "model");
    for (int64_t T : {64, 4096}) {
      const double trainer = flops_per_token(c, T).total;
      EXPECT_NEAR(model_flops_per_token(plan_model_from_config(c), T) / trainer, 1.0, 1e-12) << rel << " T=" << T;
    }
  }
}

TEST(PlanModel, RejectsBadPlannerOnlyConfigs) {
  const json base = read_json_file(source_path("configs/mixtral-8x7b.json"));
  json bad = base;
  bad["plan_model"]["num_key_value_heads"] = 7;
  EXPECT_THROW(read_plan_model(bad, "bad"), Error);
  bad = base;
  bad["plan_model"]["attention"] = "mha";
  EXPECT_THROW(read_plan_model(bad, "bad"), Error);
  bad = base;
  bad["plan_model"]["unknown_key"] = 1;
  EXPECT_THROW(read_plan_model(bad, "bad"), Error);
  bad = base;
  bad["plan_model"]["num_experts_per_tok"] = 9;
  EXPECT_THROW(read_plan_model(bad, "bad"), Error);
}

}  // namespace
}  // namespace um::plan
