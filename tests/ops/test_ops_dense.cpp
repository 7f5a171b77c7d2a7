// Dense ops: linear, RMSNorm, RoPE, SwiGLU, embedding, attention, fused LM head + CE.
// Each case: shapes, every dtype, tolerances in op_harness.h (loosened ones say why). Compiled
// twice: into `unit` (CPU checks) and, with UM_TEST_DEVICE, into `cuda` (the backend axis:
// CUDA f32 and bf16 against the reference and the CPU); tests that are CPU-only properties sit
// under #ifndef UM_TEST_DEVICE.
#include <map>
#include <numeric>

#include "op_harness.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/ref/reference.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

namespace um::test {
namespace {

// ---------------------------------------------------------------------------------------------
struct LinearCase {
  int64_t N, n_in, n_out, pad;  // pad > 0: x, y, dx live in wider rows (row stride width + pad)
  Tolerance tol;
  std::string name() const {
    return "linear_" + std::to_string(N) + "x" + std::to_string(n_in) + "x" +
           std::to_string(n_out) + (pad ? "_strided" : "");
  }
  std::vector<Input> inputs(const Philox& rng) const {
    return {{"x", normals(rng, 0, N * n_in)}, {"W", normals(rng, 1 << 20, n_out * n_in, 0.3)}};
  }
  Vecs reference(const Vecs& in) const { return {ref::linear(in[0], in[1], N, n_in, n_out)}; }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    const int64_t ldx = n_in + pad, ldy = n_out + pad;
    std::vector<double> xs(N * ldx, 99.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < n_in; ++i) xs[n * ldx + i] = in[0][n * n_in + i];
    Buf<T> x(ctx, xs), W(ctx, in[1]), y(ctx, N * ldy, -7.0);
    linear_forward<T>(y.ptr(), ldy, x.ptr(), ldx, W.ptr(), N, n_in, n_out, ctx);
    const std::vector<double> yh = y.get();
    std::vector<double> out(N * n_out);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < n_out; ++o) out[n * n_out + o] = yh[n * ldy + o];
    for (int64_t n = 0; n < N; ++n)  // the padding must be untouched
      for (int64_t o = n_out; o < ldy; ++o) EXPECT_EQ(yh[n * ldy + o], -7.0);
    return {out};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Buf<T> x(ctx, in[0]), W(ctx, in[1]), dy(ctx, dout[0]), dx(ctx, N * n_in);
    Buf<acc_t<T>> dW(ctx, n_out * n_in);
    linear_backward<T>(dx.ptr(), n_in, dW.ptr(), dy.ptr(), n_out, x.ptr(), n_in, W.ptr(), N,
                       n_in, n_out, false, ctx);
    // accumulate_dx adds to what is there
    Buf<T> dx2(ctx, N * n_in, 1.0);
    linear_backward<T>(dx2.ptr(), n_in, nullptr, dy.ptr(), n_out, x.ptr(), n_in, W.ptr(), N,
                       n_in, n_out, true, ctx);
    const std::vector<double> a = dx.get(), b = dx2.get();
    const bool narrow = std::is_same_v<T, bf16>;
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i] + 1, narrow ? 2e-2 * (1 + std::fabs(a[i])) : 1e-5);
    return {a, dW.get()};
  }
};

class Linear : public ::testing::TestWithParam<LinearCase> {};
TEST_P(Linear, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Ops, Linear,
                         ::testing::Values(LinearCase{1, 1, 1, 0}, LinearCase{7, 13, 5, 0},
                                           LinearCase{33, 17, 65, 3}, LinearCase{64, 48, 40, 0}),
                         [](const auto& info) { return info.param.name(); });

// ---------------------------------------------------------------------------------------------
struct RmsNormCase {
  int64_t N, D;
  Tolerance tol;
  double eps = 1e-5;  // D = 1 uses a large eps: with eps << x^2 the output is sign(x) and the
                      // gradient ~eps/|x|^3 is too small to check against finite differences
  std::string name() const { return "rmsnorm_" + std::to_string(N) + "x" + std::to_string(D); }
  std::vector<Input> inputs(const Philox& rng) const {
    return {{"x", normals(rng, 0, N * D)}, {"g", normals(rng, 1 << 20, D, 0.5, 1.0)}};
  }
  Vecs reference(const Vecs& in) const { return {ref::rmsnorm(in[0], in[1], N, D, eps)}; }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Buf<T> x(ctx, in[0]), y(ctx, N * D);
    Buf<acc_t<T>> g(ctx, in[1]), rstd(ctx, N);
    rmsnorm_forward<T>(y.ptr(), D, rstd.ptr(), x.ptr(), D, g.ptr(), N, D, eps, ctx);
    return {y.get()};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Buf<T> x(ctx, in[0]), y(ctx, N * D), dy(ctx, dout[0]), dx(ctx, N * D);
    Buf<acc_t<T>> g(ctx, in[1]), rstd(ctx, N), dg(ctx, D);
    rmsnorm_forward<T>(y.ptr(), D, rstd.ptr(), x.ptr(), D, g.ptr(), N, D, eps, ctx);
    rmsnorm_backward<T>(dx.ptr(), D, dg.ptr(), dy.ptr(), D, x.ptr(), D, g.ptr(), rstd.ptr(), N, D,
                        false, ctx);
    return {dx.get(), dg.get()};
  }
};

class RmsNorm : public ::testing::TestWithParam<RmsNormCase> {};
TEST_P(RmsNorm, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Ops, RmsNorm,
                         ::testing::Values(RmsNormCase{1, 1, {}, 0.5}, RmsNormCase{1, 8},
                                           RmsNormCase{5, 37}, RmsNormCase{130, 24},
                                           // above the threads' threshold: the threaded paths
                                           RmsNormCase{700, 96}),
                         [](const auto& info) { return info.param.name(); });

#ifndef UM_TEST_DEVICE
// dg must not depend on the thread count (fixed row blocks, summed in order).
TEST(RmsNormDeterminism, SameGradientForAnyThreadCount) {
  const int64_t N = 300, D = 40;
  Philox rng(5, "rmsnorm-det");
  std::vector<float> x(N * D), dy(N * D), g(D, 1.0f), y(N * D), rstd(N);
  for (int64_t i = 0; i < N * D; ++i) x[i] = float(rng.normal(i)), dy[i] = float(rng.normal(i + N * D));
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2, 3}) {
    Workspace ws;
    Ctx ctx = Ctx::cpu(&ws);
    ctx.n_threads = threads;
    rmsnorm_forward<float>(y.data(), D, rstd.data(), x.data(), D, g.data(), N, D, 1e-6, ctx);
    std::vector<float> dx(N * D), dg(D, 0.0f);
    rmsnorm_backward<float>(dx.data(), D, dg.data(), dy.data(), D, x.data(), D, g.data(),
                            rstd.data(), N, D, false, ctx);
    results.push_back(dg);
  }
  EXPECT_EQ(results[0], results[1]);
  EXPECT_EQ(results[0], results[2]);
}
#endif

// ---------------------------------------------------------------------------------------------
// RoPE on the last d dims of each head of width nope + d (as MLA lays out q), positions given
// per token; the nope part must pass through untouched.
struct RopeCase {
  int64_t N, H, nope, d;
  std::vector<int32_t> pos;
  Tolerance tol;
  double theta = 10000.0;
  std::string name() const {
    return "rope_" + std::to_string(N) + "x" + std::to_string(H) + "x" + std::to_string(nope) +
           "_" + std::to_string(d);
  }
  int64_t width() const { return nope + d; }
  // cos/sin tables up to the largest position, in the accumulation type on ctx's device
  template <class A>
  std::pair<Buf<A>, Buf<A>> tables(const Ctx& ctx) const {
    const int32_t max_pos = *std::max_element(pos.begin(), pos.end()) + 1;
    std::vector<double> c(max_pos * d / 2), s(max_pos * d / 2);
    rope_tables<double>(c.data(), s.data(), max_pos, int(d), theta);
    return {Buf<A>(ctx, c), Buf<A>(ctx, s)};
  }
  std::vector<Input> inputs(const Philox& rng) const { return {{"x", normals(rng, 0, N * H * width())}}; }
  Vecs reference(const Vecs& in) const {
    // extract the rope part, rotate with the fp64 reference, put it back
    std::vector<double> part(N * H * d), y = in[0];
    for (int64_t i = 0; i < N * H; ++i)
      for (int64_t j = 0; j < d; ++j) part[i * d + j] = in[0][i * width() + nope + j];
    std::vector<double> rot = ref::rope(part, pos, N, H, d, theta);
    for (int64_t i = 0; i < N * H; ++i)
      for (int64_t j = 0; j < d; ++j) y[i * width() + nope + j] = rot[i * d + j];
    return {y};
  }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Buf<T> x(ctx, in[0]);
    auto [c, s] = tables<acc_t<T>>(ctx);
    IBuf<int32_t> p(ctx, pos);
    rope_forward<T>(x.ptr() + nope, x.ptr() + nope, p.ptr(), c.ptr(), s.ptr(), N, int(H),
                    H * width(), width(), int(d), ctx);  // in place
    return {x.get()};
  }
  template <class T>
  Vecs backward(const Vecs&, const Vecs& dout, const Ctx& ctx) const {
    Buf<T> dx(ctx, dout[0]);
    auto [c, s] = tables<acc_t<T>>(ctx);
    IBuf<int32_t> p(ctx, pos);
    rope_backward<T>(dx.ptr() + nope, dx.ptr() + nope, p.ptr(), c.ptr(), s.ptr(), N,
                     int(H), H * width(), width(), int(d), ctx);
    return {dx.get()};
  }
};

std::vector<int32_t> doc_positions(const std::vector<int>& doc_lengths) {
  std::vector<int32_t> pos;
  for (int len : doc_lengths)
    for (int i = 0; i < len; ++i) pos.push_back(i);
  return pos;
}

class Rope : public ::testing::TestWithParam<RopeCase> {};
TEST_P(Rope, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(
    Ops, Rope,
    ::testing::Values(RopeCase{1, 1, 0, 2, {0}}, RopeCase{6, 2, 0, 8, doc_positions({6})},
                      RopeCase{9, 3, 5, 6, doc_positions({4, 2, 3})},
                      // angles up to 1.3e5 rad carry ~1e-11 absolute error in any fp64 formula
                      RopeCase{4, 1, 3, 64, {0, 1000, 50000, 131071}, {1e-10}},
                      RopeCase{600, 4, 8, 16, doc_positions({200, 100, 300})}),
    [](const auto& info) { return info.param.name(); });

#ifndef UM_TEST_DEVICE
// A rotation by pos then by -pos is the identity; and q.k after RoPE depends only on the
// position difference (the property design.md 1.10 says to test where positions enter RoPE).
TEST(RopeProperties, RelativePositionInvariance) {
  const int d = 16;
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  std::vector<double> c(200 * d / 2), s(200 * d / 2);
  rope_tables<double>(c.data(), s.data(), 200, d, 10000.0);
  Philox rng(3, "rope-rel");
  std::vector<double> q = normals(rng, 0, d), k = normals(rng, 100, d);
  auto dot_at = [&](int32_t pq, int32_t pk) {
    std::vector<double> a = q, b = k;
    rope_forward<double>(a.data(), a.data(), &pq, c.data(), s.data(), 1, 1, d, d, d, ctx);
    rope_forward<double>(b.data(), b.data(), &pk, c.data(), s.data(), 1, 1, d, d, d, ctx);
    double r = 0;
    for (int i = 0; i < d; ++i) r += a[i] * b[i];
    return r;
  };
  EXPECT_NEAR(dot_at(10, 3), dot_at(107, 100), 1e-12);
  EXPECT_GT(std::fabs(dot_at(10, 3) - dot_at(10, 4)), 1e-6);  // and positions do matter
}
#endif

// ---------------------------------------------------------------------------------------------
struct SwigluCase {
  int64_t N, F;
  Tolerance tol;
  std::string name() const { return "swiglu_" + std::to_string(N) + "x" + std::to_string(F); }
  std::vector<Input> inputs(const Philox& rng) const { return {{"gu", normals(rng, 0, N * 2 * F, 2.0)}}; }
  Vecs reference(const Vecs& in) const { return {ref::swiglu(in[0], N, F)}; }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Buf<T> gu(ctx, in[0]), h(ctx, N * F);
    swiglu_forward<T>(h.ptr(), gu.ptr(), N, F, ctx);
    return {h.get()};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Buf<T> gu(ctx, in[0]), dh(ctx, dout[0]), dgu(ctx, N * 2 * F);
    swiglu_backward<T>(dgu.ptr(), dh.ptr(), gu.ptr(), N, F, ctx);
    return {dgu.get()};
  }
};

class Swiglu : public ::testing::TestWithParam<SwigluCase> {};
TEST_P(Swiglu, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Ops, Swiglu,
                         ::testing::Values(SwigluCase{1, 1}, SwigluCase{3, 17}, SwigluCase{64, 48},
                                           SwigluCase{300, 128}),
                         [](const auto& info) { return info.param.name(); });

// n ids in [0, V), repeated ones among them
std::vector<int32_t> many_ids(int n, int V) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(int32_t((i * 37 + i / 7) % V));
  return ids;
}

// ---------------------------------------------------------------------------------------------
struct EmbeddingCase {
  int64_t V, D;
  std::vector<int32_t> ids;
  Tolerance tol;
  std::string name() const {
    return "embedding_" + std::to_string(ids.size()) + "x" + std::to_string(V) + "x" + std::to_string(D);
  }
  std::vector<Input> inputs(const Philox& rng) const { return {{"W", normals(rng, 0, V * D)}}; }
  Vecs reference(const Vecs& in) const { return {ref::embedding(ids, in[0], D)}; }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Buf<T> W(ctx, in[0]), y(ctx, ids.size() * D);
    IBuf<int32_t> id(ctx, ids);
    embedding_forward<T>(y.ptr(), id.ptr(), W.ptr(), int64_t(ids.size()), D, ctx);
    return {y.get()};
  }
  template <class T>
  Vecs backward(const Vecs&, const Vecs& dout, const Ctx& ctx) const {
    const int64_t N = int64_t(ids.size());
    std::vector<int32_t> rows(N), start(N + 1), id(N), count(V);
    const int64_t n_ids = group_tokens_by_id(rows.data(), start.data(), id.data(), count.data(), ids.data(), N, V);
    start.resize(n_ids + 1), id.resize(n_ids);
    IBuf<int32_t> d_ids(ctx, ids), d_rows(ctx, rows), d_start(ctx, start), d_id(ctx, id);
    Buf<T> dy(ctx, dout[0]);
    Buf<acc_t<T>> dW(ctx, V * D);
    embedding_backward<T>(dW.ptr(), dy.ptr(), d_ids.ptr(), TokensById{d_rows.ptr(), d_start.ptr(), d_id.ptr(), n_ids},
                          N, D, ctx);
    return {dW.get()};
  }
};

class Embedding : public ::testing::TestWithParam<EmbeddingCase> {};
TEST_P(Embedding, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(
    Ops, Embedding,
    ::testing::Values(EmbeddingCase{1, 1, {0}}, EmbeddingCase{7, 5, {3, 3, 0, 6, 3}},
                      EmbeddingCase{11, 37, {10, 2, 2, 9, 0, 0, 0, 4, 5, 10, 1, 7, 7}},
                      EmbeddingCase{50, 700, many_ids(400, 50)}),
    [](const auto& info) { return info.param.name(); });

// ---------------------------------------------------------------------------------------------
// Attention: B sequences, each cut into documents of the given lengths.
struct AttentionCase {
  int64_t B, T, H, dqk, dv;
  std::vector<std::vector<int>> docs;  // per sequence, document lengths summing to T
  Tolerance tol;
  std::string label;
  std::string name() const { return "attention_" + label; }
  std::vector<int32_t> doc_ids() const {
    std::vector<int32_t> id;
    int32_t next = 0;
    for (const auto& seq : docs)
      for (int len : seq) {
        for (int i = 0; i < len; ++i) id.push_back(next);
        ++next;
      }
    return id;
  }
  std::vector<int32_t> seg_start() const {
    std::vector<int32_t> ss;
    for (const auto& seq : docs) {
      int32_t start = 0;
      for (int len : seq) {
        for (int i = 0; i < len; ++i) ss.push_back(start);
        start += len;
      }
    }
    return ss;
  }
  double scale() const { return 1.0 / std::sqrt(double(dqk)); }
  std::vector<Input> inputs(const Philox& rng) const {
    const int64_t N = B * T;
    return {{"q", normals(rng, 0, N * H * dqk)},
            {"k", normals(rng, 1 << 22, N * H * dqk)},
            {"v", normals(rng, 2 << 22, N * H * dv)}};
  }
  Vecs reference(const Vecs& in) const {
    return {ref::attention(in[0], in[1], in[2], doc_ids(), B, T, H, dqk, dv, scale())};
  }
  template <class T_>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Buf<T_> q(ctx, in[0]), k(ctx, in[1]), v(ctx, in[2]), o(ctx, B * T * H * dv);
    Buf<acc_t<T_>> lse(ctx, B * H * T);
    IBuf<int32_t> ss(ctx, seg_start());
    attention_forward<T_>(o.ptr(), lse.ptr(), q.ptr(), k.ptr(), v.ptr(), ss.ptr(), B, T,
                          int(H), int(dqk), int(dv), scale(), ctx);
    return {o.get()};
  }
  template <class T_>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Buf<T_> q(ctx, in[0]), k(ctx, in[1]), v(ctx, in[2]), d_o(ctx, dout[0]), o(ctx, B * T * H * dv);
    Buf<acc_t<T_>> lse(ctx, B * H * T);
    IBuf<int32_t> ss(ctx, seg_start());
    attention_forward<T_>(o.ptr(), lse.ptr(), q.ptr(), k.ptr(), v.ptr(), ss.ptr(), B, T,
                          int(H), int(dqk), int(dv), scale(), ctx);
    Buf<T_> dq(ctx, q.size(), 123.0), dk(ctx, k.size(), 123.0), dv_(ctx, v.size(), 123.0);
    attention_backward<T_>(dq.ptr(), dk.ptr(), dv_.ptr(), d_o.ptr(), o.ptr(), lse.ptr(),
                           q.ptr(), k.ptr(), v.ptr(), ss.ptr(), B, T, int(H), int(dqk),
                           int(dv), scale(), ctx);
    return {dq.get(), dk.get(), dv_.get()};
  }
};

class Attention : public ::testing::TestWithParam<AttentionCase> {};
TEST_P(Attention, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(
    Ops, Attention,
    ::testing::Values(AttentionCase{1, 1, 1, 3, 2, {{1}}, {}, "T1"},
                      AttentionCase{2, 9, 2, 5, 3, {{9}, {9}}, {}, "one_doc"},
                      AttentionCase{2, 11, 3, 7, 4, {{3, 1, 7}, {2, 2, 2, 5}}, {}, "many_docs"},
                      AttentionCase{1, 300, 1, 6, 5, {{10, 270, 20}}, {}, "long_doc_blocks"},
                      // several tiles of the CUDA kernels (64 rows), MLA's head dims, documents
                      // that start and end inside tiles
                      AttentionCase{2, 200, 2, 48, 32, {{70, 130}, {1, 64, 100, 35}}, {}, "tiles"}),
    [](const auto& info) { return info.param.name(); });

// ---------------------------------------------------------------------------------------------
// Fused LM head + cross-entropy. Output: scale * sum of valid -log p (one scalar).
struct LmHeadCeCase {
  int64_t N, D, V;
  int ignore_every;  // every k-th target ignored (< 0); 0 = none
  Tolerance tol;
  double scale = 0.37;
  std::string name() const {
    return "lm_head_ce_" + std::to_string(N) + "x" + std::to_string(D) + "x" + std::to_string(V);
  }
  std::vector<int32_t> targets() const {
    std::vector<int32_t> t(N);
    for (int64_t n = 0; n < N; ++n)
      t[n] = (ignore_every && n % ignore_every == 1) ? -1 : int32_t((n * 7 + 3) % V);
    return t;
  }
  std::vector<Input> inputs(const Philox& rng) const {
    return {{"h", normals(rng, 0, N * D)}, {"W", normals(rng, 1 << 22, V * D, 0.5)}};
  }
  Vecs reference(const Vecs& in) const {
    return {{scale * ref::lm_head_ce(in[0], in[1], targets(), N, D, V)}};
  }
  template <class T>
  Vecs forward(const Vecs& in, const Ctx& ctx) const {
    Buf<T> h(ctx, in[0]), W(ctx, in[1]);
    IBuf<int32_t> t(ctx, targets());
    double loss = lm_head_cross_entropy<T>(nullptr, nullptr, nullptr, nullptr, h.ptr(), W.ptr(),
                                           t.ptr(), N, D, V, 1.0, ctx);
    return {{scale * loss}};
  }
  template <class T>
  Vecs backward(const Vecs& in, const Vecs& dout, const Ctx& ctx) const {
    Buf<T> h(ctx, in[0]), W(ctx, in[1]), dh(ctx, N * D);
    Buf<acc_t<T>> dW(ctx, V * D);
    IBuf<int32_t> t(ctx, targets());
    lm_head_cross_entropy<T>(dh.ptr(), dW.ptr(), nullptr, nullptr, h.ptr(), W.ptr(), t.ptr(),
                             N, D, V, scale * dout[0][0], ctx);
    return {dh.get(), dW.get()};
  }
};

class LmHeadCe : public ::testing::TestWithParam<LmHeadCeCase> {};
TEST_P(LmHeadCe, MatchesReferenceAndGradients) { UM_CHECK_OP(GetParam()); }
INSTANTIATE_TEST_SUITE_P(
    Ops, LmHeadCe,
    ::testing::Values(LmHeadCeCase{1, 1, 2, 0}, LmHeadCeCase{9, 13, 31, 3},
                      // V large enough that N rows span several chunks (ce_chunk_rows)
                      LmHeadCeCase{70, 8, 65536 + 17, 4, Tolerance{1e-12, 2e-6, 1e-7, 2e-5}}),
    [](const auto& info) { return info.param.name(); });

#ifndef UM_TEST_DEVICE
TEST(LmHeadCeExtras, LogitsArgmaxAndIgnoredRows) {
  const int64_t N = 6, D = 5, V = 9;
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  Philox rng(11, "ce-extras");
  std::vector<double> h = normals(rng, 0, N * D), W = normals(rng, 100, V * D);
  W[4 * D + 0] = W[2 * D + 0];  // make rows 2 and 4 of W equal: exact logit ties
  for (int d = 0; d < D; ++d) W[4 * D + d] = W[2 * D + d];
  std::vector<int32_t> t = {1, -1, 3, -1, 0, 8};
  std::vector<double> logits(N * V), dh(N * D);
  std::vector<int32_t> argmax(N);
  lm_head_cross_entropy<double>(dh.data(), nullptr, logits.data(), argmax.data(), h.data(),
                                W.data(), t.data(), N, D, V, 1.0, ctx);
  EXPECT_LE(normwise_error(logits, ref::linear(h, W, N, D, V)), 1e-13);
  for (int64_t n = 0; n < N; ++n) {
    int32_t best = 0;
    for (int32_t j = 1; j < V; ++j)
      if (logits[n * V + j] > logits[n * V + best]) best = j;
    EXPECT_EQ(argmax[n], best);
    EXPECT_NE(argmax[n], 4);  // a tie between ids 2 and 4 goes to 2
  }
  for (int d = 0; d < D; ++d) EXPECT_EQ(dh[1 * D + d], 0.0);  // ignored rows get no gradient
  std::vector<int32_t> bad = {1, 2, 3, 4, 5, 9};
  EXPECT_THROW(lm_head_cross_entropy<double>(nullptr, nullptr, nullptr, nullptr, h.data(),
                                             W.data(), bad.data(), N, D, V, 1.0, ctx),
               Error);
}
#endif

}  // namespace
}  // namespace um::test
