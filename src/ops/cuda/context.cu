// The CUDA execution context (ops/device_context.h): one non-blocking stream, a cuBLAS handle on
// it, and the pinned staging ring.
#include <omp.h>

#include <cstring>
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/cuda/context.h"
#include "ops/device_context.h"

namespace um {
namespace cuda {

void upload_async(const Ctx& ctx, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  State& s = state_of(ctx);
  const size_t need = (bytes + 255) / 256 * 256;
  UM_CHECK(need <= s.ring_bytes, "cuda", "upload of ", bytes, " bytes exceeds the staging ring of ", s.ring_bytes);
  if (s.ring_at + need > s.ring_bytes) {  // wrap: wait until every earlier upload has been read
    check(cudaStreamSynchronize(stream_of(ctx)), "staging ring wrap");
    s.ring_at = 0;
  }
  char* slot = s.ring + s.ring_at;
  s.ring_at += need;
  std::memcpy(slot, src, bytes);
  check(cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, stream_of(ctx)), "staged upload");
}

namespace {

class CudaContext final : public DeviceContext {
 public:
  explicit CudaContext(int index) : index_(index) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    UM_CHECK(e == cudaSuccess && n > 0, "cuda", "no CUDA device is available (",
             e == cudaSuccess ? "none found" : cudaGetErrorString(e), ")");
    UM_CHECK(index >= 0 && index < n, "cuda", "device index ", index, " out of range: ", n, " device(s)");
    check(cudaSetDevice(index), "cudaSetDevice");
    cudaDeviceProp p{};
    check(cudaGetDeviceProperties(&p, index), "cudaGetDeviceProperties");
    state_.sm_count = p.multiProcessorCount;
    state_.smem_optin = p.sharedMemPerBlockOptin;
    name_ = "cuda:" + std::to_string(index) + " " + p.name + " (" + std::to_string(p.multiProcessorCount) +
            " SMs, " + std::to_string(double(p.totalGlobalMem) / double(1 << 30)).substr(0, 5) + " GiB)";
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_blas(cublasCreate(&state_.blas), "cublasCreate");
    check_blas(cublasSetStream(state_.blas, stream_), "cublasSetStream");
    state_.ring_bytes = size_t(8) << 20;
    void* ring = nullptr;
    check(cudaMallocHost(&ring, state_.ring_bytes), "cudaMallocHost");
    state_.ring = static_cast<char*>(ring);
  }
  ~CudaContext() override {
    cudaStreamSynchronize(stream_);
    cublasDestroy(state_.blas);
    cudaFreeHost(state_.ring);
    cudaStreamDestroy(stream_);
  }
  Device device() const override { return Device::cuda; }
  std::string name() const override { return name_; }
  Ctx ctx(Workspace* ws, Profiler* prof) const override {
    UM_CHECK(ws == nullptr || ws->device() == Device::cuda, "cuda", "a CUDA Ctx needs a CUDA workspace");
    Ctx c;
    c.device = Device::cuda;
    c.stream = stream_;
    c.backend = const_cast<State*>(&state_);
    c.n_threads = omp_get_max_threads();  // host-side loops (batch building)
    c.workspace = ws;
    c.prof = prof;
    return c;
  }

 private:
  int index_;
  cudaStream_t stream_ = nullptr;
  State state_;
  std::string name_;
};

}  // namespace
}  // namespace cuda

std::unique_ptr<DeviceContext> make_cuda_context(int index) { return std::make_unique<cuda::CudaContext>(index); }

}  // namespace um
