#include "ops/rmsnorm.h"

#include <cmath>

#include "ops/backend.h"
#include "ops/reduce.h"

namespace um {
namespace cpu {

template <class T>
void rmsnorm_forward(T* y, int64_t ldy, T* rstd, const T* x, int64_t ldx, const T* g, int64_t N,
                     int64_t D, double eps, const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * D))
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * ldx;
    T* yr = y + n * ldy;
    T ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += xr[d] * xr[d];
    T r = T(1) / std::sqrt(ss / T(D) + T(eps));
    rstd[n] = r;
    for (int64_t d = 0; d < D; ++d) yr[d] = g[d] * (xr[d] * r);
  }
}

template <class T>
void rmsnorm_backward(T* dx, int64_t lddx, T* dg, const T* dy, int64_t lddy, const T* x,
                      int64_t ldx, const T* g, const T* rstd, int64_t N, int64_t D,
                      bool accumulate_dx, const Ctx& ctx) {
  if (dx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * D))
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * ldx;
      const T* dyr = dy + n * lddy;
      T* dxr = dx + n * lddx;
      T r = rstd[n];
      T dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += dyr[d] * g[d] * xr[d];
      T c = dot * r * r / T(D);
      if (accumulate_dx)
        for (int64_t d = 0; d < D; ++d) dxr[d] += r * (dyr[d] * g[d] - xr[d] * c);
      else
        for (int64_t d = 0; d < D; ++d) dxr[d] = r * (dyr[d] * g[d] - xr[d] * c);
    }
  }
  if (dg) {
    column_reduce<T>(dg, N, D, ctx, [&](int64_t n, T* acc) {
      const T* xr = x + n * ldx;
      const T* dyr = dy + n * lddy;
      T r = rstd[n];
      for (int64_t d = 0; d < D; ++d) acc[d] += dyr[d] * xr[d] * r;
    });
  }
}

void register_rmsnorm(Backend& b) {
  b.f32.rmsnorm_forward = &rmsnorm_forward<float>;
  b.f32.rmsnorm_backward = &rmsnorm_backward<float>;
  b.f64.rmsnorm_forward = &rmsnorm_forward<double>;
  b.f64.rmsnorm_backward = &rmsnorm_backward<double>;
}

}  // namespace cpu

template <class T>
void rmsnorm_forward(T* y, int64_t ldy, acc_t<T>* rstd, const T* x, int64_t ldx, const acc_t<T>* g,
                     int64_t N, int64_t D, double eps, const Ctx& ctx) {
  UM_OP(rmsnorm_forward, T, ctx)(y, ldy, rstd, x, ldx, g, N, D, eps, ctx);
}

template <class T>
void rmsnorm_backward(T* dx, int64_t lddx, acc_t<T>* dg, const T* dy, int64_t lddy, const T* x,
                      int64_t ldx, const acc_t<T>* g, const acc_t<T>* rstd, int64_t N, int64_t D,
                      bool accumulate_dx, const Ctx& ctx) {
  UM_OP(rmsnorm_backward, T, ctx)(dx, lddx, dg, dy, lddy, x, ldx, g, rstd, N, D, accumulate_dx, ctx);
}

UM_INSTANTIATE_OP(rmsnorm_forward)
UM_INSTANTIATE_OP(rmsnorm_backward)

}  // namespace um
