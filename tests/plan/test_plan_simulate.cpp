// The step simulator: compute time against model FLOPs on idealised hardware, memory accounting
// against the parameter counts, EP all-to-all time against the per-layer volume, the bubble
// identity, and monotonicity (recompute, bandwidth, devices, virtual stages, overlap, imbalance).
#include <gtest/gtest.h>

#include "plan/cost.h"
#include "plan/simulate.h"
#include "plan_fixtures.h"

namespace um::plan {
namespace {

Prediction run(const PlanModel& m, const Hardware& hw, const Workload& w, const std::string& spec) {
  Layout l = parse_layout(spec);
  check_layout(m, w, l);
  return evaluate(m, hw, w, l);
}

// Hardware FLOPs of one step on one device: 3x the forward GEMMs (= 6 N_mm per token) and
// attention at 1 + attention_backward_ratio (2.5) times its forward FLOPs.
double ideal_compute_seconds(const PlanModel& m, const Hardware& hw, const Workload& w) {
  const double tokens = static_cast<double>(w.global_batch) * w.seq_len;
  const double attn_fwd = 2.0 * m.n_heads * (m.d_qk() + m.d_v()) * (w.seq_len + 1) / 2.0 * (m.n_layers + m.mtp_depth);
  const double flops = tokens * (6.0 * matmul_params_per_token(m) + (1 + hw.attention_backward_ratio) * attn_fwd);
  return flops / (hw.peak_flops * 0.5);
}

TEST(PlanSimulate, ComputeTimeIsModelFlopsOnIdealHardware) {
  const Hardware hw = testing::ideal_hardware();
  const Workload w{1, 64, 4};
  for (const PlanModel& m : {testing::small_dense(), testing::small_moe()}) {
    const Prediction p = run(m, hw, w, "tp=1");
    EXPECT_NEAR(p.time.compute / ideal_compute_seconds(m, hw, w), 1.0, 1e-9) << m.name;
    EXPECT_EQ(p.time.recompute, 0);
    EXPECT_EQ(p.time.bubble, 0);
    EXPECT_EQ(p.time.ep_total, 0);
    EXPECT_EQ(p.micro_batches, 4);
    // MFU = F B T / step / peak, by definition (design.md 7)
    EXPECT_NEAR(p.mfu, model_flops_per_token(m, 64) * 4 * 64 / p.step_time_s / hw.peak_flops, 1e-12);
  }
}

TEST(PlanSimulate, ExponentialsAndCrossEntropyCostWhatTheHardwareSays) {
  // a dense model: SwiGLU evaluates one exponential per element in forward and one in backward;
  // the fused cross entropy costs cross_entropy_logit_s per logit once
  const PlanModel m = testing::small_dense();
  const Workload w{1, 64, 4};
  Hardware hw = testing::ideal_hardware();
  const Prediction base = run(m, hw, w, "mbs=2");
  hw.exp_element_s = 1e-9;
  hw.cross_entropy_logit_s = 3e-9;
  const Prediction p = run(m, hw, w, "mbs=2");
  const double t = 2.0 * 64, mb = 2;
  const double expected = mb * (2 * t * m.dense_width * m.n_layers * 1e-9 + t * m.vocab * 3e-9);
  EXPECT_NEAR(p.time.compute - base.time.compute, expected, 1e-12);
}

TEST(PlanSimulate, MemoryMatchesParameterCountsOnOneDevice) {
  const Hardware hw = testing::ideal_hardware(Precision::fp32);
  const PlanModel m = testing::small_moe();
  const PlanParamCounts n = plan_param_counts(m);
  const double params = static_cast<double>(n.total + n.mtp);
  const Prediction p = run(m, hw, Workload{1, 64, 4}, "tp=1,zero=0");
  EXPECT_DOUBLE_EQ(p.memory.weights, 4 * params);    // fp32 weights
  EXPECT_DOUBLE_EQ(p.memory.grads, 4 * params);      // fp32 grads
  EXPECT_DOUBLE_EQ(p.memory.optimizer, 8 * params);  // Adam m and v: 16 bytes per parameter in all
  EXPECT_GT(p.memory.activations, 0);
  EXPECT_EQ(p.memory.reserved, 0);

  const Prediction bf16 = run(m, testing::ideal_hardware(Precision::bf16), Workload{1, 64, 4}, "tp=1,zero=0");
  EXPECT_DOUBLE_EQ(bf16.memory.weights + bf16.memory.grads + bf16.memory.optimizer, 18 * params);
}

TEST(PlanSimulate, MemoryShardsExpertsAndOptimizerState) {
  const Hardware hw = testing::ideal_hardware(Precision::bf16);
  const PlanModel m = testing::small_moe();
  const PlanParamCounts n = plan_param_counts(m);
  const double all = static_cast<double>(n.total + n.mtp);
  const double experts = 4.0 /* MoE layers incl. MTP */ * m.n_experts * 3 * m.expert_width * m.hidden;
  const double dense = all - experts;
  // ep=4 on 4 devices: each holds a quarter of the experts; ZeRO-1 shards dense state 4 ways,
  // expert state not at all (expert data-parallel size 1): 6 + 12/d bytes per parameter
  const Prediction p = run(m, hw, Workload{4, 64, 8}, "ep=4,zero=1");
  EXPECT_DOUBLE_EQ(p.memory.weights, 2 * (dense + experts / 4));
  EXPECT_DOUBLE_EQ(p.memory.grads, 4 * (dense + experts / 4));
  EXPECT_DOUBLE_EQ(p.memory.optimizer, 12 * (dense / 4 + experts / 4));
  // tp_extend_ep: tp=2 x ep=2 devices hold different whole experts (a quarter each) while the
  // dense part is split by tp=2 as usual
  double dense_tp2 = 2.0 * m.vocab * m.hidden / 2 + m.hidden /* final norm */ + m.hidden /* MTP head norm */;
  for (int64_t i = 0; i < m.n_units(); ++i) {
    const LayerParams lp = layer_params(m, i);
    dense_tp2 += lp.attn_split / 2.0 + lp.attn_replicated + lp.norms + lp.dense_ffn / 2.0 + lp.router + lp.shared / 2.0;
    if (i >= m.n_layers) dense_tp2 += 2.0 * m.hidden + 2.0 * m.hidden * m.hidden / 2;  // enorm, hnorm, eh_proj
  }
  const Prediction x = run(m, hw, Workload{4, 64, 8}, "tp=2,ep=2,tp_extend_ep=1,zero=0");
  EXPECT_DOUBLE_EQ(x.memory.weights, 2 * (dense_tp2 + experts / 4));
  const Prediction etp = run(m, hw, Workload{4, 64, 8}, "tp=2,ep=2,zero=0");  // etp=2: each expert split in two
  EXPECT_DOUBLE_EQ(etp.memory.weights, x.memory.weights);
}

TEST(PlanSimulate, TensorParallelSplitsDenseWeights) {
  const Hardware hw = testing::ideal_hardware(Precision::fp32);
  const PlanModel m = testing::small_dense();
  double per_device = 0;
  for (int64_t i = 0; i < m.n_layers; ++i) {
    const LayerParams p = layer_params(m, i);
    per_device += p.attn_split / 2.0 + p.attn_replicated + p.norms + p.dense_ffn / 2.0;
  }
  per_device += 2.0 * m.vocab * m.hidden / 2 + m.hidden;  // embedding, head (vocab-parallel), final norm
  const Prediction p = run(m, hw, Workload{2, 64, 4}, "tp=2,zero=0");
  EXPECT_DOUBLE_EQ(p.memory.weights, 4 * per_device);
  EXPECT_GT(p.time.tp_exposed, 0);
}

TEST(PlanSimulate, AllToAllTimeIsPerLayerVolume) {
  const Hardware hw = testing::ideal_hardware(Precision::bf16);
  const PlanModel m = testing::small_moe();
  const Workload w{8, 64, 16};
  const Prediction p = run(m, hw, w, "ep=8,mbs=2");
  // each device sends its 128 tokens x K=2 rows of D=256 bf16 values, 7/8 of them off-device
  const double send = 2.0 * 64 * 2 * 256 * 2;
  const AllToAll a = all_to_all_flat(hw, group_span(8, 1, 8), send);
  EXPECT_NEAR(a.time, send * 7 / 8 / 1e11 + 1e-6, 1e-15);
  const double moe_units = 4;  // 3 MoE layers + 1 MTP layer
  EXPECT_NEAR(p.time.ep_total, p.micro_batches * moe_units * 4 /* dispatch+combine, fwd+bwd */ * a.time, 1e-12);
  EXPECT_EQ(p.dispatch, Dispatch::flat);  // one node: no hierarchy
}

TEST(PlanSimulate, BubbleIsTheScheduleFraction) {
  const Hardware hw = testing::ideal_hardware();
  const PlanModel m = testing::small_dense();
  for (const char* spec : {"pp=2", "pp=4", "pp=2,vpp=2", "pp=4,vpp=2"}) {
    const Prediction p = run(m, hw, Workload{4, 64, 16}, spec);
    const Layout& l = p.layout;
    const TimeBreakdown& t = p.time;
    const double busy = t.compute + t.recompute + t.tp_exposed + t.ep_exposed;
    // bubble = t_mb (p-1)/v and busy = m t_mb, so bubble / (busy + bubble) = (p-1)/(m v + p - 1)
    EXPECT_NEAR(t.bubble / (busy + t.bubble), bubble_fraction(l.pp, l.vpp, p.micro_batches), 1e-12) << spec;
    EXPECT_NEAR(p.bubble_fraction, bubble_fraction(l.pp, l.vpp, p.micro_batches), 1e-15);
  }
  const Prediction v1 = run(m, hw, Workload{4, 64, 16}, "pp=4");
  const Prediction v2 = run(m, hw, Workload{4, 64, 16}, "pp=4,vpp=2");
  EXPECT_LT(v2.time.bubble, v1.time.bubble);
}

TEST(PlanSimulate, RecomputeTradesTimeForMemory) {
  const Hardware hw = testing::ideal_hardware();
  const PlanModel m = testing::small_moe();
  const Workload w{1, 128, 4};
  const Prediction none = run(m, hw, w, "recompute=none");
  const Prediction sel = run(m, hw, w, "recompute=selective");
  const Prediction full = run(m, hw, w, "recompute=full");
  EXPECT_GT(none.memory.activations, sel.memory.activations);
  EXPECT_GT(sel.memory.activations, full.memory.activations);
  EXPECT_EQ(none.time.recompute, 0);
  EXPECT_GT(sel.time.recompute, 0);
  EXPECT_GT(full.time.recompute, sel.time.recompute);
  // full recomputation redoes the forward: about a third of forward + backward GEMM time
  EXPECT_GT(full.time.recompute, 0.25 * full.time.compute);
  EXPECT_LT(full.time.recompute, 0.40 * full.time.compute);
}

TEST(PlanSimulate, SlowerNetworkSlowerStep) {
  Hardware hw = testing::ideal_hardware(Precision::bf16);
  hw.devices_per_node = 4;  // ep=8 spans two nodes
  const PlanModel m = testing::small_moe();
  const Workload w{8, 256, 32};
  const Prediction fast = run(m, hw, w, "ep=8");
  hw.inter_node.bandwidth /= 10;
  const Prediction slow = run(m, hw, w, "ep=8");
  EXPECT_GT(slow.time.ep_total, fast.time.ep_total);
  EXPECT_GT(slow.step_time_s, fast.step_time_s);
  EXPECT_LT(slow.mfu, fast.mfu);
  // the planner takes the faster all-to-all; forcing either never beats its choice
  const Prediction flat = run(m, hw, w, "ep=8,dispatch=flat");
  const Prediction hier = run(m, hw, w, "ep=8,dispatch=hier");
  EXPECT_LE(slow.step_time_s, std::min(flat.step_time_s, hier.step_time_s) + 1e-15);
}

TEST(PlanSimulate, MoreDevicesShorterStep) {
  const Hardware hw = testing::ideal_hardware();
  const PlanModel m = testing::small_dense();
  double previous = 1e300;
  for (int64_t devices : {1, 2, 4, 8}) {
    const Prediction p = run(m, hw, Workload{devices, 64, 32}, "tp=1");
    EXPECT_LT(p.step_time_s, previous) << devices;
    previous = p.step_time_s;
  }
}

TEST(PlanSimulate, OverlapAndImbalance) {
  const Hardware hw = testing::ideal_hardware(Precision::bf16);
  const PlanModel m = testing::small_moe();
  Workload w{8, 128, 16};
  w.ep_overlap = EpOverlap::none;
  const Prediction none = run(m, hw, w, "ep=8");
  w.ep_overlap = EpOverlap::shared;
  const Prediction shared = run(m, hw, w, "ep=8");
  w.ep_overlap = EpOverlap::full;
  const Prediction full = run(m, hw, w, "ep=8");
  EXPECT_DOUBLE_EQ(none.time.ep_exposed, none.time.ep_total);
  EXPECT_LE(shared.time.ep_exposed, none.time.ep_exposed);
  EXPECT_LE(full.time.ep_exposed, shared.time.ep_exposed);
  EXPECT_DOUBLE_EQ(full.time.ep_total, none.time.ep_total);
  w.moe_imbalance = 1.5;
  const Prediction skewed = run(m, hw, w, "ep=8");
  EXPECT_GT(skewed.step_time_s, full.step_time_s);
  EXPECT_GT(skewed.memory.activations, full.memory.activations);
}

TEST(PlanSimulate, JsonHasTheDocumentedKeys) {
  const Prediction p = run(testing::small_moe(), testing::ideal_hardware(), Workload{1, 64, 4}, "tp=1");
  const json j = prediction_to_json(p);
  for (const char* key : {"mfu", "step_time_s", "memory_per_device_bytes", "tokens_per_s", "time_s", "memory_bytes",
                          "layout", "fits"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_DOUBLE_EQ(j["step_time_s"].get<double>(), p.step_time_s);
}

}  // namespace
}  // namespace um::plan
