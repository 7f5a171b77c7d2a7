// Distributed training equals one process (design.md 4): W ranks with any ep, ZeRO-1 on or off,
// every balance scope, give the per-step losses, gradient norms and final parameters of one
// process on the same global batch with the pool-matched micro-batch (design.md 1.6), in f64 to
// round-off. Run under MPI: `mpirun -np 2|4 test_mpi` (ctest label mpi). Every rank computes
// the one-process reference itself and compares its own tensors by name, so nothing is gathered.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "../model/golden.h"
#include "core/rng.h"
#include "model/batch.h"
#include "parallel/attention_balance.h"
#include "parallel/comm.h"
#include "parallel/groups.h"
#include "train/pipeline.h"
#include "train/step.h"

namespace um::test {
namespace {

Comm* g_world = nullptr;

// Deterministic windows with documents (BOS ... EOS) of varied lengths: (steps, B, T+1).
std::vector<int32_t> synthetic_windows(int64_t steps, int64_t B, int64_t T, int64_t V, uint64_t seed) {
  Philox rng(seed, "mpi-windows");
  std::vector<int32_t> stream;
  uint64_t i = 0;
  while (int64_t(stream.size()) < steps * B * T + 1) {
    const int64_t len = 1 + int64_t(rng.below(i++, 2 * T));
    stream.push_back(kBosId);
    for (int64_t k = 0; k < len; ++k) stream.push_back(4 + int32_t(rng.below(i++, uint64_t(V - 4))));
    stream.push_back(kEosId);
  }
  std::vector<int32_t> w(steps * B * (T + 1));
  for (int64_t s = 0; s < steps * B; ++s)
    std::copy_n(stream.begin() + s * T, T + 1, w.begin() + s * (T + 1));
  return w;
}

struct Case {
  std::string golden;
  int ep;
  bool zero;
  BalanceScope scope;
  int64_t B, m;  // global batch, per-rank micro-batch
  bool capacity = false;
  bool attention_balance = false;
  int ranks_per_node = 0;  // > 0 and < ep: hierarchical dispatch
  bool recompute = false;  // every module recomputed on the ranks (the reference keeps all)
  std::string name() const {
    char buf[192];
    std::snprintf(buf, sizeof buf, "%s_ep%d_zero%d_%s_B%lld_m%lld%s%s%s%s", golden.c_str(), ep, int(zero),
                  balance_scope_name(scope), (long long)B, (long long)m, capacity ? "_capacity" : "",
                  attention_balance ? "_dpbalance" : "",
                  ranks_per_node ? ("_hier" + std::to_string(ranks_per_node)).c_str() : "",
                  recompute ? "_recompute" : "");
    return buf;
  }
};

void run_case(const Case& k) {
  Comm& world = *g_world;
  const int W = world.size(), rank = world.rank();
  // The case list serves both rank counts; a layout that does not fit this one (ep > W, or a
  // batch that does not split over W ranks) is run by the other invocation instead.
  if (k.ep > W || W % k.ep != 0 || k.B % (k.m * W) != 0) GTEST_SKIP() << "layout needs other rank counts";
  const Golden gold(k.golden);
  const ModelConfig& c = gold.rc.model;
  TrainConfig tc = gold.rc.train;
  tc.batch_size = k.B;
  tc.micro_batch_size = k.m;
  tc.balance_scope = k.scope;
  tc.capacity_factor = k.capacity ? 1.0 : 0.0;
  const int64_t T = gold.T, steps = 6;
  const std::vector<int32_t> data = synthetic_windows(steps, k.B, T, c.vocab_size, 7);
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);

  // the one-process reference, pool-matched micro-batch (design.md 1.6)
  TrainConfig ref_tc = tc;
  if (k.scope == BalanceScope::ep_group) ref_tc.micro_batch_size = k.m * k.ep;
  if (k.scope == BalanceScope::global) ref_tc.micro_batch_size = k.m * W;
  const ParamTable ref_table = build_param_table(c);
  ParamStore<double> ref(ref_table);
  gold.load(ref);
  Model<double> ref_model(c, ref_table, {ref_tc.micro_batch_size, T, ref_tc.balance_scope, ref_tc.capacity_factor, ref_tc.aux_free});
  const Optimizer ref_opt = Optimizer::full(ref_table, tc.weight_decay_norms);
  int64_t ref_adam = 0;
  std::vector<StepOutcome> want;
  for (int64_t s = 1; s <= steps; ++s)
    want.push_back(train_step<double>(ref_model, ref, ref_opt, ref_tc, s, ref_adam, data.data() + (s - 1) * k.B * (T + 1),
                                      StepGroups{}, ctx));

  // W ranks
  ParallelLayout layout(world, k.ep, k.ranks_per_node);
  const StepGroups g = layout.groups();
  MoeComms mc;
  if (k.ep > 1) mc.ep = layout.ep.get();
  mc.intra = layout.ep_intra.get();
  mc.inter = layout.ep_inter.get();
  EXPECT_EQ(layout.hierarchical(), k.ranks_per_node > 0 && k.ranks_per_node < k.ep);
  if (k.scope == BalanceScope::ep_group && k.ep > 1) mc.pool = layout.ep.get();
  if (k.scope == BalanceScope::global) mc.pool = &world;
  const ParamTable table = build_param_table(c, rank % k.ep, k.ep, k.zero ? int64_t(W) * 16 : 1);
  const Optimizer opt = k.zero ? Optimizer::zero_shard(table, tc.weight_decay_norms, rank, W, layout.edp->rank(), W / k.ep)
                               : Optimizer::full(table, tc.weight_decay_norms);
  ParamStore<double> ps(table, opt.moment_elements());
  for (const ParamInfo& p : table.params)
    gold.st->read_into<double>("param." + p.name, ps.w.data() + p.offset, p.shape);
  for (const BufferInfo& b : table.buffers)
    gold.st->read_into<double>("buffer." + b.name, ps.buf.data() + b.offset, {b.numel});
  Model<double> model(c, table, {k.m, T, tc.balance_scope, tc.capacity_factor, tc.aux_free, mc,
                                 k.recompute ? Recompute{true, true, true} : Recompute{}});
  int64_t adam = 0;
  const int64_t n_local = k.B / W;
  std::vector<int32_t> local(n_local * (T + 1));
  for (int64_t s = 1; s <= steps; ++s) {
    const int32_t* batch = data.data() + (s - 1) * k.B * (T + 1);
    std::vector<std::vector<int64_t>> seqs =
        k.attention_balance
            ? balance_attention(attention_costs(batch, k.B, T), W, k.m, k.ep, tc.balance_scope, tc.balance_alpha > 0,
                                tc.capacity_factor > 0).seqs
            : canonical_assignment(std::vector<double>(k.B, 1.0), W, k.m).seqs;
    for (int64_t i = 0; i < n_local; ++i)
      std::copy_n(batch + seqs[rank][i] * (T + 1), T + 1, local.begin() + i * (T + 1));
    const StepOutcome o = train_step<double>(model, ps, opt, tc, s, adam, local.data(), g, ctx);
    const StepOutcome& r = want[s - 1];
    EXPECT_LE(rel_error(o.loss, r.loss), 1e-12) << "step " << s << " loss";
    EXPECT_LE(rel_error(o.loss_total, r.loss_total), 1e-12) << "step " << s << " J";
    EXPECT_LE(rel_error(o.loss_bal + 1, r.loss_bal + 1), 1e-12) << "step " << s << " balance loss";
    EXPECT_LE(rel_error(o.grad_norm, r.grad_norm), 1e-10) << "step " << s << " grad norm";
    for (size_t l = 0; l < o.moe.size(); ++l) {
      EXPECT_EQ(o.moe[l].load, r.moe[l].load) << "step " << s << " expert load, MoE layer " << l;
      EXPECT_EQ(o.moe[l].dropped, r.moe[l].dropped) << "step " << s << " dropped, MoE layer " << l;
    }
  }
  for (const ParamInfo& p : table.params) {
    const ParamInfo& q = ref_table.at(p.name);
    std::vector<double> got(ps.w.data() + p.offset, ps.w.data() + p.offset + p.numel);
    std::vector<double> exp(ref.w.data() + q.offset, ref.w.data() + q.offset + q.numel);
    EXPECT_LE(normwise(got, exp), 1e-9) << "final " << p.name << " on rank " << rank;
  }
  for (const BufferInfo& b : table.buffers) {
    const BufferInfo* q = ref_table.find_buffer(b.name);
    for (int64_t i = 0; i < b.numel; ++i) EXPECT_NEAR(ps.buf[b.offset + i], ref.buf[q->offset + i], 1e-12) << b.name;
  }
}

class Equivalence : public ::testing::TestWithParam<Case> {};
TEST_P(Equivalence, WRanksEqualOneProcess) { run_case(GetParam()); }

INSTANTIATE_TEST_SUITE_P(
    Mpi, Equivalence,
    ::testing::Values(Case{"tiny_dssn", 1, false, BalanceScope::micro_batch, 8, 2},
                      Case{"tiny_dssn", 2, false, BalanceScope::micro_batch, 8, 2},
                      Case{"tiny_dssn", 2, true, BalanceScope::ep_group, 8, 2},
                      Case{"tiny_dssn", 4, false, BalanceScope::ep_group, 8, 1},
                      Case{"tiny_dssn", 4, true, BalanceScope::global, 8, 2},
                      Case{"tiny_dssn", 2, true, BalanceScope::sequence, 8, 1},
                      Case{"tiny_dssn", 2, false, BalanceScope::global, 8, 1, false, true},
                      Case{"tiny_moge", 2, false, BalanceScope::micro_batch, 8, 2, true},
                      Case{"tiny_moge", 4, true, BalanceScope::ep_group, 8, 1},
                      Case{"tiny_preln", 2, false, BalanceScope::sequence, 4, 1, false, true},
                      // hierarchical dispatch: 2 nodes of 1 rank, 2 nodes of 2, 4 nodes of 1
                      Case{"tiny_dssn", 2, false, BalanceScope::micro_batch, 8, 2, false, false, 1},
                      Case{"tiny_dssn", 4, true, BalanceScope::ep_group, 8, 1, false, false, 2},
                      Case{"tiny_moge", 4, false, BalanceScope::micro_batch, 8, 2, true, false, 1},
                      Case{"tiny_dssn", 2, false, BalanceScope::micro_batch, 8, 2, false, false, 0, true},
                      Case{"tiny_dssn", 4, true, BalanceScope::ep_group, 8, 1, false, false, 2, true}),
    [](const auto& info) { return info.param.name(); });

// Pipeline parallelism (design.md 4, docs/pipeline.md): pp stages x (W/pp) data-parallel ranks,
// vpp chunks per stage, with EP and ZeRO-1 inside the stages, equal one process in f64. The
// goldens have 2 layers; these cases deepen the model (TinyInit by name, so every rank draws the
// same tensors as the reference) to cut it into up to 8 virtual stages.
struct PipeCase {
  std::string golden;
  int pp, vpp, ep;
  bool zero;
  BalanceScope scope;
  int64_t B, m;
  int64_t layers;                 // main layers of the deepened model
  std::vector<int64_t> pp_layers;  // empty: even
  int64_t mtp = -1;               // MTP depth override (-1: the golden's)
  std::string mtp_stage = "last";
  int W = 0;                      // the rank count this case needs
  std::string name() const {
    char buf[192];
    std::string cut;
    for (int64_t n : pp_layers) cut += std::to_string(n);
    std::snprintf(buf, sizeof buf, "%s_L%lld_pp%d_vpp%d_ep%d_zero%d_%s_B%lld_m%lld%s%s%s%s_W%d", golden.c_str(),
                  (long long)layers, pp, vpp, ep, int(zero), balance_scope_name(scope), (long long)B, (long long)m,
                  cut.empty() ? "" : "_cut", cut.c_str(), mtp >= 0 ? ("_mtp" + std::to_string(mtp)).c_str() : "",
                  mtp_stage == "own" ? "_tailown" : "", W);
    return buf;
  }
};

void run_pipe_case(const PipeCase& k) {
  Comm& world = *g_world;
  const int W = world.size();
  if (W != k.W) GTEST_SKIP() << "case for " << k.W << " ranks";
  const Golden gold(k.golden);
  ModelConfig c = gold.rc.model;
  c.num_hidden_layers = k.layers;
  if (k.mtp >= 0) c.num_nextn_predict_layers = k.mtp;
  TrainConfig tc = gold.rc.train;
  tc.batch_size = k.B;
  tc.micro_batch_size = k.m;
  tc.balance_scope = k.scope;
  ParallelConfig pc;
  pc.pp = k.pp, pc.vpp = k.vpp, pc.ep = k.ep, pc.zero = k.zero;
  pc.pp_layers = k.pp_layers;
  pc.mtp_stage = k.mtp_stage;
  const int Wd = W / k.pp;
  const int64_t T = gold.T, steps = 4;
  const std::vector<int32_t> data = synthetic_windows(steps, k.B, T, c.vocab_size, 11);
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);

  TrainConfig ref_tc = tc;
  if (k.scope == BalanceScope::ep_group) ref_tc.micro_batch_size = k.m * k.ep;
  if (k.scope == BalanceScope::global) ref_tc.micro_batch_size = k.m * Wd;
  const ParamTable ref_table = build_param_table(c);
  ParamStore<double> ref(ref_table);
  init_params(ref, ref_table, c, 5);
  Model<double> ref_model(c, ref_table, {ref_tc.micro_batch_size, T, ref_tc.balance_scope, 0.0, ref_tc.aux_free});
  const Optimizer ref_opt = Optimizer::full(ref_table, tc.weight_decay_norms);
  int64_t ref_adam = 0;
  std::vector<StepOutcome> want;
  for (int64_t s = 1; s <= steps; ++s)
    want.push_back(train_step<double>(ref_model, ref, ref_opt, ref_tc, s, ref_adam, data.data() + (s - 1) * k.B * (T + 1),
                                      StepGroups{}, ctx));

  ParallelLayout layout(world, k.ep, 0, k.pp);
  const StepGroups g = layout.groups();
  const int dp = layout.data().rank(), stage = layout.pp_rank;
  ASSERT_EQ(g.pp_rank(), stage);
  MoeComms mc;
  if (k.ep > 1) mc.ep = layout.ep.get();
  if (k.scope == BalanceScope::ep_group && k.ep > 1) mc.pool = layout.ep.get();
  if (k.scope == BalanceScope::global) mc.pool = &layout.data();
  const PipelineLayout pl = PipelineLayout::make(c, pc);
  const StageContents contents = pl.contents(c, stage);
  const ParamTable table = build_param_table(c, dp % k.ep, k.ep, k.zero ? int64_t(Wd) * 16 : 1, &contents);
  const Optimizer opt = k.zero ? Optimizer::zero_shard(table, tc.weight_decay_norms, dp, Wd, layout.edp->rank(), Wd / k.ep)
                               : Optimizer::full(table, tc.weight_decay_norms);
  ParamStore<double> ps(table, opt.moment_elements());
  init_params(ps, table, c, 5);
  ModelOptions mo{k.m, T, tc.balance_scope, 0.0, tc.aux_free, mc};
  mo.chunks = pl.chunks(stage, k.B / Wd / k.m);
  Model<double> model(c, table, mo);
  int64_t adam = 0;
  const int64_t n_local = k.B / Wd;
  std::vector<int32_t> local(n_local * (T + 1));
  for (int64_t s = 1; s <= steps; ++s) {
    const int32_t* batch = data.data() + (s - 1) * k.B * (T + 1);
    const auto seqs = canonical_assignment(std::vector<double>(k.B, 1.0), Wd, k.m).seqs;
    for (int64_t i = 0; i < n_local; ++i) std::copy_n(batch + seqs[dp][i] * (T + 1), T + 1, local.begin() + i * (T + 1));
    const StepOutcome o = train_step<double>(model, ps, opt, tc, s, adam, local.data(), g, ctx);
    const StepOutcome& r = want[s - 1];
    EXPECT_LE(rel_error(o.loss, r.loss), 1e-12) << "step " << s << " loss";
    EXPECT_LE(rel_error(o.loss_mtp + 1, r.loss_mtp + 1), 1e-12) << "step " << s << " MTP loss";
    EXPECT_LE(rel_error(o.loss_total, r.loss_total), 1e-12) << "step " << s << " J";
    EXPECT_LE(rel_error(o.loss_bal + 1, r.loss_bal + 1), 1e-12) << "step " << s << " balance loss";
    EXPECT_LE(rel_error(o.grad_norm, r.grad_norm), 1e-10) << "step " << s << " grad norm";
    for (size_t l = 0; l < o.moe.size(); ++l)
      EXPECT_EQ(o.moe[l].load, r.moe[l].load) << "step " << s << " expert load, MoE layer " << l;
  }
  int64_t compared = 0;
  for (const ParamInfo& p : table.params) {
    const ParamInfo& q = ref_table.at(p.name);
    std::vector<double> got(ps.w.data() + p.offset, ps.w.data() + p.offset + p.numel);
    std::vector<double> exp(ref.w.data() + q.offset, ref.w.data() + q.offset + q.numel);
    EXPECT_LE(normwise(got, exp), 1e-9) << "final " << p.name << " on rank " << world.rank();
    ++compared;
  }
  // every tensor of the model is held (and compared) by some rank of each pipeline
  std::vector<int64_t> n = {compared};
  g.pipe->sum(n);
  EXPECT_GE(n[0], int64_t(build_param_table(c, dp % k.ep, k.ep).params.size()));
  for (const BufferInfo& b : table.buffers) {
    const BufferInfo* q = ref_table.find_buffer(b.name);
    for (int64_t i = 0; i < b.numel; ++i) EXPECT_NEAR(ps.buf[b.offset + i], ref.buf[q->offset + i], 1e-12) << b.name;
  }
}

class PipelineEquivalence : public ::testing::TestWithParam<PipeCase> {};
TEST_P(PipelineEquivalence, StagesEqualOneProcess) { run_pipe_case(GetParam()); }

using BS = BalanceScope;
INSTANTIATE_TEST_SUITE_P(
    Mpi, PipelineEquivalence,
    ::testing::Values(
        // 2 ranks: pp 2 (1F1B), pp 2 x vpp 2 (interleaved), an uneven cut, a tied head without MTP
        PipeCase{"tiny_dssn", 2, 1, 1, false, BS::micro_batch, 4, 1, 3, {}, -1, "last", 2},
        PipeCase{"tiny_dssn", 2, 2, 1, false, BS::micro_batch, 4, 1, 4, {}, -1, "last", 2},
        PipeCase{"tiny_moge", 2, 2, 1, false, BS::micro_batch, 8, 2, 3, {0, 2, 1, 0}, -1, "own", 2},
        PipeCase{"tiny_preln", 2, 1, 1, false, BS::sequence, 4, 1, 3, {1, 2}, -1, "last", 2},
        PipeCase{"tiny_moge", 2, 1, 1, false, BS::micro_batch, 4, 2, 2, {}, 0, "last", 2},
        // 4 ranks: pp 4, pp 4 x vpp 2, and pp 2 with DP / EP / ZeRO-1 inside the stages
        PipeCase{"tiny_dssn", 4, 1, 1, false, BS::micro_batch, 8, 1, 4, {}, -1, "last", 4},
        PipeCase{"tiny_dssn", 4, 2, 1, false, BS::micro_batch, 8, 1, 7, {}, -1, "own", 4},
        PipeCase{"tiny_dssn", 2, 1, 2, false, BS::ep_group, 8, 1, 3, {}, -1, "last", 4},
        PipeCase{"tiny_dssn", 2, 2, 1, true, BS::global, 8, 1, 4, {}, -1, "last", 4},
        PipeCase{"tiny_moge", 2, 2, 2, true, BS::micro_batch, 8, 2, 4, {0, 1, 2, 1}, -1, "last", 4}),
    [](const auto& info) { return info.param.name(); });

TEST(MpiComm, CollectivesAndSplit) {
  Comm& w = *g_world;
  const int W = w.size(), r = w.rank();
  std::vector<double> v = {double(r), 1.0};
  w.sum(v);
  EXPECT_EQ(v[0], W * (W - 1) / 2.0);
  EXPECT_EQ(v[1], double(W));
  std::vector<int64_t> all(W);
  const int64_t mine = 10 * r;
  w.all_gather(&mine, all.data(), 1, DType::i64);
  for (int i = 0; i < W; ++i) EXPECT_EQ(all[i], 10 * i);
  std::vector<double> send(W, double(r)), recv(1);
  w.reduce_scatter(send.data(), recv.data(), 1, DType::f64, ReduceOp::sum);
  EXPECT_EQ(recv[0], W * (W - 1) / 2.0);
  // all_to_all_v: rank r sends q+1 copies of r to rank q
  std::vector<int64_t> sc(W), so(W), rc(W), ro(W);
  std::vector<int32_t> sbuf, rbuf;
  for (int q = 0; q < W; ++q) {
    so[q] = int64_t(sbuf.size());
    sc[q] = q + 1;
    for (int i = 0; i <= q; ++i) sbuf.push_back(r);
  }
  for (int q = 0; q < W; ++q) rc[q] = r + 1, ro[q] = q * (r + 1);
  rbuf.assign(W * (r + 1), -1);
  w.iall_to_all_v(sbuf.data(), sc.data(), so.data(), rbuf.data(), rc.data(), ro.data(), DType::i32).wait();
  for (int q = 0; q < W; ++q)
    for (int i = 0; i <= r; ++i) EXPECT_EQ(rbuf[q * (r + 1) + i], q);
  auto half = w.split(r % 2, r);
  EXPECT_EQ(half->size(), W / 2);
  EXPECT_EQ(half->rank(), r / 2);
}

}  // namespace
}  // namespace um::test

int main(int argc, char** argv) {
  um::Runtime runtime(&argc, &argv);
  um::test::g_world = &runtime.world();
  ::testing::InitGoogleTest(&argc, argv);
  if (runtime.world().rank() != 0) {  // one rank reports; every rank still fails on its own errors
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  int64_t failed = rc != 0;
  runtime.world().all_reduce(&failed, 1, um::DType::i64, um::ReduceOp::max);
  return failed ? 1 : 0;
}
