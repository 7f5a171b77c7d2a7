#include "ops/device_context.h"

namespace um {

namespace {

class CpuContext final : public DeviceContext {
 public:
  Device device() const override { return Device::cpu; }
  std::string name() const override {
    Workspace ws;
    return "cpu, " + std::to_string(Ctx::cpu(&ws).n_threads) + " threads";
  }
  Ctx ctx(Workspace* ws, Profiler* prof) const override {
    Ctx c = Ctx::cpu(ws);
    c.prof = prof;
    return c;
  }
};

}  // namespace

std::unique_ptr<DeviceContext> DeviceContext::create(Device d, int index) {
  if (d == Device::cpu) return std::make_unique<CpuContext>();
#if defined(ULTRAMOE_WITH_CUDA)
  return make_cuda_context(index);
#else
  (void)index;
  fail("device", "this build has no CUDA backend; configure with `cmake --preset cuda`");
#endif
}

}  // namespace um
