// skinny_linear_forward (the few-row linear of decoding) against an fp64 triple loop: every row
// count from 1 to past the register block, strided x / y / W, and results that do not depend on
// the thread count. Forward only: the op has no backward.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/ctx.h"
#include "core/rng.h"
#include "ops/skinny_linear.h"

namespace um::test {
namespace {

// y = x W^T in fp64, every sum in index order.
std::vector<double> reference(const std::vector<double>& x, int64_t ldx, const std::vector<double>& W, int64_t ldw,
                              int64_t N, int64_t n_in, int64_t n_out) {
  std::vector<double> y(N * n_out);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < n_out; ++o) {
      double s = 0;
      for (int64_t k = 0; k < n_in; ++k) s += x[n * ldx + k] * W[o * ldw + k];
      y[n * n_out + o] = s;
    }
  return y;
}

template <class T>
std::vector<double> run(const std::vector<double>& x, int64_t ldx, const std::vector<double>& W, int64_t ldw,
                        int64_t N, int64_t n_in, int64_t n_out, int threads) {
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  ctx.n_threads = threads;
  const int64_t ldy = n_out + 3;  // a wider output buffer: only the first n_out columns are written
  std::vector<T> xt(x.begin(), x.end()), wt(W.begin(), W.end()), y(N * ldy, T(-7));
  skinny_linear_forward<T>(y.data(), ldy, xt.data(), ldx, wt.data(), ldw, N, n_in, n_out, ctx);
  std::vector<double> out(N * n_out);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = 0; o < n_out; ++o) out[n * n_out + o] = double(y[n * ldy + o]);
    for (int64_t o = n_out; o < ldy; ++o) EXPECT_EQ(y[n * ldy + o], T(-7)) << "wrote past n_out";
  }
  return out;
}

double normwise(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i])), m = std::max(m, std::fabs(b[i]));
  return m > 0 ? d / m : d;
}

TEST(SkinnyLinear, MatchesReference) {
  const Philox rng(5, "skinny");
  for (int64_t N : {1, 2, 3, 5, 8, 9, 17})
    for (auto [n_in, n_out] : {std::pair<int64_t, int64_t>{1, 1}, {7, 3}, {64, 80}, {300, 129}}) {
      const int64_t ldx = n_in + 2, ldw = n_in + 1;
      std::vector<double> x(N * ldx), W(n_out * ldw);
      for (size_t i = 0; i < x.size(); ++i) x[i] = rng.normal(i);
      for (size_t i = 0; i < W.size(); ++i) W[i] = rng.normal(1000000 + i);
      const std::vector<double> ref = reference(x, ldx, W, ldw, N, n_in, n_out);
      // f64: summation order only (vector lanes); f32: float rounding of sums of n_in products
      EXPECT_LE(normwise(run<double>(x, ldx, W, ldw, N, n_in, n_out, 1), ref), 1e-13) << N << " " << n_in;
      EXPECT_LE(normwise(run<float>(x, ldx, W, ldw, N, n_in, n_out, 1), ref), 1e-5) << N << " " << n_in;
    }
}

TEST(SkinnyLinear, SameResultForAnyThreadCount) {
  const Philox rng(6, "skinny.threads");
  const int64_t N = 6, n_in = 256, n_out = 1000;  // large enough for a thread team
  std::vector<double> x(N * n_in), W(n_out * n_in);
  for (size_t i = 0; i < x.size(); ++i) x[i] = rng.normal(i);
  for (size_t i = 0; i < W.size(); ++i) W[i] = rng.normal(1000000 + i);
  EXPECT_EQ(run<float>(x, n_in, W, n_in, N, n_in, n_out, 1), run<float>(x, n_in, W, n_in, N, n_in, n_out, 3));
}

}  // namespace
}  // namespace um::test
