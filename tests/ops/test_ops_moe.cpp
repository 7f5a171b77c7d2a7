// MoE ops: router scores, top-k selection (greedy, group-limited, MoGE), gates, the dropless
// permute -> grouped GEMM -> combine chain, the balance statistics and the optimizer ops.
// Compiled into `unit` and (UM_TEST_DEVICE) into `cuda`, like test_ops_dense.cpp.
#include <numeric>
#include <set>

#include "op_harness.h"
#include "ops/grouped_gemm.h"
#include "ops/moe_stats.h"
#include "ops/optim.h"
#include "ops/permute.h"
#include "ops/ref/reference.h"
#include "ops/router.h"

namespace um::test {
namespace {

// ---------------------------------------------------------------------------------------------
struct ScoresCase {
  static constexpr bool kAccOnly = true;
  int64_t N, E;
  bool softmax;
  Tolerance tol;
  std::string name() const {
    return std::string("scores_") + (softmax ? "softmax_" : "sigmoid_") + std::to_string(N) + "x" +
           std::to_string(E);
  }
  std::vector<Input> inputs(const Philox& rng) const { return {{"z", normals(rng, 0, N * E, 2.0)}}; }
  Vecs reference(const Vecs& in) const { return {ref::router_scores(in[0], N, E, softmax)}; }
  ScoreFunc func() const { return softmax ? ScoreFunc::softmax : ScoreFunc::sigmoid; }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Buf<T> z(ctx, in[0]), s(ctx, N * E);
    router_scores_forward<T>(s.ptr(), z.ptr(), N, E, func(), ctx);
    return {s.get()};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Buf<T> z(ctx, in[0]), s(ctx, N * E), ds(ctx, dout[0]), dz(ctx, N * E);
    router_scores_forward<T>(s.ptr(), z.ptr(), N, E, func(), ctx);
    router_scores_backward<T>(dz.ptr(), ds.ptr(), s.ptr(), N, E, func(), ctx);
    return {dz.get()};
  }
};

class Scores : public ::testing::TestWithParam<ScoresCase> {};
TEST_P(Scores, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Ops, Scores,
                         ::testing::Values(ScoresCase{1, 1, false}, ScoresCase{5, 9, false},
                                           ScoresCase{1, 1, true}, ScoresCase{6, 17, true}),
                         [](const auto& info) { return info.param.name(); });

// ---------------------------------------------------------------------------------------------
// The router end to end: z -> scores -> top-k on s + b -> gates. Selection is piecewise
// constant; the inputs are drawn so every margin is far above the finite-difference step, so
// the gradient through the chosen gates is well defined.
struct RouterCase {
  static constexpr bool kAccOnly = true;
  int64_t N, E;
  int k;
  TopkMethod method;
  int n_group, topk_group;
  bool softmax, norm, router_scale;
  double scaling;
  Tolerance tol;
  std::string label;
  std::string name() const { return "router_" + label; }
  TopkSpec spec() const { return {method, k, n_group, topk_group}; }
  std::vector<Input> inputs(const Philox& rng) const {
    // z on a grid of spacing 0.25 plus small noise: scores differ by far more than 1e-5
    std::vector<double> z(N * E);
    for (int64_t n = 0; n < N; ++n) {
      std::vector<int> perm(E);
      std::iota(perm.begin(), perm.end(), 0);
      for (int64_t e = E - 1; e > 0; --e) std::swap(perm[e], perm[rng.below(n * 1000 + e, e + 1)]);
      for (int64_t e = 0; e < E; ++e) z[n * E + e] = 0.25 * perm[e] - 0.1 * E + 0.01 * rng.normal(n * E + e);
    }
    std::vector<Input> in = {{"z", z}, {"bias", normals(rng, 1 << 20, E, 1e-3), false}};
    if (router_scale) in.push_back({"router_scale", normals(rng, 2 << 20, E, 0.2, 1.0)});
    return in;
  }
  const std::vector<double>* scale_of(const Vecs& in) const { return router_scale ? &in[2] : nullptr; }
  Vecs reference(const Vecs& in) const {
    std::vector<double> s = ref::router_scores(in[0], N, E, softmax);
    std::vector<int32_t> idx;
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> b(E);
      for (int64_t e = 0; e < E; ++e) b[e] = s[n * E + e] + in[1][e];
      for (int32_t e : ref::select_experts(b, k, int(method), n_group, topk_group)) idx.push_back(e);
    }
    return {ref::gates(s, idx, scale_of(in), N, E, k, norm, scaling)};
  }
  template <class T>
  struct Fwd {
    Buf<T> z, s, bias, rs, g, margin;
    IBuf<int32_t> idx;
  };
  template <class T>
  Fwd<T> run(const Vecs& in, const Ctx& ctx) const {
    Fwd<T> f{Buf<T>(ctx, in[0]), Buf<T>(ctx, N * E), Buf<T>(ctx, in[1]),
             Buf<T>(ctx, router_scale ? in[2] : std::vector<double>{}), Buf<T>(ctx, N * k), Buf<T>(ctx, N),
             IBuf<int32_t>(ctx, std::vector<int32_t>(N * k))};
    router_scores_forward<T>(f.s.ptr(), f.z.ptr(), N, E, softmax ? ScoreFunc::softmax : ScoreFunc::sigmoid, ctx);
    router_topk<T>(f.idx.ptr(), f.margin.ptr(), f.s.ptr(), f.bias.ptr(), N, E, spec(), ctx);
    router_gates_forward<T>(f.g.ptr(), f.s.ptr(), f.idx.ptr(), router_scale ? f.rs.ptr() : nullptr, N, E, k,
                            norm, scaling, ctx);
    return f;
  }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Fwd<T> f = run<T>(in, ctx);
    for (double m : f.margin.get()) EXPECT_GT(m, 1e-4) << "margin too small for the test";
    return {f.g.get()};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Fwd<T> f = run<T>(in, ctx);
    Buf<T> dg(ctx, dout[0]), ds(ctx, N * E), dz(ctx, N * E), drs(ctx, E);
    router_gates_backward<T>(ds.ptr(), router_scale ? drs.ptr() : nullptr, dg.ptr(), f.s.ptr(), f.idx.ptr(),
                             router_scale ? f.rs.ptr() : nullptr, N, E, k, norm, scaling, ctx);
    router_scores_backward<T>(dz.ptr(), ds.ptr(), f.s.ptr(), N, E,
                              softmax ? ScoreFunc::softmax : ScoreFunc::sigmoid, ctx);
    Vecs g = {dz.get(), {}};
    if (router_scale) g.push_back(drs.get());
    return g;
  }
};

class Router : public ::testing::TestWithParam<RouterCase> {};
TEST_P(Router, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(
    Ops, Router,
    ::testing::Values(
        RouterCase{7, 8, 2, TopkMethod::greedy, 1, 1, false, true, false, 2.5, {}, "greedy_sigmoid_norm"},
        RouterCase{5, 6, 3, TopkMethod::greedy, 1, 1, true, false, false, 1.0, {}, "greedy_softmax"},
        RouterCase{4, 5, 5, TopkMethod::greedy, 1, 1, false, true, false, 1.0, {}, "k_equals_e"},
        RouterCase{6, 12, 3, TopkMethod::group_limited, 4, 2, false, true, false, 2.5, {}, "group_limited"},
        RouterCase{6, 4, 2, TopkMethod::group_limited, 4, 2, false, true, false, 1.0, {}, "one_expert_groups"},
        RouterCase{5, 12, 4, TopkMethod::moge, 4, 1, true, false, true, 1.0, {}, "moge_router_scale"},
        RouterCase{5, 8, 2, TopkMethod::greedy, 1, 1, false, true, true, 2.0, {}, "greedy_router_scale"},
        // above the threads' threshold (the router_scale gradient's blocked reduction)
        RouterCase{2100, 16, 4, TopkMethod::greedy, 1, 1, false, true, true, 2.5, {}, "large_router_scale"}),
    [](const auto& info) { return info.param.name(); });

// Selection against the reference on random scores, and exact ties broken by the lower index.
TEST(Topk, SelectionMatchesReferenceAndBreaksTiesLow) {
#ifdef UM_TEST_DEVICE
  Workspace ws(Device::cuda);
  const Ctx ctx = cuda_context().ctx(&ws);
  using F = float;  // the device runs the router in f32
#else
  Workspace ws;
  const Ctx ctx = Ctx::cpu(&ws);
  using F = double;
#endif
  struct Spec { int64_t E; TopkSpec spec; };
  for (Spec sp : {Spec{16, {TopkMethod::greedy, 4, 1, 1}}, Spec{16, {TopkMethod::group_limited, 4, 4, 2}},
                  Spec{16, {TopkMethod::moge, 4, 4, 1}}, Spec{6, {TopkMethod::greedy, 6, 1, 1}},
                  Spec{12, {TopkMethod::group_limited, 3, 12, 3}}}) {
    const int64_t N = 50, E = sp.E;
    const int k = sp.spec.k;
    Philox rng(9, "topk" + std::to_string(int(sp.spec.method)));
    std::vector<double> s(N * E), bias(E);
    for (int64_t i = 0; i < N * E; ++i) s[i] = std::round(rng.uniform(i) * 8) / 8;  // many ties
    for (int64_t e = 0; e < E; ++e) bias[e] = (e % 3) * 0.125;
    Buf<F> ds(ctx, s), db(ctx, bias);
    IBuf<int32_t> di(ctx, std::vector<int32_t>(N * k));
    router_topk<F>(di.ptr(), nullptr, ds.ptr(), db.ptr(), N, E, sp.spec, ctx);
    const std::vector<int32_t> idx = di.get();
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> b(E);
      for (int64_t e = 0; e < E; ++e) b[e] = s[n * E + e] + bias[e];
      std::vector<int32_t> want = ref::select_experts(b, k, int(sp.spec.method), sp.spec.n_group, sp.spec.topk_group);
      std::vector<int32_t> got(idx.begin() + n * k, idx.begin() + (n + 1) * k);
      EXPECT_EQ(got, want) << "token " << n << " method " << int(sp.spec.method);
    }
  }
  // all-equal scores: the lowest indices win
  Buf<float> flat(ctx, 8, 0.5);
  IBuf<int32_t> idx(ctx, std::vector<int32_t>(3));
  router_topk<float>(idx.ptr(), nullptr, flat.ptr(), nullptr, 1, 8, {TopkMethod::greedy, 3, 1, 1}, ctx);
  EXPECT_EQ(idx.get(), (std::vector<int32_t>{0, 1, 2}));
}

// ---------------------------------------------------------------------------------------------
// Dropless dispatch: permute rows by expert, grouped linear per expert, combine with gates.
// Compared with a dense per-token loop. Experts may receive no tokens; pairs may be dropped.
struct DispatchCase {
  int64_t N, E;
  int k;
  int64_t n_in, n_out;
  std::vector<int32_t> idx;   // (N, k)
  std::vector<uint8_t> keep;  // empty = keep all (dropless)
  Tolerance tol;
  std::string label;
  std::string name() const { return "dispatch_" + label; }
  std::vector<Input> inputs(const Philox& rng) const {
    return {{"x", normals(rng, 0, N * n_in)},
            {"W", normals(rng, 1 << 22, E * n_out * n_in, 0.5)},
            {"gate", normals(rng, 2 << 22, N * k, 0.5, 1.0)}};
  }
  Vecs reference(const Vecs& in) const {
    return {ref::moe_linear_combine(in[0], in[1], idx, in[2], keep, N, k, n_in, n_out)};
  }
  // the routing permutation on ctx's device, and its offsets read back (as the MoE layer does)
  struct Plan {
    IBuf<int32_t> offsets, row_pair, pair_row;
    std::vector<int32_t> offsets_h;
    int64_t R = 0;
  };
  Plan plan(const Ctx& ctx) const {
    Plan p{IBuf<int32_t>(ctx, std::vector<int32_t>(E + 1)), IBuf<int32_t>(ctx, std::vector<int32_t>(N * k)),
           IBuf<int32_t>(ctx, std::vector<int32_t>(N * k)), {}, 0};
    IBuf<int32_t> ex(ctx, idx);
    IBuf<uint8_t> kp(ctx, keep);
    routing_permutation(p.offsets.ptr(), p.row_pair.ptr(), p.pair_row.ptr(), ex.ptr(), kp.ptr(), N, k, E, ctx);
    p.offsets_h = p.offsets.get();
    p.R = p.offsets_h[E];
    return p;
  }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Plan p = plan(ctx);
    Buf<T> x(ctx, in[0]), W(ctx, in[1]), xp(ctx, p.R * n_in), yp(ctx, p.R * n_out), y(ctx, N * n_out);
    Buf<acc_t<T>> g(ctx, in[2]);
    permute_rows_forward<T>(xp.ptr(), x.ptr(), p.row_pair.ptr(), p.R, k, n_in, ctx);
    grouped_linear_forward<T>(yp.ptr(), xp.ptr(), n_in, W.ptr(), n_out * n_in, p.offsets_h.data(), E, n_in,
                              n_out, ctx);
    combine_rows_forward<T>(y.ptr(), yp.ptr(), g.ptr(), p.pair_row.ptr(), N, k, n_out, false, ctx);
    return {y.get()};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Plan p = plan(ctx);
    Buf<T> x(ctx, in[0]), W(ctx, in[1]), dy(ctx, dout[0]), xp(ctx, p.R * n_in), yp(ctx, p.R * n_out);
    Buf<acc_t<T>> g(ctx, in[2]);
    permute_rows_forward<T>(xp.ptr(), x.ptr(), p.row_pair.ptr(), p.R, k, n_in, ctx);
    grouped_linear_forward<T>(yp.ptr(), xp.ptr(), n_in, W.ptr(), n_out * n_in, p.offsets_h.data(), E, n_in,
                              n_out, ctx);
    Buf<T> dyp(ctx, p.R * n_out), dxp(ctx, p.R * n_in), dx(ctx, N * n_in);
    Buf<acc_t<T>> dg(ctx, N * k), dW(ctx, in[1].size());
    combine_rows_backward<T>(dyp.ptr(), dg.ptr(), dy.ptr(), yp.ptr(), g.ptr(), p.pair_row.ptr(), N, k,
                             n_out, ctx);
    grouped_linear_backward<T>(dxp.ptr(), dW.ptr(), dyp.ptr(), xp.ptr(), n_in, W.ptr(), n_out * n_in,
                               p.offsets_h.data(), E, n_in, n_out, ctx);
    permute_rows_backward<T>(dx.ptr(), dxp.ptr(), p.pair_row.ptr(), N, k, n_in, false, ctx);
    return {dx.get(), dW.get(), dg.get()};
  }
};

std::vector<int32_t> round_robin(int64_t N, int k, int64_t E, int64_t skip_expert = -1) {
  std::vector<int32_t> idx;
  int64_t e = 0;
  for (int64_t n = 0; n < N; ++n) {
    std::set<int32_t> used;
    for (int j = 0; j < k; ++j) {
      while (e % E == skip_expert || used.count(int32_t(e % E))) ++e;
      used.insert(int32_t(e % E));
      idx.push_back(int32_t(e++ % E));
    }
    e += n;  // vary the pattern
  }
  return idx;
}

class Dispatch : public ::testing::TestWithParam<DispatchCase> {};
TEST_P(Dispatch, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(
    Ops, Dispatch,
    ::testing::Values(
        DispatchCase{1, 1, 1, 3, 2, {0}, {}, {}, "single"},
        DispatchCase{9, 4, 2, 7, 5, round_robin(9, 2, 4), {}, {}, "dropless"},
        DispatchCase{8, 5, 2, 6, 3, round_robin(8, 2, 5, 2), {}, {}, "empty_expert"},
        DispatchCase{6, 3, 3, 5, 4, round_robin(6, 3, 3), {}, {}, "k_equals_e"},
        DispatchCase{7, 4, 2, 5, 6, round_robin(7, 2, 4), {1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 0}, {}, "drops"},
        // above the threads' threshold, experts of unequal sizes (groups side by side on the CPU)
        DispatchCase{300, 16, 4, 48, 40, round_robin(300, 4, 16, 5), {}, {}, "large"}),
    [](const auto& info) { return info.param.name(); });

// The Ctx of the backend under test: the CPU in `unit`, CUDA in `cuda`.
struct BackendCtx {
#ifdef UM_TEST_DEVICE
  Workspace ws{Device::cuda};
  Ctx ctx = cuda_context().ctx(&ws);
#else
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
#endif
};

TEST(RoutingPermutation, StableAndCounted) {
  // 4 tokens, k=2, 3 experts; pair 5 dropped
  BackendCtx b;
  IBuf<int32_t> expert(b.ctx, {2, 0, 0, 1, 2, 0, 1, 2});
  IBuf<uint8_t> keep(b.ctx, {1, 1, 1, 1, 1, 0, 1, 1});
  IBuf<int32_t> off(b.ctx, std::vector<int32_t>(4)), rp(b.ctx, std::vector<int32_t>(8)), pr(b.ctx, std::vector<int32_t>(8));
  routing_permutation(off.ptr(), rp.ptr(), pr.ptr(), expert.ptr(), keep.ptr(), 4, 2, 3, b.ctx);
  const std::vector<int32_t> offsets = off.get(), row_pair = rp.get(), pair_row = pr.get();
  const int64_t R = offsets[3];
  EXPECT_EQ(R, 7);
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 2, 4, 7}));
  EXPECT_EQ(std::vector<int32_t>(row_pair.begin(), row_pair.begin() + R), (std::vector<int32_t>{1, 2, 3, 6, 0, 4, 7}));
  EXPECT_EQ(pair_row[5], -1);
  for (int64_t r = 0; r < R; ++r) EXPECT_EQ(pair_row[row_pair[r]], r);
}

// ---------------------------------------------------------------------------------------------
TEST(AdamW, MatchesTorchFormulaOverSteps) {
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  const int64_t n = 1000;
  Philox rng(1, "adamw");
  std::vector<double> p = normals(rng, 0, n), m(n, 0), v(n, 0);
  std::vector<double> rp = p, rm = m, rv = v;
  std::vector<float> fp(p.begin(), p.end()), fm(n, 0), fv(n, 0);
  for (int64_t step = 1; step <= 5; ++step) {
    std::vector<double> g = normals(rng, step * 10000, n);
    std::vector<float> fg(g.begin(), g.end());
    AdamWHyper h{1e-2, 0.9, 0.95, 1e-8, 0.1, step};
    adamw_update<double>(p.data(), m.data(), v.data(), g.data(), n, h, ctx);
    adamw_update<float>(fp.data(), fm.data(), fv.data(), fg.data(), n, h, ctx);
    ref::adamw(rp, rm, rv, g, 1e-2, 0.9, 0.95, 1e-8, 0.1, step);
  }
  EXPECT_LE(normwise_error(p, rp), 1e-14);
  EXPECT_LE(normwise_error(m, rm), 1e-14);
  EXPECT_LE(normwise_error(v, rv), 1e-14);
  EXPECT_LE(normwise_error(widen(fp), rp), 1e-6);
}

TEST(GradNorm, SumSquaresAndClip) {
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  const int64_t n = 100003;  // several blocks, odd size
  Philox rng(2, "norm");
  std::vector<double> g = normals(rng, 0, n);
  long double want = 0;
  for (double x : g) want += (long double)x * x;
  EXPECT_NEAR(sum_squares<double>(g.data(), n, ctx), double(want), 1e-9 * double(want));
  std::vector<float> gf(g.begin(), g.end());
  double s1 = sum_squares<float>(gf.data(), n, ctx);
  ctx.n_threads = 1;
  EXPECT_EQ(sum_squares<float>(gf.data(), n, ctx), s1);  // thread-count independent
  EXPECT_DOUBLE_EQ(clip_coefficient(0.5, 1.0), 1.0);
  EXPECT_NEAR(clip_coefficient(4.0, 1.0), 1.0 / (4.0 + 1e-6), 1e-15);
  EXPECT_DOUBLE_EQ(clip_coefficient(4.0, 0.0), 1.0);
  scale_inplace<double>(g.data(), n, 0.5, ctx);
  EXPECT_NEAR(sum_squares<double>(g.data(), n, ctx), 0.25 * double(want), 1e-9 * double(want));
}

}  // namespace
}  // namespace um::test
