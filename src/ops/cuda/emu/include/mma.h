// cuda-emu's mma.h: the WMMA subset our kernels use — nvcuda::wmma fragments of shape 16x16x16
// with __nv_bfloat16 inputs and float accumulators, fill/load/store/mma_sync. Each lane holds
// the whole tile (num_elements is the tile's size, x[] is the tile in row-major order), which
// is enough for code that applies the same element-wise operation to every x[i] and never
// assumes which lane holds which element; it costs 32 times the work of a tile per warp.
// Checked like the hardware requires: pointers 32-byte aligned, ldm a multiple of 16 bytes.
// mma_sync accumulates in float (bf16 products are exact in float); the summation order is
// not the tensor cores'. The loads and stores are collective like the hardware's: each begins
// with a warp barrier, so no lane stores a tile before every lane has loaded what it reads (a
// lane running ahead would otherwise read another lane's store: C += A*B done 32 times).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "cuda-emu: only the m16n16k16 shape is emulated");
  static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float>
                                                 : std::is_same_v<T, __nv_bfloat16>,
                "cuda-emu: matrix_a/matrix_b hold __nv_bfloat16, the accumulator float");
  static_assert(std::is_same_v<Use, accumulator> || std::is_same_v<Layout, row_major> ||
                    std::is_same_v<Layout, col_major>,
                "cuda-emu: matrix_a/matrix_b fragments need a row_major or col_major layout");
  static constexpr int num_elements = 16 * 16;
  T x[num_elements];  // element (r, c) of the tile at x[r * 16 + c]
};

namespace detail {
// Offset of tile element (r, c) in memory of leading dimension ldm.
inline unsigned offset(int r, int c, unsigned ldm, bool row_major) {
  return row_major ? r * ldm + c : c * ldm + r;
}

template <class T>
inline void check_tile_pointer(const T* p, unsigned ldm, const char* function) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    ::um_emu::detail::kernel_fault("%s: pointer %p is not 32-byte aligned", function,
                                   static_cast<const void*>(p));
  if (ldm * sizeof(T) % 16 != 0)
    ::um_emu::detail::kernel_fault("%s: ldm %u is not a multiple of %zu elements", function, ldm,
                                   16 / sizeof(T));
}
}  // namespace detail

template <class Use, class T, class Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f,
                          const std::type_identity_t<T>& value) {
  for (T& e : f.x) e = value;
}

template <class Use, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f,
                             const __nv_bfloat16* p, unsigned ldm) {
  __syncwarp();
  detail::check_tile_pointer(p, ldm, "load_matrix_sync");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.x[r * 16 + c] = p[detail::offset(r, c, ldm, std::is_same_v<Layout, row_major>)];
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
  __syncwarp();
  detail::check_tile_pointer(p, ldm, "load_matrix_sync");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.x[r * 16 + c] = p[detail::offset(r, c, ldm, layout == mem_row_major)];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  __syncwarp();
  detail::check_tile_pointer(p, ldm, "store_matrix_sync");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      p[detail::offset(r, c, ldm, layout == mem_row_major)] = f.x[r * 16 + c];
}

// d = a * b + c; d may be c.
template <class LayoutA, class LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float result[16 * 16];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float sum = c.x[m * 16 + n];
      for (int k = 0; k < 16; ++k) sum += float(a.x[m * 16 + k]) * float(b.x[k * 16 + n]);
      result[m * 16 + n] = sum;
    }
  for (int i = 0; i < 16 * 16; ++i) d.x[i] = result[i];
}

}  // namespace nvcuda::wmma
