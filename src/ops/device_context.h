// The execution context of one device: what a Ctx for it points at. On the CPU that is nothing
// but the thread count; on CUDA it owns the stream every op of a run is queued on (one stream:
// ops run in program order, and results do not depend on timing), the cuBLAS handle bound to it
// and a pinned staging ring for the small uploads ops make on the way (grouped-GEMM pointer
// arrays). Created once per run by the engine, the evaluator or a test.
#pragma once

#include <memory>
#include <string>

#include "core/ctx.h"

namespace um {

class DeviceContext {
 public:
  // index: which GPU (CUDA); throws a clear error when the device is not available
  static std::unique_ptr<DeviceContext> create(Device d, int index = 0);
  virtual ~DeviceContext() = default;
  virtual Device device() const = 0;
  // "cpu, 2 threads" / "cuda:0 NVIDIA H200 (132 SMs, 139.8 GiB)"
  virtual std::string name() const = 0;
  // A Ctx that queues on this context (ws must live on the same device).
  virtual Ctx ctx(Workspace* ws, Profiler* prof = nullptr) const = 0;
};

#if defined(ULTRAMOE_WITH_CUDA)
std::unique_ptr<DeviceContext> make_cuda_context(int index);  // ops/cuda/context.cu
#endif

}  // namespace um
