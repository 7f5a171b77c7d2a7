// Embedding lookup.  y (N,D) = W[ids]   W: (V,D)   ids: (N) in [0, V)
// backward: dW[ids[n]] += dy[n]  (scatter-add). Threads split the D columns, so every row of dW
// is updated in token order by one thread: no atomics and a thread-count-independent result.
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

template <class T>
void embedding_forward(T* y, const int32_t* ids, const T* W, int64_t N, int64_t D,
                       const Ctx& ctx);

template <class T>
void embedding_backward(T* dW, const T* dy, const int32_t* ids, int64_t N, int64_t D,
                        const Ctx& ctx);

}  // namespace um
