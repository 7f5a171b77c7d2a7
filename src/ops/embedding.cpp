#include "ops/embedding.h"

#include <algorithm>
#include <cstring>

#include "ops/backend.h"

namespace um {

int64_t group_tokens_by_id(int32_t* rows, int32_t* start, int32_t* id, int32_t* count,
                           const int32_t* ids, int64_t N, int64_t V) {
  std::fill(count, count + V, 0);
  for (int64_t n = 0; n < N; ++n) ++count[ids[n]];
  int64_t n_ids = 0, at = 0;
  for (int64_t v = 0; v < V; ++v) {
    if (count[v] == 0) continue;
    id[n_ids] = static_cast<int32_t>(v);
    start[n_ids] = static_cast<int32_t>(at);
    const int32_t c = count[v];
    count[v] = static_cast<int32_t>(at);  // becomes the cursor of id v
    at += c;
    ++n_ids;
  }
  start[n_ids] = static_cast<int32_t>(at);
  for (int64_t n = 0; n < N; ++n) rows[count[ids[n]]++] = static_cast<int32_t>(n);
  return n_ids;
}

namespace cpu {

template <class T>
void embedding_forward(T* y, const int32_t* ids, const T* W, int64_t N, int64_t D,
                       const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * D))
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(y + n * D, W + static_cast<int64_t>(ids[n]) * D, sizeof(T) * D);
}

template <class T>
void embedding_backward(T* dW, const T* dy, const int32_t* ids, const TokensById&, int64_t N,
                        int64_t D, const Ctx& ctx) {
  constexpr int64_t kCols = 16;  // columns per task: one cache line of f32
  int64_t n_tasks = (D + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * D))
  for (int64_t t = 0; t < n_tasks; ++t) {
    int64_t d0 = t * kCols, d1 = std::min(D, d0 + kCols);
    for (int64_t n = 0; n < N; ++n) {
      T* row = dW + static_cast<int64_t>(ids[n]) * D;
      const T* g = dy + n * D;
      for (int64_t d = d0; d < d1; ++d) row[d] += g[d];
    }
  }
}

void register_embedding(Backend& b) {
  b.f32.embedding_forward = &embedding_forward<float>;
  b.f32.embedding_backward = &embedding_backward<float>;
  b.f64.embedding_forward = &embedding_forward<double>;
  b.f64.embedding_backward = &embedding_backward<double>;
}

}  // namespace cpu

template <class T>
void embedding_forward(T* y, const int32_t* ids, const T* W, int64_t N, int64_t D, const Ctx& ctx) {
  UM_OP(embedding_forward, T, ctx)(y, ids, W, N, D, ctx);
}

template <class T>
void embedding_backward(acc_t<T>* dW, const T* dy, const int32_t* ids, const TokensById& by_id,
                        int64_t N, int64_t D, const Ctx& ctx) {
  UM_OP(embedding_backward, T, ctx)(dW, dy, ids, by_id, N, D, ctx);
}

UM_INSTANTIATE_OP(embedding_forward)
UM_INSTANTIATE_OP(embedding_backward)

}  // namespace um
