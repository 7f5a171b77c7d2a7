// Selective recomputation (design.md 2): chosen activations are not kept per layer; every layer
// writes them into one shared buffer in the forward, and the backward recomputes them from what
// is kept, with the same ops in the same order, so gradients are bit-identical.
//   norms     RMSNorm outputs (input, pre-FFN, q_a and kv_a norms)     recomputed from x and rstd
//   mla_up    MLA up-projections q, kv and the per-head K, V          recomputed from cq, ckv
//   experts   SwiGLU activations of routed and shared experts and of the dense FFN
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/error.h"

namespace um {

struct Recompute {
  bool norms = false, mla_up = false, experts = false;
  bool any() const { return norms || mla_up || experts; }
  // from train.recompute: a list of "norms", "mla_up", "experts"
  static Recompute parse(const std::vector<std::string>& names);
};

inline Recompute Recompute::parse(const std::vector<std::string>& names) {
  Recompute r;
  for (const std::string& n : names) {
    if (n == "norms") r.norms = true;
    else if (n == "mla_up") r.mla_up = true;
    else if (n == "experts") r.experts = true;
    else fail("config", "train.recompute: unknown module \"", n, "\" (expected norms, mla_up, experts)");
  }
  return r;
}

// Buffers shared by every layer for the recomputed activations. The model's layout runs twice
// (design.md 9: a counting arena sizes the real one): the counting pass records each slot's largest
// request, prepare() reserves the slots, and the real pass hands every layer the same pointer.
class SharedSlots {
 public:
  template <class T>
  T* get(Arena& a, const char* name, size_t n) {
    if (a.is_counting()) {
      size_t& m = bytes_[name];
      m = std::max(m, n * sizeof(T));
      return nullptr;
    }
    auto it = ptr_.find(name);
    UM_CHECK(it != ptr_.end(), "recompute", "slot ", name, " was not sized");
    return reinterpret_cast<T*>(it->second);
  }
  void prepare(Arena& a) {
    for (const auto& [name, bytes] : bytes_) ptr_[name] = a.alloc<std::byte>(bytes);
  }
  size_t bytes() const {
    size_t s = 0;
    for (const auto& [name, b] : bytes_) s += b;
    return s;
  }

 private:
  std::map<std::string, size_t> bytes_;
  std::map<std::string, std::byte*> ptr_;
};

// Per-layer storage or the shared slot.
template <class T>
T* keep_or_share(Arena& a, SharedSlots* slots, bool share, const char* name, size_t n) {
  return share && slots ? slots->get<T>(a, name, n) : a.alloc<T>(n);
}

}  // namespace um
