// SwiGLU activation (Shazeer 2020) on a fused gate/up projection:
//   gu: (N, 2F) = [x W_gate^T | x W_up^T]      h: (N, F) = silu(gate) * up,  silu(a) = a*sigmoid(a)
// backward: d gate = dh * up * sigmoid(gate) * (1 + gate*(1 - sigmoid(gate))),  d up = dh * silu(gate)
// dgu is written.
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

template <class T>
void swiglu_forward(T* h, const T* gu, int64_t N, int64_t F, const Ctx& ctx);

template <class T>
void swiglu_backward(T* dgu, const T* dh, const T* gu, int64_t N, int64_t F, const Ctx& ctx);

}  // namespace um
