// Shared pieces of the CUDA backend's kernels: launch and shared-memory macros (so the same
// source also builds against the CPU emulation of CUDA, src/ops/cuda/emu, which runs the kernels'
// logic in CI), error checks that throw um::Error, the mapping from the engine's element types
// to device types, and block/warp reductions.
// Conventions: kernels take raw pointers, sizes and nothing of the framework; every kernel
// computes in float (acc_t<T>) whatever T is and rounds once when it stores a T.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "core/ctx.h"
#include "core/error.h"

#ifdef UM_CUDA_EMU
#define UM_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::um_emu::launch(kernel, dim3(grid), dim3(block), size_t(smem), stream, __VA_ARGS__)
#define UM_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::um_emu::dynamic_smem())
#include "ops/cuda/emu/emu.h"
#else
#define UM_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define UM_DYNAMIC_SMEM(T, name)                             \
  extern __shared__ __align__(16) unsigned char um_smem_[]; \
  T* name = reinterpret_cast<T*>(um_smem_)
#endif

namespace um::cuda {

inline void check(cudaError_t e, const char* what) {
  UM_CHECK(e == cudaSuccess, "cuda", what, ": ", cudaGetErrorString(e));
}
// After a launch: launch-configuration errors are reported here, execution errors at the next sync.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

inline cudaStream_t stream_of(const Ctx& ctx) { return static_cast<cudaStream_t>(ctx.stream); }

// The device type of an engine element type (um::bf16 and __nv_bfloat16 share their bits).
template <class T> struct DevType { using type = T; };
template <> struct DevType<bf16> { using type = __nv_bfloat16; };
template <class T> using dev_t = typename DevType<T>::type;

template <class T>
inline dev_t<T>* dev(T* p) { return reinterpret_cast<dev_t<T>*>(p); }
template <class T>
inline const dev_t<T>* dev(const T* p) { return reinterpret_cast<const dev_t<T>*>(p); }

// Loads as float, stores from float (one rounding).
__device__ __forceinline__ float ld(float x) { return x; }
__device__ __forceinline__ float ld(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class D> __device__ __forceinline__ D st(float x);
template <> __device__ __forceinline__ float st<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 st<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum (or max) over the block; every thread gets the result. blockDim.x a multiple of 32, at most
// 1024; `red` is __shared__ scratch of 32 elements. The order of the additions is fixed by the
// launch shape, so results are run-to-run identical.
template <class V>
__device__ __forceinline__ V block_sum(V v, V* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // red may still be read by a previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < n_warps ? red[lane] : V(0);
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < n_warps ? red[lane] : -INFINITY;
  return warp_max(v);
}

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

// Grid-stride loop over [0, n).
#define UM_GRID_LOOP(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// Launch shape of a grid-stride elementwise kernel.
inline unsigned grid_for(int64_t n, int threads = 256) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

}  // namespace um::cuda
