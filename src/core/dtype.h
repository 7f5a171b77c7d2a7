// Element types. f32 is the compute type, f64 the type of references and tests, bf16 a storage
// type (conversion only; round-to-nearest-even like every accelerator and PyTorch).
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#include "core/error.h"

namespace um {

enum class DType : uint8_t { f32, f64, bf16, i32, i64, u8 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u8: return 1;
  }
  return 0;
}

// Names as the safetensors format spells them.
constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
  }
  return "?";
}

inline DType dtype_from_name(std::string_view name) {
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64, DType::u8})
    if (dtype_name(t) == name) return t;
  fail("dtype", "unknown dtype '", name, "'");
}

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }

// bfloat16: the top 16 bits of an IEEE float32.
struct bf16 {
  uint16_t bits = 0;

  static bf16 from_float(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    bf16 r;
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) {
      r.bits = static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN stays NaN (quiet)
      return r;
    }
    uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    r.bits = static_cast<uint16_t>((u + rounding) >> 16);
    return r;
  }
  float to_float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }

inline double to_double(float x) { return x; }
inline double to_double(double x) { return x; }
inline double to_double(bf16 x) { return x.to_float(); }

// The accumulation type of a compute type: what parameter gradients, norm statistics, router
// scores and optimizer state are kept in when activations are T. bf16 compute accumulates in
// f32 (design.md 2: bf16 compute, fp32 master weights and gradients); f32 and f64 accumulate in
// themselves, so on the CPU acc_t<T> is T and nothing changes.
template <class T> struct Accumulate { using type = T; };
template <> struct Accumulate<bf16> { using type = float; };
template <class T> using acc_t = typename Accumulate<T>::type;

}  // namespace um
