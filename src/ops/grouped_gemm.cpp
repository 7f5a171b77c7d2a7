#include "ops/grouped_gemm.h"

#include "ops/gemm.h"

namespace um {

// Groups run one after another, each GEMM using every thread. (Parallel-over-groups with
// single-threaded GEMMs is the alternative for many tiny groups; see BENCHMARKS.md.)
template <class T>
void grouped_linear_forward(T* Y, const T* X, int64_t ldx, const T* W, int64_t w_stride,
                            const int32_t* offsets, int64_t n_groups, int64_t n_in, int64_t n_out,
                            const Ctx&) {
  for (int64_t e = 0; e < n_groups; ++e) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    gemm<T>(false, true, n, n_out, n_in, T(1), X + r0 * ldx, ldx, W + e * w_stride, n_in, T(0),
            Y + r0 * n_out, n_out);
  }
}

template <class T>
void grouped_linear_backward(T* dX, T* dW, const T* dY, const T* X, int64_t ldx, const T* W,
                             int64_t w_stride, const int32_t* offsets, int64_t n_groups,
                             int64_t n_in, int64_t n_out, const Ctx&) {
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
