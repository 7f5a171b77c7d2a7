#include "ops/grouped_gemm.h"

#include <algorithm>

#include "ops/backend.h"

namespace um {
namespace cpu {
namespace {
// Run the groups side by side, one per thread with single-threaded BLAS (OpenBLAS's OpenMP build
// runs single-threaded inside a parallel region), unless one group is larger than a thread's share
// of the rows: then one after another, every thread in BLAS. On 2 cores (AMD EPYC) side by side is as
// fast or faster at every group size from 4 to 270 MFLOP (BENCHMARKS.md, "Expert GEMMs"): BLAS
// threads split small matrices badly, and dynamic scheduling balances groups of unequal size.
bool groups_in_parallel(const int32_t* offsets, int64_t n_groups, const Ctx& ctx) {
  if (ctx.n_threads <= 1 || n_groups < ctx.n_threads) return false;
  int64_t largest = 0;
  for (int64_t e = 0; e < n_groups; ++e) largest = std::max<int64_t>(largest, offsets[e + 1] - offsets[e]);
  return largest * ctx.n_threads <= int64_t(offsets[n_groups]);
}
}  // namespace

template <class T>
void grouped_linear_forward(T* Y, const T* X, int64_t ldx, const T* W, int64_t w_stride,
                            const int32_t* offsets, int64_t n_groups, int64_t n_in, int64_t n_out,
                            const Ctx& ctx) {
  const bool par = groups_in_parallel(offsets, n_groups, ctx);
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx.n_threads) if (par)
  for (int64_t e = 0; e < n_groups; ++e) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;  // an expert no token reached
    cpu::gemm<T>(false, true, n, n_out, n_in, T(1), X + r0 * ldx, ldx, W + e * w_stride, n_in, T(0),
                 Y + r0 * n_out, n_out);
  }
}

template <class T>
void grouped_linear_backward(T* dX, T* dW, const T* dY, const T* X, int64_t ldx, const T* W,
                             int64_t w_stride, const int32_t* offsets, int64_t n_groups,
                             int64_t n_in, int64_t n_out, const Ctx& ctx) {
  const bool par = groups_in_parallel(offsets, n_groups, ctx);
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx.n_threads) if (par)
  for (int64_t e = 0; e < n_groups; ++e) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    if (dX)
      cpu::gemm<T>(false, false, n, n_in, n_out, T(1), dY + r0 * n_out, n_out, W + e * w_stride,
                   n_in, T(0), dX + r0 * ldx, ldx);
    if (dW)
      cpu::gemm<T>(true, false, n_out, n_in, n, T(1), dY + r0 * n_out, n_out, X + r0 * ldx, ldx,
                   T(1), dW + e * w_stride, n_in);
  }
}

void register_grouped_gemm(Backend& b) {
  b.f32.grouped_linear_forward = &grouped_linear_forward<float>;
  b.f32.grouped_linear_backward = &grouped_linear_backward<float>;
  b.f64.grouped_linear_forward = &grouped_linear_forward<double>;
  b.f64.grouped_linear_backward = &grouped_linear_backward<double>;
}

}  // namespace cpu

template <class T>
void grouped_linear_forward(T* Y, const T* X, int64_t ldx, const T* W, int64_t w_stride,
                            const int32_t* offsets, int64_t n_groups, int64_t n_in, int64_t n_out,
                            const Ctx& ctx) {
  UM_OP(grouped_linear_forward, T, ctx)(Y, X, ldx, W, w_stride, offsets, n_groups, n_in, n_out, ctx);
}

template <class T>
void grouped_linear_backward(T* dX, acc_t<T>* dW, const T* dY, const T* X, int64_t ldx, const T* W,
                             int64_t w_stride, const int32_t* offsets, int64_t n_groups,
                             int64_t n_in, int64_t n_out, const Ctx& ctx) {
  UM_OP(grouped_linear_backward, T, ctx)(dX, dW, dY, X, ldx, W, w_stride, offsets, n_groups, n_in, n_out, ctx);
}

UM_INSTANTIATE_OP(grouped_linear_forward)
UM_INSTANTIATE_OP(grouped_linear_backward)

}  // namespace um
