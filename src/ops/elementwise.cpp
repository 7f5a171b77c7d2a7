#include "ops/elementwise.h"

#include <algorithm>
#include <cstring>

#include "ops/backend.h"

namespace um {
namespace cpu {

template <class T>
void add_inplace(T* y, const T* x, int64_t n, const Ctx& ctx) {
#pragma omp parallel for simd schedule(static) num_threads(ctx.threads_for(n))
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

template <class T>
void copy_rows(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t rows, int64_t cols,
               bool accumulate, const Ctx& ctx) {
  if (!accumulate && ld_dst == cols && ld_src == cols) {
    if (dst != src) std::memmove(dst, src, sizeof(T) * rows * cols);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(rows * cols))
  for (int64_t r = 0; r < rows; ++r) {
    T* d = dst + r * ld_dst;
    const T* s = src + r * ld_src;
    if (accumulate)
      for (int64_t c = 0; c < cols; ++c) d[c] += s[c];
    else
      std::memcpy(d, s, sizeof(T) * cols);
  }
}

// On the CPU the compute type is its own accumulation type: the casts are copies (or adds).
template <class T>
void cast_to_acc(T* dst, const T* src, int64_t n, const Ctx& ctx) {
  cpu::copy_rows<T>(dst, n, src, n, 1, n, false, ctx);
}
template <class T>
void cast_from_acc(T* dst, const T* src, int64_t n, bool accumulate, const Ctx& ctx) {
  if (accumulate) cpu::add_inplace<T>(dst, src, n, ctx);
  else cpu::copy_rows<T>(dst, n, src, n, 1, n, false, ctx);
}

template <class T>
void fill(T* p, int64_t n, double value, const Ctx&) {
  std::fill(p, p + n, T(value));
}

template <class T>
void mla_kv_assemble_forward(T* k, T* v, const T* kv, const T* kva, int64_t N, int H, int nope,
                             int rd, int dv, int64_t kva_ld, int64_t kv_lora, const Ctx& ctx) {
  const int64_t dqk = nope + rd;
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * H * dqk))
  for (int64_t n = 0; n < N; ++n) {
    const T* kv_row = kv + n * H * (nope + dv);
    for (int64_t h = 0; h < H; ++h) {
      std::memcpy(k + (n * H + h) * dqk, kv_row + h * (nope + dv), sizeof(T) * nope);
      std::memcpy(k + (n * H + h) * dqk + nope, kva + n * kva_ld + kv_lora, sizeof(T) * rd);
      std::memcpy(v + (n * H + h) * dv, kv_row + h * (nope + dv) + nope, sizeof(T) * dv);
    }
  }
}

template <class T>
void mla_kv_assemble_backward(T* dkv, T* dkva, const T* dk, const T* dv, int64_t N, int H, int nope,
                              int rd, int dv_dim, int64_t kva_ld, int64_t kv_lora, const Ctx& ctx) {
  const int64_t dqk = nope + rd;
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * H * dqk))
  for (int64_t n = 0; n < N; ++n) {
    T* dkv_row = dkv + n * H * (nope + dv_dim);
    T* dpe = dkva + n * kva_ld + kv_lora;
    std::fill(dpe, dpe + rd, T(0));
    for (int64_t h = 0; h < H; ++h) {
      const T* dk_h = dk + (n * H + h) * dqk;
      std::memcpy(dkv_row + h * (nope + dv_dim), dk_h, sizeof(T) * nope);
      std::memcpy(dkv_row + h * (nope + dv_dim) + nope, dv + (n * H + h) * dv_dim, sizeof(T) * dv_dim);
      for (int64_t j = 0; j < rd; ++j) dpe[j] += dk_h[nope + j];
    }
  }
}

template <class T>
void register_elementwise_types(OpTable<T>& t) {
  t.add_inplace = &add_inplace<T>;
  t.copy_rows = &copy_rows<T>;
  t.cast_to_acc = &cast_to_acc<T>;
  t.cast_from_acc = &cast_from_acc<T>;
  t.fill = &fill<T>;
  t.mla_kv_assemble_forward = &mla_kv_assemble_forward<T>;
  t.mla_kv_assemble_backward = &mla_kv_assemble_backward<T>;
}

void register_elementwise(Backend& b) {
  register_elementwise_types(b.f32);
  register_elementwise_types(b.f64);
}

}  // namespace cpu

template <class T>
void add_inplace(T* y, const T* x, int64_t n, const Ctx& ctx) {
  UM_OP(add_inplace, T, ctx)(y, x, n, ctx);
}

template <class T>
void copy_rows(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t rows, int64_t cols,
               bool accumulate, const Ctx& ctx) {
  UM_OP(copy_rows, T, ctx)(dst, ld_dst, src, ld_src, rows, cols, accumulate, ctx);
}

template <class T>
void cast_to_acc(acc_t<T>* dst, const T* src, int64_t n, const Ctx& ctx) {
  UM_OP(cast_to_acc, T, ctx)(dst, src, n, ctx);
}

template <class T>
void cast_from_acc(T* dst, const acc_t<T>* src, int64_t n, bool accumulate, const Ctx& ctx) {
  UM_OP(cast_from_acc, T, ctx)(dst, src, n, accumulate, ctx);
}

template <class T>
void fill(T* p, int64_t n, double value, const Ctx& ctx) {
  UM_OP(fill, T, ctx)(p, n, value, ctx);
}

template <class T>
void mla_kv_assemble_forward(T* k, T* v, const T* kv, const T* kva, int64_t N, int H, int nope,
                             int rd, int dv, int64_t kva_ld, int64_t kv_lora, const Ctx& ctx) {
  UM_OP(mla_kv_assemble_forward, T, ctx)(k, v, kv, kva, N, H, nope, rd, dv, kva_ld, kv_lora, ctx);
}

template <class T>
void mla_kv_assemble_backward(T* dkv, T* dkva, const T* dk, const T* dv, int64_t N, int H, int nope,
                              int rd, int dv_dim, int64_t kva_ld, int64_t kv_lora, const Ctx& ctx) {
  UM_OP(mla_kv_assemble_backward, T, ctx)(dkv, dkva, dk, dv, N, H, nope, rd, dv_dim, kva_ld, kv_lora, ctx);
}

UM_INSTANTIATE_OP(add_inplace)
UM_INSTANTIATE_OP(copy_rows)
UM_INSTANTIATE_OP(cast_to_acc)
UM_INSTANTIATE_OP(cast_from_acc)
UM_INSTANTIATE_OP(fill)
UM_INSTANTIATE_OP(mla_kv_assemble_forward)
UM_INSTANTIATE_OP(mla_kv_assemble_backward)

}  // namespace um
