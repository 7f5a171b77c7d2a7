#include "ops/grouped_gemm.h"

#include "ops/gemm.h"

namespace um {

namespace {
// Groups of up to ~25 MFLOP per thread (measured crossover on 2 Zen 4 cores: BENCHMARKS.md) run
// side by side, one per thread with single-threaded BLAS (OpenBLAS's OpenMP build runs
// single-threaded inside a parallel region); larger ones one after another, every thread in BLAS.
bool groups_in_parallel(const int32_t* offsets, int64_t n_groups, int64_t n_in, int64_t n_out,
                        const Ctx& ctx) {
  if (ctx.n_threads <= 1 || n_groups < ctx.n_threads) return false;
  const double flops_per_group = 2.0 * double(offsets[n_groups]) / double(n_groups) * double(n_in * n_out);
  return flops_per_group < 2.5e7 * ctx.n_threads;
}
}  // namespace

template <class T>
void grouped_linear_forward(T* Y, const T* X, int64_t ldx, const T* W, int64_t w_stride,
                            const int32_t* offsets, int64_t n_groups, int64_t n_in, int64_t n_out,
                            const Ctx& ctx) {
  const bool par = groups_in_parallel(offsets, n_groups, n_in, n_out, ctx);
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx.n_threads) if (par)
  for (int64_t e = 0; e < n_groups; ++e) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;  // an expert no token reached
    gemm<T>(false, true, n, n_out, n_in, T(1), X + r0 * ldx, ldx, W + e * w_stride, n_in, T(0),
            Y + r0 * n_out, n_out);
  }
}

template <class T>
void grouped_linear_backward(T* dX, T* dW, const T* dY, const T* X, int64_t ldx, const T* W,
                             int64_t w_stride, const int32_t* offsets, int64_t n_groups,
                             int64_t n_in, int64_t n_out, const Ctx& ctx) {
  const bool par = groups_in_parallel(offsets, n_groups, n_in, n_out, ctx);
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx.n_threads) if (par)
  for (int64_t e = 0; e < n_groups; ++e) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    if (dX)
      gemm<T>(false, false, n, n_in, n_out, T(1), dY + r0 * n_out, n_out, W + e * w_stride, n_in,
              T(0), dX + r0 * ldx, ldx);
    if (dW)
      gemm<T>(true, false, n_out, n_in, n, T(1), dY + r0 * n_out, n_out, X + r0 * ldx, ldx, T(1),
              dW + e * w_stride, n_in);
  }
}

#define UM_INSTANTIATE(T)                                                                      \
  template void grouped_linear_forward<T>(T*, const T*, int64_t, const T*, int64_t,            \
                                          const int32_t*, int64_t, int64_t, int64_t,           \
                                          const Ctx&);                                         \
  template void grouped_linear_backward<T>(T*, T*, const T*, const T*, int64_t, const T*,      \
                                           int64_t, const int32_t*, int64_t, int64_t, int64_t, \
                                           const Ctx&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
#undef UM_INSTANTIATE

}  // namespace um
