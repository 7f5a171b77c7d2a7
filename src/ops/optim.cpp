#include "ops/optim.h"

#include <algorithm>
#include <cmath>

#include "ops/backend.h"

namespace um {
namespace cpu {

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

template <class T>
void register_optim_types(OpTable<T>& t) {
  t.adamw_update = &adamw_update<T>;
  t.sum_squares = &sum_squares<T>;
  t.scale_inplace = &scale_inplace<T>;
}

void register_optim(Backend& b) {
  register_optim_types(b.f32);
  register_optim_types(b.f64);
}

}  // namespace cpu

template <class T>
void adamw_update(T* p, T* m, T* v, const T* g, int64_t n, const AdamWHyper& h, const Ctx& ctx) {
  UM_OP(adamw_update, T, ctx)(p, m, v, g, n, h, ctx);
}

template <class T>
double sum_squares(const T* g, int64_t n, const Ctx& ctx) {
  return UM_OP(sum_squares, T, ctx)(g, n, ctx);
}

template <class T>
void scale_inplace(T* g, int64_t n, double c, const Ctx& ctx) {
  UM_OP(scale_inplace, T, ctx)(g, n, c, ctx);
}

UM_INSTANTIATE_ACC_OP(adamw_update)
UM_INSTANTIATE_ACC_OP(sum_squares)
UM_INSTANTIATE_ACC_OP(scale_inplace)

}  // namespace um
