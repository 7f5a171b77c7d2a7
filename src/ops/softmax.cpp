#include "ops/softmax.h"

#include <algorithm>
#include <limits>

#include "ops/backend.h"
#include "ops/vmath.h"

namespace um {
namespace cpu {

template <class T>
void masked_softmax_rows(T* S, int64_t rows, int64_t n, int64_t lo, int64_t hi, const Ctx&) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = S + r * n;
    T mx = -std::numeric_limits<T>::infinity();
    for (int64_t j = lo; j <= hi; ++j) mx = std::max(mx, row[j]);
    T l = 0;
#pragma omp simd reduction(+ : l)
    for (int64_t j = lo; j <= hi; ++j) {
      row[j] = exp_fast(row[j] - mx);
      l += row[j];
    }
    const T inv = T(1) / l;
    for (int64_t j = lo; j <= hi; ++j) row[j] *= inv;
    std::fill(row, row + lo, T(0));
    std::fill(row + hi + 1, row + n, T(0));
  }
}

void register_softmax(Backend& b) {
  b.f32.masked_softmax_rows = &masked_softmax_rows<float>;
  b.f64.masked_softmax_rows = &masked_softmax_rows<double>;
}

}  // namespace cpu

template <class T>
void masked_softmax_rows(T* S, int64_t rows, int64_t n, int64_t lo, int64_t hi, const Ctx& ctx) {
  UM_OP(masked_softmax_rows, T, ctx)(S, rows, n, lo, hi, ctx);
}

UM_INSTANTIATE_OP(masked_softmax_rows)

}  // namespace um
