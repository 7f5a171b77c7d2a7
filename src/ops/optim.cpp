#include "ops/optim.h"

#include <algorithm>
#include <cmath>

namespace um {

template <class T>
void adamw_update(T* p, T* m, T* v, const T* g, int64_t n, const AdamWHyper& h, const Ctx& ctx) {
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(h.step));
  const T decay = T(1.0 - h.lr * h.weight_decay);
  const T b1 = T(h.beta1), b2 = T(h.beta2), step_size = T(h.lr / bc1);
  const T sqrt_bc2 = T(std::sqrt(bc2)), eps = T(h.eps);
#pragma omp parallel for simd schedule(static) num_threads(ctx.threads_for(n))
  for (int64_t i = 0; i < n; ++i) {
    T gi = g[i];
    T pi = p[i] * decay;
    T mi = b1 * m[i] + (T(1) - b1) * gi;
    T vi = b2 * v[i] + (T(1) - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * mi / (std::sqrt(vi) / sqrt_bc2 + eps);
  }
}

template <class T>
double sum_squares(const T* g, int64_t n, const Ctx& ctx) {
  constexpr int64_t kBlock = 1 << 14;
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
  double* partial = ctx.scratch<double>(static_cast<size_t>(std::max<int64_t>(n_blocks, 1)));
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(n))
  for (int64_t b = 0; b < n_blocks; ++b) {
    double s = 0;
    const int64_t end = std::min(n, (b + 1) * kBlock);
    for (int64_t i = b * kBlock; i < end; ++i) s += static_cast<double>(g[i]) * g[i];
    partial[b] = s;
  }
  double total = 0;
  for (int64_t b = 0; b < n_blocks; ++b) total += partial[b];
  return total;
}

template <class T>
void scale_inplace(T* g, int64_t n, double c, const Ctx& ctx) {
  const T cc = T(c);
#pragma omp parallel for simd schedule(static) num_threads(ctx.threads_for(n))
  for (int64_t i = 0; i < n; ++i) g[i] *= cc;
}

#define UM_INSTANTIATE(T)                                                                       \
  template void adamw_update<T>(T*, T*, T*, const T*, int64_t, const AdamWHyper&, const Ctx&); \
  template double sum_squares<T>(const T*, int64_t, const Ctx&);                                \
  template void scale_inplace<T>(T*, int64_t, double, const Ctx&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
#undef UM_INSTANTIATE

}  // namespace um
