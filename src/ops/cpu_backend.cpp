// The CPU backend: f32 for training, f64 for references and tests. Each op family registers
// its entries (the register_* functions at the end of each ops/*.cpp).
#include "ops/backend.h"

namespace um {

namespace cpu {
void register_gemm(Backend& b);
void register_grouped_gemm(Backend& b);
void register_rmsnorm(Backend& b);
void register_rope(Backend& b);
void register_swiglu(Backend& b);
void register_embedding(Backend& b);
void register_attention(Backend& b);
void register_cross_entropy(Backend& b);
void register_router(Backend& b);
void register_permute(Backend& b);
void register_elementwise(Backend& b);
void register_moe_stats(Backend& b);
void register_optim(Backend& b);
void register_softmax(Backend& b);
void register_skinny_linear(Backend& b);
}  // namespace cpu

const Backend& cpu_backend() {
  static const Backend b = [] {
    Backend t;
    t.device = Device::cpu;
    for (auto reg : {cpu::register_gemm, cpu::register_grouped_gemm, cpu::register_rmsnorm,
                     cpu::register_rope, cpu::register_swiglu, cpu::register_embedding,
                     cpu::register_attention, cpu::register_cross_entropy, cpu::register_router,
                     cpu::register_permute, cpu::register_elementwise, cpu::register_moe_stats,
                     cpu::register_optim, cpu::register_softmax, cpu::register_skinny_linear})
      reg(t);
    return t;
  }();
  return b;
}

const Backend& backend_of(Device d) {
  switch (d) {
    case Device::cpu: return cpu_backend();
    case Device::cuda:
#if defined(ULTRAMOE_WITH_CUDA)
      return cuda_backend();
#else
      break;
#endif
  }
  fail("backend", "this build has no ", device_name(d), " backend; configure with `cmake --preset cuda`");
}

}  // namespace um
