#include "model/model.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <optional>

#include "model/layer.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "parallel/comm.h"

namespace um {

const char* balance_scope_name(BalanceScope s) {
  switch (s) {
    case BalanceScope::sequence: return "sequence";
    case BalanceScope::micro_batch: return "micro_batch";
    case BalanceScope::ep_group: return "ep_group";
    case BalanceScope::global: return "global";
  }
  return "?";
}

BalanceScope parse_balance_scope(const std::string& s) {
  for (BalanceScope b : {BalanceScope::sequence, BalanceScope::micro_batch, BalanceScope::ep_group,
                         BalanceScope::global})
    if (s == balance_scope_name(b)) return b;
  fail("config", "train.balance_scope: expected sequence, micro_batch, ep_group or global, got \"",
       s, "\"");
}

LayerParams LayerParams::resolve(const ParamTable& t, const ModelConfig& c, int layer) {
  const std::string pre = "model.layers." + std::to_string(layer) + ".";
  LayerParams p;
  p.index = layer;
  p.moe = c.is_moe_layer(layer);
  p.in_norm = t.at(pre + "input_layernorm.weight").offset;
  if (c.sandwich_norm) {
    p.post_attn_norm = t.at(pre + "post_attention_layernorm.weight").offset;
    p.pre_ffn_norm = t.at(pre + "pre_mlp_layernorm.weight").offset;
    p.post_ffn_norm = t.at(pre + "post_mlp_layernorm.weight").offset;
  } else {
    p.pre_ffn_norm = t.at(pre + "post_attention_layernorm.weight").offset;  // HF naming
  }
  p.attn = MlaParams::resolve(t, pre);
  if (p.moe) p.moe_p = MoeParams::resolve(t, c, layer);
  else p.dense = MlpParams::resolve(t, pre + "mlp.", c.intermediate_size);
  return p;
}

namespace {

// --- one decoder layer (design.md 1.2) ------------------------------------------------------------


template <class T>
struct LayerActs {
  using A = acc_t<T>;
  T* a_n = nullptr;       // (N, D) input_layernorm output
  A* rstd_in = nullptr;   // (N)
  MlaActs<T> attn;
  T* att = nullptr;       // (N, D) attention output
  A* rstd_pa = nullptr;   // (N) post-attention norm (sandwich)
  T* x_mid = nullptr;     // (N, D) residual after attention
  T* f_n = nullptr;       // (N, D) pre-FFN norm output
  A* rstd_pre = nullptr;  // (N)
  MlpActs<T> mlp;
  MoeActs<T> moe;
  T* ffn = nullptr;       // (N, D) FFN output
  A* rstd_pf = nullptr;   // (N) post-FFN norm (sandwich)

  void alloc(Arena& a, const ModelConfig& c, int64_t B, int64_t T_, bool is_moe, int64_t ep, int64_t nodes,
             const Recompute& rc, SharedSlots* slots) {
    const int64_t N = B * T_, D = c.hidden_size;
    a_n = keep_or_share<T>(a, slots, rc.norms, "layer.a_n", N * D);
    rstd_in = a.alloc<A>(N);
    attn.alloc(a, c, B, T_, rc, slots);
    att = a.alloc<T>(N * D);
    rstd_pa = a.alloc<A>(N);
    x_mid = a.alloc<T>(N * D);
    f_n = keep_or_share<T>(a, slots, rc.norms, "layer.f_n", N * D);
    rstd_pre = a.alloc<A>(N);
    if (is_moe) moe.alloc(a, c, N, B, ep, nodes, rc, slots);
    else mlp.alloc(a, N, c.intermediate_size, rc, slots);
    ffn = a.alloc<T>(N * D);
    rstd_pf = a.alloc<A>(N);
  }
};

template <class T>
void layer_forward(T* x_out, const T* x_in, LayerActs<T>& a, MoeStats* st, const LayerParams& p,
                   const WeightPtrs<T>& W, const ModelConfig& c, const SeqView& seq,
                   const RopeTables<T>& rope, const MoeOptions& mo, Arena& scratch, const Ctx& ctx) {
  const int64_t N = seq.rows(), D = c.hidden_size;
  const double eps = c.rms_norm_eps;
  PhaseTimer timer(ctx.prof, Phase::norms);  // the norms and residual adds; sub-layers time themselves
  rmsnorm_forward<T>(a.a_n, D, a.rstd_in, x_in, D, W.wm + p.in_norm, N, D, eps, ctx);
  mla_forward<T>(a.att, a.attn, a.a_n, W, p.attn, c, seq, rope, ctx);
  if (c.sandwich_norm) {  // x_mid = x_in + RMSNorm_post_attn(att)
    rmsnorm_forward<T>(a.x_mid, D, a.rstd_pa, a.att, D, W.wm + p.post_attn_norm, N, D, eps, ctx);
    add_inplace<T>(a.x_mid, x_in, N * D, ctx);
  } else {
    ctx.copy(a.x_mid, x_in, size_t(N * D));
    add_inplace<T>(a.x_mid, a.att, N * D, ctx);
  }
  rmsnorm_forward<T>(a.f_n, D, a.rstd_pre, a.x_mid, D, W.wm + p.pre_ffn_norm, N, D, eps, ctx);
  if (p.moe) {
    MoeOptions o = mo;
    o.layer = p.index;
    moe_forward<T>(a.ffn, a.moe, *st, a.f_n, W, p.moe_p, c, o, N, scratch, ctx);
  }
  if (!p.moe) mlp_forward<T>(a.ffn, false, a.mlp, a.f_n, W, p.dense, N, D, ctx);
  if (c.sandwich_norm) {
    rmsnorm_forward<T>(x_out, D, a.rstd_pf, a.ffn, D, W.wm + p.post_ffn_norm, N, D, eps, ctx);
    add_inplace<T>(x_out, a.x_mid, N * D, ctx);
  } else {
    ctx.copy(x_out, a.x_mid, size_t(N * D));
    add_inplace<T>(x_out, a.ffn, N * D, ctx);
  }
}

// dres: in, the gradient of the layer output; out, the gradient of its input (residual stream).
template <class T>
void layer_backward(T* dres, const T* x_in, LayerActs<T>& a, const LayerParams& p,
                    const WeightPtrs<T>& W, const ModelConfig& c, const SeqView& seq,
                    const RopeTables<T>& rope, const MoeOptions& mo, Arena& scratch,
                    const Ctx& ctx) {
  const int64_t N = seq.rows(), D = c.hidden_size;
  const double eps = c.rms_norm_eps;
  const Recompute& rc = mo.recompute;
  acc_t<T>* g = W.g;
  PhaseTimer timer(ctx.prof, Phase::norms);
  const size_t mark = scratch.mark();
  T* d_fn = scratch.alloc<T>(N * D);
  T* d_an = scratch.alloc<T>(N * D);

  const T* d_ffn = dres;
  if (c.sandwich_norm) {
    T* d = scratch.alloc<T>(N * D);
    rmsnorm_backward<T>(d, D, g + p.post_ffn_norm, dres, D, a.ffn, D, W.wm + p.post_ffn_norm,
                        a.rstd_pf, N, D, false, ctx);
    d_ffn = d;
  }
  if (rc.norms)  // the forward's op again: identical f_n
    rmsnorm_forward<T>(a.f_n, D, a.rstd_pre, a.x_mid, D, W.wm + p.pre_ffn_norm, N, D, eps, ctx);
  if (p.moe) moe_backward<T>(d_fn, d_ffn, a.moe, a.f_n, W, p.moe_p, c, mo, N, scratch, ctx);
  else mlp_backward<T>(d_fn, false, d_ffn, a.mlp, a.f_n, W, p.dense, N, D, scratch, ctx, rc);
  // dres becomes d x_mid
  rmsnorm_backward<T>(dres, D, g + p.pre_ffn_norm, d_fn, D, a.x_mid, D, W.wm + p.pre_ffn_norm,
                      a.rstd_pre, N, D, true, ctx);

  const T* d_att = dres;
  if (c.sandwich_norm) {
    T* d = scratch.alloc<T>(N * D);
    rmsnorm_backward<T>(d, D, g + p.post_attn_norm, dres, D, a.att, D, W.wm + p.post_attn_norm,
                        a.rstd_pa, N, D, false, ctx);
    d_att = d;
  }
  if (rc.norms) rmsnorm_forward<T>(a.a_n, D, a.rstd_in, x_in, D, W.wm + p.in_norm, N, D, eps, ctx);
  mla_backward<T>(d_an, d_att, a.attn, a.a_n, W, p.attn, c, seq, rope, scratch, ctx, rc);
  // dres becomes d x_in
  rmsnorm_backward<T>(dres, D, g + p.in_norm, d_an, D, x_in, D, W.wm + p.in_norm, a.rstd_in, N, D,
                      true, ctx);
  scratch.release(mark);
}

// Upper bound of the scratch memory one backward needs, in elements (layer temporaries, the
// larger of the attention and FFN temporaries, and the MTP temporaries). The caller counts every
// element at the width of the accumulation type, which covers the f32 router temporaries of a
// bf16 model.
int64_t backward_scratch_elements(const ModelConfig& c, int64_t N, int64_t ep, int64_t nodes) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, dqk = c.qk_head_dim(),
                dv = c.v_head_dim, nope = c.qk_nope_head_dim, kvw = c.kv_lora_rank + c.qk_rope_head_dim;
  const int64_t mla = N * (H * dv * 2 + H * dqk * 2 + H * (nope + dv) + kvw + c.kv_lora_rank +
                           2 * c.q_lora_rank);
  const int64_t K = c.num_experts_per_tok, E = c.n_routed_experts, F = c.moe_intermediate_size,
                R = N * K;
  // expert-side rows: the plan's own with ep = 1, else the worst case received from the EP group
  const int64_t Rx = ep > 1 ? std::max(R, ep * N * std::min(K, E / ep)) : R;
  const int64_t mlp = N * 3 * std::max<int64_t>(c.intermediate_size, c.shared_width());
  // + the router's f32 copies of x and dx (bf16 models)
  const int64_t moe = R * D * 2 + N * K + Rx * F * 3 + N * E * 2 + mlp + 2 * N * D +
                      (ep > 1 ? 3 * Rx * D + E * 8 : 0);
  // hierarchical dispatch: gathered tokens and gradients, the node's pairs, partial sums
  const int64_t hier = nodes > 1 ? 4 * nodes * N * D + 2 * nodes * N * std::min(K, E / nodes) * D + 3 * nodes * N * K : 0;
  const int64_t layer = 4 * N * D + std::max({mla, moe + hier, mlp});
  const int64_t top = N * D * 6;  // main dres + MTP dres, dcat (2D), d emb, d hprev
  return top + layer + 64 * 64;   // + alignment slack
}

}  // namespace

// --- the model -----------------------------------------------------------------------------------

template <class T>
struct MtpActs {
  using A = acc_t<T>;
  T* emb = nullptr;     // (Nk, D) embedding of x_{i+k}
  T* cat = nullptr;     // (Nk, 2D) [enorm(emb) ; hnorm(h_prev)]
  T* hprev = nullptr;   // (Nk, D) rows i < T-k of h^{k-1}
  A* rstd_e = nullptr;
  A* rstd_h = nullptr;
  T* h_in = nullptr;    // (Nk, D) eh_proj output, the layer input
  T* h_out = nullptr;   // (Nk, D) layer output
  T* hn = nullptr;      // (Nk, D) shared_head.norm output
  A* rstd_n = nullptr;
  T* dhn = nullptr;     // (Nk, D) gradient of hn
  LayerActs<T> layer;
};

// The micro-batch on the model's device, one entry per stream (main, then MTP depth k): what the
// ops read. On the CPU the pointers are the WindowBatch's own vectors; on a device they are
// uploaded copies, plus the tokens grouped by id for a deterministic embedding backward.
struct DevRows {
  const int32_t *ids = nullptr, *pos = nullptr, *seg_start = nullptr, *targets = nullptr;
  int32_t *d_ids = nullptr, *d_pos = nullptr, *d_seg = nullptr, *d_tgt = nullptr;
  int32_t *d_by_rows = nullptr, *d_by_start = nullptr, *d_by_id = nullptr;
  TokensById by_id;
};

// One micro-batch's state in one chunk: the batch, the activations the backward needs, the
// gradient buffer at the chunk boundary, and what the forward produced.
template <class T>
struct Frame {
  int64_t B = 0;
  WindowBatch wb;
  std::vector<DevRows> dev;
  std::vector<T*> res;              // res[0] the chunk's input, res[i+1] after its i-th main layer
  std::vector<LayerActs<T>> lacts;  // the chunk's main layers
  T* grad = nullptr;                // (N, D): the output's gradient in, the input's gradient out
  T* h0 = nullptr;                  // tail: (N, D) final-norm output
  acc_t<T>* rstd_final = nullptr;
  T* dh0 = nullptr;                 // tail: (N, D) gradient of h0
  std::vector<MtpActs<T>> mtp;      // tail
  MicroResult result;
};

template <class T>
struct Model<T>::Impl {
  const ModelConfig& c;
  int L = 0;
  struct Chunk {
    int u0 = 0, u1 = 0, n_slots = 1;
    bool embed = false, tail = false;
    int l0 = 0, l1 = 0;  // main layers [l0, l1)
    std::vector<Frame<T>> frames;
  };
  std::vector<Chunk> chunks;
  std::vector<bool> owned;          // decoder layers (main, then MTP) this rank holds
  std::vector<LayerParams> layers;  // main then MTP (resolved for the owned ones)
  int64_t embed = -1, final_norm = -1, head = -1;
  struct MtpP { int64_t enorm, hnorm, eh_proj, head_norm; };
  std::vector<MtpP> mtp_p;
  // replicated parameter ranges whose gradients become final together in the backward
  std::vector<std::pair<int64_t, int64_t>> layer_range;  // per decoder layer (MTP extras included)
  std::pair<int64_t, int64_t> embed_range{0, 0}, tail_range{0, 0};  // tail: final norm + LM head

  Arena acts, scratch;
  DeviceBuffer<acc_t<T>> rope_cos, rope_sin;  // (T, rope/2) on the model's device
  std::vector<int32_t> by_rows, by_start, by_id, id_count;  // host staging of TokensById
  Device device = Device::cpu;
  int64_t ep = 1, nodes = 1;
  Recompute recompute;
  SharedSlots slots;

  Impl(const ModelConfig& cfg, const ParamTable& t, const std::vector<ChunkSpec>& specs) : c(cfg) {
    L = int(c.num_hidden_layers);
    const int n_units = L + 2;
    owned.assign(c.n_layers_total(), false);
    std::vector<ChunkSpec> sp = specs.empty() ? std::vector<ChunkSpec>{ChunkSpec{}} : specs;
    for (const ChunkSpec& s : sp) {
      Chunk ch;
      ch.u0 = s.unit_begin;
      ch.u1 = s.unit_end < 0 ? n_units : s.unit_end;
      ch.n_slots = s.n_slots;
      UM_CHECK(ch.u0 >= 0 && ch.u0 < ch.u1 && ch.u1 <= n_units && ch.n_slots >= 1, "model", "chunk of units [", ch.u0,
               ", ", ch.u1, ") with ", ch.n_slots, " slots does not fit a model of ", n_units, " units");
      ch.embed = ch.u0 == 0;
      ch.tail = ch.u1 == n_units;
      ch.l0 = std::max(ch.u0, 1) - 1;
      ch.l1 = std::min(ch.u1, L + 1) - 1;
      for (int l = ch.l0; l < ch.l1; ++l) owned[l] = true;
      if (ch.tail)
        for (int l = L; l < c.n_layers_total(); ++l) owned[l] = true;
      chunks.push_back(ch);
    }
    layers.resize(c.n_layers_total());
    for (int l = 0; l < c.n_layers_total(); ++l)
      if (owned[l]) layers[l] = LayerParams::resolve(t, c, l);
    const bool tail = chunks.back().tail;
    if (chunks.front().embed || (tail && tail_reads_embedding(c))) embed = t.at("model.embed_tokens.weight").offset;
    layer_range.assign(c.n_layers_total(), {INT64_MAX, 0});
    embed_range = tail_range = {INT64_MAX, 0};
    for (const ParamInfo& p : t.params) {
      if (p.expert >= 0) continue;
      auto& r = p.layer >= 0 ? layer_range[p.layer] : (p.component == Component::embedding ? embed_range : tail_range);
      r.first = std::min(r.first, p.offset);
      r.second = std::max(r.second, p.offset + p.numel);
    }
    if (tail) {
      final_norm = t.at("model.norm.weight").offset;
      head = c.tie_word_embeddings ? embed : t.at("lm_head.weight").offset;
      for (int k = 1; k <= c.num_nextn_predict_layers; ++k) {
        const std::string pre = "model.layers." + std::to_string(L + k - 1) + ".";
        mtp_p.push_back({t.at(pre + "enorm.weight").offset, t.at(pre + "hnorm.weight").offset,
                         t.at(pre + "eh_proj.weight").offset, t.at(pre + "shared_head.norm.weight").offset});
      }
    }
  }

  // Points the ops at a frame's batch: on a device, one upload per array.
  void upload_batch(Frame<T>& f, const Ctx& ctx) {
    for (size_t i = 0; i < f.dev.size(); ++i) {
      const SeqRows& r = i == 0 ? f.wb.main : f.wb.mtp[i - 1];
      DevRows& d = f.dev[i];
      const int64_t n = r.rows();
      if (device == Device::cpu) {
        d.ids = r.ids.data(), d.pos = r.pos.data(), d.seg_start = r.seg_start.data(), d.targets = r.targets.data();
        d.by_id = {};
        continue;
      }
      ctx.upload(d.d_ids, r.ids.data(), size_t(n));
      ctx.upload(d.d_pos, r.pos.data(), size_t(n));
      ctx.upload(d.d_seg, r.seg_start.data(), size_t(n));
      ctx.upload(d.d_tgt, r.targets.data(), size_t(n));
      d.ids = d.d_ids, d.pos = d.d_pos, d.seg_start = d.d_seg, d.targets = d.d_tgt;
      const int64_t n_ids = group_tokens_by_id(by_rows.data(), by_start.data(), by_id.data(), id_count.data(),
                                               r.ids.data(), n, c.vocab_size);
      ctx.upload(d.d_by_rows, by_rows.data(), size_t(n));
      ctx.upload(d.d_by_start, by_start.data(), size_t(n_ids + 1));
      ctx.upload(d.d_by_id, by_id.data(), size_t(n_ids));
      d.by_id = {d.d_by_rows, d.d_by_start, d.d_by_id, n_ids};
    }
  }

  void layout_frame(Arena& a, const Chunk& ch, Frame<T>& f, int64_t B, int64_t T_) {
    const int64_t N = B * T_, D = c.hidden_size;
    f.dev.assign(1 + c.num_nextn_predict_layers, DevRows{});
    if (device != Device::cpu) {
      for (size_t i = 0; i < f.dev.size(); ++i) {
        const int64_t n = B * std::max<int64_t>(T_ - int64_t(i), 0);
        DevRows& d = f.dev[i];
        d.d_ids = a.alloc<int32_t>(n), d.d_pos = a.alloc<int32_t>(n), d.d_seg = a.alloc<int32_t>(n);
        d.d_tgt = a.alloc<int32_t>(n), d.d_by_rows = a.alloc<int32_t>(n);
        d.d_by_start = a.alloc<int32_t>(n + 1), d.d_by_id = a.alloc<int32_t>(n);
      }
    }
    const int n_l = ch.l1 - ch.l0;
    f.res.assign(n_l + 1, nullptr);
    for (auto& r : f.res) r = a.alloc<T>(N * D);
    f.lacts.assign(n_l, LayerActs<T>{});
    for (int i = 0; i < n_l; ++i) f.lacts[i].alloc(a, c, B, T_, c.is_moe_layer(ch.l0 + i), ep, nodes, recompute, &slots);
    f.grad = a.alloc<T>(N * D);
    f.mtp.clear();
    if (!ch.tail) return;
    f.h0 = a.alloc<T>(N * D);
    f.rstd_final = a.alloc<acc_t<T>>(N);
    f.dh0 = a.alloc<T>(N * D);
    f.mtp.assign(c.num_nextn_predict_layers, MtpActs<T>{});
    for (int64_t k = 1; k <= c.num_nextn_predict_layers; ++k) {
      const int64_t Tk = std::max<int64_t>(T_ - k, 0), Nk = B * Tk;
      MtpActs<T>& m = f.mtp[k - 1];
      m.emb = a.alloc<T>(Nk * D);
      m.cat = a.alloc<T>(Nk * 2 * D);
      m.hprev = a.alloc<T>(Nk * D);
      m.rstd_e = a.alloc<acc_t<T>>(Nk);
      m.rstd_h = a.alloc<acc_t<T>>(Nk);
      m.h_in = a.alloc<T>(Nk * D);
      m.h_out = a.alloc<T>(Nk * D);
      m.hn = a.alloc<T>(Nk * D);
      m.rstd_n = a.alloc<acc_t<T>>(Nk);
      m.dhn = a.alloc<T>(Nk * D);
      m.layer.alloc(a, c, B, Tk, c.is_moe_layer(L + k - 1), ep, nodes, recompute, &slots);
    }
  }

  void layout(Arena& a, int64_t B, int64_t T_) {
    if (device != Device::cpu) {
      const int64_t N = B * T_;
      by_rows.resize(N), by_start.resize(N + 1), by_id.resize(N), id_count.resize(c.vocab_size);
    }
    for (Chunk& ch : chunks) {
      ch.frames.resize(ch.n_slots);
      for (Frame<T>& f : ch.frames) layout_frame(a, ch, f, B, T_);
    }
  }
};

template <class T>
Model<T>::Model(const ModelConfig& c, const ParamTable& table, const ModelOptions& opt)
    : cfg_(c), opt_(opt) {
  UM_CHECK(opt.seq_len >= 1, "model", "seq_len must be >= 1, got ", opt.seq_len);
  UM_CHECK(opt.seq_len <= c.max_position_embeddings, "model", "seq_len ", opt.seq_len,
           " exceeds max_position_embeddings ", c.max_position_embeddings);
  UM_CHECK(opt.micro_batch >= 1, "model", "micro_batch must be >= 1, got ", opt.micro_batch);
  const int64_t ep = opt.comms.ep ? opt.comms.ep->size() : 1;
  UM_CHECK(c.n_routed_experts == 0 || table.n_local_experts * ep == c.n_routed_experts, "model",
           "the parameter table holds ", table.n_local_experts, " experts per rank, but an EP group of ", ep,
           " needs ", c.n_routed_experts / std::max<int64_t>(ep, 1));
  for (int l = 0; l < c.n_layers_total(); ++l)
    if (c.is_moe_layer(l)) moe_layers_.push_back(l);
  const int64_t nodes = opt.comms.inter ? opt.comms.inter->size() : 1;
  UM_CHECK(opt.device == Device::cpu || nodes == 1, "model", "hierarchical expert dispatch (parallel.ranks_per_node) "
           "runs on the CPU only");
  UM_CHECK((opt.device != Device::cpu || std::is_same_v<T, acc_t<T>>), "model", "bf16 compute needs --device cuda");
  impl_ = std::make_unique<Impl>(cfg_, table, opt.chunks);
  impl_->ep = ep;
  impl_->nodes = nodes;
  impl_->recompute = opt.recompute;
  impl_->device = opt.device;
  Arena probe = Arena::counting();
  impl_->layout(probe, opt.micro_batch, opt.seq_len);  // sizes the arena and the shared slots
  impl_->slots.prepare(probe);
  impl_->acts = Arena(probe.used(), opt.device);
  impl_->slots.prepare(impl_->acts);
  impl_->layout(impl_->acts, opt.micro_batch, opt.seq_len);
  impl_->scratch = Arena(sizeof(acc_t<T>) * backward_scratch_elements(c, opt.micro_batch * opt.seq_len, ep, nodes),
                         opt.device);
  // RoPE tables in double on the host, stored in acc_t<T> on the device
  const int64_t half = c.qk_rope_head_dim / 2;
  std::vector<acc_t<T>> cos_h(opt.seq_len * half), sin_h(opt.seq_len * half);
  rope_tables<acc_t<T>>(cos_h.data(), sin_h.data(), opt.seq_len, int(c.qk_rope_head_dim), c.rope_theta);
  impl_->rope_cos = DeviceBuffer<acc_t<T>>(int64_t(cos_h.size()), opt.device);
  impl_->rope_sin = DeviceBuffer<acc_t<T>>(int64_t(sin_h.size()), opt.device);
  device_api(opt.device).to_device(impl_->rope_cos.data(), cos_h.data(), cos_h.size() * sizeof(acc_t<T>), nullptr);
  device_api(opt.device).to_device(impl_->rope_sin.data(), sin_h.data(), sin_h.size() * sizeof(acc_t<T>), nullptr);
  device_api(opt.device).synchronize(nullptr);
}

template <class T>
Model<T>::~Model() = default;

template <class T>
int Model<T>::n_chunks() const {
  return int(impl_->chunks.size());
}

template <class T>
int Model<T>::chunk_slots(int chunk) const {
  return impl_->chunks.at(chunk).n_slots;
}

template <class T>
bool Model<T>::owns_layer(int layer) const {
  return impl_->owned.at(layer);
}

template <class T>
T* Model<T>::chunk_input(int chunk, int slot) {
  return impl_->chunks.at(chunk).frames.at(slot).res.front();
}

template <class T>
T* Model<T>::chunk_output(int chunk, int slot) {
  return impl_->chunks.at(chunk).frames.at(slot).res.back();
}

template <class T>
T* Model<T>::grad(int chunk, int slot) {
  return impl_->chunks.at(chunk).frames.at(slot).grad;
}

template <class T>
void Model<T>::sublayer_output_std(int64_t B, std::vector<double>& attn, std::vector<double>& ffn,
                                   const Ctx& ctx) const {
  UM_CHECK(impl_->chunks.size() == 1 && impl_->chunks[0].embed && impl_->chunks[0].tail, "model",
           "DSSN auto calibration needs the whole model on one rank (no pipeline parallelism)");
  const int64_t n = B * opt_.seq_len * cfg_.hidden_size;
  std::vector<T> host(n);
  auto stddev = [&](const T* x) {
    ctx.download(host.data(), x, size_t(n));
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double v = to_double(host[i]);
      s += v, s2 += v * v;
    }
    const double mean = s / double(n);
    return std::sqrt(std::max(0.0, s2 / double(n) - mean * mean));
  };
  attn.clear();
  ffn.clear();
  for (const auto& a : impl_->chunks[0].frames[0].lacts) {
    attn.push_back(stddev(a.att));
    ffn.push_back(stddev(a.ffn));
  }
}

template <class T>
std::pair<double, double> calibrate_dssn(Model<T>& model, ParamStore<T>& ps, const ParamTable& t,
                                         const int32_t* windows, int64_t B, const Ctx& ctx) {
  const ModelConfig& c = model.config();
  double c_attn = c.dssn_c_attn, c_ffn = c.dssn_c_ffn;
  if (!c.sandwich_norm || !(c.dssn_c_attn_auto || c.dssn_c_ffn_auto)) return {c_attn, c_ffn};
  auto set_gains = [&](const char* which, double value) {
    for (int l = 0; l < c.n_layers_total(); ++l) {
      const ParamInfo& p = t.at("model.layers." + std::to_string(l) + "." + which + ".weight");
      fill<acc_t<T>>(ps.w.data() + p.offset, p.numel, value, ctx);
    }
    ps.sync_compute(ctx);
  };
  set_gains("post_attention_layernorm", 1.0);
  set_gains("post_mlp_layernorm", 1.0);
  StepScales sc;
  sc.n_mtp.assign(c.num_nextn_predict_layers, 1.0);
  model.forward_backward(ps, windows, B, sc, false, ctx);
  std::vector<double> attn, ffn;
  model.sublayer_output_std(B, attn, ffn, ctx);
  double mean_attn = 0, mean_ffn = 0;
  for (size_t l = 0; l < attn.size(); ++l) mean_attn += attn[l] / double(attn.size()), mean_ffn += ffn[l] / double(ffn.size());
  if (c.dssn_c_attn_auto) c_attn = mean_attn;
  if (c.dssn_c_ffn_auto) c_ffn = mean_ffn;
  set_gains("post_attention_layernorm", post_norm_gain(c, c_attn));
  set_gains("post_mlp_layernorm", post_norm_gain(c, c_ffn));
  return {c_attn, c_ffn};
}

template std::pair<double, double> calibrate_dssn<float>(Model<float>&, ParamStore<float>&, const ParamTable&,
                                                         const int32_t*, int64_t, const Ctx&);
template std::pair<double, double> calibrate_dssn<double>(Model<double>&, ParamStore<double>&, const ParamTable&,
                                                          const int32_t*, int64_t, const Ctx&);
template std::pair<double, double> calibrate_dssn<bf16>(Model<bf16>&, ParamStore<bf16>&, const ParamTable&,
                                                        const int32_t*, int64_t, const Ctx&);

template <class T>
int64_t Model<T>::bias_offset(size_t i) const {
  const int layer = moe_layers_.at(i);
  return impl_->owned[layer] ? impl_->layers[layer].moe_p.bias : -1;
}

template <class T>
int64_t Model<T>::embedding_offset() const {
  return impl_->embed;
}

template <class T>
size_t Model<T>::activation_bytes() const {
  return impl_->acts.capacity() + impl_->scratch.capacity();
}

namespace {
// Where an op writes a copy for a Capture: the capture's host vector itself on the CPU, else a
// device buffer downloaded into it afterwards (tests and debugging only).
template <class T>
struct CaptureSink {
  std::vector<T>* host = nullptr;
  DeviceBuffer<T> dev;
  T* open(std::vector<T>* h, int64_t n, const Ctx& ctx) {
    host = h;
    host->resize(size_t(n));
    if (ctx.device == Device::cpu) return host->data();
    dev = DeviceBuffer<T>(n, ctx.device);
    return dev.data();
  }
  void close(const Ctx& ctx) {
    if (host && ctx.device != Device::cpu) ctx.download(host->data(), dev.data(), host->size());
  }
};
template <class T>
void capture_rows(std::vector<T>& dst, const T* src, int64_t n, const Ctx& ctx) {
  dst.resize(size_t(n));
  ctx.download(dst.data(), src, size_t(n));
}

// How one MoE forward of a micro-batch of B sequences routes (design.md 1.5, 1.6).
MoeOptions moe_options_for(const ModelConfig& c, const ModelOptions& opt, const StepScales& sc, int64_t B,
                           int64_t rows_per_seq, bool backward) {
  MoeOptions o;
  o.spec = {c.topk_method, int(c.num_experts_per_tok), int(c.n_group), int(c.topk_group)};
  o.use_bias = opt.aux_free || c.aux_free_bias;
  o.capacity_factor = backward ? opt.capacity_factor : 0.0;  // inference is always dropless
  o.pool_rows = opt.balance_scope == BalanceScope::sequence ? rows_per_seq : B * rows_per_seq;
  o.balance_coef = sc.balance_alpha / sc.n_pools;
  o.z_coef = sc.z_coef / double(sc.n_sequences * rows_per_seq);
  o.comms = opt.comms;
  o.recompute = opt.recompute;
  return o;
}
}  // namespace

template <class T>
const MicroResult& Model<T>::forward_backward(ParamStore<T>& ps, const int32_t* windows, int64_t B,
                                       const StepScales& sc, bool backward, const Ctx& ctx,
                                       Capture<T>* cap) {
  UM_CHECK(impl_->chunks.size() == 1 && impl_->chunks[0].embed && impl_->chunks[0].tail, "model",
           "forward_backward needs the whole model in one chunk; a pipeline rank runs forward_chunk/backward_chunk");
  const MicroResult& r = forward_chunk(0, 0, ps, windows, B, sc, backward, ctx, cap);
  if (backward) backward_chunk(0, 0, ps, sc, ctx);
  return r;
}

template <class T>
const MicroResult& Model<T>::forward_chunk(int chunk, int slot, ParamStore<T>& ps, const int32_t* windows, int64_t B,
                                           const StepScales& sc, bool backward, const Ctx& ctx, Capture<T>* cap) {
  Impl& m = *impl_;
  typename Impl::Chunk& ch = m.chunks.at(chunk);
  Frame<T>& f = ch.frames.at(slot);
  const ModelConfig& c = cfg_;
  const int64_t T_ = opt_.seq_len, D = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers,
                depth = c.num_nextn_predict_layers;
  UM_CHECK(B >= 1 && B <= opt_.micro_batch, "model", "micro-batch of ", B,
           " sequences; the model was sized for at most ", opt_.micro_batch);
  UM_CHECK(int64_t(sc.n_mtp.size()) >= depth, "model", "StepScales has ", sc.n_mtp.size(),
           " MTP counts, the model has depth ", depth);
  UM_CHECK(ctx.device == opt_.device, "model", "the model lives on ", device_name(opt_.device),
           ", the Ctx is for ", device_name(ctx.device));
  UM_CHECK(!cap || (ch.embed && ch.tail), "model", "captures need the whole model in one chunk");
  f.B = B;
  build_window_batch(f.wb, windows, B, T_, depth, V);
  m.upload_batch(f, ctx);
  const WeightPtrs<T> W = WeightPtrs<T>::of(ps, backward);
  acc_t<T>* g = W.g;
  const RopeTables<T> rope{m.rope_cos.data(), m.rope_sin.data()};
  const int64_t N = B * T_;

  MicroResult& r = f.result;
  r.ce_main = 0;
  r.ce_mtp.assign(depth, 0.0);
  r.moe.resize(moe_layers_.size());
  for (MoeStats& st : r.moe) st.reset(c.n_routed_experts);  // layers that do not run report zeros
  auto stats_for = [&](int layer) -> MoeStats* {
    for (size_t i = 0; i < moe_layers_.size(); ++i)
      if (moe_layers_[i] == layer) return &r.moe[i];
    return nullptr;
  };
  if (cap) {
    cap->hidden.assign(L + depth, {});
    cap->mtp_logits.assign(depth, {});
  }

  // ---- forward: the chunk's main layers ----
  const DevRows& main_rows = f.dev[0];
  const SeqView main_seq{B, T_, main_rows.pos, main_rows.seg_start};
  const MoeOptions main_mo = moe_options_for(c, opt_, sc, B, T_, backward);
  std::optional<PhaseTimer> phase;
  phase.emplace(ctx.prof, Phase::norms);
  if (ch.embed) embedding_forward<T>(f.res[0], main_rows.ids, W.w + m.embed, N, D, ctx);
  for (int i = 0; i < ch.l1 - ch.l0; ++i) {
    const int l = ch.l0 + i;
    layer_forward<T>(f.res[i + 1], f.res[i], f.lacts[i], stats_for(l), m.layers[l], W, c, main_seq, rope, main_mo,
                     m.scratch, ctx);
    if (cap) capture_rows(cap->hidden[l], f.res[i + 1], N * D, ctx);
  }
  if (!ch.tail) return r;

  // ---- forward: final norm, LM head ----
  rmsnorm_forward<T>(f.h0, D, f.rstd_final, f.res.back(), D, W.wm + m.final_norm, N, D, c.rms_norm_eps, ctx);
  CaptureSink<T> sink;
  if (cap) capture_rows(cap->hidden_norm, f.h0, N * D, ctx);
  phase.reset();
  phase.emplace(ctx.prof, Phase::head);
  r.ce_main = lm_head_cross_entropy<T>(backward ? f.dh0 : nullptr, backward ? g + m.head : nullptr,
                                       cap ? sink.open(&cap->logits, N * V, ctx) : nullptr, nullptr, f.h0,
                                       W.w + m.head, main_rows.targets, N, D, V, 1.0 / sc.n_main, ctx);
  sink.close(ctx);

  // ---- forward: MTP modules (design.md 1.7) ----
  phase.reset();
  phase.emplace(ctx.prof, Phase::mtp);
  for (int64_t k = 1; k <= (sc.with_mtp || backward ? depth : 0); ++k) {
    MtpActs<T>& a = f.mtp[k - 1];
    const auto& mp = m.mtp_p[k - 1];
    const SeqRows& rows = f.wb.mtp[k - 1];
    const DevRows& dr = f.dev[k];
    const int64_t Tk = rows.T, Nk = rows.rows();
    if (Nk == 0) continue;
    const SeqView seq{B, Tk, dr.pos, dr.seg_start};
    // h_prev: the main final-norm output (k = 1) or module k-1's head-norm output, rows i < T-k
    const T* src = k == 1 ? f.h0 : f.mtp[k - 2].hn;
    const int64_t T_src = Tk + 1;
    copy_rows<T>(a.hprev, Tk * D, src, T_src * D, B, Tk * D, false, ctx);
    embedding_forward<T>(a.emb, dr.ids, W.w + m.embed, Nk, D, ctx);
    rmsnorm_forward<T>(a.cat, 2 * D, a.rstd_e, a.emb, D, W.wm + mp.enorm, Nk, D, c.rms_norm_eps, ctx);
    rmsnorm_forward<T>(a.cat + D, 2 * D, a.rstd_h, a.hprev, D, W.wm + mp.hnorm, Nk, D, c.rms_norm_eps, ctx);
    linear_forward<T>(a.h_in, D, a.cat, 2 * D, W.w + mp.eh_proj, Nk, 2 * D, D, ctx);
    const int layer = int(L + k - 1);
    layer_forward<T>(a.h_out, a.h_in, a.layer, stats_for(layer), m.layers[layer], W, c, seq, rope,
                     moe_options_for(c, opt_, sc, B, Tk, backward), m.scratch, ctx);
    rmsnorm_forward<T>(a.hn, D, a.rstd_n, a.h_out, D, W.wm + mp.head_norm, Nk, D, c.rms_norm_eps, ctx);
    if (cap) capture_rows(cap->hidden[layer], a.h_out, Nk * D, ctx);
    const double weight = sc.mtp_lambda / double(depth) / std::max(sc.n_mtp[k - 1], 1.0);
    CaptureSink<T> mtp_sink;
    r.ce_mtp[k - 1] = lm_head_cross_entropy<T>(
        backward ? a.dhn : nullptr, backward ? g + m.head : nullptr,
        cap ? mtp_sink.open(&cap->mtp_logits[k - 1], Nk * V, ctx) : nullptr, nullptr, a.hn, W.w + m.head,
        dr.targets, Nk, D, V, weight, ctx);
    mtp_sink.close(ctx);
  }
  return r;
}

template <class T>
void Model<T>::backward_chunk(int chunk, int slot, ParamStore<T>& ps, const StepScales& sc, const Ctx& ctx) {
  Impl& m = *impl_;
  typename Impl::Chunk& ch = m.chunks.at(chunk);
  Frame<T>& f = ch.frames.at(slot);
  const ModelConfig& c = cfg_;
  const int64_t T_ = opt_.seq_len, D = c.hidden_size, L = c.num_hidden_layers, depth = c.num_nextn_predict_layers;
  const int64_t B = f.B, N = B * T_;
  const WeightPtrs<T> W = WeightPtrs<T>::of(ps, true);
  acc_t<T>* g = W.g;
  const RopeTables<T> rope{m.rope_cos.data(), m.rope_sin.data()};
  Arena& s = m.scratch;
  std::optional<PhaseTimer> phase;

  if (ch.tail) {
    // ---- backward: MTP modules, last first; each hands a gradient to the one before ----
    phase.emplace(ctx.prof, Phase::mtp);
    for (int64_t k = depth; k >= 1; --k) {
      MtpActs<T>& a = f.mtp[k - 1];
      const auto& mp = m.mtp_p[k - 1];
      const SeqRows& rows = f.wb.mtp[k - 1];
      const DevRows& dr = f.dev[k];
      const int64_t Tk = rows.T, Nk = rows.rows();
      if (Nk == 0) continue;
      const SeqView seq{B, Tk, dr.pos, dr.seg_start};
      const size_t mark = s.mark();
      T* dres = s.alloc<T>(Nk * D);
      T* dcat = s.alloc<T>(Nk * 2 * D);
      T* demb = s.alloc<T>(Nk * D);
      T* dprev = s.alloc<T>(Nk * D);
      rmsnorm_backward<T>(dres, D, g + mp.head_norm, a.dhn, D, a.h_out, D, W.wm + mp.head_norm,
                          a.rstd_n, Nk, D, false, ctx);
      const int layer = int(L + k - 1);
      layer_backward<T>(dres, a.h_in, a.layer, m.layers[layer], W, c, seq, rope,
                        moe_options_for(c, opt_, sc, B, Tk, true), s, ctx);
      linear_backward<T>(dcat, 2 * D, g + mp.eh_proj, dres, D, a.cat, 2 * D, W.w + mp.eh_proj, Nk,
                         2 * D, D, false, ctx);
      rmsnorm_backward<T>(demb, D, g + mp.enorm, dcat, 2 * D, a.emb, D, W.wm + mp.enorm, a.rstd_e, Nk,
                          D, false, ctx);
      embedding_backward<T>(g + m.embed, demb, dr.ids, dr.by_id, Nk, D, ctx);
      rmsnorm_backward<T>(dprev, D, g + mp.hnorm, dcat + D, 2 * D, a.hprev, D, W.wm + mp.hnorm,
                          a.rstd_h, Nk, D, false, ctx);
      if (sc.on_grads_ready) sc.on_grads_ready(m.layer_range[layer].first, m.layer_range[layer].second);
      T* dsrc = k == 1 ? f.dh0 : f.mtp[k - 2].dhn;
      const int64_t T_src = Tk + 1;
      copy_rows<T>(dsrc, T_src * D, dprev, Tk * D, B, Tk * D, true, ctx);
      s.release(mark);
    }
    // ---- backward: final norm; f.grad becomes the gradient of the last residual stream ----
    phase.reset();
    phase.emplace(ctx.prof, Phase::norms);
    rmsnorm_backward<T>(f.grad, D, g + m.final_norm, f.dh0, D, f.res.back(), D, W.wm + m.final_norm,
                        f.rstd_final, N, D, false, ctx);
    if (sc.on_grads_ready) sc.on_grads_ready(m.tail_range.first, m.tail_range.second);
  } else {
    phase.emplace(ctx.prof, Phase::norms);  // f.grad holds the gradient of the chunk's output
  }

  // ---- backward: the chunk's main layers, in place on f.grad (the residual stream) ----
  const DevRows& main_rows = f.dev[0];
  const SeqView main_seq{B, T_, main_rows.pos, main_rows.seg_start};
  const MoeOptions main_mo = moe_options_for(c, opt_, sc, B, T_, true);
  for (int i = ch.l1 - ch.l0 - 1; i >= 0; --i) {
    const int l = ch.l0 + i;
    layer_backward<T>(f.grad, f.res[i], f.lacts[i], m.layers[l], W, c, main_seq, rope, main_mo, s, ctx);
    if (sc.on_grads_ready) sc.on_grads_ready(m.layer_range[l].first, m.layer_range[l].second);
  }
  if (ch.embed) {
    embedding_backward<T>(g + m.embed, f.grad, main_rows.ids, main_rows.by_id, N, D, ctx);
    if (sc.on_grads_ready) sc.on_grads_ready(m.embed_range.first, m.embed_range.second);
  }
}

template class Model<float>;
template class Model<double>;
template class Model<bf16>;

}  // namespace um
