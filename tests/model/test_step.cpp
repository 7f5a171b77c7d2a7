// The optimizer step's bookkeeping: a non-finite loss or gradient skips the update (nothing
// changes but the step), and a checkpoint round-trips weights, moments, buffers and state.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "cli_harness.h"
#include "golden.h"
#include "train/checkpoint.h"
#include "train/step.h"

namespace um::test {
namespace {

TEST(Step, NonFiniteGradientSkipsTheUpdate) {
  const Golden g("tiny_grouped");  // aux-free biases on: they must not move either
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  ParamStore<float> ps(g.table);
  g.load(ps);
  const TrainConfig& tc = g.rc.train;
  Model<float> model(g.rc.model, g.table, {tc.micro_batch_size, g.T, tc.balance_scope, tc.capacity_factor, tc.aux_free});
  const Optimizer opt = Optimizer::full(g.table, tc.weight_decay_norms);
  int64_t adam_step = 0;
  StepOutcome ok = train_step<float>(model, ps, opt, tc, 1, adam_step, g.batch(1), StepGroups{}, ctx);
  ASSERT_FALSE(ok.skipped);
  ASSERT_EQ(adam_step, 1);

  // poison one embedding row that batch 2 uses: the loss and the gradient become non-finite
  const int32_t tok = g.batch(2)[0];
  const ParamInfo& emb = g.table.at("model.embed_tokens.weight");
  ps.w[emb.offset + int64_t(tok) * g.rc.model.hidden_size] = std::numeric_limits<float>::infinity();
  const std::vector<float> w(ps.w.data(), ps.w.data() + ps.w.size()), m(ps.m.data(), ps.m.data() + ps.m.size()),
      v(ps.v.data(), ps.v.data() + ps.v.size()), b(ps.buf.data(), ps.buf.data() + ps.buf.size());
  StepOutcome bad = train_step<float>(model, ps, opt, tc, 2, adam_step, g.batch(2), StepGroups{}, ctx);
  EXPECT_TRUE(bad.skipped);
  EXPECT_FALSE(std::isfinite(bad.grad_norm) && std::isfinite(bad.loss_total));
  EXPECT_EQ(adam_step, 1);  // the Adam step count counts applied updates only
  EXPECT_EQ(0, std::memcmp(w.data(), ps.w.data(), w.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(m.data(), ps.m.data(), m.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(v.data(), ps.v.data(), v.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(b.data(), ps.buf.data(), b.size() * sizeof(float)));
  // the metrics line writes the non-finite values as null
  json line = json::parse(json({{"x", bad.grad_norm}}).dump());
  EXPECT_TRUE(line["x"].is_null());
}

TEST(Checkpoint, RoundTripsEverything) {
  const Golden g("tiny_moge");
  ParamStore<float> ps(g.table);
  g.load(ps);
  for (int64_t i = 0; i < ps.m.size(); ++i) ps.m[i] = 1e-3f * float(i % 97), ps.v[i] = 1e-6f * float(i % 89);
  for (int64_t i = 0; i < ps.buf.size(); ++i) ps.buf[i] = 0.01f * float(i);
  TrainerState st;
  st.step = 7;
  st.adam_step = 6;
  st.counters = {{"skipped_steps", 1}};
  ScratchDir dir;
  const std::string path = save_checkpoint(dir.path + "/checkpoints", g.rc, g.table, ps, st, "");
  EXPECT_EQ(path, dir.path + "/checkpoints/step_0000007");
  EXPECT_EQ(latest_checkpoint(dir.path + "/checkpoints"), path);
  ParamStore<float> back(g.table);
  const Optimizer full = Optimizer::full(g.table, false);
  load_checkpoint(path, g.table, back, &full);
  EXPECT_EQ(0, std::memcmp(ps.w.data(), back.w.data(), ps.w.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(ps.m.data(), back.m.data(), ps.m.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(ps.v.data(), back.v.data(), ps.v.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(ps.buf.data(), back.buf.data(), ps.buf.size() * sizeof(float)));
  const TrainerState s2 = read_trainer_state(path);
  EXPECT_EQ(s2.step, 7);
  EXPECT_EQ(s2.adam_step, 6);
  EXPECT_EQ(read_checkpoint_config(path).to_json(), g.rc.to_json());
  // config.json is the flat HF form, with router_scale and biases in the weights file
  const json hf = read_json_file(path + "/config.json");
  EXPECT_EQ(hf["model_type"], "ultramoe");
  EXPECT_EQ(hf["architectures"][0], "UltramoeForCausalLM");
  SafetensorsFile f(path + "/model.safetensors");
  const std::string moe = "model.layers." + std::to_string(g.meta["moe_layers"][0].get<int>()) + ".mlp.";
  EXPECT_TRUE(f.has(moe + "router_scale"));
  EXPECT_TRUE(f.has(moe + "gate.e_score_correction_bias"));
  // keep the newest N
  st.step = 8;
  save_checkpoint(dir.path + "/checkpoints", g.rc, g.table, ps, st, "");
  st.step = 9;
  save_checkpoint(dir.path + "/checkpoints", g.rc, g.table, ps, st, "");
  prune_checkpoints(dir.path + "/checkpoints", 2);
  auto all = list_checkpoints(dir.path + "/checkpoints");
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(fs::path(all[0]).filename(), "step_0000008");
}

}  // namespace
}  // namespace um::test

namespace um::test {
namespace {

// Selective recomputation rebuilds activations with the forward's own ops: the gradients are
// bit-identical to keeping them, for every module set, in f32 and f64 (design.md 2).
template <class T>
void check_recompute(const std::string& name) {
  const Golden g(name);
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  const TrainConfig& tc = g.rc.train;
  auto grads = [&](const Recompute& rc, size_t* bytes) {
    ParamStore<T> ps(g.table);
    g.load(ps);
    Model<T> model(g.rc.model, g.table, {tc.micro_batch_size, g.T, tc.balance_scope, tc.capacity_factor, tc.aux_free, {}, rc});
    const StepOutcome o = accumulate_step<T>(model, ps, tc, 1, g.batch(1), StepGroups{}, ctx);
    *bytes = model.activation_bytes();
    std::vector<T> v(ps.g.data(), ps.g.data() + ps.g.size());
    v.push_back(T(o.loss_total));
    return v;
  };
  size_t base_bytes = 0, bytes = 0;
  const std::vector<T> base = grads({}, &base_bytes);
  for (Recompute rc : {Recompute{true, false, false}, Recompute{false, true, false}, Recompute{false, false, true},
                       Recompute{true, true, true}}) {
    const std::vector<T> got = grads(rc, &bytes);
    EXPECT_EQ(0, std::memcmp(base.data(), got.data(), base.size() * sizeof(T)))
        << name << " norms " << rc.norms << " mla_up " << rc.mla_up << " experts " << rc.experts;
    EXPECT_LT(bytes, base_bytes) << "recomputation must keep fewer activations";
  }
}

TEST(Recompute, IdenticalGradientsF64) {
  for (const char* n : {"tiny_dssn", "tiny_preln", "tiny_grouped", "tiny_moge"}) check_recompute<double>(n);
}
TEST(Recompute, IdenticalGradientsF32) {
  for (const char* n : {"tiny_dssn", "tiny_moge"}) check_recompute<float>(n);
}
TEST(Recompute, RejectsUnknownModules) {
  EXPECT_THROW(Recompute::parse({"norms", "attention"}), Error);
}

}  // namespace
}  // namespace um::test

namespace um::test {
namespace {

// design.md 1.6: the `sequence` scope depends on no layout — the same global batch split into
// micro-batches of 1, 2 or 4 sequences gives the same losses and gradients (up to summation
// order); the micro_batch scope does depend on the split, as it should.
TEST(BalanceScope, SequenceScopeIgnoresTheMicroBatchSplit) {
  const Golden g("tiny_dssn");  // batch 4
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  auto run = [&](BalanceScope scope, int64_t m, std::vector<double>* grad) {
    TrainConfig tc = g.rc.train;
    tc.balance_scope = scope;
    tc.micro_batch_size = m;
    ParamStore<double> ps(g.table);
    g.load(ps);
    Model<double> model(g.rc.model, g.table, {m, g.T, scope, 0, false});
    const StepOutcome o = accumulate_step<double>(model, ps, tc, 1, g.batch(1), StepGroups{}, ctx);
    grad->assign(ps.g.data(), ps.g.data() + ps.g.size());
    return o.loss_bal;
  };
  std::vector<double> g1, g2, g4;
  const double b1 = run(BalanceScope::sequence, 1, &g1), b2 = run(BalanceScope::sequence, 2, &g2),
               b4 = run(BalanceScope::sequence, 4, &g4);
  EXPECT_NEAR(b1, b2, 1e-14);
  EXPECT_NEAR(b1, b4, 1e-14);
  EXPECT_LE(normwise(g2, g1), 1e-12);
  EXPECT_LE(normwise(g4, g1), 1e-12);
  std::vector<double> m1, m4;
  EXPECT_GT(std::fabs(run(BalanceScope::micro_batch, 1, &m1) - run(BalanceScope::micro_batch, 4, &m4)), 1e-6);
}

}  // namespace
}  // namespace um::test
