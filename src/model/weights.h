// ParamStore: the flat buffers behind a ParamTable — master weights, gradients and the two Adam
// moments, all congruent (same offsets), plus the non-trainable buffers (aux-free biases) — on
// one device. For a model computing in T the master buffers are acc_t<T> (f32 for a bf16 model,
// design.md 2: fp32 master weights and optimizer state, gradients reduced in fp32) and, when T is
// narrower than its accumulation type, `wc` holds the compute copy the forward reads (bf16),
// refreshed from the master weights after every change (sync_compute). On the CPU (f32, f64)
// there is no copy: the model reads the master weights directly.
// Views by name are for host buffers (checkpoints and tests); the model addresses tensors by
// offset through WeightPtrs.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "core/ctx.h"
#include "core/tensor.h"
#include "model/params.h"

namespace um {

template <class T>
struct ParamStore {
  using A = acc_t<T>;
  static constexpr bool kHasComputeCopy = !std::is_same_v<T, A>;

  DeviceBuffer<A> w, g, m, v;  // master weights, gradients, Adam first and second moments
  DeviceBuffer<A> buf;         // buffers (aux-free biases), not trained by gradient
  DeviceBuffer<T> wc;          // compute copy of w (bf16 models only)

  ParamStore() = default;
  // moment_elements < 0: moments for every element (no ZeRO)
  explicit ParamStore(const ParamTable& t, int64_t moment_elements = -1, Device device = Device::cpu)
      : w(t.n_elements, device), g(t.n_elements, device),
        m(moment_elements < 0 ? t.n_elements : moment_elements, device),
        v(moment_elements < 0 ? t.n_elements : moment_elements, device),
        buf(t.n_buffer_elements, device), wc(kHasComputeCopy ? t.n_elements : 0, device) {}

  Device device() const { return w.device(); }
  // The weights the forward computes with.
  const T* compute() const {
    if constexpr (kHasComputeCopy) return wc.data();
    else return w.data();
  }
  // After the master weights changed (init, load, an optimizer step): refresh the compute copy.
  void sync_compute(const Ctx& ctx);
  void zero_grad(const Ctx& ctx) { ctx.zero(g.data(), size_t(g.size())); }

  // host buffers only
  TensorView weight(const ParamInfo& p) { return TensorView::of(w.data() + p.offset, p.shape); }
  TensorView grad(const ParamInfo& p) { return TensorView::of(g.data() + p.offset, p.shape); }
  TensorView buffer(const BufferInfo& b) { return TensorView::of(buf.data() + b.offset, {b.numel}); }
};

// What a model's ops read and write: the compute weights (matrices, embeddings), the master
// weights (norm gains and the router, computed in acc_t<T>), the gradients (null in a forward
// only pass) and the buffers. On the CPU w and wm are the same memory.
template <class T>
struct WeightPtrs {
  const T* w = nullptr;
  const acc_t<T>* wm = nullptr;
  acc_t<T>* g = nullptr;
  const acc_t<T>* buf = nullptr;

  static WeightPtrs of(ParamStore<T>& ps, bool with_grads) {
    return {ps.compute(), ps.w.data(), with_grads ? ps.g.data() : nullptr, ps.buf.data()};
  }
};

// The state a checkpoint holds — master weights, Adam moments, buffers — copied between a
// store on any device and a host store of the accumulation type (f32), in ctx's stream order.
// host must have the same shapes (the same table and moment count).
template <class T>
void download_state(const ParamStore<T>& ps, ParamStore<acc_t<T>>& host, const Ctx& ctx);
// ... and back; refreshes the compute copy.
template <class T>
void upload_state(ParamStore<T>& ps, const ParamStore<acc_t<T>>& host, const Ctx& ctx);

// Draws every parameter from its own counter-based stream keyed by (seed, name), so values never
// depend on ranks, ep, threads or which other tensors exist (design.md 1.3). Buffers are zeroed.
// The values are drawn on the host and uploaded to the store's device.
template <class T>
void init_params(ParamStore<T>& store, const ParamTable& table, const ModelConfig& c,
                 uint64_t seed, const Ctx& ctx);
// The same for host stores (CPU tests and tools).
template <class T>
void init_params(ParamStore<T>& store, const ParamTable& table, const ModelConfig& c,
                 uint64_t seed);

}  // namespace um
