// MoE ops: router scores, top-k selection (greedy, group-limited, MoGE), gates, the dropless
// permute -> grouped GEMM -> combine chain, and the optimizer ops.
#include <numeric>
#include <set>

#include "op_harness.h"
#include "ops/grouped_gemm.h"
#include "ops/optim.h"
#include "ops/permute.h"
#include "ops/ref/reference.h"
#include "ops/router.h"

namespace um::test {
namespace {

// ---------------------------------------------------------------------------------------------
struct ScoresCase {
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
    std::vector<T> z = to<T>(in[0]), s(N * E);
    router_scores_forward<T>(s.data(), z.data(), N, E, func(), ctx);
    return {widen(s)};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    std::vector<T> z = to<T>(in[0]), s(N * E), ds = to<T>(dout[0]), dz(N * E);
    router_scores_forward<T>(s.data(), z.data(), N, E, func(), ctx);
    router_scores_backward<T>(dz.data(), ds.data(), s.data(), N, E, func(), ctx);
    return {widen(dz)};
  }
};

class Scores : public ::testing::TestWithParam<ScoresCase> {};
TEST_P(Scores, MatchesReferenceAndGradients) { check_op(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Ops, Scores,
                         ::testing::Values(ScoresCase{1, 1, false}, ScoresCase{5, 9, false},
                                           ScoresCase{1, 1, true}, ScoresCase{6, 17, true}),
                         [](const auto& info) { return info.param.name(); });

// ---------------------------------------------------------------------------------------------
// The router end to end: z -> scores -> top-k on s + b -> gates. Selection is piecewise
// constant; the inputs are drawn so every margin is far above the finite-difference step, so
// the gradient through the chosen gates is well defined.
struct RouterCase {
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
    std::vector<T> z, s, bias, rs, g, margin;
    std::vector<int32_t> idx;
  };
  template <class T>
  Fwd<T> run(const Vecs& in, const Ctx& ctx) const {
    Fwd<T> f{to<T>(in[0]), std::vector<T>(N * E), to<T>(in[1]), router_scale ? to<T>(in[2]) : std::vector<T>{},
             std::vector<T>(N * k), std::vector<T>(N), std::vector<int32_t>(N * k)};
    router_scores_forward<T>(f.s.data(), f.z.data(), N, E, softmax ? ScoreFunc::softmax : ScoreFunc::sigmoid, ctx);
    router_topk<T>(f.idx.data(), f.margin.data(), f.s.data(), f.bias.data(), N, E, spec(), ctx);
    router_gates_forward<T>(f.g.data(), f.s.data(), f.idx.data(), router_scale ? f.rs.data() : nullptr, N, E, k,
                            norm, scaling, ctx);
    return f;
  }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Fwd<T> f = run<T>(in, ctx);
    for (int64_t n = 0; n < N; ++n) EXPECT_GT(double(f.margin[n]), 1e-4) << "margin too small for the test";
    return {widen(f.g)};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Fwd<T> f = run<T>(in, ctx);
    std::vector<T> dg = to<T>(dout[0]), ds(N * E, T(0)), dz(N * E), drs(E, T(0));
    router_gates_backward<T>(ds.data(), router_scale ? drs.data() : nullptr, dg.data(), f.s.data(), f.idx.data(),
                             router_scale ? f.rs.data() : nullptr, N, E, k, norm, scaling, ctx);
    router_scores_backward<T>(dz.data(), ds.data(), f.s.data(), N, E,
                              softmax ? ScoreFunc::softmax : ScoreFunc::sigmoid, ctx);
    Vecs g = {widen(dz), {}};
    if (router_scale) g.push_back(widen(drs));
    return g;
  }
};

class Router : public ::testing::TestWithParam<RouterCase> {};
TEST_P(Router, MatchesReferenceAndGradients) { check_op(GetParam()); }
INSTANTIATE_TEST_SUITE_P(
    Ops, Router,
    ::testing::Values(
        RouterCase{7, 8, 2, TopkMethod::greedy, 1, 1, false, true, false, 2.5, {}, "greedy_sigmoid_norm"},
        RouterCase{5, 6, 3, TopkMethod::greedy, 1, 1, true, false, false, 1.0, {}, "greedy_softmax"},
        RouterCase{4, 5, 5, TopkMethod::greedy, 1, 1, false, true, false, 1.0, {}, "k_equals_e"},
        RouterCase{6, 12, 3, TopkMethod::group_limited, 4, 2, false, true, false, 2.5, {}, "group_limited"},
        RouterCase{6, 4, 2, TopkMethod::group_limited, 4, 2, false, true, false, 1.0, {}, "one_expert_groups"},
        RouterCase{5, 12, 4, TopkMethod::moge, 4, 1, true, false, true, 1.0, {}, "moge_router_scale"},
        RouterCase{5, 8, 2, TopkMethod::greedy, 1, 1, false, true, true, 2.0, {}, "greedy_router_scale"}),
    [](const auto& info) { return info.param.name(); });

// Selection against the reference on random scores, and exact ties broken by the lower index.
TEST(Topk, SelectionMatchesReferenceAndBreaksTiesLow) {
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
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
    std::vector<int32_t> idx(N * k);
    router_topk<double>(idx.data(), nullptr, s.data(), bias.data(), N, E, sp.spec, ctx);
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> b(E);
      for (int64_t e = 0; e < E; ++e) b[e] = s[n * E + e] + bias[e];
      std::vector<int32_t> want = ref::select_experts(b, k, int(sp.spec.method), sp.spec.n_group, sp.spec.topk_group);
      std::vector<int32_t> got(idx.begin() + n * k, idx.begin() + (n + 1) * k);
      EXPECT_EQ(got, want) << "token " << n << " method " << int(sp.spec.method);
    }
  }
  // all-equal scores: the lowest indices win
  std::vector<float> flat(8, 0.5f);
  std::vector<int32_t> idx(3);
  router_topk<float>(idx.data(), nullptr, flat.data(), nullptr, 1, 8, {TopkMethod::greedy, 3, 1, 1}, ctx);
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1, 2}));
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
  struct Plan {
    std::vector<int32_t> offsets, row_pair, pair_row;
    int64_t R;
  };
  Plan plan() const {
    Plan p{std::vector<int32_t>(E + 1), std::vector<int32_t>(N * k), std::vector<int32_t>(N * k), 0};
    Workspace ws;
    routing_permutation(p.offsets.data(), p.row_pair.data(), p.pair_row.data(), idx.data(),
                        keep.empty() ? nullptr : keep.data(), N, k, E, Ctx::cpu(&ws));
    p.R = p.offsets[E];
    return p;
  }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Plan p = plan();
    std::vector<T> x = to<T>(in[0]), W = to<T>(in[1]), g = to<T>(in[2]);
    std::vector<T> xp(p.R * n_in), yp(p.R * n_out), y(N * n_out);
    permute_rows_forward<T>(xp.data(), x.data(), p.row_pair.data(), p.R, k, n_in, ctx);
    grouped_linear_forward<T>(yp.data(), xp.data(), n_in, W.data(), n_out * n_in, p.offsets.data(), E, n_in,
                              n_out, ctx);
    combine_rows_forward<T>(y.data(), yp.data(), g.data(), p.pair_row.data(), N, k, n_out, false, ctx);
    return {widen(y)};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Plan p = plan();
    std::vector<T> x = to<T>(in[0]), W = to<T>(in[1]), g = to<T>(in[2]), dy = to<T>(dout[0]);
    std::vector<T> xp(p.R * n_in), yp(p.R * n_out);
    permute_rows_forward<T>(xp.data(), x.data(), p.row_pair.data(), p.R, k, n_in, ctx);
    grouped_linear_forward<T>(yp.data(), xp.data(), n_in, W.data(), n_out * n_in, p.offsets.data(), E, n_in,
                              n_out, ctx);
    std::vector<T> dyp(p.R * n_out), dg(N * k), dxp(p.R * n_in), dW(W.size(), T(0)), dx(N * n_in);
    combine_rows_backward<T>(dyp.data(), dg.data(), dy.data(), yp.data(), g.data(), p.pair_row.data(), N, k,
                             n_out, ctx);
    grouped_linear_backward<T>(dxp.data(), dW.data(), dyp.data(), xp.data(), n_in, W.data(), n_out * n_in,
                               p.offsets.data(), E, n_in, n_out, ctx);
    permute_rows_backward<T>(dx.data(), dxp.data(), p.pair_row.data(), N, k, n_in, false, ctx);
    return {widen(dx), widen(dW), widen(dg)};
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
TEST_P(Dispatch, MatchesReferenceAndGradients) { check_op(GetParam()); }
INSTANTIATE_TEST_SUITE_P(
    Ops, Dispatch,
    ::testing::Values(
        DispatchCase{1, 1, 1, 3, 2, {0}, {}, {}, "single"},
        DispatchCase{9, 4, 2, 7, 5, round_robin(9, 2, 4), {}, {}, "dropless"},
        DispatchCase{8, 5, 2, 6, 3, round_robin(8, 2, 5, 2), {}, {}, "empty_expert"},
        DispatchCase{6, 3, 3, 5, 4, round_robin(6, 3, 3), {}, {}, "k_equals_e"},
        DispatchCase{7, 4, 2, 5, 6, round_robin(7, 2, 4), {1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 0}, {}, "drops"}),
    [](const auto& info) { return info.param.name(); });

TEST(RoutingPermutation, StableAndCounted) {
  // 4 tokens, k=2, 3 experts; pair 5 dropped
  std::vector<int32_t> expert = {2, 0, 0, 1, 2, 0, 1, 2};
  std::vector<uint8_t> keep = {1, 1, 1, 1, 1, 0, 1, 1};
  std::vector<int32_t> offsets(4), row_pair(8), pair_row(8);
  Workspace ws;
  routing_permutation(offsets.data(), row_pair.data(), pair_row.data(), expert.data(), keep.data(), 4, 2, 3,
                      Ctx::cpu(&ws));
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
