// cuda-emu's cuda_runtime.h: what device code sees — the CUDA keywords, the built-in variables
// (threadIdx, blockIdx, blockDim, gridDim, warpSize), barriers, warp shuffles and votes,
// atomics, bit and fast-math intrinsics — plus the runtime API of cuda_runtime_api.h and its C++
// template overloads. Device code compiles as ordinary C++ and runs on the CPU emulator of
// ../emu.h, which explains the execution model and what is and is not checked.
// Not here: __CUDA_ARCH__ and __CUDACC__ (code keyed on them takes its host path), `extern
// __shared__` (our sources use UM_DYNAMIC_SMEM), cooperative groups, textures, __constant__
// symbol copies, half precision.
#pragma once

#include <cuda_runtime_api.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>

#include "../emu.h"

// Keywords. Kernels are plain functions; __shared__ variables are per host thread statics (one
// block runs at a time on a host thread, so a static is the block's shared memory).
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __constant__
#define __align__(n) __attribute__((aligned(n)))

// Built-in variables: the emulator sets them before it runs or resumes a thread.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
inline constexpr int warpSize = 32;

// Barriers and memory fences (a fence orders nothing on one host thread).
inline void __syncthreads() { ::um_emu::detail::sync_block(0); }
inline int __syncthreads_count(int predicate) { return ::um_emu::detail::sync_block(predicate); }
inline int __syncthreads_and(int predicate) {
  return ::um_emu::detail::sync_block(predicate) ==
         int(blockDim.x * blockDim.y * blockDim.z);
}
inline int __syncthreads_or(int predicate) { return ::um_emu::detail::sync_block(predicate) > 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::um_emu::detail::warp_op(::um_emu::detail::WarpOp::sync, mask, 0, 0, warpSize);
}
inline void __threadfence() {}
inline void __threadfence_block() {}

// Warp votes.
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return unsigned(::um_emu::detail::warp_op(::um_emu::detail::WarpOp::ballot, mask,
                                            predicate != 0, 0, warpSize));
}
inline int __any_sync(unsigned mask, int predicate) {
  return int(::um_emu::detail::warp_op(::um_emu::detail::WarpOp::any, mask, predicate != 0, 0,
                                       warpSize));
}
inline int __all_sync(unsigned mask, int predicate) {
  return int(::um_emu::detail::warp_op(::um_emu::detail::WarpOp::all, mask, predicate != 0, 0,
                                       warpSize));
}

// Warp shuffles, for the types CUDA overloads them for; UM_EMU_SHUFFLES stays defined for
// cuda_bf16.h, which adds __nv_bfloat16.
namespace um_emu::detail {
template <class T>
inline T shuffle(WarpOp op, unsigned mask, T value, int param, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t));
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_op(op, mask, bits, param, width);
  std::memcpy(static_cast<void*>(&value), &bits, sizeof(T));
  return value;
}
}  // namespace um_emu::detail

#define UM_EMU_SHUFFLES(T)                                                                       \
  inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {                \
    return ::um_emu::detail::shuffle(::um_emu::detail::WarpOp::shfl_idx, mask, var, srcLane,     \
                                     width);                                                    \
  }                                                                                              \
  inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {          \
    return ::um_emu::detail::shuffle(::um_emu::detail::WarpOp::shfl_up, mask, var, int(delta),   \
                                     width);                                                    \
  }                                                                                              \
  inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {        \
    return ::um_emu::detail::shuffle(::um_emu::detail::WarpOp::shfl_down, mask, var,             \
                                     int(delta), width);                                        \
  }                                                                                              \
  inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {           \
    return ::um_emu::detail::shuffle(::um_emu::detail::WarpOp::shfl_xor, mask, var, laneMask,    \
                                     width);                                                    \
  }
UM_EMU_SHUFFLES(int)
UM_EMU_SHUFFLES(unsigned int)
UM_EMU_SHUFFLES(long)
UM_EMU_SHUFFLES(unsigned long)
UM_EMU_SHUFFLES(long long)
UM_EMU_SHUFFLES(unsigned long long)
UM_EMU_SHUFFLES(float)
UM_EMU_SHUFFLES(double)

// Atomics. Threads switch only at barriers, so a plain read-modify-write is atomic.
namespace um_emu::detail {
template <class T, class F>
inline T atomic_update(T* address, F new_value) {
  const T old = *address;
  *address = new_value(old);
  return old;
}
}  // namespace um_emu::detail

#define UM_EMU_ATOMIC(name, T, expression)                                                       \
  inline T name(T* address, T val) {                                                             \
    return ::um_emu::detail::atomic_update(                                                      \
        address, [val]([[maybe_unused]] T old) { return static_cast<T>(expression); });          \
  }
UM_EMU_ATOMIC(atomicAdd, int, old + val)
UM_EMU_ATOMIC(atomicAdd, unsigned int, old + val)
UM_EMU_ATOMIC(atomicAdd, unsigned long long, old + val)
UM_EMU_ATOMIC(atomicAdd, float, old + val)
UM_EMU_ATOMIC(atomicAdd, double, old + val)
UM_EMU_ATOMIC(atomicSub, int, old - val)
UM_EMU_ATOMIC(atomicSub, unsigned int, old - val)
UM_EMU_ATOMIC(atomicMax, int, old > val ? old : val)
UM_EMU_ATOMIC(atomicMax, unsigned int, old > val ? old : val)
UM_EMU_ATOMIC(atomicMax, long long, old > val ? old : val)
UM_EMU_ATOMIC(atomicMax, unsigned long long, old > val ? old : val)
UM_EMU_ATOMIC(atomicMin, int, old < val ? old : val)
UM_EMU_ATOMIC(atomicMin, unsigned int, old < val ? old : val)
UM_EMU_ATOMIC(atomicMin, long long, old < val ? old : val)
UM_EMU_ATOMIC(atomicMin, unsigned long long, old < val ? old : val)
UM_EMU_ATOMIC(atomicExch, int, val)
UM_EMU_ATOMIC(atomicExch, unsigned int, val)
UM_EMU_ATOMIC(atomicExch, unsigned long long, val)
UM_EMU_ATOMIC(atomicExch, float, val)
UM_EMU_ATOMIC(atomicAnd, int, old & val)
UM_EMU_ATOMIC(atomicAnd, unsigned int, old & val)
UM_EMU_ATOMIC(atomicOr, int, old | val)
UM_EMU_ATOMIC(atomicOr, unsigned int, old | val)
UM_EMU_ATOMIC(atomicXor, int, old ^ val)
UM_EMU_ATOMIC(atomicXor, unsigned int, old ^ val)
#undef UM_EMU_ATOMIC

#define UM_EMU_ATOMIC_CAS(T)                                                                     \
  inline T atomicCAS(T* address, T compare, T val) {                                             \
    return ::um_emu::detail::atomic_update(address,                                              \
                                           [=](T old) { return old == compare ? val : old; });   \
  }
UM_EMU_ATOMIC_CAS(int)
UM_EMU_ATOMIC_CAS(unsigned int)
UM_EMU_ATOMIC_CAS(unsigned long long)
#undef UM_EMU_ATOMIC_CAS

// Loads through the read-only cache are plain loads.
template <class T>
inline T __ldg(const T* address) {
  return *address;
}

// Bit intrinsics.
inline int __popc(unsigned int x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(unsigned(x)); }
inline int __clzll(long long x) { return std::countl_zero((unsigned long long)x); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(unsigned(x)) + 1; }
inline int __ffsll(long long x) {
  return x == 0 ? 0 : std::countr_zero((unsigned long long)x) + 1;
}
inline unsigned int __brev(unsigned int x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x);
}
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline unsigned int __float_as_uint(float x) { return std::bit_cast<unsigned int>(x); }
inline float __uint_as_float(unsigned int x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }

// Fast-math and rounding-mode intrinsics, at libm accuracy (a GPU's approximations differ in
// the last bits); the _rn forms round to nearest like the device.
inline float __expf(float x) { return expf(x); }
inline float __exp2f(float x) { return exp2f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
inline float rsqrtf(float x) { return float(1.0 / std::sqrt(double(x))); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __frsqrt_rn(float x) { return float(1.0 / std::sqrt(double(x))); }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }

// min and max, which device code calls unqualified.
#define UM_EMU_MIN_MAX(T)                                                                        \
  inline T min(T a, T b) { return b < a ? b : a; }                                               \
  inline T max(T a, T b) { return a < b ? b : a; }
UM_EMU_MIN_MAX(int)
UM_EMU_MIN_MAX(unsigned int)
UM_EMU_MIN_MAX(long long)
UM_EMU_MIN_MAX(unsigned long long)
#undef UM_EMU_MIN_MAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// The runtime's C++ overloads.
template <class T>
inline cudaError_t cudaMalloc(T** devPtr, size_t size) {
  return cudaMalloc(reinterpret_cast<void**>(devPtr), size);
}
template <class T>
inline cudaError_t cudaMallocHost(T** ptr, size_t size) {
  return cudaMallocHost(reinterpret_cast<void**>(ptr), size);
}
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}
