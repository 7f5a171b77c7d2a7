// cuda-emu internals shared by its implementation files (emu.cpp: the execution engine;
// memory.cpp: device memory, memcpy/memset, fault messages; runtime.cpp: errors, streams,
// events, device queries; cublas.cpp; symbols.cpp: kernel names). Not for the backend.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <typeinfo>

namespace um_emu::detail {

// Prints "[cuda-emu] <message>" on stderr.
void report(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Sets the calling thread's last error (cudaGetLastError) and returns it; cudaSuccess is
// returned without touching it.
cudaError_t set_error(cudaError_t error);
// A failed launch: the last error, and the error the next synchronising call returns.
void set_launch_error(cudaError_t error);
// The failed launch not yet returned by a synchronising call, cleared; cudaSuccess if none.
cudaError_t take_launch_error();

// Device memory.
bool in_device_range(const void* p);  // in the reserved range: live, freed or never allocated
// Whether [p, p + bytes) lies inside one live allocation; if not, writes why to `why`.
bool check_device_span(const void* p, size_t bytes, char* why, size_t why_size);
// Describes an address of the reserved range relative to the allocations, for fault messages;
// returns false if the address is not in the range.
bool describe_device_address(uintptr_t address, char* out, size_t out_size);
size_t device_memory_capacity();

// The SIGSEGV handler that explains faults in device memory, guard pages and kernels, then
// lets the previous handler (or the default action) take the fault. Installed once.
void install_fault_handler();
// Outside a kernel, returns false. Inside, names the running kernel thread in `thread` and
// says in `what` whether `address` is a fiber stack's guard page or past the end of dynamic
// shared memory (empty if it is neither).
bool describe_kernel_fault(uintptr_t address, char* thread, size_t thread_size, char* what,
                           size_t what_size);

// Streams and kernel attributes.
bool is_valid_stream(cudaStream_t stream);  // the default stream or a live created one
// A launch gets 48 KiB of dynamic shared memory, or what cudaFuncSetAttribute set, at most
// 227 KiB (compute capability 9.0).
inline constexpr size_t kDefaultDynamicSmem = 48 << 10;
inline constexpr size_t kMaxDynamicSmem = 227 << 10;
size_t dynamic_smem_limit(const void* kernel);

const char* kernel_name(const void* kernel, const std::type_info* type);

}  // namespace um_emu::detail
