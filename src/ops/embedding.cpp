#include "ops/embedding.h"

#include <algorithm>
#include <cstring>

namespace um {

template <class T>
void embedding_forward(T* y, const int32_t* ids, const T* W, int64_t N, int64_t D,
                       const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * D))
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(y + n * D, W + static_cast<int64_t>(ids[n]) * D, sizeof(T) * D);
}

template <class T>
void embedding_backward(T* dW, const T* dy, const int32_t* ids, int64_t N, int64_t D,
                        const Ctx& ctx) {
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

#define UM_INSTANTIATE(T)                                                                     \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t,          \
                                     const Ctx&);                                             \
  template void embedding_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t,         \
                                      const Ctx&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
#undef UM_INSTANTIATE

}  // namespace um
