// Arena: one allocation, bumped. Activations of a step live here; nothing is freed piecemeal.
// The allocation lives on the Arena's device (core/device.h): pointers it hands out are device
// pointers, for ops only.
// A counting arena (no backing memory) measures what a layout needs, so buffers can be sized
// once, before the first step, and the steady-state step never allocates:
//     Arena probe = Arena::counting();  layout(probe);
//     Arena arena(probe.used());        layout(arena);
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "core/device.h"
#include "core/error.h"

namespace um {

class Arena {
 public:
  static constexpr size_t kAlign = 64;  // a cache line; also AVX-512 friendly

  Arena() = default;
  explicit Arena(size_t capacity, Device device = Device::cpu)
      : base_(static_cast<int64_t>(round_up(capacity)), device), capacity_(round_up(capacity)) {}
  static Arena counting() {
    Arena a;
    a.counting_ = true;
    return a;
  }

  // Returns n elements of T, 64-byte aligned, uninitialised. In a counting arena: nullptr.
  template <class T>
  T* alloc(size_t n) {
    size_t bytes = round_up(n * sizeof(T));
    size_t at = used_;
    used_ += bytes;
    if (used_ > high_water_) high_water_ = used_;
    if (counting_) return nullptr;
    UM_CHECK(used_ <= capacity_, "arena", "out of memory: need ", used_, " bytes, capacity ",
             capacity_);
    return reinterpret_cast<T*>(base_.data() + at);
  }

  size_t mark() const { return used_; }
  void release(size_t mark) { used_ = mark; }
  void reset() { used_ = 0; }

  size_t used() const { return used_; }
  size_t capacity() const { return capacity_; }
  size_t high_water() const { return high_water_; }
  bool is_counting() const { return counting_; }
  Device device() const { return base_.device(); }

 private:
  static size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
  DeviceBuffer<std::byte> base_;
  size_t capacity_ = 0;
  size_t used_ = 0;
  size_t high_water_ = 0;
  bool counting_ = false;
};

}  // namespace um
