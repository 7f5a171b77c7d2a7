// Rotary position embedding, rotate-half convention (GPT-NeoX / HF `rotate_half`):
// for a vector of d (even) rope dims, pair (j, j + d/2) rotates by angle pos * theta^(-2j/d):
//   y_j       = x_j cos - x_{j+d/2} sin
//   y_{j+d/2} = x_{j+d/2} cos + x_j sin
// Positions are per token (they restart at 0 for every document). Element (n, h, j) lives at
// x[n*ld + h*head_stride + j], so RoPE can rotate the rope slice of every head in place inside a
// wider projection output. backward: the inverse rotation (angle -> -angle). In place is allowed.
// cos/sin tables: (max_pos, d/2), computed in double on the host by rope_tables and stored in
// acc_t<T> on ctx's device; the rotation is computed in acc_t<T>.
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

// host memory
template <class T>
void rope_tables(T* cos_tab, T* sin_tab, int64_t max_pos, int d, double theta);

template <class T>
void rope_forward(T* y, const T* x, const int32_t* pos, const acc_t<T>* cos_tab, const acc_t<T>* sin_tab,
                  int64_t N, int n_heads, int64_t ld, int64_t head_stride, int d, const Ctx& ctx);

// dx (written; may alias dy) from dy.
template <class T>
void rope_backward(T* dx, const T* dy, const int32_t* pos, const acc_t<T>* cos_tab, const acc_t<T>* sin_tab,
                   int64_t N, int n_heads, int64_t ld, int64_t head_stride, int d, const Ctx& ctx);

}  // namespace um
