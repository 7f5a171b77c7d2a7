#include "ops/linear.h"

#include "ops/gemm.h"

namespace um {

template <class T>
void linear_forward(T* y, int64_t ldy, const T* x, int64_t ldx, const T* W, int64_t N,
                    int64_t n_in, int64_t n_out, const Ctx&) {
  gemm<T>(false, true, N, n_out, n_in, T(1), x, ldx, W, n_in, T(0), y, ldy);
}

template <class T>
void linear_backward(T* dx, int64_t lddx, T* dW, const T* dy, int64_t lddy, const T* x,
                     int64_t ldx, const T* W, int64_t N, int64_t n_in, int64_t n_out,
                     bool accumulate_dx, const Ctx&) {
  if (dx) gemm<T>(false, false, N, n_in, n_out, T(1), dy, lddy, W, n_in, accumulate_dx ? T(1) : T(0), dx, lddx);
  if (dW) gemm<T>(true, false, n_out, n_in, N, T(1), dy, lddy, x, ldx, T(1), dW, n_in);
}

#define UM_INSTANTIATE(T)                                                                     \
  template void linear_forward<T>(T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, \
                                  int64_t, const Ctx&);                                       \
  template void linear_backward<T>(T*, int64_t, T*, const T*, int64_t, const T*, int64_t,     \
                                   const T*, int64_t, int64_t, int64_t, bool, const Ctx&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
#undef UM_INSTANTIATE

}  // namespace um
