#include "ops/permute.h"

#include <algorithm>
#include <cstring>

#include "ops/backend.h"

namespace um {
namespace cpu {

void routing_permutation(int32_t* offsets, int32_t* row_pair, int32_t* pair_row,
                         const int32_t* expert, const uint8_t* keep, int64_t N, int K, int64_t E,
                         const Ctx&) {
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
}

// Pairs are bucketed by expert (counting sort), then each bucket is ordered by (score desc, pair
// index asc) in place; the first C of a bucket are kept.
template <class T>
void capacity_keep(uint8_t* keep, const int32_t* idx, const T* s, int64_t N, int64_t K, int64_t E,
                   int64_t C, const Ctx& ctx) {
  int64_t* start = ctx.scratch<int64_t>(size_t(E + 1 + N * K));
  int64_t* order = start + E + 1;
  std::fill(start, start + E + 1, 0);
  for (int64_t p = 0; p < N * K; ++p) ++start[idx[p] + 1];
  for (int64_t e = 0; e < E; ++e) start[e + 1] += start[e];
  for (int64_t p = 0; p < N * K; ++p) order[start[idx[p]]++] = p;
  for (int64_t e = E; e > 0; --e) start[e] = start[e - 1];
  start[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    int64_t* b = order + start[e];
    const int64_t n = start[e + 1] - start[e];
    std::sort(b, b + n, [&](int64_t x, int64_t y) {
      const T sx = s[(x / K) * E + e], sy = s[(y / K) * E + e];
      return sx > sy || (sx == sy && x < y);
    });
    for (int64_t r = 0; r < n; ++r) keep[b[r]] = r < C;
  }
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

template <class T>
void gather_rows(T* dst, const T* src, const int32_t* perm, int64_t n, int64_t D, const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(n * D))
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * D, src + int64_t(perm[i]) * D, sizeof(T) * D);
}
template <class T>
void scatter_rows(T* dst, const T* src, const int32_t* perm, int64_t n, int64_t D, const Ctx& ctx) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(n * D))
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + int64_t(perm[i]) * D, src + i * D, sizeof(T) * D);
}

template <class T>
void register_permute_types(OpTable<T>& t) {
  t.capacity_keep = &capacity_keep<T>;
  t.permute_rows_forward = &permute_rows_forward<T>;
  t.permute_rows_backward = &permute_rows_backward<T>;
  t.combine_rows_forward = &combine_rows_forward<T>;
  t.combine_rows_backward = &combine_rows_backward<T>;
  t.gather_rows = &gather_rows<T>;
  t.scatter_rows = &scatter_rows<T>;
}

void register_permute(Backend& b) {
  b.routing_permutation = &routing_permutation;
  register_permute_types(b.f32);
  register_permute_types(b.f64);
}

}  // namespace cpu

void routing_permutation(int32_t* offsets, int32_t* row_pair, int32_t* pair_row,
                         const int32_t* expert, const uint8_t* keep, int64_t N, int K, int64_t E,
                         const Ctx& ctx) {
  op_entry(backend_of(ctx.device).routing_permutation, "routing_permutation", ctx.device, DType::i32)(
      offsets, row_pair, pair_row, expert, keep, N, K, E, ctx);
}

template <class T>
void capacity_keep(uint8_t* keep, const int32_t* idx, const T* s, int64_t N, int64_t K, int64_t E,
                   int64_t C, const Ctx& ctx) {
  UM_OP(capacity_keep, T, ctx)(keep, idx, s, N, K, E, C, ctx);
}

template <class T>
void permute_rows_forward(T* xp, const T* x, const int32_t* row_pair, int64_t R, int K, int64_t D,
                          const Ctx& ctx) {
  UM_OP(permute_rows_forward, T, ctx)(xp, x, row_pair, R, K, D, ctx);
}

template <class T>
void permute_rows_backward(T* dx, const T* dxp, const int32_t* pair_row, int64_t N, int K,
                           int64_t D, bool accumulate, const Ctx& ctx) {
  UM_OP(permute_rows_backward, T, ctx)(dx, dxp, pair_row, N, K, D, accumulate, ctx);
}

template <class T>
void combine_rows_forward(T* y, const T* yp, const acc_t<T>* gate, const int32_t* pair_row,
                          int64_t N, int K, int64_t D, bool accumulate, const Ctx& ctx) {
  UM_OP(combine_rows_forward, T, ctx)(y, yp, gate, pair_row, N, K, D, accumulate, ctx);
}

template <class T>
void combine_rows_backward(T* dyp, acc_t<T>* dgate, const T* dy, const T* yp,
                           const acc_t<T>* gate, const int32_t* pair_row, int64_t N, int K,
                           int64_t D, const Ctx& ctx) {
  UM_OP(combine_rows_backward, T, ctx)(dyp, dgate, dy, yp, gate, pair_row, N, K, D, ctx);
}

template <class T>
void gather_rows(T* dst, const T* src, const int32_t* perm, int64_t n, int64_t D, const Ctx& ctx) {
  UM_OP(gather_rows, T, ctx)(dst, src, perm, n, D, ctx);
}

template <class T>
void scatter_rows(T* dst, const T* src, const int32_t* perm, int64_t n, int64_t D, const Ctx& ctx) {
  UM_OP(scatter_rows, T, ctx)(dst, src, perm, n, D, ctx);
}

UM_INSTANTIATE_ACC_OP(capacity_keep)
UM_INSTANTIATE_OP(permute_rows_forward)
UM_INSTANTIATE_OP(permute_rows_backward)
UM_INSTANTIATE_OP(combine_rows_forward)
UM_INSTANTIATE_OP(combine_rows_backward)
UM_INSTANTIATE_OP(gather_rows)
UM_INSTANTIATE_OP(scatter_rows)

}  // namespace um
