#include "ops/router.h"
#include "ops/vmath.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/backend.h"
#include "ops/reduce.h"

namespace um {
namespace cpu {

template <class T>
void router_scores_forward(T* s, const T* z, int64_t N, int64_t E, ScoreFunc func,
                           const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * E))
  for (int64_t n = 0; n < N; ++n) {
    const T* zr = z + n * E;
    T* sr = s + n * E;
    if (func == ScoreFunc::sigmoid) {
#pragma omp simd
      for (int64_t e = 0; e < E; ++e) sr[e] = T(1) / (T(1) + exp_fast(-zr[e]));
    } else {
      T m = *std::max_element(zr, zr + E), l = 0;
      for (int64_t e = 0; e < E; ++e) l += (sr[e] = exp_fast(zr[e] - m));
      for (int64_t e = 0; e < E; ++e) sr[e] /= l;
    }
  }
}

template <class T>
void router_scores_backward(T* dz, const T* ds, const T* s, int64_t N, int64_t E, ScoreFunc func,
                            const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * E))
  for (int64_t n = 0; n < N; ++n) {
    const T* sr = s + n * E;
    const T* dsr = ds + n * E;
    T* dzr = dz + n * E;
    if (func == ScoreFunc::sigmoid) {
      for (int64_t e = 0; e < E; ++e) dzr[e] = dsr[e] * sr[e] * (T(1) - sr[e]);
    } else {
      T dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += dsr[e] * sr[e];
      for (int64_t e = 0; e < E; ++e) dzr[e] = sr[e] * (dsr[e] - dot);
    }
  }
}

namespace {

// Picks the k best of cand[0..n) by value (ties: lower position) into out[0..k), best first.
// Returns the gap between the k-th chosen and the best rejected value (+inf if none rejected).
template <class T>
T pick_top(int32_t* out, const T* val, const int32_t* cand, int n, int k) {
  int chosen = 0;
  for (int i = 0; i < n; ++i) {
    // insertion into the ranked list out[0..chosen) (strict > keeps ties in position order)
    int at = chosen;
    while (at > 0 && val[i] > val[out[at - 1]]) --at;
    if (at >= k) continue;
    int last = std::min(chosen, k - 1);
    for (int j = last; j > at; --j) out[j] = out[j - 1];
    out[at] = i;
    chosen = std::min(chosen + 1, k);
  }
  T best_rejected = -std::numeric_limits<T>::infinity();
  for (int i = 0; i < n; ++i) {
    bool taken = false;
    for (int j = 0; j < k; ++j) taken |= out[j] == i;
    if (!taken) best_rejected = std::max(best_rejected, val[i]);
  }
  T gap = n > k ? val[out[k - 1]] - best_rejected : std::numeric_limits<T>::infinity();
  for (int j = 0; j < k; ++j) out[j] = cand ? cand[out[j]] : out[j];
  return gap;
}

}  // namespace

template <class T>
void router_topk(int32_t* idx, T* margin, const T* s, const T* bias, int64_t N, int64_t E,
                 const TopkSpec& spec, const Ctx& ctx) {
  const int k = spec.k, G = spec.n_group;
  const int per_group = static_cast<int>(E / std::max(G, 1));
  const int threads = ctx.threads_for(N * E);
  // per-thread scratch from the workspace: biased (E), val (E), group_score (G); cand (E), pick
  const int64_t nT = 2 * E + G, nI = E + std::max<int64_t>(E, G);
  const int64_t per_thread = nT * int64_t(sizeof(T)) + nI * int64_t(sizeof(int32_t));
  std::byte* base = ctx.scratch<std::byte>(size_t(per_thread * threads));
#pragma omp parallel num_threads(threads)
  {
    std::byte* mine = base + per_thread * omp_get_thread_num();
    T* biased = reinterpret_cast<T*>(mine);
    T* val = biased + E;
    T* group_score = val + E;
    int32_t* cand = reinterpret_cast<int32_t*>(mine + nT * int64_t(sizeof(T)));
    int32_t* pick = cand + E;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* sr = s + n * E;
      for (int64_t e = 0; e < E; ++e) biased[e] = sr[e] + (bias ? bias[e] : T(0));
      int32_t* out = idx + n * k;
      T gap = std::numeric_limits<T>::infinity();
      if (spec.method == TopkMethod::greedy) {
        gap = pick_top<T>(out, biased, nullptr, static_cast<int>(E), k);
      } else if (spec.method == TopkMethod::group_limited) {
        const int top_in_group = std::min(2, per_group);
        for (int g = 0; g < G; ++g) {
          const T* b = biased + g * per_group;
          group_score[g] = 0;
          pick_top<T>(pick, b, nullptr, per_group, top_in_group);
          for (int j = 0; j < top_in_group; ++j) group_score[g] += b[pick[j]];
        }
        gap = pick_top<T>(pick, group_score, nullptr, G, spec.topk_group);
        std::sort(pick, pick + spec.topk_group);  // candidates in expert order
        int n_cand = 0;
        for (int j = 0; j < spec.topk_group; ++j)
          for (int e = pick[j] * per_group; e < (pick[j] + 1) * per_group; ++e) {
            cand[n_cand] = e;
            val[n_cand++] = biased[e];
          }
        gap = std::min(gap, pick_top<T>(out, val, cand, n_cand, k));
      } else {  // moge
        const int k_per = k / G;
        for (int g = 0; g < G; ++g) {
          for (int j = 0; j < per_group; ++j) cand[j] = g * per_group + j;
          gap = std::min(gap, pick_top<T>(out + g * k_per, biased + g * per_group, cand, per_group, k_per));
        }
      }
      if (margin) margin[n] = gap;
    }
  }
}

template <class T>
void router_gates_forward(T* g, const T* s, const int32_t* idx, const T* router_scale, int64_t N,
                          int64_t E, int k, bool norm_topk_prob, double scaling, const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * k))
  for (int64_t n = 0; n < N; ++n) {
    const T* sr = s + n * E;
    const int32_t* ir = idx + n * k;
    T* gr = g + n * k;
    T denom = 1;
    if (norm_topk_prob) {
      denom = 0;
      for (int j = 0; j < k; ++j) denom += sr[ir[j]];
      denom += T(1e-20);
    }
    for (int j = 0; j < k; ++j) {
      gr[j] = sr[ir[j]] / denom * T(scaling);
      if (router_scale) gr[j] *= router_scale[ir[j]];
    }
  }
}

template <class T>
void router_gates_backward(T* ds, T* d_router_scale, const T* dg, const T* s, const int32_t* idx,
                           const T* router_scale, int64_t N, int64_t E, int k,
                           bool norm_topk_prob, double scaling, const Ctx& ctx) {
  auto denom_of = [&](int64_t n) {
    if (!norm_topk_prob) return T(1);
    T d = 0;
    for (int j = 0; j < k; ++j) d += s[n * E + idx[n * k + j]];
    return d + T(1e-20);
  };
  const T c = T(scaling);
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * E))
  for (int64_t n = 0; n < N; ++n) {
    const T* sr = s + n * E;
    const int32_t* ir = idx + n * k;
    const T* dgr = dg + n * k;
    T* dsr = ds + n * E;
    const T denom = denom_of(n);
    // u_j: gradient w.r.t. the normalised score a_j / denom
    T dot = 0;
    for (int j = 0; j < k; ++j) {
      T u = dgr[j] * c * (router_scale ? router_scale[ir[j]] : T(1));
      dsr[ir[j]] += u / denom;
      dot += u * sr[ir[j]];
    }
    if (norm_topk_prob)
      for (int j = 0; j < k; ++j) dsr[ir[j]] -= dot / (denom * denom);
  }
  if (d_router_scale) {
    column_reduce<T>(d_router_scale, N, E, ctx, [&](int64_t n, T* acc) {
      const T denom = denom_of(n);
      for (int j = 0; j < k; ++j) {
        int32_t e = idx[n * k + j];
        acc[e] += dg[n * k + j] * s[n * E + e] / denom * c;
      }
    });
  }
}

void register_router(Backend& b) {
  b.f32.router_scores_forward = &router_scores_forward<float>;
  b.f32.router_scores_backward = &router_scores_backward<float>;
  b.f32.router_topk = &router_topk<float>;
  b.f32.router_gates_forward = &router_gates_forward<float>;
  b.f32.router_gates_backward = &router_gates_backward<float>;
  b.f64.router_scores_forward = &router_scores_forward<double>;
  b.f64.router_scores_backward = &router_scores_backward<double>;
  b.f64.router_topk = &router_topk<double>;
  b.f64.router_gates_forward = &router_gates_forward<double>;
  b.f64.router_gates_backward = &router_gates_backward<double>;
}

}  // namespace cpu

template <class T>
void router_scores_forward(T* s, const T* z, int64_t N, int64_t E, ScoreFunc func, const Ctx& ctx) {
  UM_OP(router_scores_forward, T, ctx)(s, z, N, E, func, ctx);
}

template <class T>
void router_scores_backward(T* dz, const T* ds, const T* s, int64_t N, int64_t E, ScoreFunc func,
                            const Ctx& ctx) {
  UM_OP(router_scores_backward, T, ctx)(dz, ds, s, N, E, func, ctx);
}

template <class T>
void router_topk(int32_t* idx, T* margin, const T* s, const T* bias, int64_t N, int64_t E,
                 const TopkSpec& spec, const Ctx& ctx) {
  UM_OP(router_topk, T, ctx)(idx, margin, s, bias, N, E, spec, ctx);
}

template <class T>
void router_gates_forward(T* g, const T* s, const int32_t* idx, const T* router_scale, int64_t N,
                          int64_t E, int k, bool norm_topk_prob, double scaling, const Ctx& ctx) {
  UM_OP(router_gates_forward, T, ctx)(g, s, idx, router_scale, N, E, k, norm_topk_prob, scaling, ctx);
}

template <class T>
void router_gates_backward(T* ds, T* d_router_scale, const T* dg, const T* s, const int32_t* idx,
                           const T* router_scale, int64_t N, int64_t E, int k,
                           bool norm_topk_prob, double scaling, const Ctx& ctx) {
  UM_OP(router_gates_backward, T, ctx)(ds, d_router_scale, dg, s, idx, router_scale, N, E, k,
                                       norm_topk_prob, scaling, ctx);
}

UM_INSTANTIATE_ACC_OP(router_scores_forward)
UM_INSTANTIATE_ACC_OP(router_scores_backward)
UM_INSTANTIATE_ACC_OP(router_topk)
UM_INSTANTIATE_ACC_OP(router_gates_forward)
UM_INSTANTIATE_ACC_OP(router_gates_backward)

}  // namespace um
