// cuda-emu: runs our CUDA kernels' logic on the CPU, so that the CUDA backend is developed and
// tested on machines without a GPU. The same .cu sources compile with g++ (-x c++, C++20)
// against the drop-in headers of include/ (cuda_runtime.h, cuda_bf16.h, mma.h, cublas_v2.h),
// which resolve to this emulator when UM_CUDA_EMU is defined. This header is the emulator's own
// API: the launch entry point behind UM_LAUNCH, and the few controls tests need.
//
// Execution model. Everything runs synchronously on the calling host thread: a kernel launch
// returns when the kernel has finished, streams and events only order what is already ordered.
// Blocks run one after another. Inside a block the threads run one at a time, in order of their
// linear index, each until it returns or has to wait: at __syncthreads() for all the block's
// threads, at a warp operation (__syncwarp, __shfl_*_sync, __ballot_sync, __any_sync,
// __all_sync) for the lanes of its mask. A thread that waits keeps its fiber (a 256 KiB stack
// of its own) and the next thread starts on another; a thread that returns hands its fiber to
// the next thread, so a kernel without barriers costs about a function call per thread.
// Atomics are plain read-modify-writes, as no two threads run at once. __shared__ is
// `static thread_local`: every block (and every launch) of a kernel sees the same static shared
// arrays, so kernels must initialise shared memory before reading it, as ours do. Dynamic shared
// memory is one buffer per launch, refilled with 0xff bytes (NaN as float or bf16) before every
// block. Host threads launch independently of each other, each with its own fibers. Under gdb,
// a fault's backtrace shows the kernel's frames down to um_emu_fiber_start.
//
// What it checks, and reports on stderr as "[cuda-emu] ..." plus the error code CUDA would give:
//  - kernel arguments of pointer type must be null or point into a live cudaMalloc allocation
//    (a host pointer, a cudaMallocHost pointer or a freed pointer is rejected and the kernel
//    does not run: cudaErrorInvalidDevicePointer);
//  - launch configuration: block and grid limits, dynamic shared memory over 48 KiB without
//    cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize), unknown streams;
//  - deadlocks: a barrier that can never complete because a thread of the block (or a lane of
//    the warp mask) returned or waits at a different barrier is reported with the kernel, the
//    block and who waits where (cudaErrorLaunchTimeout) instead of hanging;
//  - warp operations: the calling lane must be in the mask, the mask must name existing lanes,
//    the lanes of one mask must meet at the same operation, a shuffle must not read a lane
//    outside the mask, wmma pointers and leading dimensions must meet the hardware's alignment
//    (cudaErrorLaunchFailure);
//  - cudaMemcpy/cudaMemset: the direction must match where the pointers live, and the device
//    range must lie inside one live allocation (no overruns);
//  - cuBLAS: matrices and pointer arrays must be device memory, with every referenced element
//    inside one live allocation (CUBLAS_STATUS_EXECUTION_FAILED), type combinations real cuBLAS
//    rejects are rejected (CUBLAS_STATUS_NOT_SUPPORTED);
//  - device memory comes from a reserved address range, each allocation placed at the end of its
//    pages with an inaccessible page behind it and freed addresses not reused until the range
//    wraps around: reading or writing past the end of an allocation (when its size is a multiple
//    of 256 bytes; otherwise past the 256-byte rounding), reading freed memory, overrunning
//    dynamic shared memory or a fiber stack is a SIGSEGV at the faulting line, with a message
//    saying which kernel, block and thread, and which allocation (run under gdb to see the line);
//  - UM_CUDA_EMU_GUARD=1 (or set_guard(true)): device memory is inaccessible while host code
//    runs and opened only inside kernels, cudaMemcpy/cudaMemset and cuBLAS calls, so host code
//    that dereferences a device pointer faults at that line;
//  - UM_CUDA_EMU_POISON=1: fresh cudaMalloc memory is filled with 0xff bytes (NaN) instead of
//    zeros, so a kernel that reads memory nobody wrote (an accumulator never cleared) shows NaN.
// Other environment variables: UM_CUDA_EMU_MEM_GB, the emulated device's memory (default 16).
//
// What it cannot check, or does differently from a GPU:
//  - data races: threads run one at a time and switch only at barriers, so a missing
//    __syncthreads() or __syncwarp() between a write and another thread's read is not detected
//    when the writer happens to run first (it does for increasing thread index); lanes do not
//    run in lockstep, so warp-synchronous code without __syncwarp() fails here, as it may on
//    Volta and later GPUs;
//  - out-of-bounds accesses that stay inside an allocation or its 256-byte rounding, and
//    out-of-bounds accesses of __shared__ arrays; static __shared__ memory is not cleared between
//    blocks (a block may see the previous block's values instead of garbage);
//  - pointers inside struct arguments (C++20 has no reflection: only direct pointer arguments
//    are checked); pointers computed inside a kernel; pointer arguments to pinned host memory,
//    which real CUDA allows (zero-copy) and the emulator rejects;
//  - __launch_bounds__, register and static shared memory limits, occupancy, timing;
//  - numerics: fast-math intrinsics (__expf, rsqrtf, __fdividef) are computed at libm accuracy,
//    wmma and cuBLAS accumulate in float in their own order, TF32/FAST_16BF compute types are
//    computed in full float; bit-exact agreement with a GPU holds for conversions (bf16) and
//    integer code only;
//  - arithmetic operators on __nv_bfloat16 go through float and give float, where nvcc's device
//    operators give __nv_bfloat16: convert explicitly;
//  - code under #ifdef __CUDA_ARCH__ or __CUDACC__ takes the host path (neither is defined).
// Errors are per host thread and not sticky: cudaGetLastError() returns and clears the last
// error; a failed launch is also returned, once, by the next synchronising call
// (cudaDeviceSynchronize, cudaStreamSynchronize, cudaEventSynchronize, cudaMemcpy).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

namespace um_emu {

// Launches `kernel` like kernel<<<grid, block, dynamic_smem_bytes, stream>>>(args...): the
// arguments are converted to the kernel's parameter types as in a call, the pointer arguments
// are checked, and the kernel runs to completion before launch returns.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem_bytes,
            cudaStream_t stream, Args&&... args);

// The running block's dynamic shared memory (what `extern __shared__ T name[]` names).
void* dynamic_smem();

// Whether p points into, or one past the end of, a live cudaMalloc allocation.
bool is_device_pointer(const void* p);

// Guard mode (see above). set_guard(true) protects the live allocations at once.
void set_guard(bool on);
bool guard_enabled();

// Opens device memory to this process for its lifetime, in guard mode; nests. The emulator's
// own runtime and cuBLAS use it around their accesses; backend code has no reason to.
class DeviceAccess {
 public:
  DeviceAccess();
  ~DeviceAccess();
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
};

namespace detail {

struct LaunchInfo {
  const void* kernel;             // the kernel's address: its name, its attributes
  const std::type_info* type;     // its type, named when the address has no symbol
  dim3 grid, block;
  size_t dynamic_smem;
  cudaStream_t stream;
};

// Checks pointer argument `index` of a launch: when it is neither null nor a device pointer,
// reports it, sets cudaErrorInvalidDevicePointer as the launch's error and returns false.
bool check_pointer_argument(const LaunchInfo& info, int index, const void* p);

// Runs body(args) once per thread of every block, after checking the configuration.
void run(const LaunchInfo& info, void (*body)(void* args), void* args);

// Reports a fault found inside a kernel (a misused warp operation, a misaligned wmma pointer)
// and abandons the launch: the thread never returns from this call.
[[noreturn]] void kernel_fault(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Barriers and warp operations behind the intrinsics of cuda_runtime.h.
int sync_block(int predicate);  // returns how many threads passed a non-zero predicate

enum class WarpOp { sync, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, any, all };
// Every lane of `mask` calls warp_op with the same op and mask; each gets back its result: the
// shuffled value (param = source lane, delta or lane mask), the ballot (value = predicate),
// the vote.
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width);

template <class P, class A>
P convert_argument(A&& a) {  // implicit conversion, as in a function call
  return std::forward<A>(a);
}

template <class P>
bool check_argument(const LaunchInfo& info, int index, const P& value) {
  if constexpr (std::is_pointer_v<P> && !std::is_function_v<std::remove_pointer_t<P>>)
    return check_pointer_argument(info, index, value);
  else
    return true;
}

}  // namespace detail

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem_bytes,
            cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args),
                "kernel launched with a different number of arguments than it has parameters");
  // Each thread gets the kernel's parameters as copies of these values, as on the device.
  struct Bound {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> values;
  };
  Bound bound{kernel,
              {detail::convert_argument<std::decay_t<Params>>(std::forward<Args>(args))...}};
  const detail::LaunchInfo info{reinterpret_cast<const void*>(kernel), &typeid(kernel), grid,
                                block, dynamic_smem_bytes, stream};
  bool ok = true;
  [&]<size_t... I>(std::index_sequence<I...>) {
    ((ok &= detail::check_argument(info, int(I), std::get<I>(bound.values))), ...);
  }(std::index_sequence_for<Params...>{});
  if (!ok) return;
  detail::run(
      info,
      [](void* p) {
        Bound& b = *static_cast<Bound*>(p);
        std::apply(b.kernel, b.values);
      },
      &bound);
}

}  // namespace um_emu
