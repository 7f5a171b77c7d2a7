// MoE router ops (design.md 1.5): scores, top-k selection, gates. The router GEMM z = x Wr^T is a
// plain linear, in f32 on f32 copies of x and Wr (design.md 1.5), so every router op runs on the
// accumulation type: T is f32 (or f64 in tests), also in a bf16 model. Selection has no
// gradient; gradients reach z through the selected gates (and, in the model, through the
// balance loss).
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

enum class ScoreFunc : uint8_t { sigmoid, softmax };
enum class TopkMethod : uint8_t { greedy, group_limited, moge };

// s (N,E) = sigmoid(z) or row-wise softmax(z)
template <class T>
void router_scores_forward(T* s, const T* z, int64_t N, int64_t E, ScoreFunc func, const Ctx& ctx);
// dz (N,E) written from ds
template <class T>
void router_scores_backward(T* dz, const T* ds, const T* s, int64_t N, int64_t E, ScoreFunc func,
                            const Ctx& ctx);

struct TopkSpec {
  TopkMethod method = TopkMethod::greedy;
  int k = 1;           // experts per token
  int n_group = 1;     // group_limited: groups; moge: M groups, k/M chosen in each
  int topk_group = 1;  // group_limited: groups kept
};

// idx (N,k): selected experts, ranked by s + bias descending (ties: lower expert index first;
// for moge, group by group). bias (E) may be null (= 0). Selection only: no gradient.
//   greedy:        top-k of s+b over all E
//   group_limited: group score = sum of the min(2, group size) largest s+b in the group; keep the
//                  topk_group best groups (ties: lower group); top-k of s+b inside them
//   moge:          top (k / n_group) of s+b inside each of the n_group contiguous groups
// margin (N) optional: the selection margin of each token — the smallest gap between a chosen
// and a rejected candidate at any decision (group choice or expert choice); +inf if no choice.
template <class T>
void router_topk(int32_t* idx, T* margin, const T* s, const T* bias, int64_t N, int64_t E,
                 const TopkSpec& spec, const Ctx& ctx);

// g (N,k) = s[idx], renormalised over the k (denominator + 1e-20) if norm_topk_prob, times
// scaling, times router_scale[idx] if router_scale is given.
template <class T>
void router_gates_forward(T* g, const T* s, const int32_t* idx, const T* router_scale, int64_t N,
                          int64_t E, int k, bool norm_topk_prob, double scaling, const Ctx& ctx);
// ds (N,E) += d s from dg (only the selected columns change); d_router_scale (E) += if given.
template <class T>
void router_gates_backward(T* ds, T* d_router_scale, const T* dg, const T* s, const int32_t* idx,
                           const T* router_scale, int64_t N, int64_t E, int k,
                           bool norm_topk_prob, double scaling, const Ctx& ctx);

}  // namespace um
