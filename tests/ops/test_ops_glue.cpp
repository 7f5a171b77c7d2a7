// The ops between the big ones (ops/elementwise.h, ops/moe_stats.h, capacity selection, the
// masked softmax of decoding), and determinism: every op that reduces gives the same bits for
// any thread count (CPU) and run after run (CUDA). Compiled into `unit` and, with
// UM_TEST_DEVICE, into `cuda`.
#include <cstring>

#include "op_harness.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/grouped_gemm.h"
#include "ops/moe_stats.h"
#include "ops/permute.h"
#include "ops/ref/reference.h"
#include "ops/rmsnorm.h"
#include "ops/router.h"
#include "ops/softmax.h"

namespace um::test {
namespace {

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

// ---------------------------------------------------------------------------------------------
// MLA's per-head K and V from the up-projection and the one shared rope key.
struct MlaKvCase {
  int64_t N, H, nope, rd, dv, kv_lora;
  Tolerance tol;
  std::string name() const { return "mla_kv_" + std::to_string(N) + "x" + std::to_string(H); }
  int64_t kvw() const { return kv_lora + rd; }
  std::vector<Input> inputs(const Philox& rng) const {
    return {{"kv", normals(rng, 0, N * H * (nope + dv))}, {"kva", normals(rng, 1 << 20, N * kvw())}};
  }
  Vecs reference(const Vecs& in) const {
    auto [k, v] = ref::mla_kv(in[0], in[1], N, H, nope, rd, dv, kv_lora);
    return {k, v};
  }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Buf<T> kv(ctx, in[0]), kva(ctx, in[1]), k(ctx, N * H * (nope + rd)), v(ctx, N * H * dv);
    mla_kv_assemble_forward<T>(k.ptr(), v.ptr(), kv.ptr(), kva.ptr(), N, int(H), int(nope), int(rd), int(dv), kvw(),
                               kv_lora, ctx);
    return {k.get(), v.get()};
  }
  template <class T>
  Vecs backward(const Vecs&, const Vecs& dout, const Ctx& ctx) const {
    Buf<T> dk(ctx, dout[0]), dv_(ctx, dout[1]), dkv(ctx, N * H * (nope + dv)), dkva(ctx, N * kvw());
    mla_kv_assemble_backward<T>(dkv.ptr(), dkva.ptr(), dk.ptr(), dv_.ptr(), N, int(H), int(nope), int(rd), int(dv),
                                kvw(), kv_lora, ctx);
    return {dkv.get(), dkva.get()};  // dkva's ckv columns stay 0: this op does not read them
  }
};
class MlaKv : public ::testing::TestWithParam<MlaKvCase> {};
TEST_P(MlaKv, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Ops, MlaKv,
                         ::testing::Values(MlaKvCase{1, 1, 2, 2, 3, 4}, MlaKvCase{7, 3, 5, 4, 6, 8},
                                           MlaKvCase{200, 8, 32, 16, 32, 64}),
                         [](const auto& info) { return info.param.name(); });

// ---------------------------------------------------------------------------------------------
// The balance term through balance_counts + moe_router_stats, its gradient through
// balance_backward; a fixed selection, pools of pool_rows rows.
std::vector<int32_t> spread_idx(int64_t N, int k, int64_t E) {
  std::vector<int32_t> idx;
  for (int64_t n = 0; n < N; ++n)
    for (int j = 0; j < k; ++j) idx.push_back(int32_t((n * 5 + j * 3 + (n / 3)) % E));
  return idx;
}

struct BalanceCase {
  static constexpr bool kAccOnly = true;
  int64_t N, E;
  int k;
  int64_t pool_rows;
  bool softmax;
  Tolerance tol;
  std::string name() const {
    return std::string("balance_") + (softmax ? "softmax_" : "sigmoid_") + std::to_string(N) + "x" + std::to_string(E);
  }
  std::vector<Input> inputs(const Philox& rng) const {
    std::vector<double> s = normals(rng, 0, N * E, 0.2, 0.5);  // positive, like scores
    if (softmax)
      for (int64_t n = 0; n < N; ++n) {  // rows summing to 1
        double t = 0;
        for (int64_t e = 0; e < E; ++e) t += s[n * E + e];
        for (int64_t e = 0; e < E; ++e) s[n * E + e] /= t;
      }
    return {{"s", s}};
  }
  ScoreFunc func() const { return softmax ? ScoreFunc::softmax : ScoreFunc::sigmoid; }
  Vecs reference(const Vecs& in) const {
    return {{ref::balance_term(in[0], spread_idx(N, k, E), N, E, k, pool_rows, softmax)}};
  }
  template <class T>
  struct Stats {
    Buf<T> fpool;
    IBuf<int32_t> idx;
  };
  template <class T>
  Stats<T> run(T* s, double* out, const Ctx& ctx) const {
    Stats<T> st{Buf<T>(ctx, N / pool_rows * E), IBuf<int32_t>(ctx, spread_idx(N, k, E))};
    Buf<T> z(ctx, N * E), margin(ctx, N);
    IBuf<int64_t> load(ctx, std::vector<int64_t>(E));
    IBuf<double> stats(ctx, std::vector<double>(4));
    balance_counts<T>(st.fpool.ptr(), st.idx.ptr(), N, k, E, pool_rows, ctx);
    moe_router_stats<T>(stats.ptr(), load.ptr(), st.fpool.ptr(), s, z.ptr(), st.idx.ptr(), margin.ptr(), N, k, E,
                        pool_rows, 1, func(), ctx);
    *out = stats.get()[0];
    return st;
  }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Buf<T> s(ctx, in[0]);
    double b = 0;
    run<T>(s.ptr(), &b, ctx);
    return {{b}};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Buf<T> s(ctx, in[0]), ds(ctx, N * E);
    double b = 0;
    Stats<T> st = run<T>(s.ptr(), &b, ctx);
    balance_backward<T>(ds.ptr(), s.ptr(), st.fpool.ptr(), N, E, pool_rows, 1, dout[0][0], func(), ctx);
    return {ds.get()};
  }
};
class Balance : public ::testing::TestWithParam<BalanceCase> {};
TEST_P(Balance, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Ops, Balance,
                         ::testing::Values(BalanceCase{6, 4, 2, 3, false}, BalanceCase{6, 4, 2, 6, true},
                                           BalanceCase{400, 16, 4, 100, false}),
                         [](const auto& info) { return info.param.name(); });

// ---------------------------------------------------------------------------------------------
// The router z-loss: sum_n lse(z_n)^2 from moe_router_stats, its gradient from z_loss_backward.
struct ZLossCase {
  static constexpr bool kAccOnly = true;
  int64_t N, E;
  Tolerance tol;
  std::string name() const { return "z_loss_" + std::to_string(N) + "x" + std::to_string(E); }
  std::vector<Input> inputs(const Philox& rng) const { return {{"z", normals(rng, 0, N * E, 2.0)}}; }
  Vecs reference(const Vecs& in) const { return {{ref::z_loss(in[0], N, E)}}; }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Buf<T> z(ctx, in[0]), s(ctx, N * E, 1.0 / double(E)), fpool(ctx, E), margin(ctx, N);
    IBuf<int32_t> idx(ctx, std::vector<int32_t>(N, 0));
    IBuf<int64_t> load(ctx, std::vector<int64_t>(E));
    IBuf<double> stats(ctx, std::vector<double>(4));
    balance_counts<T>(fpool.ptr(), idx.ptr(), N, 1, E, N, ctx);
    moe_router_stats<T>(stats.ptr(), load.ptr(), fpool.ptr(), s.ptr(), z.ptr(), idx.ptr(), margin.ptr(), N, 1, E, N, 1,
                        ScoreFunc::softmax, ctx);
    return {{stats.get()[2]}};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Buf<T> z(ctx, in[0]), dz(ctx, N * E);
    z_loss_backward<T>(dz.ptr(), z.ptr(), N, E, dout[0][0], ctx);
    return {dz.get()};
  }
};
class ZLoss : public ::testing::TestWithParam<ZLossCase> {};
TEST_P(ZLoss, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Ops, ZLoss, ::testing::Values(ZLossCase{1, 1}, ZLossCase{9, 7}, ZLossCase{500, 64}),
                         [](const auto& info) { return info.param.name(); });

// ---------------------------------------------------------------------------------------------
// The statistics moe_router_stats reports besides the balance term: loads, entropy, margin.
TEST(RouterStats, LoadsEntropyAndMargin) {
  BackendCtx b;
  const int64_t N = 50, E = 6, pr = 25;
  const int k = 2;
  Philox rng(4, "router-stats");
  std::vector<double> s = normals(rng, 0, N * E, 0.1, 0.5), margin = normals(rng, 1000, N, 1.0, 3.0);
  const std::vector<int32_t> idx = spread_idx(N, k, E);
  Buf<float> ds(b.ctx, s), dz(b.ctx, N * E), dm(b.ctx, margin), fpool(b.ctx, N / pr * E);
  IBuf<int32_t> di(b.ctx, idx);
  IBuf<int64_t> load(b.ctx, std::vector<int64_t>(E));
  IBuf<double> stats(b.ctx, std::vector<double>(4));
  balance_counts<float>(fpool.ptr(), di.ptr(), N, k, E, pr, b.ctx);
  moe_router_stats<float>(stats.ptr(), load.ptr(), fpool.ptr(), ds.ptr(), dz.ptr(), di.ptr(), dm.ptr(), N, k, E, pr, 1,
                          ScoreFunc::sigmoid, b.ctx);
  std::vector<int64_t> want_load(E, 0);
  for (int32_t e : idx) ++want_load[e];
  EXPECT_EQ(load.get(), want_load);
  double entropy = 0, mmin = 1e300;
  for (int64_t n = 0; n < N; ++n) {
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += float(s[n * E + e]);
    for (int64_t e = 0; e < E; ++e) {
      const double p = float(s[n * E + e]) / sum;
      entropy -= p * std::log(p);
    }
    mmin = std::min(mmin, double(float(margin[n])));
  }
  const std::vector<double> st = stats.get();
  EXPECT_NEAR(st[1], entropy, 1e-5 * entropy);
  EXPECT_EQ(st[3], mmin);
  EXPECT_NEAR(st[2], double(N) * std::pow(std::log(double(E)), 2), 1e-4);  // z = 0: lse = log E
}

// Capacity: per expert the C best pairs by score, ties to the lower token.
TEST(Capacity, KeepsTheBestPairsPerExpert) {
  BackendCtx b;
  const int64_t N = 40, E = 5;
  const int k = 2;
  Philox rng(6, "capacity");
  std::vector<double> s(N * E);
  for (int64_t i = 0; i < N * E; ++i) s[i] = std::round(rng.uniform(i) * 4) / 4;  // many ties
  const std::vector<int32_t> idx = spread_idx(N, k, E);
  for (int64_t C : {0, 3, 7, 100}) {
    Buf<float> ds(b.ctx, s);
    IBuf<int32_t> di(b.ctx, idx);
    IBuf<uint8_t> keep(b.ctx, std::vector<uint8_t>(N * k, 7));
    capacity_keep<float>(keep.ptr(), di.ptr(), ds.ptr(), N, k, E, C, b.ctx);
    EXPECT_EQ(keep.get(), ref::capacity_keep(idx, s, N, k, E, C)) << "C = " << C;
  }
}

// Residual adds, strided copies (plain and accumulating), casts and fills.
template <class T>
void check_elementwise(const Ctx& ctx) {
  Philox rng(8, "elementwise");
  const int64_t rows = 37, cols = 11, ld_src = 15, ld_dst = 13;
  const std::vector<double> a = normals(rng, 0, rows * ld_src), c = normals(rng, 5000, rows * ld_dst);
  Buf<T> src(ctx, a), dst(ctx, c);
  copy_rows<T>(dst.ptr(), ld_dst, src.ptr(), ld_src, rows, cols, false, ctx);
  std::vector<double> got = dst.get(), want = Buf<T>(ctx, c).get();
  const std::vector<double> ar = Buf<T>(ctx, a).get();  // a as T
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) want[r * ld_dst + j] = ar[r * ld_src + j];
  EXPECT_EQ(got, want);
  copy_rows<T>(dst.ptr(), ld_dst, src.ptr(), ld_src, rows, cols, true, ctx);  // dst += src
  got = dst.get();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j)
      EXPECT_NEAR(got[r * ld_dst + j], 2 * ar[r * ld_src + j], 1e-2 * std::fabs(ar[r * ld_src + j]) + 1e-6);
  Buf<T> y(ctx, a), x(ctx, c);
  add_inplace<T>(y.ptr(), x.ptr(), int64_t(c.size()), ctx);
  const std::vector<double> ys = y.get(), xr = x.get();
  for (size_t i = 0; i < c.size(); ++i) EXPECT_NEAR(ys[i], ar[i] + xr[i], 1e-2 * (std::fabs(ar[i]) + std::fabs(xr[i])) + 1e-6);
  Buf<acc_t<T>> wide(ctx, a.size());
  cast_to_acc<T>(wide.ptr(), src.ptr(), int64_t(a.size()), ctx);
  EXPECT_EQ(wide.get(), ar);
  Buf<T> narrow(ctx, a.size());
  cast_from_acc<T>(narrow.ptr(), wide.ptr(), int64_t(a.size()), false, ctx);
  EXPECT_EQ(narrow.get(), ar);
  fill<T>(narrow.ptr(), int64_t(a.size()), 0.25, ctx);
  EXPECT_EQ(narrow.get(), std::vector<double>(a.size(), 0.25));
}
TEST(Elementwise, CopiesAddsCastsFills) {
  BackendCtx b;
  check_elementwise<float>(b.ctx);
#ifdef UM_TEST_DEVICE
  check_elementwise<bf16>(b.ctx);
#else
  check_elementwise<double>(b.ctx);
#endif
}

#ifndef UM_TEST_DEVICE
// Decoding's masked softmax (CPU only: inference runs on the CPU).
TEST(MaskedSoftmax, MatchesReference) {
  Workspace ws;
  const Ctx ctx = Ctx::cpu(&ws);
  Philox rng(2, "masked-softmax");
  const int64_t rows = 3, n = 10, lo = 2, hi = 6;
  std::vector<double> S = normals(rng, 0, rows * n, 3.0), want(rows * n, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double m = -1e300, l = 0;
    for (int64_t j = lo; j <= hi; ++j) m = std::max(m, S[r * n + j]);
    for (int64_t j = lo; j <= hi; ++j) l += std::exp(S[r * n + j] - m);
    for (int64_t j = lo; j <= hi; ++j) want[r * n + j] = std::exp(S[r * n + j] - m) / l;
  }
  masked_softmax_rows<double>(S.data(), rows, n, lo, hi, ctx);
  EXPECT_LE(normwise_error(S, want), 1e-14);
}
#endif

// ---------------------------------------------------------------------------------------------
// Determinism. On the CPU: results of the reducing ops at sizes that take the threaded paths,
// with 1 and 2 threads, bit for bit. On CUDA: two runs, bit for bit.
template <class T>
struct Bits {
  std::vector<std::vector<T>> out;
  // index of the first output (of the first n) that differs, -1 when every bit agrees
  int differs(const Bits& o, size_t n = 1000) const {
    if (out.size() != o.out.size()) return 0;
    for (size_t i = 0; i < std::min(n, out.size()); ++i)
      if (out[i].size() != o.out[i].size() ||
          std::memcmp(out[i].data(), o.out[i].data(), out[i].size() * sizeof(T)) != 0)
        return int(i);
    return -1;
  }
};

// One pass of every reducing op on fixed inputs; what each wrote, as raw values, in this order:
// dg (RMSNorm), dW (embedding), dW (experts), dW (LM head), dh (LM head), dk, dv, dq (attention).
template <class T>
Bits<acc_t<T>> reducing_ops(const Ctx& ctx) {
  using A = acc_t<T>;
  Philox rng(12, "determinism");
  const int64_t N = 1024, D = 96, V = 300, E = 16, K = 4, F = 32, B = 2, Tl = 256, H = 2, dqk = 32, dv = 16;
  Bits<A> r;
  auto take = [&](Buf<A>& b) {
    std::vector<double> v = b.get();
    r.out.emplace_back(v.begin(), v.end());
  };
  auto takeT = [&](Buf<T>& b) {
    std::vector<double> v = b.get();
    r.out.emplace_back(v.begin(), v.end());
  };
  {  // RMSNorm gain gradient
    Buf<T> x(ctx, normals(rng, 0, N * D)), dy(ctx, normals(rng, 1 << 20, N * D)), y(ctx, N * D), dx(ctx, N * D);
    Buf<A> g(ctx, D, 1.0), rstd(ctx, N), dg(ctx, D);
    rmsnorm_forward<T>(y.ptr(), D, rstd.ptr(), x.ptr(), D, g.ptr(), N, D, 1e-6, ctx);
    rmsnorm_backward<T>(dx.ptr(), D, dg.ptr(), dy.ptr(), D, x.ptr(), D, g.ptr(), rstd.ptr(), N, D, false, ctx);
    take(dg);
  }
  {  // embedding gradient with repeated ids
    std::vector<int32_t> ids(N), rows(N), start(N + 1), id(N), count(V);
    for (int64_t n = 0; n < N; ++n) ids[n] = int32_t((n * 7) % V);
    const int64_t n_ids = group_tokens_by_id(rows.data(), start.data(), id.data(), count.data(), ids.data(), N, V);
    start.resize(n_ids + 1), id.resize(n_ids);
    IBuf<int32_t> d_ids(ctx, ids), d_rows(ctx, rows), d_start(ctx, start), d_id(ctx, id);
    Buf<T> dy(ctx, normals(rng, 2 << 20, N * D));
    Buf<A> dW(ctx, V * D);
    embedding_backward<T>(dW.ptr(), dy.ptr(), d_ids.ptr(), TokensById{d_rows.ptr(), d_start.ptr(), d_id.ptr(), n_ids},
                          N, D, ctx);
    take(dW);
  }
  {  // expert weight gradients (grouped), LM head weight gradient
    std::vector<int32_t> off(E + 1);
    for (int64_t e = 0; e <= E; ++e) off[e] = int32_t(e * N * K / E);
    Buf<T> X(ctx, normals(rng, 3 << 20, N * K * D)), dY(ctx, normals(rng, 4 << 20, N * K * F)),
        W(ctx, normals(rng, 5 << 20, E * F * D)), dX(ctx, N * K * D);
    Buf<A> dW(ctx, E * F * D);
    grouped_linear_backward<T>(dX.ptr(), dW.ptr(), dY.ptr(), X.ptr(), D, W.ptr(), F * D, off.data(), E, D, F, ctx);
    take(dW);
    Buf<T> h(ctx, normals(rng, 6 << 20, N * D)), Wh(ctx, normals(rng, 7 << 20, V * D, 0.1)), dh(ctx, N * D);
    Buf<A> dWh(ctx, V * D);
    std::vector<int32_t> t(N);
    for (int64_t n = 0; n < N; ++n) t[n] = int32_t((n * 3) % V);
    IBuf<int32_t> tt(ctx, t);
    lm_head_cross_entropy<T>(dh.ptr(), dWh.ptr(), nullptr, nullptr, h.ptr(), Wh.ptr(), tt.ptr(), N, D, V, 0.1, ctx);
    take(dWh);
    takeT(dh);
  }
  {  // attention gradients (keys sum over queries)
    std::vector<int32_t> ss(B * Tl);
    for (int64_t i = 0; i < B * Tl; ++i) ss[i] = int32_t((i % Tl) < 100 ? 0 : 100);
    IBuf<int32_t> seg(ctx, ss);
    Buf<T> q(ctx, normals(rng, 8 << 20, B * Tl * H * dqk)), k(ctx, normals(rng, 9 << 20, B * Tl * H * dqk)),
        v(ctx, normals(rng, 10 << 20, B * Tl * H * dv)), dO(ctx, normals(rng, 11 << 20, B * Tl * H * dv)),
        o(ctx, B * Tl * H * dv), dq(ctx, B * Tl * H * dqk), dk(ctx, B * Tl * H * dqk), dvv(ctx, B * Tl * H * dv);
    Buf<A> lse(ctx, B * H * Tl);
    const double sc = 1.0 / std::sqrt(double(dqk));
    attention_forward<T>(o.ptr(), lse.ptr(), q.ptr(), k.ptr(), v.ptr(), seg.ptr(), B, Tl, int(H), int(dqk), int(dv), sc,
                         ctx);
    attention_backward<T>(dq.ptr(), dk.ptr(), dvv.ptr(), dO.ptr(), o.ptr(), lse.ptr(), q.ptr(), k.ptr(), v.ptr(),
                          seg.ptr(), B, Tl, int(H), int(dqk), int(dv), sc, ctx);
    takeT(dk);
    takeT(dvv);
    takeT(dq);
  }
  return r;
}

TEST(Determinism, ReducingOpsGiveTheSameBits) {
#ifdef UM_TEST_DEVICE
  BackendCtx b;
  EXPECT_EQ(reducing_ops<float>(b.ctx).differs(reducing_ops<float>(b.ctx)), -1);
  EXPECT_EQ(reducing_ops<bf16>(b.ctx).differs(reducing_ops<bf16>(b.ctx)), -1);
#else
  Workspace ws;
  Ctx one = Ctx::cpu(&ws), two = Ctx::cpu(&ws), three = Ctx::cpu(&ws);
  one.n_threads = 1;
  two.n_threads = 2;
  three.n_threads = 3;
  const Bits<float> b1 = reducing_ops<float>(one), b2 = reducing_ops<float>(two), b3 = reducing_ops<float>(three);
  EXPECT_EQ(b2.differs(b3), -1);
  // Attention's CPU backward calls BLAS inside its tasks: in a team of one thread OpenBLAS is not
  // inside a parallel region and threads those calls itself, so its bits depend on whether the
  // op runs on one thread or on several (any count from 2 agrees). The other ops do not.
  EXPECT_EQ(b1.differs(b2, 5), -1);
#endif
}

}  // namespace
}  // namespace um::test
