// Devices and their memory. Every buffer of the engine — activations (Arena), op scratch
// (Workspace), parameters, gradients and optimizer state (ParamStore) — is allocated through
// the DeviceApi of the device it lives on, and data moves between host and device only through
// it, so a host read of device data is always a visible call (download), never a dereference.
//   cpu:  aligned_alloc / memcpy; "device" memory is host memory, copies are plain copies.
//   cuda: cudaMalloc and copies ordered on the Ctx's stream (built with -DULTRAMOE_CUDA=ON, or
//         with the CPU emulation of CUDA used to test the kernels' logic without a GPU).
// What it is not: a caching allocator. Buffers are sized once before the first step (Arena's
// counting pass, Workspace's growth to the largest request) and then reused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "core/error.h"

namespace um {

enum class Device : uint8_t { cpu, cuda };

const char* device_name(Device d);
// "cpu" or "cuda"; anything else is an error naming the flag
Device parse_device(const std::string& s);
// cpu: always; cuda: built with CUDA and a device is present
bool device_available(Device d);

// The memory operations of one device kind. `stream` is the Ctx's stream (cudaStream_t; null
// on the CPU). to_host returns once the bytes have arrived; the other copies are ordered on the
// stream like kernels.
struct DeviceApi {
  void* (*alloc)(size_t bytes);  // zero-filled; throws um::Error when out of memory
  void (*free)(void* p);
  void (*to_device)(void* dst, const void* host_src, size_t bytes, void* stream);
  void (*to_host)(void* host_dst, const void* src, size_t bytes, void* stream);
  void (*copy)(void* dst, const void* src, size_t bytes, void* stream);
  void (*zero)(void* dst, size_t bytes, void* stream);
  void (*synchronize)(void* stream);
};

// Throws a clear error when the device kind was not built in.
const DeviceApi& device_api(Device d);

// An owning, zero-initialised array on one device that never reallocates. Host element access
// (operator[]) is for CPU buffers only.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(int64_t n, Device device = Device::cpu) : n_(n), device_(device) {
    if (n > 0) ptr_ = static_cast<T*>(device_api(device).alloc(static_cast<size_t>(n) * sizeof(T)));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    DeviceBuffer(std::move(o)).swap(*this);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_) device_api(device_).free(ptr_);
  }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  int64_t size() const { return n_; }
  Device device() const { return device_; }
  T& operator[](int64_t i) { return ptr_[i]; }
  const T& operator[](int64_t i) const { return ptr_[i]; }

 private:
  void swap(DeviceBuffer& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(n_, o.n_);
    std::swap(device_, o.device_);
  }
  T* ptr_ = nullptr;
  int64_t n_ = 0;
  Device device_ = Device::cpu;
};

// Host buffers keep their old name.
template <class T>
using AlignedArray = DeviceBuffer<T>;

}  // namespace um
