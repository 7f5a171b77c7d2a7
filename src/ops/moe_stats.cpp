#include "ops/moe_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/backend.h"
#include "ops/vmath.h"

namespace um {
namespace cpu {
namespace {

// s' of design.md 1.6: the unbiased scores renormalised to sum 1 over all experts.
template <class T>
inline T renorm_denominator(const T* s_row, int64_t E, ScoreFunc f) {
  if (f == ScoreFunc::softmax) return T(1);
  T sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += s_row[e];
  return sum;
}

}  // namespace

template <class T>
void balance_counts(T* fpool, const int32_t* idx, int64_t N, int K, int64_t E, int64_t pr,
                    const Ctx&) {
  const int64_t n_pools = N / pr;
  for (int64_t q = 0; q < n_pools; ++q) {
    T* f = fpool + q * E;
    std::fill(f, f + E, T(0));
    for (int64_t i = q * pr * K; i < (q + 1) * pr * K; ++i) f[idx[i]] += 1;
  }
}

template <class T>
void moe_router_stats(double* stats, int64_t* load, T* fpool, const T* s, const T* z,
                      const int32_t* idx, const T* margin, int64_t N, int K, int64_t E, int64_t pr,
                      int64_t pool_ranks, ScoreFunc func, const Ctx&) {
  const int64_t n_pools = N / pr;
  const T f_scale = T(E) / T(K * pr * pool_ranks);
  for (int64_t i = 0; i < n_pools * E; ++i) fpool[i] *= f_scale;
  const double pool_size = double(pr * pool_ranks);
  double balance = 0, entropy = 0, zsum = 0, margin_min = std::numeric_limits<double>::infinity();
  std::fill(load, load + E, int64_t{0});
  for (int64_t i = 0; i < N * K; ++i) ++load[idx[i]];
  for (int64_t n = 0; n < N; ++n) {
    margin_min = std::min(margin_min, double(margin[n]));
    const T* s_row = s + n * E;
    const T* f = fpool + (n / pr) * E;
    const T denom = renorm_denominator(s_row, E, func);
    double bal = 0, ent = 0;
    for (int64_t e = 0; e < E; ++e) {
      const double sp = double(s_row[e] / denom);
      bal += double(f[e]) * sp;
      if (sp > 0) ent -= sp * std::log(sp);
    }
    balance += bal / pool_size;
    entropy += ent;
    const T* z_row = z + n * E;
    T m = *std::max_element(z_row, z_row + E), l = 0;
    for (int64_t e = 0; e < E; ++e) l += exp_fast(z_row[e] - m);
    const double lse = double(m + std::log(l));
    zsum += lse * lse;
  }
  stats[0] = balance;
  stats[1] = entropy;
  stats[2] = zsum;
  stats[3] = margin_min;
}

template <class T>
void balance_backward(T* ds, const T* s, const T* fpool, int64_t N, int64_t E, int64_t pr,
                      int64_t pool_ranks, double coef_in, ScoreFunc func, const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * E))
  for (int64_t n = 0; n < N; ++n) {
    T* ds_row = ds + n * E;
    std::fill(ds_row, ds_row + E, T(0));
    if (coef_in == 0) continue;
    const T* s_row = s + n * E;
    const T* f = fpool + (n / pr) * E;
    const T coef = T(coef_in / double(pr * pool_ranks));
    if (func == ScoreFunc::softmax) {
      for (int64_t e = 0; e < E; ++e) ds_row[e] = coef * f[e];
    } else {  // s' = s / sum(s)
      const T sum = renorm_denominator(s_row, E, func);
      T dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += coef * f[e] * s_row[e] / sum;
      for (int64_t e = 0; e < E; ++e) ds_row[e] = (coef * f[e] - dot) / sum;
    }
  }
}

template <class T>
void z_loss_backward(T* dz, const T* z, int64_t N, int64_t E, double coef, const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * E))
  for (int64_t n = 0; n < N; ++n) {
    const T* z_row = z + n * E;
    T m = *std::max_element(z_row, z_row + E), l = 0;
    for (int64_t e = 0; e < E; ++e) l += exp_fast(z_row[e] - m);
    const T lse = m + std::log(l), c2 = T(2 * coef) * lse;
    for (int64_t e = 0; e < E; ++e) dz[n * E + e] += c2 * exp_fast(z_row[e] - lse);
  }
}

template <class T>
void register_moe_stats_types(OpTable<T>& t) {
  t.balance_counts = &balance_counts<T>;
  t.moe_router_stats = &moe_router_stats<T>;
  t.balance_backward = &balance_backward<T>;
  t.z_loss_backward = &z_loss_backward<T>;
}

void register_moe_stats(Backend& b) {
  register_moe_stats_types(b.f32);
  register_moe_stats_types(b.f64);
}

}  // namespace cpu

template <class T>
void balance_counts(T* fpool, const int32_t* idx, int64_t N, int K, int64_t E, int64_t pool_rows,
                    const Ctx& ctx) {
  UM_OP(balance_counts, T, ctx)(fpool, idx, N, K, E, pool_rows, ctx);
}

template <class T>
void moe_router_stats(double* stats, int64_t* load, T* fpool, const T* s, const T* z,
                      const int32_t* idx, const T* margin, int64_t N, int K, int64_t E,
                      int64_t pool_rows, int64_t pool_ranks, ScoreFunc func, const Ctx& ctx) {
  UM_OP(moe_router_stats, T, ctx)(stats, load, fpool, s, z, idx, margin, N, K, E, pool_rows, pool_ranks,
                                  func, ctx);
}

template <class T>
void balance_backward(T* ds, const T* s, const T* fpool, int64_t N, int64_t E, int64_t pool_rows,
                      int64_t pool_ranks, double coef, ScoreFunc func, const Ctx& ctx) {
  UM_OP(balance_backward, T, ctx)(ds, s, fpool, N, E, pool_rows, pool_ranks, coef, func, ctx);
}

template <class T>
void z_loss_backward(T* dz, const T* z, int64_t N, int64_t E, double coef, const Ctx& ctx) {
  UM_OP(z_loss_backward, T, ctx)(dz, z, N, E, coef, ctx);
}

UM_INSTANTIATE_ACC_OP(balance_counts)
UM_INSTANTIATE_ACC_OP(moe_router_stats)
UM_INSTANTIATE_ACC_OP(balance_backward)
UM_INSTANTIATE_ACC_OP(z_loss_backward)

}  // namespace um
