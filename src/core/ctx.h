// Ctx: what every op needs besides its tensors — which device, which stream, how many threads,
// and a scratch workspace. Ops take `const Ctx&` as their last argument so a CUDA twin can keep
// the same signature (its Ctx carries a cudaStream_t). No globals: a Ctx travels explicitly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "core/device.h"
#include "core/error.h"
#include "core/profiler.h"
#include "core/tensor.h"

namespace um {

// Scratch memory that grows to the largest request and then stays: after the first step of a
// fixed-shape workload, no op allocates. `n_growths` lets tests assert exactly that. It lives on
// one device (the Ctx's): a CUDA op's scratch is device memory.
class Workspace {
 public:
  explicit Workspace(Device device = Device::cpu) : device_(device) {}
  template <class T>
  T* get(size_t n) {
    size_t bytes = n * sizeof(T);
    if (bytes > capacity_) {
      size_t cap = (bytes + 4095) / 4096 * 4096;
      buf_ = DeviceBuffer<std::byte>(static_cast<int64_t>(cap), device_);
      capacity_ = cap;
      ++n_growths_;
    }
    return reinterpret_cast<T*>(buf_.data());
  }
  size_t capacity() const { return capacity_; }
  int n_growths() const { return n_growths_; }
  Device device() const { return device_; }

 private:
  Device device_;
  DeviceBuffer<std::byte> buf_;
  size_t capacity_ = 0;
  int n_growths_ = 0;
};

struct Ctx {
  Device device = Device::cpu;
  void* stream = nullptr;  // cudaStream_t on the CUDA backend
  void* backend = nullptr; // the backend's own state (CUDA: cuBLAS handle, staging ring)
  int n_threads = 1;       // OpenMP threads used by CPU kernels (and by host-side loops)
  Workspace* workspace = nullptr;
  Profiler* prof = nullptr;  // step-time breakdown (ultramoe bench); null: not measured

  static Ctx cpu(Workspace* ws);  // n_threads = the OpenMP maximum

  // Data movement on this Ctx's device and stream (core/device.h). download waits for the data;
  // it is the one way host code reads device values, so every host sync is visible in the code.
  template <class T>
  void upload(T* dst, const T* host_src, size_t n) const {
    device_api(device).to_device(dst, host_src, n * sizeof(T), stream);
  }
  template <class T>
  void download(T* host_dst, const T* src, size_t n) const {
    device_api(device).to_host(host_dst, src, n * sizeof(T), stream);
  }
  template <class T>
  void copy(T* dst, const T* src, size_t n) const {
    device_api(device).copy(dst, src, n * sizeof(T), stream);
  }
  template <class T>
  void zero(T* dst, size_t n) const {
    device_api(device).zero(dst, n * sizeof(T), stream);
  }
  void synchronize() const { device_api(device).synchronize(stream); }

  // Threads for a loop over `work` elements: one below kMinParallelWork, where waking a team
  // costs more than the loop (and hurts badly when the cores are shared).
  static constexpr int64_t kMinParallelWork = 1 << 15;
  int threads_for(int64_t work) const { return work < kMinParallelWork ? 1 : n_threads; }

  template <class T>
  T* scratch(size_t n) const {
    UM_CHECK(workspace != nullptr, "ctx", "op needs scratch memory but the Ctx has no workspace");
    return workspace->get<T>(n);
  }
};

}  // namespace um
