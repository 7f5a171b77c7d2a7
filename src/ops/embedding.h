// Embedding lookup.  y (N,D) = W[ids]   W: (V,D)   ids: (N) in [0, V)
// backward: dW[ids[n]] += dy[n]  (scatter-add into acc_t<T>), deterministic on every backend:
//   cpu:  threads split the D columns, so every row of dW is updated in token order by one
//         thread (no atomics, thread-count-independent).
//   cuda: one task per distinct id sums that id's rows in token order (TokensById, built on the
//         host with the batch), then adds the sum to the row: no atomics, run-to-run identical.
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

// The tokens of a batch grouped by id: rows[start[u] .. start[u+1]) are the token indices whose
// id is id[u], in token order; u < n_ids. Device memory, built on the host by the batch code.
struct TokensById {
  const int32_t* rows = nullptr;   // (N)
  const int32_t* start = nullptr;  // (n_ids + 1)
  const int32_t* id = nullptr;     // (n_ids)
  int64_t n_ids = 0;
};

// Host helper: fills rows/start/id (sized N, n_ids + 1, n_ids; `count` is scratch of size V)
// from ids; returns n_ids. A stable counting sort.
int64_t group_tokens_by_id(int32_t* rows, int32_t* start, int32_t* id, int32_t* count,
                           const int32_t* ids, int64_t N, int64_t V);

template <class T>
void embedding_forward(T* y, const int32_t* ids, const T* W, int64_t N, int64_t D,
                       const Ctx& ctx);

template <class T>
void embedding_backward(acc_t<T>* dW, const T* dy, const int32_t* ids, const TokensById& by_id,
                        int64_t N, int64_t D, const Ctx& ctx);

}  // namespace um
