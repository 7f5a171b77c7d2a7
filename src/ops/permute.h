// Token permutation for dropless MoE (design.md 1.5): the (token, slot) pairs of a routing decision
// are sorted by expert so each expert's rows are one contiguous segment, a grouped GEMM runs over
// the segments, and the results are combined back per token with their gates.
// A pair p = t*K + j is token t's j-th selected expert. Sorting is stable (token order inside an
// expert), so the layout is deterministic. Everything here runs on ctx's device; the MoE layer
// reads `offsets` back to the host once per layer (the grouped GEMM's shapes).
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

// From expert (N*K) and an optional keep mask (N*K, 0 = dropped pair, capacity mode) builds
//   offsets (E+1): rows of expert e are [offsets[e], offsets[e+1]); R = offsets[E] kept pairs
//   row_pair (R): the pair that each permuted row holds      pair_row (N*K): row of pair, or -1
void routing_permutation(int32_t* offsets, int32_t* row_pair, int32_t* pair_row,
                         const int32_t* expert, const uint8_t* keep, int64_t N, int K, int64_t E,
                         const Ctx& ctx);

// Capacity mode (design.md 1.5): per expert keep the C pairs with the highest unbiased score
// s[t, e] (ties: lower token index), keep (N*K) = 1 for kept pairs, 0 for dropped ones.
// T is the accumulation type (the router's scores).
template <class T>
void capacity_keep(uint8_t* keep, const int32_t* idx, const T* s, int64_t N, int64_t K, int64_t E,
                   int64_t C, const Ctx& ctx);

// xp (R, D): xp[r] = x[row_pair[r] / K]
template <class T>
void permute_rows_forward(T* xp, const T* x, const int32_t* row_pair, int64_t R, int K, int64_t D,
                          const Ctx& ctx);
// dx (N, D) = sum over token t's kept pairs of dxp[pair_row] (written, or added)
template <class T>
void permute_rows_backward(T* dx, const T* dxp, const int32_t* pair_row, int64_t N, int K,
                           int64_t D, bool accumulate, const Ctx& ctx);

// y (N, D) = sum over token t's kept pairs of gate[p] * yp[pair_row[p]] (written, or added);
// gates in acc_t<T>, the sum in acc_t<T>
template <class T>
void combine_rows_forward(T* y, const T* yp, const acc_t<T>* gate, const int32_t* pair_row,
                          int64_t N, int K, int64_t D, bool accumulate, const Ctx& ctx);
// dyp (R, D) = gate[p] * dy[t] (written);  dgate (N*K) = dy[t] . yp[row] (written, 0 if dropped)
template <class T>
void combine_rows_backward(T* dyp, acc_t<T>* dgate, const T* dy, const T* yp,
                           const acc_t<T>* gate, const int32_t* pair_row, int64_t N, int K,
                           int64_t D, const Ctx& ctx);

// Row gathers for expert-parallel dispatch: dst[i] = src[perm[i]] and dst[perm[i]] = src[i],
// rows of D elements, i < n.
template <class T>
void gather_rows(T* dst, const T* src, const int32_t* perm, int64_t n, int64_t D, const Ctx& ctx);
template <class T>
void scatter_rows(T* dst, const T* src, const int32_t* perm, int64_t n, int64_t D, const Ctx& ctx);

}  // namespace um
