// cuda-emu's cuda_bf16.h: __nv_bfloat16 and its conversions, bit-exact with CUDA's: float to
// bf16 rounds to nearest, ties to even; every NaN becomes the canonical quiet NaN 0x7fff;
// overflow rounds to infinity; subnormals are kept (no flush to zero). bf16 to float is exact.
// Like the real header the type converts implicitly from and to float. Unlike it, there are no
// bf16 arithmetic operators: a + b on two __nv_bfloat16 is float arithmetic with a float result
// here and a bf16 result under nvcc, so write the conversions out.
#pragma once

#include <cuda_runtime.h>

#include <bit>
#include <cstdint>

namespace um_emu::detail {
constexpr unsigned short float_to_bf16_bits(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  // Adding 0x7fff rounds the dropped half up when it is above one half; the kept half's lowest
  // bit breaks the tie toward even. A carry out of the mantissa steps the exponent, up to inf.
  return static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
}  // namespace um_emu::detail

struct __nv_bfloat16 {
  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(float f) : bits_(um_emu::detail::float_to_bf16_bits(f)) {}
  constexpr operator float() const { return std::bit_cast<float>(uint32_t(bits_) << 16); }

 private:
  unsigned short bits_;
};
static_assert(sizeof(__nv_bfloat16) == 2 && std::is_trivially_copyable_v<__nv_bfloat16>);

struct __attribute__((aligned(4))) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

inline constexpr __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline constexpr __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline constexpr float __bfloat162float(__nv_bfloat16 h) { return float(h); }
inline constexpr unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) {
  return std::bit_cast<unsigned short>(h);
}
inline constexpr __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) {
  return std::bit_cast<__nv_bfloat16>(bits);
}
inline constexpr __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return {__nv_bfloat16(a), __nv_bfloat16(b)};
}
inline constexpr float2 __bfloat1622float2(__nv_bfloat162 h) { return {float(h.x), float(h.y)}; }

UM_EMU_SHUFFLES(__nv_bfloat16)
