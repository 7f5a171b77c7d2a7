#include "model/mla.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"

namespace um {

MlaParams MlaParams::resolve(const ParamTable& t, const std::string& pre) {
  auto off = [&](const std::string& name) {
    const ParamInfo* p = t.find(pre + "self_attn." + name);
    return p ? p->offset : int64_t{-1};
  };
  MlaParams m;
  m.q_a = off("q_a_proj.weight");
  m.q_a_norm = off("q_a_layernorm.weight");
  m.q_b = off("q_b_proj.weight");
  m.q = off("q_proj.weight");
  m.kv_a = off("kv_a_proj_with_mqa.weight");
  m.kv_a_norm = off("kv_a_layernorm.weight");
  m.kv_b = off("kv_b_proj.weight");
  m.o = off("o_proj.weight");
  return m;
}

template <class T>
void MlaActs<T>::alloc(Arena& a, const ModelConfig& c, int64_t B, int64_t T_, const Recompute& rc,
                       SharedSlots* slots) {
  const int64_t N = B * T_, H = c.num_attention_heads, dqk = c.qk_head_dim(),
                dv = c.v_head_dim, kvw = c.kv_lora_rank + c.qk_rope_head_dim;
  if (c.q_lora_rank > 0) {
    cq_raw = a.alloc<T>(N * c.q_lora_rank);
    cq = keep_or_share<T>(a, slots, rc.norms, "mla.cq", N * c.q_lora_rank);
    rstd_q = a.alloc<A>(N);
  }
  q = keep_or_share<T>(a, slots, rc.mla_up, "mla.q", N * H * dqk);
  kva = a.alloc<T>(N * kvw);
  ckv = keep_or_share<T>(a, slots, rc.norms, "mla.ckv", N * c.kv_lora_rank);
  rstd_kv = a.alloc<A>(N);
  kv = keep_or_share<T>(a, slots, rc.mla_up, "mla.kv", N * H * (c.qk_nope_head_dim + dv));
  k = keep_or_share<T>(a, slots, rc.mla_up, "mla.k", N * H * dqk);
  v = keep_or_share<T>(a, slots, rc.mla_up, "mla.v", N * H * dv);
  o = a.alloc<T>(N * H * dv);
  lse = a.alloc<A>(B * H * T_);
}

namespace {

// The parts of the forward that recomputation replays. stage 0: the compressions and their norms
// (cq_raw, kva from x), which are always kept; 1: the norms (cq, ckv); 2: the up-projections and
// the per-head K, V.
template <class T>
void mla_project(MlaActs<T>& a, const T* x, const WeightPtrs<T>& W, const MlaParams& p,
                 const ModelConfig& c, const SeqView& seq, const RopeTables<T>& rope, const Ctx& ctx,
                 bool compress, bool norms, bool up) {
  const int64_t N = seq.rows(), D = c.hidden_size, H = c.num_attention_heads;
  const int64_t nope = c.qk_nope_head_dim, rd = c.qk_rope_head_dim, dqk = nope + rd,
                dv = c.v_head_dim, kvr = c.kv_lora_rank, kvw = kvr + rd, qr = c.q_lora_rank;
  const T* w = W.w;
  if (compress) {
    if (qr > 0) linear_forward<T>(a.cq_raw, qr, x, D, w + p.q_a, N, D, qr, ctx);
    linear_forward<T>(a.kva, kvw, x, D, w + p.kv_a, N, D, kvw, ctx);
  }
  if (norms) {
    if (qr > 0)
      rmsnorm_forward<T>(a.cq, qr, a.rstd_q, a.cq_raw, qr, W.wm + p.q_a_norm, N, qr, c.rms_norm_eps, ctx);
    rmsnorm_forward<T>(a.ckv, kvr, a.rstd_kv, a.kva, kvw, W.wm + p.kv_a_norm, N, kvr, c.rms_norm_eps, ctx);
  }
  if (!up) return;
  if (qr > 0) linear_forward<T>(a.q, H * dqk, a.cq, qr, w + p.q_b, N, qr, H * dqk, ctx);
  else linear_forward<T>(a.q, H * dqk, x, D, w + p.q, N, D, H * dqk, ctx);
  rope_forward<T>(a.q + nope, a.q + nope, seq.pos, rope.cos, rope.sin, N, int(H), H * dqk, dqk,
                  int(rd), ctx);
  linear_forward<T>(a.kv, H * (nope + dv), a.ckv, kvr, w + p.kv_b, N, kvr, H * (nope + dv), ctx);
  // per-head K = [k_nope ; k_pe] and V; rotating the broadcast copies of the one shared k_pe
  // rotates it identically for every head
  mla_kv_assemble_forward<T>(a.k, a.v, a.kv, a.kva, N, int(H), int(nope), int(rd), int(dv), kvw, kvr, ctx);
  rope_forward<T>(a.k + nope, a.k + nope, seq.pos, rope.cos, rope.sin, N, int(H), H * dqk, dqk,
                  int(rd), ctx);
}

}  // namespace

template <class T>
void mla_forward(T* out, MlaActs<T>& a, const T* x, const WeightPtrs<T>& W, const MlaParams& p,
                 const ModelConfig& c, const SeqView& seq, const RopeTables<T>& rope,
                 const Ctx& ctx) {
  PhaseTimer timer(ctx.prof, Phase::attention);
  const int64_t N = seq.rows(), D = c.hidden_size, H = c.num_attention_heads;
  const int64_t dqk = c.qk_head_dim(), dv = c.v_head_dim;
  mla_project(a, x, W, p, c, seq, rope, ctx, true, true, true);
  attention_forward<T>(a.o, a.lse, a.q, a.k, a.v, seq.seg_start, seq.B, seq.T, int(H), int(dqk),
                       int(dv), 1.0 / std::sqrt(double(dqk)), ctx);
  linear_forward<T>(out, D, a.o, H * dv, W.w + p.o, N, H * dv, D, ctx);
}

template <class T>
void mla_backward(T* dx, const T* d_out, const MlaActs<T>& a, const T* x, const WeightPtrs<T>& W,
                  const MlaParams& p, const ModelConfig& c, const SeqView& seq,
                  const RopeTables<T>& rope, Arena& scratch, const Ctx& ctx, const Recompute& rc) {
  PhaseTimer timer(ctx.prof, Phase::attention);
  // rebuild what was not kept (the same ops as the forward, so the values are identical)
  if (rc.norms || rc.mla_up)
    mla_project(const_cast<MlaActs<T>&>(a), x, W, p, c, seq, rope, ctx, false, rc.norms, rc.mla_up);
  const int64_t N = seq.rows(), D = c.hidden_size, H = c.num_attention_heads;
  const int64_t nope = c.qk_nope_head_dim, rd = c.qk_rope_head_dim, dqk = nope + rd,
                dv = c.v_head_dim, kvr = c.kv_lora_rank, kvw = kvr + rd, qr = c.q_lora_rank;
  const T* w = W.w;
  acc_t<T>* g = W.g;
  const size_t mark = scratch.mark();
  T* d_o = scratch.alloc<T>(N * H * dv);
  T* dq = scratch.alloc<T>(N * H * dqk);
  T* dk = scratch.alloc<T>(N * H * dqk);
  T* dvv = scratch.alloc<T>(N * H * dv);
  T* dkv = scratch.alloc<T>(N * H * (nope + dv));
  T* dkva = scratch.alloc<T>(N * kvw);
  T* dckv = scratch.alloc<T>(N * kvr);

  linear_backward<T>(d_o, H * dv, g + p.o, d_out, D, a.o, H * dv, w + p.o, N, H * dv, D, false, ctx);
  attention_backward<T>(dq, dk, dvv, d_o, a.o, a.lse, a.q, a.k, a.v, seq.seg_start, seq.B, seq.T,
                        int(H), int(dqk), int(dv), 1.0 / std::sqrt(double(dqk)), ctx);

  // un-rotate the rope gradients (in place), then scatter K/V grads back to their sources;
  // the shared k_pe collects the sum over heads
  rope_backward<T>(dq + nope, dq + nope, seq.pos, rope.cos, rope.sin, N, int(H), H * dqk, dqk, int(rd), ctx);
  rope_backward<T>(dk + nope, dk + nope, seq.pos, rope.cos, rope.sin, N, int(H), H * dqk, dqk, int(rd), ctx);
  mla_kv_assemble_backward<T>(dkv, dkva, dk, dvv, N, int(H), int(nope), int(rd), int(dv), kvw, kvr, ctx);

  // kv path: kv_b, kv_a_layernorm (writes the ckv columns of dkva), kv_a
  linear_backward<T>(dckv, kvr, g + p.kv_b, dkv, H * (nope + dv), a.ckv, kvr, w + p.kv_b, N, kvr,
                     H * (nope + dv), false, ctx);
  rmsnorm_backward<T>(dkva, kvw, g + p.kv_a_norm, dckv, kvr, a.kva, kvw, W.wm + p.kv_a_norm,
                      a.rstd_kv, N, kvr, false, ctx);
  linear_backward<T>(dx, D, g + p.kv_a, dkva, kvw, x, D, w + p.kv_a, N, D, kvw, false, ctx);

  // query path, accumulated into dx
  if (qr > 0) {
    T* dcq = scratch.alloc<T>(N * qr);
    T* dcq_raw = scratch.alloc<T>(N * qr);
    linear_backward<T>(dcq, qr, g + p.q_b, dq, H * dqk, a.cq, qr, w + p.q_b, N, qr, H * dqk, false, ctx);
    rmsnorm_backward<T>(dcq_raw, qr, g + p.q_a_norm, dcq, qr, a.cq_raw, qr, W.wm + p.q_a_norm,
                        a.rstd_q, N, qr, false, ctx);
    linear_backward<T>(dx, D, g + p.q_a, dcq_raw, qr, x, D, w + p.q_a, N, D, qr, true, ctx);
  } else {
    linear_backward<T>(dx, D, g + p.q, dq, H * dqk, x, D, w + p.q, N, D, H * dqk, true, ctx);
  }
  scratch.release(mark);
}

#define UM_INSTANTIATE(T)                                                                       \
  template struct MlaActs<T>;                                                                   \
  template void mla_forward<T>(T*, MlaActs<T>&, const T*, const WeightPtrs<T>&, const MlaParams&, \
                               const ModelConfig&, const SeqView&, const RopeTables<T>&,        \
                               const Ctx&);                                                     \
  template void mla_backward<T>(T*, const T*, const MlaActs<T>&, const T*, const WeightPtrs<T>&, \
                                const MlaParams&, const ModelConfig&, const SeqView&,           \
                                const RopeTables<T>&, Arena&, const Ctx&, const Recompute&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
UM_INSTANTIATE(bf16)
#undef UM_INSTANTIATE

}  // namespace um
