#include "ops/linear.h"

#include "ops/backend.h"

namespace um {

// Linear is GEMM on every backend, so it is written once, on top of the gemm ops (and is not an
// entry of the backend tables itself).
template <class T>
void linear_forward(T* y, int64_t ldy, const T* x, int64_t ldx, const T* W, int64_t N,
                    int64_t n_in, int64_t n_out, const Ctx& ctx) {
  gemm<T>(false, true, N, n_out, n_in, 1.0, x, ldx, W, n_in, 0.0, y, ldy, ctx);
}

template <class T>
void linear_backward(T* dx, int64_t lddx, acc_t<T>* dW, const T* dy, int64_t lddy, const T* x,
                     int64_t ldx, const T* W, int64_t N, int64_t n_in, int64_t n_out,
                     bool accumulate_dx, const Ctx& ctx) {
  if (dx) gemm<T>(false, false, N, n_in, n_out, 1.0, dy, lddy, W, n_in, accumulate_dx ? 1.0 : 0.0, dx, lddx, ctx);
  if (dW) gemm_acc<T>(true, false, n_out, n_in, N, 1.0, dy, lddy, x, ldx, 1.0, dW, n_in, ctx);
}

UM_INSTANTIATE_OP(linear_forward)
UM_INSTANTIATE_OP(linear_backward)

}  // namespace um
