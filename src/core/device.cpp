#include "core/device.h"

#include <cstdlib>
#include <cstring>

namespace um {

#if defined(ULTRAMOE_WITH_CUDA)
// core/device_cuda.cu
const DeviceApi& cuda_device_api();
bool cuda_device_present();
#endif

namespace {

void* cpu_alloc(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  UM_CHECK(p != nullptr, "memory", "cannot allocate ", bytes, " bytes");
  std::memset(p, 0, rounded);
  return p;
}
void cpu_free(void* p) { std::free(p); }
void cpu_copy(void* dst, const void* src, size_t bytes, void*) {
  if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
}
void cpu_zero(void* dst, size_t bytes, void*) {
  if (bytes > 0) std::memset(dst, 0, bytes);
}
void cpu_synchronize(void*) {}

constexpr DeviceApi kCpuApi{cpu_alloc, cpu_free, cpu_copy, cpu_copy, cpu_copy, cpu_zero, cpu_synchronize};

}  // namespace

const char* device_name(Device d) {
  switch (d) {
    case Device::cpu: return "cpu";
    case Device::cuda: return "cuda";
  }
  return "?";
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu;
  if (s == "cuda") return Device::cuda;
  fail("device", "unknown device \"", s, "\" (expected cpu or cuda)");
}

bool device_available(Device d) {
  if (d == Device::cpu) return true;
#if defined(ULTRAMOE_WITH_CUDA)
  return cuda_device_present();
#else
  return false;
#endif
}

const DeviceApi& device_api(Device d) {
  if (d == Device::cpu) return kCpuApi;
#if defined(ULTRAMOE_WITH_CUDA)
  return cuda_device_api();
#else
  fail("device", "this build has no CUDA backend; configure with `cmake --preset cuda`");
#endif
}

}  // namespace um
