#include "ops/rope.h"

#include <cmath>

#include "ops/backend.h"

namespace um {

template <class T>
void rope_tables(T* cos_tab, T* sin_tab, int64_t max_pos, int d, double theta) {
  int half = d / 2;
  for (int64_t p = 0; p < max_pos; ++p)
    for (int j = 0; j < half; ++j) {
      double inv_freq = std::pow(theta, -2.0 * j / d);
      double a = static_cast<double>(p) * inv_freq;
      cos_tab[p * half + j] = static_cast<T>(std::cos(a));
      sin_tab[p * half + j] = static_cast<T>(std::sin(a));
    }
}

namespace cpu {
namespace {
// sign = +1: forward rotation; -1: inverse rotation.
template <class T>
void rotate(T* y, const T* x, const int32_t* pos, const T* cos_tab, const T* sin_tab, int64_t N,
            int n_heads, int64_t ld, int64_t head_stride, int d, T sign, const Ctx& ctx) {
  int half = d / 2;
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * n_heads * d))
  for (int64_t n = 0; n < N; ++n) {
    const T* c = cos_tab + static_cast<int64_t>(pos[n]) * half;
    const T* s = sin_tab + static_cast<int64_t>(pos[n]) * half;
    for (int h = 0; h < n_heads; ++h) {
      const T* xr = x + n * ld + h * head_stride;
      T* yr = y + n * ld + h * head_stride;
      for (int j = 0; j < half; ++j) {
        T a = xr[j], b = xr[j + half], sn = sign * s[j];
        yr[j] = a * c[j] - b * sn;
        yr[j + half] = b * c[j] + a * sn;
      }
    }
  }
}
}  // namespace

template <class T>
void rope_forward(T* y, const T* x, const int32_t* pos, const T* cos_tab, const T* sin_tab,
                  int64_t N, int n_heads, int64_t ld, int64_t head_stride, int d, const Ctx& ctx) {
  rotate<T>(y, x, pos, cos_tab, sin_tab, N, n_heads, ld, head_stride, d, T(1), ctx);
}

template <class T>
void rope_backward(T* dx, const T* dy, const int32_t* pos, const T* cos_tab, const T* sin_tab,
                   int64_t N, int n_heads, int64_t ld, int64_t head_stride, int d, const Ctx& ctx) {
  rotate<T>(dx, dy, pos, cos_tab, sin_tab, N, n_heads, ld, head_stride, d, T(-1), ctx);
}

void register_rope(Backend& b) {
  b.f32.rope_forward = &rope_forward<float>;
  b.f32.rope_backward = &rope_backward<float>;
  b.f64.rope_forward = &rope_forward<double>;
  b.f64.rope_backward = &rope_backward<double>;
}

}  // namespace cpu

template <class T>
void rope_forward(T* y, const T* x, const int32_t* pos, const acc_t<T>* cos_tab, const acc_t<T>* sin_tab,
                  int64_t N, int n_heads, int64_t ld, int64_t head_stride, int d, const Ctx& ctx) {
  UM_OP(rope_forward, T, ctx)(y, x, pos, cos_tab, sin_tab, N, n_heads, ld, head_stride, d, ctx);
}

template <class T>
void rope_backward(T* dx, const T* dy, const int32_t* pos, const acc_t<T>* cos_tab, const acc_t<T>* sin_tab,
                   int64_t N, int n_heads, int64_t ld, int64_t head_stride, int d, const Ctx& ctx) {
  UM_OP(rope_backward, T, ctx)(dx, dy, pos, cos_tab, sin_tab, N, n_heads, ld, head_stride, d, ctx);
}

UM_INSTANTIATE_OP(rope_forward)
UM_INSTANTIATE_OP(rope_backward)
template void rope_tables<float>(float*, float*, int64_t, int, double);
template void rope_tables<double>(double*, double*, int64_t, int, double);

}  // namespace um
