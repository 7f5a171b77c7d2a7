#include "model/ffn.h"

#include <algorithm>
#include <optional>
#include <cstring>
#include <cmath>
#include <numeric>

#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "ops/grouped_gemm.h"
#include "ops/linear.h"
#include "ops/moe_stats.h"
#include "ops/permute.h"
#include "ops/swiglu.h"
#include "parallel/comm.h"

namespace um {

// --- dense MLP -------------------------------------------------------------------------------

MlpParams MlpParams::resolve(const ParamTable& t, const std::string& pre, int64_t width) {
  MlpParams m;
  if (width == 0) return m;
  const ParamInfo& gate = t.at(pre + "gate_proj.weight");
  const ParamInfo& up = t.at(pre + "up_proj.weight");
  UM_CHECK(up.offset == gate.offset + gate.numel, "params", pre,
           "up_proj must follow gate_proj in the flat buffer");
  m.gate_up = gate.offset;
  m.down = t.at(pre + "down_proj.weight").offset;
  m.width = width;
  return m;
}

template <class T>
void MlpActs<T>::alloc(Arena& a, int64_t N, int64_t F, const Recompute& rc, SharedSlots* slots) {
  gu = keep_or_share<T>(a, slots, rc.experts, "mlp.gu", N * 2 * F);
  h = keep_or_share<T>(a, slots, rc.experts, "mlp.h", N * F);
}

template <class T>
void mlp_forward(T* y, bool accumulate, MlpActs<T>& a, const T* x, const WeightPtrs<T>& W,
                 const MlpParams& p, int64_t N, int64_t D, const Ctx& ctx) {
  const int64_t F = p.width;
  PhaseTimer timer(ctx.prof, Phase::shared);
  linear_forward<T>(a.gu, 2 * F, x, D, W.w + p.gate_up, N, D, 2 * F, ctx);
  swiglu_forward<T>(a.h, a.gu, N, F, ctx);
  gemm<T>(false, true, N, D, F, 1.0, a.h, F, W.w + p.down, F, accumulate ? 1.0 : 0.0, y, D, ctx);
}

template <class T>
void mlp_backward(T* dx, bool accumulate, const T* dy, const MlpActs<T>& a, const T* x,
                  const WeightPtrs<T>& W, const MlpParams& p, int64_t N, int64_t D, Arena& scratch,
                  const Ctx& ctx, const Recompute& rc) {
  const int64_t F = p.width;
  const T* w = W.w;
  acc_t<T>* g = W.g;
  PhaseTimer timer(ctx.prof, Phase::shared);
  if (rc.experts) {  // the forward's ops again: identical activations
    linear_forward<T>(a.gu, 2 * F, x, D, w + p.gate_up, N, D, 2 * F, ctx);
    swiglu_forward<T>(a.h, a.gu, N, F, ctx);
  }
  const size_t mark = scratch.mark();
  T* dh = scratch.alloc<T>(N * F);
  T* dgu = scratch.alloc<T>(N * 2 * F);
  linear_backward<T>(dh, F, g + p.down, dy, D, a.h, F, w + p.down, N, F, D, false, ctx);
  swiglu_backward<T>(dgu, dh, a.gu, N, F, ctx);
  linear_backward<T>(dx, D, g + p.gate_up, dgu, 2 * F, x, D, w + p.gate_up, N, D, 2 * F,
                     accumulate, ctx);
  scratch.release(mark);
}

// --- MoE -------------------------------------------------------------------------------------

MoeParams MoeParams::resolve(const ParamTable& t, const ModelConfig& c, int layer) {
  const std::string pre = "model.layers." + std::to_string(layer) + ".mlp.";
  MoeParams m;
  m.router = t.at(pre + "gate.weight").offset;
  if (const ParamInfo* r = t.find(pre + "router_scale")) m.router_scale = r->offset;
  if (t.n_local_experts > 0)
    m.experts = t.at(pre + "experts." + std::to_string(t.first_expert) + ".gate_proj.weight").offset;
  const BufferInfo* b = t.find_buffer(pre + "gate.e_score_correction_bias");
  UM_CHECK(b != nullptr, "params", "missing buffer ", pre, "gate.e_score_correction_bias");
  m.bias = b->offset;
  m.shared = MlpParams::resolve(t, pre + "shared_experts.", c.shared_width());
  return m;
}

void MoeStats::reset(int64_t E) {
  load.assign(E, 0);
  tokens = dropped = 0;
  balance = z_sum = entropy_sum = 0;
  margin_min = std::numeric_limits<double>::infinity();
}

template <class T>
void MoeActs<T>::alloc(Arena& a, const ModelConfig& c, int64_t N, int64_t max_pools, int64_t ep_size,
                       int64_t n_nodes, const Recompute& rc, SharedSlots* slots) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size,
                F = c.moe_intermediate_size;
  ep = ep_size;
  // the worst case of one rank's received rows: every peer sends it min(K, E/ep) pairs per token
  max_recv = ep > 1 ? ep * N * std::min(K, E / ep) : 0;
  const int64_t expert_rows = std::max(N * K, max_recv);
  z = a.alloc<A>(N * E);
  s = a.alloc<A>(N * E);
  idx = a.alloc<int32_t>(N * K);
  gate = a.alloc<A>(N * K);
  margin = a.alloc<A>(N);
  keep = a.alloc<uint8_t>(N * K);
  // stats (4 doubles) | load (E int64) | offsets (E+1 int32): one block, one read-back
  readback_bytes = sizeof(double) * 4 + sizeof(int64_t) * E + sizeof(int32_t) * (E + 1);
  readback = a.alloc<std::byte>(readback_bytes);
  stats = reinterpret_cast<double*>(readback);
  load = reinterpret_cast<int64_t*>(readback + sizeof(double) * 4);
  offsets = reinterpret_cast<int32_t*>(readback + sizeof(double) * 4 + sizeof(int64_t) * E);
  const std::byte* host = readback;
  if (!a.is_counting() && a.device() != Device::cpu) {
    readback_host.resize(readback_bytes);
    host = readback_host.data();
  }
  stats_h = reinterpret_cast<const double*>(host);
  load_h = reinterpret_cast<const int64_t*>(host + sizeof(double) * 4);
  offsets_h = reinterpret_cast<const int32_t*>(host + sizeof(double) * 4 + sizeof(int64_t) * E);
  row_pair = a.alloc<int32_t>(N * K);
  pair_row = a.alloc<int32_t>(N * K);
  xp = a.alloc<T>(N * K * D);  // dropless worst case: every (token, expert) pair
  gu = keep_or_share<T>(a, slots, rc.experts, "moe.gu", expert_rows * 2 * F);
  h = keep_or_share<T>(a, slots, rc.experts, "moe.h", expert_rows * F);
  yp = a.alloc<T>(N * K * D);
  fpool = a.alloc<A>(max_pools * E);
  if (c.shared_width() > 0) shared.alloc(a, N, c.shared_width(), rc, slots);
  if (ep > 1) {
    xe = a.alloc<T>(max_recv * D);
    ye = a.alloc<T>(max_recv * D);
    perm = a.alloc<int32_t>(max_recv);
    perm_h.resize(max_recv);
    local_offsets.resize(E / ep + 1);
    counts.resize(4 * ep);
    xcounts.resize(2 * E + 4 * ep);
    el.resize(4 * ep);
  }
  nodes = n_nodes;
  if (nodes > 1) {  // every gathered token may send up to min(K, experts on this node) pairs here
    const int64_t per_node = E / nodes, H = nodes * N * std::min(K, per_node);
    hx = a.alloc<T>(H * D);
    hy = a.alloc<T>(H * D);
    hpair = a.alloc<int32_t>(H);
    hoffsets.resize(per_node + 1);
    hcursor.resize(per_node);
    ggate = a.alloc<A>(nodes * N * K);
  }
}

template <class T>
void MoeActs<T>::read_back(const Ctx& ctx) {
  if (!readback_host.empty()) ctx.download(readback_host.data(), readback, readback_bytes);
}

int64_t expert_capacity(double capacity_factor, int64_t tokens, int64_t K, int64_t E) {
  const double x = capacity_factor * static_cast<double>(tokens) * static_cast<double>(K) /
                   static_cast<double>(E);
  return static_cast<int64_t>(std::ceil(x - 1e-9));
}

namespace {

// The hierarchical dispatch below computes on the host: only CPU types run it.
template <class T>
constexpr bool kHostMath = std::is_same_v<T, acc_t<T>>;

// Expert-parallel dispatch (design.md 4). The plan's rows are sorted by global expert, so the rows
// for peer q (experts [q*El, (q+1)*El)) are contiguous. Per-expert counts are exchanged first,
// then token rows with all_to_all_v; the received rows (peer-major) are gathered expert-major
// for the grouped GEMM, and the reverse path scatters them back.
struct Dispatch {
  int64_t ep, El, D;
  int64_t *send_rows, *send_off, *recv_rows, *recv_off;
  int64_t *send_el, *send_el_off, *recv_el, *recv_el_off;  // the same in elements (rows * D)

  template <class T>
  static Dispatch bind(MoeActs<T>& a, int64_t El, int64_t D) {
    const int64_t P = a.peers;
    int64_t* c = a.counts.data();
    int64_t* el = a.el.data();
    Dispatch d{P, El, D, c, c + a.ep, c + 2 * a.ep, c + 3 * a.ep, el, el + P, el + 2 * P, el + 3 * P};
    for (int64_t q = 0; q < P; ++q) {
      d.send_el[q] = d.send_rows[q] * D;
      d.send_el_off[q] = d.send_off[q] * D;
      d.recv_el[q] = d.recv_rows[q] * D;
      d.recv_el_off[q] = d.recv_off[q] * D;
    }
    return d;
  }
  // plan side -> expert side (peer-major rows)
  template <class T>
  Request forward_async(Comm& c, const T* plan_rows, T* recv) const {
    return c.iall_to_all_v(plan_rows, send_el, send_el_off, recv, recv_el, recv_el_off, dtype_of<T>());
  }
  // expert side (peer-major rows) -> plan side
  template <class T>
  void backward(Comm& c, const T* recv, T* plan_rows) const {
    c.all_to_all_v(recv, recv_el, recv_el_off, plan_rows, send_el, send_el_off, dtype_of<T>());
  }
};

// Exchanges the per-expert counts of a plan (rows sorted by expert, host `offsets` over the E
// experts of the group `ep`, each peer owning E/P consecutive ones) and fixes the rows each peer
// sends and receives, the expert-major order of the received rows (perm, uploaded to the
// device) and the local offsets.
template <class T>
void plan_dispatch(MoeActs<T>& a, Comm& ep, const int32_t* offsets, int64_t E, int layer, const Ctx& ctx) {
  const int64_t P = ep.size(), El = E / P;
  a.peers = P;
  int64_t* cnt = a.xcounts.data();  // rows per global expert, this rank's plan
  int64_t* rcnt = cnt + E;          // rows per (peer, local expert) received
  int64_t* c4 = rcnt + P * El;
  for (int64_t e = 0; e < E; ++e) cnt[e] = offsets[e + 1] - offsets[e];
  for (int64_t q = 0; q < P; ++q) c4[q] = El, c4[P + q] = q * El, c4[2 * P + q] = El, c4[3 * P + q] = q * El;
  ep.all_to_all_v(cnt, c4, c4 + P, rcnt, c4 + 2 * P, c4 + 3 * P, DType::i64);
  int64_t recv = 0;
  for (int64_t q = 0; q < P; ++q) {
    a.send_rows_of(q) = offsets[(q + 1) * El] - offsets[q * El];
    a.send_off_of(q) = offsets[q * El];
    int64_t r = 0;
    for (int64_t le = 0; le < El; ++le) r += rcnt[q * El + le];
    a.recv_rows_of(q) = r;
    a.recv_off_of(q) = recv;
    recv += r;
  }
  UM_CHECK(recv <= a.max_recv, "moe", "layer ", layer, ": expert-parallel dispatch needs ", recv,
           " rows on this rank, more than its buffer of ", a.max_recv);
  a.recv_rows = recv;
  // expert-major order: local expert le takes, peer by peer, that peer's le rows
  int64_t at = 0;
  a.local_offsets[0] = 0;
  for (int64_t le = 0; le < El; ++le) {
    for (int64_t q = 0; q < P; ++q) {
      int64_t src = a.recv_off_of(q);
      for (int64_t k = 0; k < le; ++k) src += rcnt[q * El + k];
      for (int64_t i = 0; i < rcnt[q * El + le]; ++i) a.perm_h[at++] = static_cast<int32_t>(src + i);
    }
    a.local_offsets[le + 1] = static_cast<int32_t>(at);
  }
  ctx.upload(a.perm, a.perm_h.data(), size_t(recv));
}

// Hierarchical dispatch (Pangu Ultra MoE): instead of one all_to_all_v across nodes, the tokens
// are first all-gathered between the ranks with the same local index on the group's nodes (few,
// large inter-node messages), then each rank sends the pairs bound for its own node's experts to
// their owners with an intra-node all_to_all_v. Results travel back the same way, and the partial
// combines of the nodes are summed onto the source ranks with an inter-node reduce_scatter.
// Host loops over token rows: CPU only (checked when the model is built).
template <class T>
void hier_forward(T* y_routed, MoeActs<T>& a, const T* x, const WeightPtrs<T>& W, const MoeParams& p,
                  const ModelConfig& c, const MoeOptions& o, int64_t N, const uint8_t* keep,
                  Arena& scratch, const Ctx& ctx) {
  Comm& inter = *o.comms.inter;
  Comm& intra = *o.comms.intra;
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size,
                F = c.moe_intermediate_size, n = inter.size(), j = inter.rank();
  const int64_t EN = E / n, El = EN / intra.size();  // experts per node, per rank
  const size_t mark = scratch.mark();
  T* gx = scratch.alloc<T>(n * N * D);
  int32_t* gidx = scratch.alloc<int32_t>(n * N * K);
  uint8_t* gkeep = scratch.alloc<uint8_t>(n * N * K);
  uint8_t* ones = scratch.alloc<uint8_t>(N * K);
  std::fill(ones, ones + N * K, uint8_t(1));
  inter.all_gather(x, gx, N * D, dtype_of<T>());
  inter.all_gather(a.idx, gidx, N * K, DType::i32);
  inter.all_gather(a.gate, a.ggate, N * K, dtype_of<T>());
  inter.all_gather(keep ? keep : ones, gkeep, N * K, DType::u8);
  // the pairs for this node's experts, sorted by node-local expert (stable: source, token, slot)
  std::fill(a.hoffsets.begin(), a.hoffsets.end(), 0);
  for (int64_t i = 0; i < n * N * K; ++i)
    if (gkeep[i] && gidx[i] / EN == j) ++a.hoffsets[gidx[i] - j * EN + 1];
  for (int64_t e = 0; e < EN; ++e) a.hoffsets[e + 1] += a.hoffsets[e];
  a.hier_rows = a.hoffsets[EN];
  int32_t* cursor = a.hcursor.data();
  std::copy(a.hoffsets.begin(), a.hoffsets.begin() + EN, cursor);
  for (int64_t i = 0; i < n * N * K; ++i) {
    if (!gkeep[i] || gidx[i] / EN != j) continue;
    const int32_t h = cursor[gidx[i] - j * EN]++;
    a.hpair[h] = static_cast<int32_t>(i);
    std::memcpy(a.hx + int64_t(h) * D, gx + (i / K) * D, sizeof(T) * D);
  }
  // intra-node dispatch to the owners, experts, and back
  plan_dispatch(a, intra, a.hoffsets.data(), EN, o.layer, ctx);
  const Dispatch d = Dispatch::bind(a, El, D);
  T* peer_rows = scratch.alloc<T>(a.recv_rows * D);
  d.forward_async(intra, a.hx, peer_rows).wait();
  gather_rows<T>(a.xe, peer_rows, a.perm, a.recv_rows, D, ctx);
  const int64_t stride = 3 * F * D;
  grouped_linear_forward<T>(a.gu, a.xe, D, W.w + p.experts, stride, a.local_offsets.data(), El, D, 2 * F, ctx);
  swiglu_forward<T>(a.h, a.gu, a.recv_rows, F, ctx);
  grouped_linear_forward<T>(a.ye, a.h, F, W.w + p.experts + 2 * F * D, stride, a.local_offsets.data(), El, F, D,
                            ctx);
  scatter_rows<T>(peer_rows, a.ye, a.perm, a.recv_rows, D, ctx);
  d.backward(intra, peer_rows, a.hy);
  // partial combine per source token, summed over the nodes onto the source rank
  T* ypart = gx;  // reuse: (n*N, D)
  std::fill(ypart, ypart + n * N * D, T(0));
  for (int64_t h = 0; h < a.hier_rows; ++h) {
    const int64_t i = a.hpair[h];
    const T g = a.ggate[i];
    T* dst = ypart + (i / K) * D;
    const T* src = a.hy + h * D;
    for (int64_t k = 0; k < D; ++k) dst[k] += g * src[k];
  }
  inter.reduce_scatter(ypart, y_routed, N * D, dtype_of<T>(), ReduceOp::sum);
  scratch.release(mark);
}

template <class T>
void hier_backward(T* dx_routed, T* dgate, const T* dy, MoeActs<T>& a, const WeightPtrs<T>& W,
                   const MoeParams& p, const ModelConfig& c, const MoeOptions& o, int64_t N,
                   Arena& scratch, const Ctx& ctx) {
  Comm& inter = *o.comms.inter;
  Comm& intra = *o.comms.intra;
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size,
                F = c.moe_intermediate_size, n = inter.size(), H = a.hier_rows;
  const int64_t El = E / n / intra.size(), rows = a.recv_rows, stride = 3 * F * D;
  const size_t mark = scratch.mark();
  T* gdy = scratch.alloc<T>(n * N * D);
  T* dyp = scratch.alloc<T>(H * D);
  T* dgpart = scratch.alloc<T>(n * N * K);
  inter.all_gather(dy, gdy, N * D, dtype_of<T>());
  std::fill(dgpart, dgpart + n * N * K, T(0));
  for (int64_t h = 0; h < H; ++h) {
    const int64_t i = a.hpair[h];
    const T* dyr = gdy + (i / K) * D;
    const T* yr = a.hy + h * D;
    T dot = 0;
    for (int64_t k = 0; k < D; ++k) {
      dyp[h * D + k] = a.ggate[i] * dyr[k];
      dot += dyr[k] * yr[k];
    }
    dgpart[i] = dot;
  }
  const Dispatch d = Dispatch::bind(a, El, D);
  T* peer_rows = scratch.alloc<T>(rows * D);
  T* d_exp = scratch.alloc<T>(rows * D);
  T* dx_exp = scratch.alloc<T>(rows * D);
  T* dh = scratch.alloc<T>(rows * F);
  T* dgu = scratch.alloc<T>(rows * 2 * F);
  d.forward_async(intra, dyp, peer_rows).wait();
  gather_rows<T>(d_exp, peer_rows, a.perm, rows, D, ctx);
  const int32_t* lo = a.local_offsets.data();
  if (o.recompute.experts) {  // the forward's ops again: identical activations
    grouped_linear_forward<T>(a.gu, a.xe, D, W.w + p.experts, stride, lo, El, D, 2 * F, ctx);
    swiglu_forward<T>(a.h, a.gu, rows, F, ctx);
  }
  grouped_linear_backward<T>(dh, W.g + p.experts + 2 * F * D, d_exp, a.h, F, W.w + p.experts + 2 * F * D,
                             stride, lo, El, F, D, ctx);
  swiglu_backward<T>(dgu, dh, a.gu, rows, F, ctx);
  grouped_linear_backward<T>(dx_exp, W.g + p.experts, dgu, a.xe, D, W.w + p.experts, stride, lo, El, D,
                             2 * F, ctx);
  scatter_rows<T>(peer_rows, dx_exp, a.perm, rows, D, ctx);
  T* hdx = dyp;  // reuse: (H, D)
  d.backward(intra, peer_rows, hdx);
  T* dxpart = gdy;  // reuse: (n*N, D)
  std::fill(dxpart, dxpart + n * N * D, T(0));
  for (int64_t h = 0; h < H; ++h) {
    T* dst = dxpart + (a.hpair[h] / K) * D;
    const T* src = hdx + h * D;
    for (int64_t k = 0; k < D; ++k) dst[k] += src[k];
  }
  inter.reduce_scatter(dxpart, dx_routed, N * D, dtype_of<T>(), ReduceOp::sum);
  inter.reduce_scatter(dgpart, dgate, N * K, dtype_of<T>(), ReduceOp::sum);
  scratch.release(mark);
}

// The router input: x itself when it is already in the accumulation type, else an f32 copy in
// scratch (design.md 1.5: the router GEMM runs in f32 on f32 copies of x and Wr).
template <class T>
const acc_t<T>* router_input(const T* x, int64_t n, Arena& scratch, const Ctx& ctx) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    return x;
  } else {
    acc_t<T>* xr = scratch.alloc<acc_t<T>>(n);
    cast_to_acc<T>(xr, x, n, ctx);
    return xr;
  }
}

}  // namespace

template <class T>
void moe_forward(T* y, MoeActs<T>& a, MoeStats& st, const T* x, const WeightPtrs<T>& W,
                 const MoeParams& p, const ModelConfig& c, const MoeOptions& o, int64_t N,
                 Arena& scratch, const Ctx& ctx) {
  using A = acc_t<T>;
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size,
                F = c.moe_intermediate_size, El = E / a.ep;
  const int64_t pr = o.pool_rows;
  st.reset(E);
  st.tokens = N;

  {  // route: z = x Wr^T, scores, top-k on s + b, gates; the balance statistics (design.md 1.6),
     // pooled scopes that span ranks adding their counts over the pool's ranks
    PhaseTimer timer(ctx.prof, Phase::router);
    const size_t mark = scratch.mark();
    const A* xr = router_input<T>(x, N * D, scratch, ctx);
    linear_forward<A>(a.z, E, xr, D, W.wm + p.router, N, D, E, ctx);
    scratch.release(mark);
    router_scores_forward<A>(a.s, a.z, N, E, c.scoring_func, ctx);
    router_topk<A>(a.idx, a.margin, a.s, o.use_bias ? W.buf + p.bias : nullptr, N, E, o.spec, ctx);
    router_gates_forward<A>(a.gate, a.s, a.idx, p.router_scale >= 0 ? W.wm + p.router_scale : nullptr,
                            N, E, int(K), c.norm_topk_prob, c.routed_scaling_factor, ctx);
    balance_counts<A>(a.fpool, a.idx, N, int(K), E, pr, ctx);
    int64_t pool_ranks = 1;
    if (o.comms.pool && o.comms.pool->size() > 1) {
      PhaseTimer comm(ctx.prof, Phase::communication);
      o.comms.pool->all_reduce(a.fpool, N / pr * E, dtype_of<A>(), ReduceOp::sum);
      pool_ranks = o.comms.pool->size();
    }
    moe_router_stats<A>(a.stats, a.load, a.fpool, a.s, a.z, a.idx, a.margin, N, int(K), E, pr, pool_ranks,
                        c.scoring_func, ctx);
  }

  // capacity, then the permutation that makes every expert's rows contiguous; then the layer's
  // one host sync: the expert offsets (grouped GEMM shapes), loads and statistics
  const uint8_t* keep = nullptr;
  {
    PhaseTimer timer(ctx.prof, Phase::dispatch);
    if (o.capacity_factor > 0) {
      capacity_keep<A>(a.keep, a.idx, a.s, N, K, E, expert_capacity(o.capacity_factor, N, K, E), ctx);
      keep = a.keep;
    }
    routing_permutation(a.offsets, a.row_pair, a.pair_row, a.idx, keep, N, int(K), E, ctx);
    a.read_back(ctx);
    a.rows = a.offsets_h[E];
    permute_rows_forward<T>(a.xp, x, a.row_pair, a.rows, int(K), D, ctx);
  }
  for (int64_t e = 0; e < E; ++e) st.load[e] = a.load_h[e];
  st.balance = a.stats_h[0];
  st.entropy_sum = a.stats_h[1];
  st.z_sum = a.stats_h[2];
  st.margin_min = a.stats_h[3];
  if (keep) st.dropped = N * K - a.rows;

  // experts: [gate|up] grouped GEMM -> SwiGLU -> down grouped GEMM, over the local experts.
  // The shared experts write y first; the routed experts add to it.
  const bool shared = p.shared.width > 0;
  const int64_t stride = 3 * F * D;  // one expert's gate|up|down block
  auto experts = [&](const T* in, T* out, int64_t rows, const int32_t* offsets) {
    PhaseTimer timer(ctx.prof, Phase::experts);
    grouped_linear_forward<T>(a.gu, in, D, W.w + p.experts, stride, offsets, El, D, 2 * F, ctx);
    swiglu_forward<T>(a.h, a.gu, rows, F, ctx);
    grouped_linear_forward<T>(out, a.h, F, W.w + p.experts + 2 * F * D, stride, offsets, El, F, D, ctx);
  };
  if (a.ep == 1) {
    if (shared) mlp_forward<T>(y, false, a.shared, x, W, p.shared, N, D, ctx);
    experts(a.xp, a.yp, a.rows, a.offsets_h);
  } else if (o.comms.inter) {
    if constexpr (kHostMath<T>) {
      const size_t mark = scratch.mark();
      T* routed = scratch.alloc<T>(N * D);
      hier_forward(routed, a, x, W, p, c, o, N, keep, scratch, ctx);
      if (shared) {
        mlp_forward<T>(y, false, a.shared, x, W, p.shared, N, D, ctx);
        add_inplace<T>(y, routed, N * D, ctx);
      } else {
        ctx.copy(y, routed, size_t(N * D));
      }
      scratch.release(mark);
    } else {
      fail("moe", "hierarchical dispatch runs on the CPU only");
    }
  } else {
    Comm& ep = *o.comms.ep;
    {
      PhaseTimer timer(ctx.prof, Phase::communication);
      plan_dispatch(a, ep, a.offsets_h, E, o.layer, ctx);
    }
    const size_t mark = scratch.mark();
    const Dispatch d = Dispatch::bind(a, El, D);
    T* peer_rows = scratch.alloc<T>(a.recv_rows * D);
    {
      Request sent = d.forward_async(ep, a.xp, peer_rows);
      if (shared) mlp_forward<T>(y, false, a.shared, x, W, p.shared, N, D, ctx);  // overlaps the dispatch
      PhaseTimer timer(ctx.prof, Phase::communication);
      sent.wait();
    }
    {
      PhaseTimer timer(ctx.prof, Phase::dispatch);
      gather_rows<T>(a.xe, peer_rows, a.perm, a.recv_rows, D, ctx);
    }
    experts(a.xe, a.ye, a.recv_rows, a.local_offsets.data());
    {
      PhaseTimer timer(ctx.prof, Phase::dispatch);
      scatter_rows<T>(peer_rows, a.ye, a.perm, a.recv_rows, D, ctx);
    }
    {
      PhaseTimer timer(ctx.prof, Phase::communication);
      d.backward(ep, peer_rows, a.yp);
    }
    scratch.release(mark);
  }
  if (!o.comms.inter || a.ep == 1) {
    PhaseTimer timer(ctx.prof, Phase::dispatch);
    combine_rows_forward<T>(y, a.yp, a.gate, a.pair_row, N, int(K), D, shared, ctx);
  }
}

template <class T>
void moe_backward(T* dx, const T* dy, MoeActs<T>& a, const T* x, const WeightPtrs<T>& W,
                  const MoeParams& p, const ModelConfig& c, const MoeOptions& o, int64_t N,
                  Arena& scratch, const Ctx& ctx) {
  using A = acc_t<T>;
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size,
                F = c.moe_intermediate_size, R = a.rows, stride = 3 * F * D, El = E / a.ep;
  const int64_t rows = a.ep == 1 ? R : a.recv_rows;  // rows on the expert side
  const bool shared = p.shared.width > 0;
  const size_t mark = scratch.mark();
  T* dyp = scratch.alloc<T>(R * D);
  A* dgate = scratch.alloc<A>(N * K);
  T* dxp = scratch.alloc<T>(std::max(R, N) * D);  // hierarchical: the routed dx (N, D)
  T* dh = scratch.alloc<T>(rows * F);
  T* dgu = scratch.alloc<T>(rows * 2 * F);
  A* ds = scratch.alloc<A>(N * E);
  A* dz = scratch.alloc<A>(N * E);

  // routed experts, in reverse; the shared experts write dx first
  std::optional<PhaseTimer> phase;
  phase.emplace(ctx.prof, Phase::dispatch);
  if (a.ep > 1 && o.comms.inter) {
    if constexpr (kHostMath<T>) {
      if (shared) mlp_backward<T>(dx, false, dy, a.shared, x, W, p.shared, N, D, scratch, ctx, o.recompute);
      hier_backward(dxp, dgate, dy, a, W, p, c, o, N, scratch, ctx);  // dxp: the routed dx (N, D)
      if (shared) add_inplace<T>(dx, dxp, N * D, ctx);
      else ctx.copy(dx, dxp, size_t(N * D));
    } else {
      fail("moe", "hierarchical dispatch runs on the CPU only");
    }
  } else {
    combine_rows_backward<T>(dyp, dgate, dy, a.yp, a.gate, a.pair_row, N, int(K), D, ctx);
    auto experts = [&](const T* dout, T* din, const T* in, const int32_t* offsets) {
      PhaseTimer timer(ctx.prof, Phase::experts);
      if (o.recompute.experts) {  // the forward's ops again: identical activations
        grouped_linear_forward<T>(a.gu, in, D, W.w + p.experts, stride, offsets, El, D, 2 * F, ctx);
        swiglu_forward<T>(a.h, a.gu, rows, F, ctx);
      }
      grouped_linear_backward<T>(dh, W.g + p.experts + 2 * F * D, dout, a.h, F, W.w + p.experts + 2 * F * D,
                                 stride, offsets, El, F, D, ctx);
      swiglu_backward<T>(dgu, dh, a.gu, rows, F, ctx);
      grouped_linear_backward<T>(din, W.g + p.experts, dgu, in, D, W.w + p.experts, stride, offsets, El, D,
                                 2 * F, ctx);
    };
    if (a.ep == 1) {
      if (shared) mlp_backward<T>(dx, false, dy, a.shared, x, W, p.shared, N, D, scratch, ctx, o.recompute);
      experts(dyp, dxp, a.xp, a.offsets_h);
    } else {
      Comm& ep = *o.comms.ep;
      const Dispatch d = Dispatch::bind(a, El, D);
      T* peer_rows = scratch.alloc<T>(rows * D);
      T* d_exp = scratch.alloc<T>(rows * D);
      T* dx_exp = scratch.alloc<T>(rows * D);
      {
        Request sent = d.forward_async(ep, dyp, peer_rows);  // gradients travel like the tokens did
        if (shared) mlp_backward<T>(dx, false, dy, a.shared, x, W, p.shared, N, D, scratch, ctx, o.recompute);
        PhaseTimer timer(ctx.prof, Phase::communication);
        sent.wait();
      }
      gather_rows<T>(d_exp, peer_rows, a.perm, rows, D, ctx);
      experts(d_exp, dx_exp, a.xe, a.local_offsets.data());
      scatter_rows<T>(peer_rows, dx_exp, a.perm, rows, D, ctx);
      PhaseTimer timer(ctx.prof, Phase::communication);
      d.backward(ep, peer_rows, dxp);
    }
    permute_rows_backward<T>(dx, dxp, a.pair_row, N, int(K), D, shared, ctx);
  }

  // router: balance loss through s' (all experts), gates through the selected ones, z-loss; the
  // router GEMM's backward in f32: dx += dz Wr, dWr += dz^T x
  phase.reset();
  PhaseTimer router_timer(ctx.prof, Phase::router);
  const int64_t pool_ranks = o.comms.pool && o.comms.pool->size() > 1 ? o.comms.pool->size() : 1;
  balance_backward<A>(ds, a.s, a.fpool, N, E, o.pool_rows, pool_ranks, o.balance_coef, c.scoring_func, ctx);
  router_gates_backward<A>(ds, p.router_scale >= 0 ? W.g + p.router_scale : nullptr, dgate, a.s, a.idx,
                           p.router_scale >= 0 ? W.wm + p.router_scale : nullptr, N, E, int(K),
                           c.norm_topk_prob, c.routed_scaling_factor, ctx);
  router_scores_backward<A>(dz, ds, a.s, N, E, c.scoring_func, ctx);
  if (o.z_coef != 0) z_loss_backward<A>(dz, a.z, N, E, o.z_coef, ctx);
  if constexpr (std::is_same_v<T, A>) {
    linear_backward<T>(dx, D, W.g + p.router, dz, E, x, D, W.wm + p.router, N, D, E, true, ctx);
  } else {
    const A* xr = router_input<T>(x, N * D, scratch, ctx);
    A* dxr = scratch.alloc<A>(N * D);
    linear_backward<A>(dxr, D, W.g + p.router, dz, E, xr, D, W.wm + p.router, N, D, E, false, ctx);
    cast_from_acc<T>(dx, dxr, N * D, true, ctx);
  }
  scratch.release(mark);
}

#define UM_INSTANTIATE(T)                                                                        \
  template struct MlpActs<T>;                                                                    \
  template struct MoeActs<T>;                                                                    \
  template void mlp_forward<T>(T*, bool, MlpActs<T>&, const T*, const WeightPtrs<T>&,            \
                               const MlpParams&, int64_t, int64_t, const Ctx&);                  \
  template void mlp_backward<T>(T*, bool, const T*, const MlpActs<T>&, const T*,                 \
                                const WeightPtrs<T>&, const MlpParams&, int64_t, int64_t, Arena&, \
                                const Ctx&, const Recompute&);                                   \
  template void moe_forward<T>(T*, MoeActs<T>&, MoeStats&, const T*, const WeightPtrs<T>&,       \
                               const MoeParams&, const ModelConfig&, const MoeOptions&, int64_t, \
                               Arena&, const Ctx&);                                              \
  template void moe_backward<T>(T*, const T*, MoeActs<T>&, const T*, const WeightPtrs<T>&,       \
                                const MoeParams&, const ModelConfig&, const MoeOptions&, int64_t, \
                                Arena&, const Ctx&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
UM_INSTANTIATE(bf16)
#undef UM_INSTANTIATE

}  // namespace um
