// ParamStore: the flat buffers behind a ParamTable — weights, gradients and the two Adam moments,
// all congruent (same offsets), plus the non-trainable buffers (aux-free biases). Views by name
// for checkpoints and tests; the model addresses tensors by offset.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "model/params.h"

namespace um {

// An aligned, zero-initialised array that never reallocates.
template <class T>
class AlignedArray {
 public:
  AlignedArray() = default;
  explicit AlignedArray(int64_t n) : n_(n) {
    if (n == 0) return;
    size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
    ptr_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    UM_CHECK(ptr_ != nullptr, "memory", "cannot allocate ", bytes, " bytes");
    std::fill(ptr_.get(), ptr_.get() + n, T(0));
  }
  T* data() { return ptr_.get(); }
  const T* data() const { return ptr_.get(); }
  int64_t size() const { return n_; }
  T& operator[](int64_t i) { return ptr_.get()[i]; }
  const T& operator[](int64_t i) const { return ptr_.get()[i]; }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr_;
  int64_t n_ = 0;
};

template <class T>
struct ParamStore {
  AlignedArray<T> w, g, m, v;  // weights, gradients, Adam first and second moments
  AlignedArray<T> buf;         // buffers (aux-free biases), not trained by gradient

  ParamStore() = default;
  // moment_elements < 0: moments for every element (no ZeRO)
  explicit ParamStore(const ParamTable& t, int64_t moment_elements = -1)
      : w(t.n_elements), g(t.n_elements),
        m(moment_elements < 0 ? t.n_elements : moment_elements),
        v(moment_elements < 0 ? t.n_elements : moment_elements), buf(t.n_buffer_elements) {}

  TensorView weight(const ParamInfo& p) { return TensorView::of(w.data() + p.offset, p.shape); }
  TensorView grad(const ParamInfo& p) { return TensorView::of(g.data() + p.offset, p.shape); }
  TensorView buffer(const BufferInfo& b) { return TensorView::of(buf.data() + b.offset, {b.numel}); }
  void zero_grad() { std::fill(g.data(), g.data() + g.size(), T(0)); }
};

// Draws every parameter from its own counter-based stream keyed by (seed, name), so values never
// depend on ranks, ep, threads or which other tensors exist (DESIGN 1.3). Buffers are zeroed.
template <class T>
void init_params(ParamStore<T>& store, const ParamTable& table, const ModelConfig& c,
                 uint64_t seed);

}  // namespace um
