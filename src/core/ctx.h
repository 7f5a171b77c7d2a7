// Ctx: what every op needs besides its tensors — which device, which stream, how many threads,
// and a scratch workspace. Ops take `const Ctx&` as their last argument so a CUDA twin can keep
// the same signature (its Ctx carries a cudaStream_t). No globals: a Ctx travels explicitly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "core/error.h"
#include "core/profiler.h"
#include "core/tensor.h"

namespace um {

// Scratch memory that grows to the largest request and then stays: after the first step of a
// fixed-shape workload, no op allocates. `n_growths` lets tests assert exactly that.
class Workspace {
 public:
  template <class T>
  T* get(size_t n) {
    size_t bytes = n * sizeof(T);
    if (bytes > capacity_) {
      size_t cap = (bytes + 4095) / 4096 * 4096;
      void* p = std::aligned_alloc(64, cap);
      UM_CHECK(p != nullptr, "workspace", "cannot allocate ", cap, " bytes");
      buf_.reset(static_cast<std::byte*>(p));
      capacity_ = cap;
      ++n_growths_;
    }
    return reinterpret_cast<T*>(buf_.get());
  }
  size_t capacity() const { return capacity_; }
  int n_growths() const { return n_growths_; }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> buf_;
  size_t capacity_ = 0;
  int n_growths_ = 0;
};

struct Ctx {
  Device device = Device::cpu;
  void* stream = nullptr;  // cudaStream_t on the CUDA backend
  int n_threads = 1;       // OpenMP threads used by CPU kernels
  Workspace* workspace = nullptr;
  Profiler* prof = nullptr;  // step-time breakdown (ultramoe bench); null: not measured

  static Ctx cpu(Workspace* ws);  // n_threads = the OpenMP maximum

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
