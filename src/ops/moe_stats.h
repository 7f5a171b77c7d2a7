// The balance statistics and auxiliary losses of a MoE layer (design.md 1.6), on the router's
// accumulation type T (f32, or f64 in tests). Pools are runs of pool_rows consecutive rows of
// this micro-batch; a pooled scope spanning ranks sums the counts over the pool's ranks between
// balance_counts and moe_router_stats.
#pragma once

#include <cstdint>

#include "core/ctx.h"
#include "ops/router.h"

namespace um {

// fpool (N / pool_rows, E) = c_i(S): rows of each pool that selected expert i (written).
template <class T>
void balance_counts(T* fpool, const int32_t* idx, int64_t N, int K, int64_t E, int64_t pool_rows,
                    const Ctx& ctx);

// Scales the pool counts in place to f_i(S) = E / (K |S|) c_i(S), |S| = pool_rows * pool_ranks,
// then writes this micro-batch's statistics of the layer:
//   stats[0] = sum over rows n of sum_i f_i(S_n) s'_{n,i} / |S|   (the local part of sum_S B(S))
//   stats[1] = sum over rows of the entropy of s'       stats[2] = sum over rows of lse(z_n)^2
//   stats[3] = min over rows of margin (+inf when N = 0)
//   load (E) = rows that selected expert i (with the bias, before capacity drops)
// s' = s renormalised to sum 1 over all experts (s itself for softmax scoring).
template <class T>
void moe_router_stats(double* stats, int64_t* load, T* fpool, const T* s, const T* z,
                      const int32_t* idx, const T* margin, int64_t N, int K, int64_t E,
                      int64_t pool_rows, int64_t pool_ranks, ScoreFunc func, const Ctx& ctx);

// ds (N, E) = d/ds of coef * sum_n sum_i f_i s'_{n,i} / |S|  (written; zero when coef == 0)
template <class T>
void balance_backward(T* ds, const T* s, const T* fpool, int64_t N, int64_t E, int64_t pool_rows,
                      int64_t pool_ranks, double coef, ScoreFunc func, const Ctx& ctx);

// dz (N, E) += d/dz of coef * sum_n lse(z_n)^2 = 2 coef lse(z_n) softmax(z_n)
template <class T>
void z_loss_backward(T* dz, const T* z, int64_t N, int64_t E, double coef, const Ctx& ctx);

}  // namespace um
