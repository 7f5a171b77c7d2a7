#include "ops/permute.h"

#include <algorithm>
#include <cstring>

namespace um {

int64_t routing_permutation(int32_t* offsets, int32_t* row_pair, int32_t* pair_row,
                            const int32_t* expert, const uint8_t* keep, int64_t N, int K,
                            int64_t E) {
  const int64_t P = N * K;
  std::fill(offsets, offsets + E + 1, 0);
  for (int64_t p = 0; p < P; ++p)
    if (!keep || keep[p]) ++offsets[expert[p] + 1];
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
  // Stable counting sort; offsets[e] is used as the cursor and restored afterwards.
  for (int64_t p = 0; p < P; ++p) {
    if (keep && !keep[p]) {
      pair_row[p] = -1;
      continue;
    }
    int32_t r = offsets[expert[p]]++;
    row_pair[r] = static_cast<int32_t>(p);
    pair_row[p] = r;
  }
  for (int64_t e = E; e > 0; --e) offsets[e] = offsets[e - 1];
  offsets[0] = 0;
  return offsets[E];
}

template <class T>
void permute_rows_forward(T* xp, const T* x, const int32_t* row_pair, int64_t R, int K, int64_t D,
                          const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(R * D))
  for (int64_t r = 0; r < R; ++r)
    std::memcpy(xp + r * D, x + static_cast<int64_t>(row_pair[r] / K) * D, sizeof(T) * D);
}

template <class T>
void permute_rows_backward(T* dx, const T* dxp, const int32_t* pair_row, int64_t N, int K,
                           int64_t D, bool accumulate, const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * K * D))
  for (int64_t t = 0; t < N; ++t) {
    T* out = dx + t * D;
    if (!accumulate) std::fill(out, out + D, T(0));
    for (int j = 0; j < K; ++j) {
      int32_t r = pair_row[t * K + j];
      if (r < 0) continue;
      const T* src = dxp + static_cast<int64_t>(r) * D;
      for (int64_t d = 0; d < D; ++d) out[d] += src[d];
    }
  }
}

template <class T>
void combine_rows_forward(T* y, const T* yp, const T* gate, const int32_t* pair_row, int64_t N,
                          int K, int64_t D, bool accumulate, const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * K * D))
  for (int64_t t = 0; t < N; ++t) {
    T* out = y + t * D;
    if (!accumulate) std::fill(out, out + D, T(0));
    for (int j = 0; j < K; ++j) {
      int32_t r = pair_row[t * K + j];
      if (r < 0) continue;
      const T g = gate[t * K + j];
      const T* src = yp + static_cast<int64_t>(r) * D;
      for (int64_t d = 0; d < D; ++d) out[d] += g * src[d];
    }
  }
}

template <class T>
void combine_rows_backward(T* dyp, T* dgate, const T* dy, const T* yp, const T* gate,
                           const int32_t* pair_row, int64_t N, int K, int64_t D, const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * K * D))
  for (int64_t t = 0; t < N; ++t) {
    const T* g_out = dy + t * D;
    for (int j = 0; j < K; ++j) {
      const int64_t p = t * K + j;
      const int32_t r = pair_row[p];
      if (r < 0) {
        dgate[p] = 0;
        continue;
      }
      const T* src = yp + static_cast<int64_t>(r) * D;
      T* dst = dyp + static_cast<int64_t>(r) * D;
      T dot = 0;
      for (int64_t d = 0; d < D; ++d) {
        dot += g_out[d] * src[d];
        dst[d] = gate[p] * g_out[d];
      }
      dgate[p] = dot;
    }
  }
}

#define UM_INSTANTIATE(T)                                                                      \
  template void permute_rows_forward<T>(T*, const T*, const int32_t*, int64_t, int, int64_t,   \
                                        const Ctx&);                                           \
  template void permute_rows_backward<T>(T*, const T*, const int32_t*, int64_t, int, int64_t,  \
                                         bool, const Ctx&);                                    \
  template void combine_rows_forward<T>(T*, const T*, const T*, const int32_t*, int64_t, int,  \
                                        int64_t, bool, const Ctx&);                            \
  template void combine_rows_backward<T>(T*, T*, const T*, const T*, const T*, const int32_t*, \
                                         int64_t, int, int64_t, const Ctx&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
#undef UM_INSTANTIATE

}  // namespace um
