// RMSNorm (Zhang & Sennrich 2019), computed in acc_t<T> (f32 for bf16 and f32, f64 in tests):
//   y = g * x * rstd,  rstd = 1/sqrt(mean(x^2) + eps)     x: (N,D) row stride ldx   y: (N,D)
//   g: (D) in acc_t<T> (the f32 master gains)   rstd: (N) acc_t<T>, saved for backward.
// backward: dx = rstd * (dy*g - x * rstd^2 * mean(dy*g*x))   (written, or added when accumulate_dx)
//           dg += sum_n dy * x * rstd
// dx or dg may be null. dg is reduced over fixed blocks of rows and the blocks summed in order, so the result does not
// depend on the thread count.
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

template <class T>
void rmsnorm_forward(T* y, int64_t ldy, acc_t<T>* rstd, const T* x, int64_t ldx,
                     const acc_t<T>* g, int64_t N, int64_t D, double eps, const Ctx& ctx);

template <class T>
void rmsnorm_backward(T* dx, int64_t lddx, acc_t<T>* dg, const T* dy, int64_t lddy, const T* x,
                      int64_t ldx, const acc_t<T>* g, const acc_t<T>* rstd, int64_t N, int64_t D,
                      bool accumulate_dx, const Ctx& ctx);

}  // namespace um
