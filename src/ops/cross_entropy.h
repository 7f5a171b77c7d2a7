// Fused LM head + cross-entropy, chunked over rows so the (N, V) logits never exist at once.
//   logits = h W^T          h: (N, D)   W: (V, D)   targets: (N) int32, < 0 means ignored
//   returns sum over valid rows of -log softmax(logits)_target (double; the caller divides by
//   the global target count)
// When dh/dW are given, the backward runs in the same pass (the loss is the end of the graph):
//   dl = scale * (softmax - onehot(target)) per valid row, 0 for ignored rows
//   dh (N, D) = dl W  (written)      dW (V, D) += dl^T h   (acc_t<T>)
// The softmax and the loss are computed in acc_t<T> (f32 for bf16); the sum is returned in double
// (on the CUDA backend this return is a host sync).
// logits_out (N, V) and argmax_out (N) are optional copies for tests, eval and MTP acceptance,
// on ctx's device like every other argument.
// Scratch: one chunk of rows x V logits.
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

template <class T>
double lm_head_cross_entropy(T* dh, acc_t<T>* dW, T* logits_out, int32_t* argmax_out, const T* h,
                             const T* W, const int32_t* targets, int64_t N, int64_t D, int64_t V,
                             double scale, const Ctx& ctx);

// Rows per chunk for a vocabulary of V: about 4M logits per chunk, at least 16 rows.
int64_t ce_chunk_rows(int64_t V);

}  // namespace um
