// Multi-head latent attention with decoupled RoPE (DeepSeek-V2/V3; design.md 1.4):
//   cq  = RMSNorm_qa(x Wq_a)          q = cq Wq_b     (q_lora_rank 0: q = x Wq)
//   kva = x Wkv_a = [ckv ; k_pe]      ckv = RMSNorm_kva(ckv)     kv = ckv Wkv_b = per head [k_nope ; v]
//   q_pe, k_pe rotated (rotate-half); k_pe is one key shared by every head
//   o = softmax([q_nope;q_pe].[k_nope;k_pe] / sqrt(nope+rope), causal + document mask) v
//   out = concat_heads(o) Wo
// Training path only (full K/V per head); the absorbed, latent-cache decode path is in infer/.
#pragma once

#include <cstdint>

#include "core/arena.h"
#include "core/ctx.h"
#include "model/config.h"
#include "model/params.h"
#include "model/recompute.h"
#include "model/weights.h"

namespace um {

// Parameter offsets of one layer's attention in the flat buffer (-1 = absent).
struct MlaParams {
  int64_t q_a = -1, q_a_norm = -1, q_b = -1, q = -1;
  int64_t kv_a = -1, kv_a_norm = -1, kv_b = -1, o = -1;
  static MlaParams resolve(const ParamTable& t, const std::string& prefix);  // prefix "model.layers.N."
};

// Token layout shared by the attention of a layer: B sequences of T rows (device memory).
struct SeqView {
  int64_t B = 0, T = 0;
  const int32_t* pos = nullptr;        // (B*T)
  const int32_t* seg_start = nullptr;  // (B*T)
  int64_t rows() const { return B * T; }
};

// Saved activations of one layer's attention (N = B*T rows); statistics in acc_t<T>.
template <class T>
struct MlaActs {
  using A = acc_t<T>;
  T* cq_raw = nullptr;   // (N, q_lora) before q_a_layernorm
  T* cq = nullptr;       // (N, q_lora)
  A* rstd_q = nullptr;   // (N)
  T* q = nullptr;        // (N, H, dqk) rope part rotated
  T* kva = nullptr;      // (N, kv_lora + rope) raw
  T* ckv = nullptr;      // (N, kv_lora) normalised
  A* rstd_kv = nullptr;  // (N)
  T* kv = nullptr;       // (N, H*(nope + dv))
  T* k = nullptr;        // (N, H, dqk) [k_nope ; rotated k_pe]
  T* v = nullptr;        // (N, H, dv)
  T* o = nullptr;        // (N, H, dv) attention output before Wo
  A* lse = nullptr;      // (B, H, T)
  void alloc(Arena& a, const ModelConfig& c, int64_t B, int64_t T_rows,
             const Recompute& rc = {}, SharedSlots* slots = nullptr);
};

template <class T>
struct RopeTables {
  const acc_t<T>* cos = nullptr;  // (max_pos, rope/2), device memory
  const acc_t<T>* sin = nullptr;
};

// out (N, D) = MLA(x) ; x: (N, D) the normalised layer input.
template <class T>
void mla_forward(T* out, MlaActs<T>& a, const T* x, const WeightPtrs<T>& W, const MlaParams& p,
                 const ModelConfig& c, const SeqView& seq, const RopeTables<T>& rope,
                 const Ctx& ctx);

// dx (N, D) written from d_out; parameter gradients accumulate into W.g. Temporaries come from
// `scratch` and are released before returning. Recomputed activations (rc) are rebuilt first.
template <class T>
void mla_backward(T* dx, const T* d_out, const MlaActs<T>& a, const T* x, const WeightPtrs<T>& W,
                  const MlaParams& p, const ModelConfig& c, const SeqView& seq,
                  const RopeTables<T>& rope, Arena& scratch, const Ctx& ctx,
                  const Recompute& rc = {});

}  // namespace um
