#include "plan/simulate.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "plan/cost.h"

namespace um::plan {

namespace {

// Bytes per parameter held (Megatron-Core docs/source/api-guide/dist_optimizer.md): bf16 params
// with fp32 grads keep 2 + 4 bytes on every replica and 12 (fp32 master, Adam m and v) that
// ZeRO-1 shards ("6 + 12/d"); fp32 training keeps 4 + 4 and shards 8 ("8 + 8/d").
struct StateBytes {
  double param, grad, optimizer;
  double adam_traffic;  // bytes the AdamW update reads and writes per parameter
};
// AdamW reads grad, master, m, v and writes master, m, v (4 bytes each), plus the bf16 copy.
constexpr double kAdamTrafficBf16 = 4 * 4 + 3 * 4 + 2;
constexpr double kAdamTrafficFp32 = 4 * 4 + 3 * 4;
StateBytes state_bytes(Precision p) {
  if (p == Precision::bf16) return {2, 4, 12, kAdamTrafficBf16};
  return {4, 4, 8, kAdamTrafficFp32};
}

// Bytes moved per element by the memory-bound passes: a norm reads x and writes y; a residual
// add reads two and writes one; SwiGLU reads gate and up and writes one; RoPE and permutes read
// and write.
constexpr double kNormPass = 2, kResidualPass = 3, kSwigluPass = 3, kCopyPass = 2;
// The router GEMM and scores run in fp32 (design.md 1.5), as does the vocab-parallel cross entropy
// that keeps the softmax of the logits for backward (Megatron-Core's default).
constexpr double kFp32Bytes = 4;
// Cross-entropy over the logits, forward and backward fused (src/ops/cross_entropy.h): passes for
// the max, the sum of exponentials and the softmax gradient, and two exponentials per logit.
constexpr double kCrossEntropyPasses = 3, kCrossEntropyExps = 2;

struct Env {
  const PlanModel& m;
  const Hardware& hw;
  const Workload& w;
  const Layout& l;
  Dispatch dispatch;
  double eb;       // bytes per activation element
  double t;        // tokens of one micro-batch (mbs * T), what every TP rank sees in TP regions
  double tl;       // tokens per device in sequence-parallel regions: t / tp
  double imb;      // MoE imbalance: the busiest device's routed load over the mean
  GroupSpan tp_g, a2a_g, etp_g;
};

// Forward work of one block on one device, and its backward: GEMMs twice (data and weight
// gradients), attention at the hardware's attention_backward_ratio, element-wise passes with twice
// the bytes (the saved input and the incoming gradient in, the gradient out) and the same
// exponentials again. `once` is work whose forward and backward run fused (the cross entropy),
// counted with the forward.
struct Work {
  double gemm = 0, attn = 0, mem_fwd = 0, mem_bwd = 0, once = 0;
  int ops = 0;
  double fwd(const Hardware& hw) const { return gemm + attn + mem_fwd + once + ops * hw.op_overhead_s; }
  double bwd(const Hardware& hw) const {
    return 2 * gemm + hw.attention_backward_ratio * attn + mem_bwd + 2 * ops * hw.op_overhead_s;
  }
};

void add_gemm(Work& w, const Env& e, double m, double n, double k, double factor = 1.0) {
  w.gemm += gemm_time(e.hw, m, n, k, static_cast<int>(e.eb), factor);
  w.ops += 1;
}
void add_pass(Work& w, const Env& e, double bytes, double exps = 0) {
  w.mem_fwd += memory_pass_time(e.hw, bytes, exps);
  w.mem_bwd += memory_pass_time(e.hw, 2 * bytes, exps);
  w.ops += 1;
}

// One block (attention, FFN, ...) of one layer, one micro-batch, one device.
struct Block {
  Work work;              // forward
  Work redo;              // forward work selective recomputation repeats
  double tp = 0;          // TP collectives of the forward
  double act = 0;         // bytes saved for backward, no recomputation
  double act_dropped = 0; // of which selective recomputation does not keep
  double dense_params = 0, expert_params = 0;
  // EP all-to-all of a MoE block (forward; backward moves the same bytes)
  double dispatch = 0, combine = 0, shared_fwd = 0, shared_bwd = 0, a2a_buffer = 0;
};

double tp_pair(const Env& e, double shard_bytes) {  // an all-gather and a reduce-scatter
  const Link& link = group_link(e.hw, e.tp_g);
  return ring_all_gather_time(link, e.l.tp, shard_bytes) + ring_reduce_scatter_time(link, e.l.tp, shard_bytes);
}

// Norm, residual and (sandwich) post-norm of a sub-layer, on the sequence-parallel shard.
void add_norms(Block& b, const Env& e) {
  const double D = static_cast<double>(e.m.hidden);
  const double passes = kNormPass + kResidualPass + (e.m.sandwich_norm ? kNormPass : 0);
  add_pass(b.work, e, e.tl * D * passes * e.eb);
  add_pass(b.redo, e, e.tl * D * kNormPass * e.eb);
  b.act += e.tl * D * (2 + (e.m.sandwich_norm ? 1 : 0)) * e.eb;  // norm in, norm out, post-norm in
  b.act_dropped += e.tl * D * e.eb;                                // norm out
}

void add_mla(Block& b, const Env& e) {
  const PlanModel& m = e.m;
  const double t = e.t, tp = e.l.tp, H = static_cast<double>(m.n_heads), D = static_cast<double>(m.hidden);
  const double heads = H / tp, q_out = heads * m.d_qk(), kv_out = heads * (m.qk_nope + m.v_head);
  double full = 0, dropped = 0;  // per-token elements of the replicated (not sequence-split) tensors
  if (m.q_lora > 0) {
    add_gemm(b.work, e, t, m.q_lora, D);                      // q_a_proj, replicated
    add_pass(b.work, e, t * m.q_lora * kNormPass * e.eb);     // q_a_layernorm
    add_pass(b.redo, e, t * m.q_lora * kNormPass * e.eb);
    add_gemm(b.work, e, t, q_out, m.q_lora);                  // q_b_proj
    add_gemm(b.redo, e, t, q_out, m.q_lora);
    full += 2.0 * m.q_lora;
    dropped += m.q_lora;
  } else {
    add_gemm(b.work, e, t, q_out, D);                         // q_proj
    add_gemm(b.redo, e, t, q_out, D);
  }
  add_gemm(b.work, e, t, m.kv_lora + m.qk_rope, D);           // kv_a_proj_with_mqa, replicated
  add_pass(b.work, e, t * m.kv_lora * kNormPass * e.eb);      // kv_a_layernorm
  add_pass(b.redo, e, t * m.kv_lora * kNormPass * e.eb);
  add_gemm(b.work, e, t, kv_out, m.kv_lora);                  // kv_b_proj
  add_gemm(b.redo, e, t, kv_out, m.kv_lora);
  add_pass(b.work, e, t * (heads + 1) * m.qk_rope * kCopyPass * e.eb);  // RoPE on q_pe, k_pe
  add_pass(b.redo, e, t * (heads + 1) * m.qk_rope * kCopyPass * e.eb);
  full += 2.0 * m.kv_lora + m.qk_rope;
  dropped += m.kv_lora;
  const double qkv = heads * (2.0 * m.d_qk() + m.v_head);      // q, k, v after up-projection and RoPE
  b.act += (full + qkv) * t * e.eb;
  b.act_dropped += (dropped + qkv) * t * e.eb;
}

void add_gqa(Block& b, const Env& e) {
  const PlanModel& m = e.m;
  const double t = e.t, tp = e.l.tp, D = static_cast<double>(m.hidden);
  const double q = m.n_heads / tp * m.head_dim, kv = m.n_kv_heads / tp * m.head_dim;
  add_gemm(b.work, e, t, q + 2 * kv, D);                             // fused qkv projection
  add_pass(b.work, e, t * (q + kv) * kCopyPass * e.eb);              // RoPE on q and k
  b.act += (q + 2 * kv) * t * e.eb;
}

Block attention_block(const Env& e) {
  const PlanModel& m = e.m;
  const double t = e.t, tp = e.l.tp, D = static_cast<double>(m.hidden);
  Block b;
  add_norms(b, e);
  if (m.attention == AttentionKind::mla) add_mla(b, e);
  else add_gqa(b, e);
  const double heads = m.n_heads / tp;
  b.work.attn += attention_time(e.hw, attention_forward_flops(e.l.mbs, e.w.seq_len, heads, m.d_qk(), m.d_v()));
  b.work.ops += 1;
  add_gemm(b.work, e, t, D, heads * m.d_v());                        // o_proj (row-parallel)
  b.act += t * heads * (m.d_v() * e.eb + kFp32Bytes);                // attention output, logsumexp
  if (e.l.tp > 1) b.tp += tp_pair(e, e.tl * D * e.eb);
  const LayerParams p = layer_params(m, 0);  // attention and norms are the same in every layer
  b.dense_params = p.attn_split / tp + p.attn_replicated + p.norms;
  return b;
}

// A SwiGLU MLP split over TP (dense FFN, shared experts): the gathered input, column-parallel
// gate/up, row-parallel down.
void add_tp_mlp(Block& b, Work& w, Work& redo, const Env& e, double width) {
  const double t = e.t, D = static_cast<double>(e.m.hidden), f = width / e.l.tp;
  add_gemm(w, e, t, 2 * f, D);
  add_pass(w, e, t * f * kSwigluPass * e.eb, t * f);  // one sigmoid per element
  add_pass(redo, e, t * f * kSwigluPass * e.eb, t * f);
  add_gemm(w, e, t, D, f);
  b.act += t * 3 * f * e.eb;          // gate and up outputs, SwiGLU output
  b.act_dropped += t * f * e.eb;      // SwiGLU output (Megatron-Core moe_act / design.md 2)
  if (e.l.tp > 1) b.tp += tp_pair(e, e.tl * D * e.eb);
}

Block dense_ffn_block(const Env& e) {
  Block b;
  add_norms(b, e);
  add_tp_mlp(b, b.work, b.redo, e, static_cast<double>(e.m.dense_width));
  b.dense_params = 3.0 * e.m.dense_width * e.m.hidden / e.l.tp;
  return b;
}

// The EP all-to-all of one direction (dispatch or combine) plus, with expert tensor parallelism,
// the all-gather / reduce-scatter of the received rows over the etp ranks (Megatron-Core's
// alltoall dispatcher).
double ep_exchange(const Env& e, double send_bytes) {
  const double token_bytes = e.tl * e.m.hidden * e.eb;
  AllToAll a;
  if (e.dispatch == Dispatch::hierarchical) {
    const int64_t limit = e.m.group_limited && e.m.n_group % e.a2a_g.nodes() == 0 ? e.m.topk_group : 0;
    const double remote = expected_remote_nodes(e.m.n_experts, e.m.top_k, e.a2a_g.nodes(), limit);
    a = all_to_all_hierarchical(e.hw, e.a2a_g, send_bytes, token_bytes, remote);
  } else {
    a = all_to_all_flat(e.hw, e.a2a_g, send_bytes);
  }
  double t = a.time;
  const int etp = e.l.expert_tp();
  if (etp > 1) t += ring_all_gather_time(group_link(e.hw, e.etp_g), etp, send_bytes);
  return t;
}

void add_routed_experts(Block& b, const Env& e) {
  const PlanModel& m = e.m;
  const double D = static_cast<double>(m.hidden), E = static_cast<double>(m.n_experts);
  const double K = static_cast<double>(m.top_k), G = e.l.expert_group(), etp = e.l.expert_tp();
  const double local_experts = E * etp / G;
  const double rows = G * e.t * K / (e.l.tp * E) * e.imb;  // rows per local expert (the busiest device)
  const double f = m.expert_width / etp;
  const double factor = e.hw.grouped_gemm_factor;
  b.work.gemm += local_experts * gemm_time(e.hw, rows, 2 * f, D, static_cast<int>(e.eb), factor);
  b.work.gemm += local_experts * gemm_time(e.hw, rows, D, f, static_cast<int>(e.eb), factor);
  b.work.ops += 2;  // one grouped GEMM each
  const double pairs = e.tl * K * e.imb;               // (token, expert) rows this device sends
  add_pass(b.work, e, pairs * D * 2 * kCopyPass * e.eb);  // permute and un-permute
  const double swiglu = rows * local_experts * f;      // SwiGLU outputs on this device
  add_pass(b.work, e, swiglu * kSwigluPass * e.eb, swiglu);
  add_pass(b.redo, e, swiglu * kSwigluPass * e.eb, swiglu);
  // saved: dispatched rows, gate and up outputs, SwiGLU output, expert outputs before weighting
  b.act += (pairs * 2 * D + swiglu * 3) * e.eb;
  b.act_dropped += swiglu * e.eb;
  b.expert_params = local_experts * 3.0 * D * f;
  const double send = pairs * D * e.eb;
  b.dispatch = ep_exchange(e, send);
  b.combine = b.dispatch;
  b.a2a_buffer = 2 * send * etp;  // send and receive buffers (receive gathered over etp)
}

Block moe_ffn_block(const Env& e) {
  const PlanModel& m = e.m;
  const double D = static_cast<double>(m.hidden), E = static_cast<double>(m.n_experts);
  Block b;
  add_norms(b, e);
  b.work.gemm += gemm_time(e.hw, e.tl, E, D, static_cast<int>(kFp32Bytes));  // router on the local tokens
  add_pass(b.work, e, e.tl * E * kCopyPass * kFp32Bytes, e.tl * E);        // scores and top-k
  b.work.ops += 1;
  b.act += e.tl * E * kFp32Bytes;
  if (m.shared_width > 0) {
    Work shared;
    add_tp_mlp(b, shared, b.redo, e, static_cast<double>(m.shared_width));
    b.shared_fwd = shared.fwd(e.hw);
    b.shared_bwd = shared.bwd(e.hw);
    b.work.gemm += shared.gemm;
    b.work.mem_fwd += shared.mem_fwd;
    b.work.mem_bwd += shared.mem_bwd;
    b.work.ops += shared.ops;
  }
  add_routed_experts(b, e);
  const LayerParams p = layer_params(m, m.n_dense_layers);  // the first MoE layer
  b.dense_params = p.router + p.shared / e.l.tp;
  return b;
}

// What one pipeline unit costs one device for one micro-batch.
struct UnitCost {
  double fwd = 0, bwd = 0, rec = 0;  // compute
  double tp = 0;                     // TP collectives: forward, backward, recomputed forward
  double ep_total = 0, ep_exposed = 0;
  double act = 0;                    // bytes saved for backward
  double work_set = 0;               // transient bytes while this unit runs
  double a2a_buffer = 0;
  double dense_params = 0, expert_params = 0;
  double time() const { return fwd + bwd + rec + tp + ep_exposed; }
  // Times, saved activations and parameters add up; transient buffers live one at a time.
  UnitCost& operator+=(const UnitCost& o) {
    fwd += o.fwd, bwd += o.bwd, rec += o.rec, tp += o.tp, ep_total += o.ep_total;
    ep_exposed += o.ep_exposed, act += o.act, work_set = std::max(work_set, o.work_set);
    a2a_buffer = std::max(a2a_buffer, o.a2a_buffer);
    dense_params += o.dense_params, expert_params += o.expert_params;
    return *this;
  }
};

// EP all-to-all left exposed in one direction.
double ep_exposed(const Env& e, const Block& ffn, double shared, double layer_compute) {
  const double d = ffn.dispatch, c = ffn.combine;
  switch (e.w.ep_overlap) {
    case EpOverlap::none: return d + c;
    case EpOverlap::shared: return std::max(0.0, d - shared) + c;
    case EpOverlap::full: return std::max(0.0, d + c - layer_compute);
  }
  return d + c;
}

UnitCost layer_cost(const Env& e, const Block& attn, const Block& ffn) {
  const Hardware& hw = e.hw;
  UnitCost u;
  u.fwd = attn.work.fwd(hw) + ffn.work.fwd(hw);
  u.bwd = attn.work.bwd(hw) + ffn.work.bwd(hw);
  const double tp_fwd = attn.tp + ffn.tp;
  const double ep_fwd = ep_exposed(e, ffn, ffn.shared_fwd, u.fwd);
  const double ep_bwd = ep_exposed(e, ffn, ffn.shared_bwd, u.bwd);
  const double ep_dir = ffn.dispatch + ffn.combine;
  u.tp = 2 * tp_fwd;
  u.ep_total = 2 * ep_dir;
  u.ep_exposed = ep_fwd + ep_bwd;
  const double act = attn.act + ffn.act;
  const double layer_input = e.tl * e.m.hidden * e.eb;
  switch (e.l.recompute) {
    case Recompute::none:
      u.act = act;
      break;
    case Recompute::selective:
      u.rec = attn.redo.fwd(hw) + ffn.redo.fwd(hw);
      u.act = act - attn.act_dropped - ffn.act_dropped;
      break;
    case Recompute::full:  // the forward runs again, communication included
      u.rec = u.fwd;
      u.tp += tp_fwd;
      u.ep_total += ep_dir;
      u.ep_exposed += ep_fwd;
      u.act = layer_input;
      u.work_set = act;
      break;
  }
  u.a2a_buffer = ffn.a2a_buffer;
  u.dense_params = attn.dense_params + ffn.dense_params;
  u.expert_params = ffn.expert_params;
  return u;
}

// Vocab-parallel embedding lookup and its reduce-scatter into the sequence-parallel shard.
UnitCost embedding_cost(const Env& e) {
  const double D = static_cast<double>(e.m.hidden);
  Work w;
  add_pass(w, e, e.t * D * kCopyPass * e.eb);
  UnitCost u;
  u.fwd = w.fwd(e.hw);
  u.bwd = w.bwd(e.hw);
  if (e.l.tp > 1) u.tp = 2 * ring_reduce_scatter_time(group_link(e.hw, e.tp_g), e.l.tp, e.tl * D * e.eb);
  u.dense_params = static_cast<double>(e.m.vocab) * D / e.l.tp;
  return u;
}

// Final (or MTP shared_head) norm, LM head and cross entropy; the logits live until backward.
UnitCost head_cost(const Env& e, bool holds_matrix) {
  const double D = static_cast<double>(e.m.hidden), v = static_cast<double>(e.m.vocab) / e.l.tp;
  Work w;
  add_pass(w, e, e.tl * D * kNormPass * e.eb);
  add_gemm(w, e, e.t, v, D);
  const double logits = e.t * v;
  w.once += e.hw.cross_entropy_logit_s > 0
                ? logits * e.hw.cross_entropy_logit_s
                : memory_pass_time(e.hw, logits * kCrossEntropyPasses * kFp32Bytes, logits * kCrossEntropyExps);
  w.ops += 1;
  UnitCost u;
  u.fwd = w.fwd(e.hw);
  u.bwd = w.bwd(e.hw);
  if (e.l.tp > 1) u.tp = 2 * ring_all_gather_time(group_link(e.hw, e.tp_g), e.l.tp, e.tl * D * e.eb);
  u.act = e.tl * D * e.eb;
  u.work_set = e.t * v * (e.eb + kFp32Bytes);
  u.dense_params = holds_matrix ? static_cast<double>(e.m.vocab) * D / e.l.tp + D : D;
  return u;
}

// MTP module inputs (design.md 1.7): enorm, hnorm, eh_proj; plus its own embedding lookup.
UnitCost mtp_input_cost(const Env& e) {
  const double D = static_cast<double>(e.m.hidden);
  Work w;
  add_pass(w, e, e.tl * D * 2 * kNormPass * e.eb);
  add_gemm(w, e, e.t, D / e.l.tp, 2 * D);
  UnitCost u = embedding_cost(e);
  u.fwd += w.fwd(e.hw);
  u.bwd += w.bwd(e.hw);
  u.act = e.tl * D * 5 * e.eb;  // two norm inputs and outputs, eh_proj output
  // enorm, hnorm, eh_proj, and a copy of the embedding when MTP sits on another stage than the
  // embedding (shared_head.norm is counted with the head)
  u.dense_params = 2 * D + 2 * D * D / e.l.tp + (e.l.pp > 1 ? static_cast<double>(e.m.vocab) * D / e.l.tp : 0);
  return u;
}

std::vector<UnitCost> unit_costs(const Env& e) {
  const PlanModel& m = e.m;
  const Block attn = attention_block(e);
  const UnitCost dense = m.n_dense_layers > 0 ? layer_cost(e, attn, dense_ffn_block(e)) : UnitCost{};
  const UnitCost moe = m.has_experts() ? layer_cost(e, attn, moe_ffn_block(e)) : UnitCost{};
  const bool tied_shared = m.tie_embeddings && e.l.pp == 1;  // one matrix serves as embedding and head
  std::vector<UnitCost> units(static_cast<size_t>(m.n_units()));
  for (int64_t i = 0; i < m.n_units(); ++i) {
    UnitCost& u = units[static_cast<size_t>(i)];
    u = m.is_moe(i) ? moe : dense;
    if (i == 0) u += embedding_cost(e);
    if (i == m.n_layers - 1) u += head_cost(e, !tied_shared);
    if (i >= m.n_layers) {
      u += mtp_input_cost(e);
      u += head_cost(e, false);  // the MTP head shares the main LM head matrix
    }
  }
  return units;
}

// Chunks needed when no chunk may exceed `bound` (greedy packing, each chunk non-empty).
int chunks_needed(const std::vector<double>& cost, double bound) {
  int chunks = 1;
  double acc = 0;
  for (double c : cost) {
    if (acc > 0 && acc + c > bound) ++chunks, acc = 0;
    acc += c;
  }
  return chunks;
}

// Contiguous split of the units into exactly `chunks` non-empty chunks whose largest time is
// minimal: binary search on the bound, then greedy packing that also closes a chunk when the
// units left are just enough to give each remaining chunk one. Returns each unit's chunk.
std::vector<int> partition_units(const std::vector<double>& cost, int chunks) {
  const int n = static_cast<int>(cost.size());
  double lo = *std::max_element(cost.begin(), cost.end()), hi = 0;
  for (double c : cost) hi += c;
  for (int it = 0; it < 60 && hi - lo > 1e-9 * hi; ++it) {
    const double mid = 0.5 * (lo + hi);
    (chunks_needed(cost, mid) <= chunks ? hi : lo) = mid;
  }
  std::vector<int> chunk_of(n);
  int chunk = 0, in_chunk = 0;
  double acc = 0;
  for (int i = 0; i < n; ++i) {
    const bool must_close = n - i == chunks - chunk - 1;
    if (in_chunk > 0 && chunk < chunks - 1 && (acc + cost[i] > hi || must_close)) ++chunk, acc = 0, in_chunk = 0;
    acc += cost[i];
    ++in_chunk;
    chunk_of[i] = chunk;
  }
  return chunk_of;
}

struct Stage {
  UnitCost sum;    // all units of this device
  int n_units = 0;
};

std::vector<Stage> stages_of(const Env& e, const std::vector<UnitCost>& units) {
  const int pp = e.l.pp, chunks = pp * e.l.vpp;
  std::vector<double> cost(units.size());
  for (size_t i = 0; i < units.size(); ++i) cost[i] = units[i].time();
  const std::vector<int> chunk_of = partition_units(cost, chunks);
  std::vector<Stage> stages(static_cast<size_t>(pp));
  for (size_t i = 0; i < units.size(); ++i) {
    Stage& s = stages[static_cast<size_t>(chunk_of[i] % pp)];
    s.sum += units[i];
    s.n_units += 1;
  }
  return stages;
}

MemoryBreakdown stage_memory(const Env& e, const Stage& s, int stage, int64_t m_mb) {
  const StateBytes sb = state_bytes(e.hw.precision);
  const double params = s.sum.dense_params + s.sum.expert_params;
  MemoryBreakdown mem;
  mem.weights = params * sb.param;
  mem.grads = params * sb.grad;
  const double dense_shards = e.l.zero ? e.l.dp : 1, expert_shards = e.l.zero ? e.l.expert_dp() : 1;
  mem.optimizer = sb.optimizer * (s.sum.dense_params / dense_shards + s.sum.expert_params / expert_shards);
  const double chunks = static_cast<double>(in_flight_chunks(e.l.pp, e.l.vpp, m_mb, stage));
  mem.activations = chunks * s.sum.act / e.l.vpp;
  mem.buffers = s.sum.a2a_buffer + s.sum.work_set;
  mem.reserved = e.hw.memory_reserved_bytes;
  return mem;
}

// Gradient reduction and parameter gathering over the data-parallel groups, and how much of it
// hides behind the last backward (--overlap-grad-reduce) and the next first forward
// (--overlap-param-gather) of Megatron-Core's distributed optimizer.
struct DpCost {
  double total = 0, exposed = 0;
};
DpCost dp_cost(const Env& e, const Stage& s, double bwd_window, double fwd_window) {
  const StateBytes sb = state_bytes(e.hw.precision);
  const int dpn = e.hw.devices_per_node;
  struct Group { int size; int stride; double params; };
  const Group groups[] = {{e.l.dp, e.l.tp, s.sum.dense_params},
                          {e.l.expert_dp(), e.l.expert_group(), s.sum.expert_params}};
  double reduce = 0, gather = 0;
  for (const Group& g : groups) {
    if (g.size <= 1 || g.params <= 0) continue;
    const Link& link = group_link(e.hw, group_span(g.size, g.stride, dpn));
    if (e.l.zero) {
      reduce += ring_reduce_scatter_time(link, g.size, g.params * sb.grad / g.size);
      gather += ring_all_gather_time(link, g.size, g.params * sb.param / g.size);
    } else {
      reduce += ring_all_reduce_time(link, g.size, g.params * sb.grad);
    }
  }
  DpCost c;
  c.total = reduce + gather;
  c.exposed = std::max(0.0, reduce - bwd_window) + std::max(0.0, gather - fwd_window);
  return c;
}

double optimizer_time(const Env& e, const Stage& s) {
  const StateBytes sb = state_bytes(e.hw.precision);
  const double dense_shards = e.l.zero ? e.l.dp : 1, expert_shards = e.l.zero ? e.l.expert_dp() : 1;
  const double params = s.sum.dense_params / dense_shards + s.sum.expert_params / expert_shards;
  return memory_pass_time(e.hw, params * sb.adam_traffic);
}

// Pipeline send/recv of the hidden state (the sequence-parallel shard). Without interleaving the
// blocking send/recv of every micro-batch sits on the critical path; Megatron-Core's interleaved
// schedule overlaps them, leaving the fill and drain hops.
double pp_exposed(const Env& e, int64_t m_mb) {
  if (e.l.pp <= 1) return 0;
  const GroupSpan g = group_span(e.l.pp, e.l.tp * e.l.dp, e.hw.devices_per_node);
  const double hop = p2p_time(group_link(e.hw, g), e.tl * e.m.hidden * e.eb);
  const double hops = e.l.vpp > 1 ? e.l.pp - 1.0 : static_cast<double>(m_mb) + e.l.pp - 1.0;
  return 2 * hops * hop;
}

Prediction evaluate_with(const PlanModel& m, const Hardware& hw, const Workload& w, const Layout& l, Dispatch d) {
  Env e{m, hw, w, l, d,
        static_cast<double>(element_bytes(hw.precision)),
        static_cast<double>(l.mbs) * w.seq_len,
        static_cast<double>(l.mbs) * w.seq_len / l.tp,
        w.moe_imbalance,
        group_span(l.tp, 1, hw.devices_per_node),
        group_span(l.a2a_size(), l.a2a_stride(), hw.devices_per_node),
        group_span(l.expert_tp(), 1, hw.devices_per_node)};
  const int64_t m_mb = micro_batches(w, l);
  const std::vector<Stage> stages = stages_of(e, unit_costs(e));

  Prediction p;
  p.layout = l;
  p.dispatch = d;
  p.micro_batches = m_mb;
  p.bubble_fraction = bubble_fraction(l.pp, l.vpp, m_mb);
  p.memory_capacity = hw.memory_bytes;
  double slowest = -1;
  for (int s = 0; s < l.pp; ++s) {
    const UnitCost& u = stages[static_cast<size_t>(s)].sum;
    if (u.time() > slowest) slowest = u.time(), p.bottleneck_stage = s;
    const MemoryBreakdown mem = stage_memory(e, stages[static_cast<size_t>(s)], s, m_mb);
    if (mem.total() > p.memory.total()) p.memory = mem, p.memory_stage = s;
  }
  const Stage& b = stages[static_cast<size_t>(p.bottleneck_stage)];
  const double mb = static_cast<double>(m_mb);
  TimeBreakdown& t = p.time;
  t.compute = mb * (b.sum.fwd + b.sum.bwd);
  t.recompute = mb * b.sum.rec;
  t.tp_exposed = mb * b.sum.tp;
  t.ep_exposed = mb * b.sum.ep_exposed;
  t.ep_total = mb * b.sum.ep_total;
  t.bubble = b.sum.time() * (l.pp - 1.0) / l.vpp;
  t.pp_exposed = pp_exposed(e, m_mb);
  double dp_worst = 0, opt_worst = 0;
  for (const Stage& s : stages) {
    const DpCost dp = dp_cost(e, s, s.sum.bwd, s.sum.fwd);
    if (dp.exposed >= dp_worst) dp_worst = dp.exposed, t.dp_total = dp.total;
    opt_worst = std::max(opt_worst, optimizer_time(e, s));
  }
  t.dp_exposed = dp_worst;
  t.optimizer = opt_worst;

  p.step_time_s = t.step();
  const double tokens = static_cast<double>(w.global_batch) * w.seq_len;
  p.tokens_per_s = tokens / p.step_time_s;
  p.model_flops_per_token = model_flops_per_token(m, w.seq_len);
  p.mfu = p.model_flops_per_token * p.tokens_per_s / (static_cast<double>(w.devices) * hw.peak_flops);
  p.fits = p.memory.total() <= hw.memory_bytes;
  return p;
}

}  // namespace

Prediction evaluate(const PlanModel& m, const Hardware& hw, const Workload& w, const Layout& l) {
  if (l.dispatch) return evaluate_with(m, hw, w, l, *l.dispatch);
  const GroupSpan g = group_span(l.a2a_size(), l.a2a_stride(), hw.devices_per_node);
  Prediction flat = evaluate_with(m, hw, w, l, Dispatch::flat);
  if (!m.has_experts() || !g.crosses_nodes()) return flat;
  Prediction hier = evaluate_with(m, hw, w, l, Dispatch::hierarchical);
  return hier.step_time_s < flat.step_time_s ? hier : flat;
}

json prediction_to_json(const Prediction& p) {
  const Layout& l = p.layout;
  json j;
  j["layout"] = {{"tp", l.tp}, {"pp", l.pp}, {"vpp", l.vpp}, {"ep", l.ep}, {"etp", l.expert_tp()},
                 {"tp_extend_ep", l.tp_extend_ep}, {"dp", l.dp}, {"mbs", l.mbs},
                 {"recompute", recompute_name(l.recompute)}, {"zero", l.zero},
                 {"dispatch", dispatch_name(p.dispatch)}};
  j["layout_string"] = layout_string(l);
  j["fits"] = p.fits;
  j["step_time_s"] = p.step_time_s;
  j["tokens_per_s"] = p.tokens_per_s;
  j["mfu"] = p.mfu;
  j["model_flops_per_token"] = p.model_flops_per_token;
  j["micro_batches"] = p.micro_batches;
  j["bubble_fraction"] = p.bubble_fraction;
  j["bottleneck_stage"] = p.bottleneck_stage;
  const TimeBreakdown& t = p.time;
  j["time_s"] = {{"compute", t.compute}, {"recompute", t.recompute}, {"tp_exposed", t.tp_exposed},
                 {"ep_exposed", t.ep_exposed}, {"ep_total", t.ep_total}, {"pp_exposed", t.pp_exposed},
                 {"bubble", t.bubble}, {"dp_exposed", t.dp_exposed}, {"dp_total", t.dp_total},
                 {"optimizer", t.optimizer}};
  const MemoryBreakdown& mem = p.memory;
  j["memory_per_device_bytes"] = mem.total();
  j["memory_capacity_bytes"] = p.memory_capacity;
  j["memory_stage"] = p.memory_stage;
  j["memory_bytes"] = {{"weights", mem.weights}, {"grads", mem.grads}, {"optimizer", mem.optimizer},
                       {"activations", mem.activations}, {"buffers", mem.buffers}, {"reserved", mem.reserved}};
  return j;
}

}  // namespace um::plan
