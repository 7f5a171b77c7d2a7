// Optimizer ops over flat buffers (design.md 2).
// AdamW with torch.optim.AdamW semantics (decoupled decay, bias-corrected moments, eps outside
// the square root), step = number of applied updates including this one (1-based):
//   p <- p * (1 - lr*wd)
//   m <- b1 m + (1-b1) g ;  v <- b2 v + (1-b2) g^2
//   p <- p - lr/(1-b1^step) * m / (sqrt(v)/sqrt(1-b2^step) + eps)
// Parameters, moments and gradients are the f32 master buffers (f64 in tests): these ops run on
// the accumulation type on every backend.
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

struct AdamWHyper {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0;
  int64_t step = 1;
};

template <class T>
void adamw_update(T* p, T* m, T* v, const T* g, int64_t n, const AdamWHyper& h, const Ctx& ctx);

// sum of g^2 in double, thread-count independent (fixed blocks summed in order)
template <class T>
double sum_squares(const T* g, int64_t n, const Ctx& ctx);

// g *= c
template <class T>
void scale_inplace(T* g, int64_t n, double c, const Ctx& ctx);

// Clip coefficient for a global gradient norm (design.md 2): min(1, clip / (norm + 1e-6)).
// clip <= 0 disables clipping.
inline double clip_coefficient(double norm, double clip) {
  if (clip <= 0) return 1.0;
  double c = clip / (norm + 1e-6);
  return c < 1.0 ? c : 1.0;
}

}  // namespace um
