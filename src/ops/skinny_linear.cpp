#include "ops/skinny_linear.h"

#include "ops/backend.h"

#include <algorithm>

namespace um {
namespace cpu {

namespace {

constexpr int64_t kRows = 8;      // rows per pass: their accumulators stay in registers
constexpr int64_t kBlock = 16;    // outputs (rows of W) per task

// Dot products of R x rows with one row of W (the nt inner loop): R accumulators that the compiler
// vectorises as independent reductions, one pass over w.
template <class T, int R>
inline void dots(T* out, const T* x, int64_t ldx, const T* w, int64_t n) {
  T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  const T* xr[8];
  for (int i = 0; i < 8; ++i) xr[i] = x + (i < R ? i : 0) * ldx;
  const T *x0 = xr[0], *x1 = xr[1], *x2 = xr[2], *x3 = xr[3], *x4 = xr[4], *x5 = xr[5], *x6 = xr[6], *x7 = xr[7];
#pragma omp simd reduction(+ : a0, a1, a2, a3, a4, a5, a6, a7)
  for (int64_t k = 0; k < n; ++k) {
    const T wk = w[k];
    a0 += x0[k] * wk;
    if constexpr (R > 1) a1 += x1[k] * wk;
    if constexpr (R > 2) a2 += x2[k] * wk;
    if constexpr (R > 3) a3 += x3[k] * wk;
    if constexpr (R > 4) a4 += x4[k] * wk;
    if constexpr (R > 5) a5 += x5[k] * wk;
    if constexpr (R > 6) a6 += x6[k] * wk;
    if constexpr (R > 7) a7 += x7[k] * wk;
  }
  const T a[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
  for (int i = 0; i < R; ++i) out[i] = a[i];
}

template <class T>
inline void dots(T* out, const T* x, int64_t ldx, int64_t rows, const T* w, int64_t n) {
  switch (rows) {
    case 1: dots<T, 1>(out, x, ldx, w, n); break;
    case 2: dots<T, 2>(out, x, ldx, w, n); break;
    case 3: dots<T, 3>(out, x, ldx, w, n); break;
    case 4: dots<T, 4>(out, x, ldx, w, n); break;
    case 5: dots<T, 5>(out, x, ldx, w, n); break;
    case 6: dots<T, 6>(out, x, ldx, w, n); break;
    case 7: dots<T, 7>(out, x, ldx, w, n); break;
    default: dots<T, 8>(out, x, ldx, w, n); break;
  }
}

}  // namespace

template <class T>
void skinny_linear_forward(T* y, int64_t ldy, const T* x, int64_t ldx, const T* W, int64_t ldw, int64_t N,
                      int64_t n_in, int64_t n_out, const Ctx& ctx) {
  const int64_t n_blocks = (n_out + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * n_in * n_out))
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    const int64_t o1 = std::min(n_out, (blk + 1) * kBlock);
    for (int64_t o = blk * kBlock; o < o1; ++o)
      for (int64_t r = 0; r < N; r += kRows) {  // W's row o is read from memory once, then from L1
        T out[kRows];
        const int64_t rows = std::min(kRows, N - r);
        dots(out, x + r * ldx, ldx, rows, W + o * ldw, n_in);
        for (int64_t i = 0; i < rows; ++i) y[(r + i) * ldy + o] = out[i];
      }
  }
}

void register_skinny_linear(Backend& b) {
  b.f32.skinny_linear_forward = &skinny_linear_forward<float>;
  b.f64.skinny_linear_forward = &skinny_linear_forward<double>;
}

}  // namespace cpu

template <class T>
void skinny_linear_forward(T* y, int64_t ldy, const T* x, int64_t ldx, const T* W, int64_t ldw, int64_t N,
                           int64_t n_in, int64_t n_out, const Ctx& ctx) {
  UM_OP(skinny_linear_forward, T, ctx)(y, ldy, x, ldx, W, ldw, N, n_in, n_out, ctx);
}

UM_INSTANTIATE_OP(skinny_linear_forward)

}  // namespace um
