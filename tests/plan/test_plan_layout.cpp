// Parallel layouts: parsing `tp=8,pp=16,...` and rejecting impossible layouts with errors that
// name the offending value.
#include <gtest/gtest.h>

#include "plan/layout.h"
#include "plan_fixtures.h"

namespace um::plan {
namespace {

using testing::shipped_model;

std::string error_of(const PlanModel& m, const Workload& w, const std::string& spec) {
  try {
    Layout l = parse_layout(spec);
    check_layout(m, w, l);
  } catch (const Error& e) {
    EXPECT_EQ(e.origin(), "plan");
    return e.what();
  }
  return "";
}

Workload pangu_workload() {
  Workload w;
  w.devices = 6144;
  w.seq_len = 8192;
  w.global_batch = 3072;
  return w;
}

TEST(PlanLayout, ParsesEveryKey) {
  Layout l = parse_layout("tp=8,pp=16,vpp=2,ep=4,mbs=2,tp_extend_ep=1,recompute=selective,zero=0,dispatch=hier");
  EXPECT_EQ(l.tp, 8);
  EXPECT_EQ(l.pp, 16);
  EXPECT_EQ(l.vpp, 2);
  EXPECT_EQ(l.ep, 4);
  EXPECT_EQ(l.mbs, 2);
  EXPECT_TRUE(l.tp_extend_ep);
  EXPECT_EQ(l.recompute, Recompute::selective);
  EXPECT_EQ(l.zero, 0);
  EXPECT_EQ(*l.dispatch, Dispatch::hierarchical);
  EXPECT_EQ(l.expert_tp(), 1);
  EXPECT_EQ(l.expert_group(), 32);
  Layout m = parse_layout("tp=4,ep=8");
  EXPECT_EQ(m.expert_tp(), 4);  // etp defaults to tp (Megatron-Core)
  EXPECT_EQ(m.expert_group(), 32);
  EXPECT_FALSE(m.dispatch.has_value());
}

TEST(PlanLayout, RejectsMalformedSpecs) {
  EXPECT_THROW(parse_layout("tp=8,foo=2"), Error);
  EXPECT_THROW(parse_layout("tp=eight"), Error);
  EXPECT_THROW(parse_layout("tp=8,tp=4"), Error);
  EXPECT_THROW(parse_layout("tp8"), Error);
  EXPECT_THROW(parse_layout(""), Error);
  EXPECT_THROW(parse_layout("recompute=some"), Error);
}

TEST(PlanLayout, DataParallelFollowsFromDevices) {
  const PlanModel m = shipped_model("configs/pangu-ultra-moe-718b.json");
  Workload w = pangu_workload();
  Layout l = parse_layout("tp=8,pp=16,vpp=2,ep=4,tp_extend_ep=1");
  check_layout(m, w, l);
  EXPECT_EQ(l.dp, 48);
  EXPECT_EQ(micro_batches(w, l), 64);
  EXPECT_EQ(l.expert_dp(), 12);  // 8 x 48 devices per stage, experts spread over 32
}

TEST(PlanLayout, RejectsImpossibleLayoutsNamingTheValue) {
  const PlanModel pangu = shipped_model("configs/pangu-ultra-moe-718b.json");
  const Workload w = pangu_workload();
  EXPECT_NE(error_of(pangu, w, "tp=8,pp=16,ep=3").find("ep=3 does not divide n_routed_experts=256"), std::string::npos);
  EXPECT_NE(error_of(pangu, w, "tp=8,pp=10").find("does not divide --devices 6144"), std::string::npos);
  EXPECT_NE(error_of(pangu, w, "tp=3,pp=16").find("tp=3 does not divide num_attention_heads=128"), std::string::npos);
  EXPECT_NE(error_of(pangu, w, "tp=8,pp=16,ep=64,tp_extend_ep=1").find("does not divide n_routed_experts=256"),
            std::string::npos);
  EXPECT_NE(error_of(pangu, w, "tp=8,pp=32,vpp=2").find("exceed the 62 layers"), std::string::npos);
  EXPECT_NE(error_of(pangu, w, "tp=8,vpp=2").find("needs pp > 1"), std::string::npos);
  EXPECT_NE(error_of(pangu, w, "tp=8,pp=16,mbs=5").find("--global-batch 3072 is not a multiple of dp=48 x mbs=5"),
            std::string::npos);
  EXPECT_NE(error_of(pangu, w, "tp=8,pp=16,dp=12").find("dp=12 contradicts"), std::string::npos);
  EXPECT_NE(error_of(pangu, w, "tp=8,pp=16,ep=128").find("does not divide tp x dp = 384"), std::string::npos);
  Workload odd = w;
  odd.global_batch = 48 * 3;  // 3 micro-batches: not a multiple of pp=16 for the interleaved schedule
  EXPECT_NE(error_of(pangu, odd, "tp=8,pp=16,vpp=2").find("multiple of pp=16"), std::string::npos);

  const PlanModel mixtral = shipped_model("configs/mixtral-8x7b.json");
  Workload mw{64, 4096, 256};
  EXPECT_NE(error_of(mixtral, mw, "tp=16,pp=4").find("does not divide num_key_value_heads=8"), std::string::npos);
  EXPECT_NE(error_of(mixtral, mw, "tp=2,ep=8,etp=3").find("etp=3 does not divide"), std::string::npos);

  const PlanModel dense = testing::small_dense();
  Workload dw{8, 128, 64};
  EXPECT_NE(error_of(dense, dw, "ep=2").find("has no routed experts"), std::string::npos);
  EXPECT_NE(error_of(dense, dw, "tp=3").find("does not divide --devices 8"), std::string::npos);
}

TEST(PlanLayout, RejectsBadWorkloads) {
  const PlanModel m = testing::small_dense();
  Layout l;
  EXPECT_THROW(check_layout(m, Workload{0, 128, 8}, l), Error);
  EXPECT_THROW(check_layout(m, Workload{8, 0, 8}, l), Error);
  Workload w{8, 128, 8};
  w.moe_imbalance = 0.5;
  EXPECT_THROW(check_layout(m, w, l), Error);
}

}  // namespace
}  // namespace um::plan
