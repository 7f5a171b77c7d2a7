// Grouped linear over variable-length row segments (the experts of a dropless MoE layer):
//   for each group e with rows [offsets[e], offsets[e+1]):  Y_e (n_e, n_out) = X_e W_e^T
//   W_e = W + e * w_stride, each (n_out, n_in) row-major. Empty segments are allowed.
// backward: dX_e = dY_e W_e (written; rows of empty groups untouched as there are none),
//           dW_e += dY_e^T X_e (parameter grads accumulate in acc_t<T>; unchanged for an empty
//           group). dX or dW may be null.
// X and dX may have a row stride (ldx) so a segment can read a column slice.
// `offsets` is HOST memory (the segment sizes decide the launch shapes; on the CUDA backend the
// MoE layer reads them back once per layer, design.md 1.5); the matrices are on ctx's device.
//   cpu:  one BLAS call per group (groups side by side over threads when they are small)
//   cuda: one cuBLAS grouped GEMM for all groups
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

template <class T>
void grouped_linear_forward(T* Y, const T* X, int64_t ldx, const T* W, int64_t w_stride,
                            const int32_t* offsets, int64_t n_groups, int64_t n_in, int64_t n_out,
                            const Ctx& ctx);

template <class T>
void grouped_linear_backward(T* dX, acc_t<T>* dW, const T* dY, const T* X, int64_t ldx, const T* W,
                             int64_t w_stride, const int32_t* offsets, int64_t n_groups,
                             int64_t n_in, int64_t n_out, const Ctx& ctx);

}  // namespace um
