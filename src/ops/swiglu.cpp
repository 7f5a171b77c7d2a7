#include "ops/swiglu.h"
#include "ops/vmath.h"

#include <cmath>

#include "ops/backend.h"

namespace um {
namespace cpu {

template <class T>
void swiglu_forward(T* h, const T* gu, int64_t N, int64_t F, const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * F))
  for (int64_t n = 0; n < N; ++n) {
    const T* g = gu + n * 2 * F;
    const T* u = g + F;
    T* hr = h + n * F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) hr[f] = g[f] / (T(1) + exp_fast(-g[f])) * u[f];
  }
}

template <class T>
void swiglu_backward(T* dgu, const T* dh, const T* gu, int64_t N, int64_t F, const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * F))
  for (int64_t n = 0; n < N; ++n) {
    const T* g = gu + n * 2 * F;
    const T* u = g + F;
    const T* dhr = dh + n * F;
    T* dg = dgu + n * 2 * F;
    T* du = dg + F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) {
      T sig = T(1) / (T(1) + exp_fast(-g[f]));
      T silu = g[f] * sig;
      dg[f] = dhr[f] * u[f] * sig * (T(1) + g[f] * (T(1) - sig));
      du[f] = dhr[f] * silu;
    }
  }
}

void register_swiglu(Backend& b) {
  b.f32.swiglu_forward = &swiglu_forward<float>;
  b.f32.swiglu_backward = &swiglu_backward<float>;
  b.f64.swiglu_forward = &swiglu_forward<double>;
  b.f64.swiglu_backward = &swiglu_backward<double>;
}

}  // namespace cpu

template <class T>
void swiglu_forward(T* h, const T* gu, int64_t N, int64_t F, const Ctx& ctx) {
  UM_OP(swiglu_forward, T, ctx)(h, gu, N, F, ctx);
}

template <class T>
void swiglu_backward(T* dgu, const T* dh, const T* gu, int64_t N, int64_t F, const Ctx& ctx) {
  UM_OP(swiglu_backward, T, ctx)(dgu, dh, gu, N, F, ctx);
}

UM_INSTANTIATE_OP(swiglu_forward)
UM_INSTANTIATE_OP(swiglu_backward)

}  // namespace um
