// The CUDA backend (ops/backend.h): f32 (checked against the CPU at float tolerance) and bf16
// (training: bf16 compute, f32 statistics, gradients and optimizer state). Each kernel file
// registers its entries; the ops it leaves empty (the few-row decoding kernels, masked softmax)
// are inference ops that run on the CPU.
#include "ops/backend.h"

namespace um {

namespace cuda {
void register_gemm(Backend& b);
void register_rmsnorm(Backend& b);
void register_elementwise(Backend& b);
void register_router(Backend& b);
void register_optim(Backend& b);
void register_cross_entropy(Backend& b);
void register_attention(Backend& b);
}  // namespace cuda

const Backend& cuda_backend() {
  static const Backend b = [] {
    Backend t;
    t.device = Device::cuda;
    for (auto reg : {cuda::register_gemm, cuda::register_rmsnorm, cuda::register_elementwise, cuda::register_router,
                     cuda::register_optim, cuda::register_cross_entropy, cuda::register_attention})
      reg(t);
    return t;
  }();
  return b;
}

}  // namespace um
