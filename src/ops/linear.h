// Linear layer (no bias), weights stored (out, in) like nn.Linear.
//   forward:  y (N,out) = x (N,in) W^T            W: (out,in)
//   backward: dx (N,in) = dy W   (written, or added when accumulate_dx)
//             dW (out,in) += dy^T x               (parameter grads always accumulate, in acc_t<T>)
// x and y may have row strides (ldx, ldy >= their widths) so a linear can read or write a column
// slice of a wider buffer. dx is skipped when null (e.g. the embedding output is not needed), dW
// when null.
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

template <class T>
void linear_forward(T* y, int64_t ldy, const T* x, int64_t ldx, const T* W, int64_t N,
                    int64_t n_in, int64_t n_out, const Ctx& ctx);

template <class T>
void linear_backward(T* dx, int64_t lddx, acc_t<T>* dW, const T* dy, int64_t lddy, const T* x,
                     int64_t ldx, const T* W, int64_t N, int64_t n_in, int64_t n_out,
                     bool accumulate_dx, const Ctx& ctx);

}  // namespace um
