// The DeviceApi of CUDA devices (core/device.h): cudaMalloc'd memory, copies ordered on the
// Ctx's stream. Built with -DULTRAMOE_CUDA=ON, and against the CPU emulation of CUDA.
#include <cuda_runtime.h>

#include "core/device.h"

namespace um {

namespace {

void check(cudaError_t e, const char* what) {
  UM_CHECK(e == cudaSuccess, "cuda", what, ": ", cudaGetErrorString(e));
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

void* cuda_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  UM_CHECK(e == cudaSuccess, "cuda", "cannot allocate ", bytes, " bytes of device memory (",
           cudaGetErrorString(e), ")");
  check(cudaMemset(p, 0, bytes), "cudaMemset");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // zeroed before any stream uses it
  return p;
}
void cuda_free(void* p) {
  if (p) cudaFree(p);  // never throws: called from destructors
}
// From pageable memory cudaMemcpyAsync returns once the host bytes are staged, so the caller may
// reuse its buffer at once.
void cuda_to_device(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes > 0) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, as_stream(stream)), "upload");
}
void cuda_to_host(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(stream)), "download");
  check(cudaStreamSynchronize(as_stream(stream)), "download (stream sync)");
}
void cuda_copy(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes > 0 && dst != src)
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, as_stream(stream)), "device copy");
}
void cuda_zero(void* dst, size_t bytes, void* stream) {
  if (bytes > 0) check(cudaMemsetAsync(dst, 0, bytes, as_stream(stream)), "cudaMemsetAsync");
}
void cuda_synchronize(void* stream) { check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize"); }

const DeviceApi kCudaApi{cuda_alloc, cuda_free, cuda_to_device, cuda_to_host, cuda_copy, cuda_zero, cuda_synchronize};

}  // namespace

const DeviceApi& cuda_device_api() { return kCudaApi; }

bool cuda_device_present() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace um
