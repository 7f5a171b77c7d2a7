// Causal self-attention with a document mask, exact softmax, flash-style memory.
//   q, k: (N, H, dqk)   v: (N, H, dv)   o: (N, H, dv)   N = B*T tokens, B sequences of T
//   seg_start: (N) int32 — for token i of its sequence, the first key it may see (the start of its
//   document, as an index within the sequence). Token i attends to keys j with
//   seg_start[i] <= j <= i. seg_start must be constant over each document: seg_start[i] is either
//   i (a document starts) or seg_start[i-1].
//   o_i = sum_j softmax_j(scale * q_i . k_j) v_j        lse: (B, H, T) acc_t<T>, saved: log-sum-exp
//   per row. Scores, softmax and accumulation are computed in acc_t<T>.
// cpu:  each (sequence, head, document) is an independent task; inside it queries go in blocks
//       of up to kQueryBlock rows, and the scores of a block against the document's keys so far
//       are one GEMM. Cost is proportional to the sum of squared document lengths, not T^2 per
//       sequence. Scratch: per thread kQueryBlock*T (forward) or 2*kQueryBlock*T (backward).
// cuda: flash-style tiles (ops/cuda/attention.cu); key tiles outside a query tile's documents
//       are skipped.
// Memory: only lse (B*H*T values) is kept for backward; probabilities are recomputed from it.
// backward writes dq, dk, dv (=).
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

constexpr int64_t kQueryBlock = 128;

template <class T>
void attention_forward(T* o, acc_t<T>* lse, const T* q, const T* k, const T* v, const int32_t* seg_start,
                       int64_t B, int64_t T_len, int H, int dqk, int dv, double scale,
                       const Ctx& ctx);

template <class T>
void attention_backward(T* dq, T* dk, T* dv_out, const T* d_o, const T* o, const acc_t<T>* lse,
                        const T* q, const T* k, const T* v, const int32_t* seg_start, int64_t B,
                        int64_t T_len, int H, int dqk, int dv, double scale, const Ctx& ctx);

}  // namespace um
