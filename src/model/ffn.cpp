#include "model/ffn.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "ops/gemm.h"
#include "ops/grouped_gemm.h"
#include "ops/linear.h"
#include "ops/permute.h"
#include "ops/swiglu.h"

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
void MlpActs<T>::alloc(Arena& a, int64_t N, int64_t F) {
  gu = a.alloc<T>(N * 2 * F);
  h = a.alloc<T>(N * F);
}

template <class T>
void mlp_forward(T* y, bool accumulate, MlpActs<T>& a, const T* x, const T* w, const MlpParams& p,
                 int64_t N, int64_t D, const Ctx& ctx) {
  const int64_t F = p.width;
  linear_forward<T>(a.gu, 2 * F, x, D, w + p.gate_up, N, D, 2 * F, ctx);
  swiglu_forward<T>(a.h, a.gu, N, F, ctx);
  gemm<T>(false, true, N, D, F, T(1), a.h, F, w + p.down, F, accumulate ? T(1) : T(0), y, D);
}

template <class T>
void mlp_backward(T* dx, bool accumulate, const T* dy, const MlpActs<T>& a, const T* x, const T* w,
                  T* g, const MlpParams& p, int64_t N, int64_t D, Arena& scratch, const Ctx& ctx) {
  const int64_t F = p.width;
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
void MoeActs<T>::alloc(Arena& a, const ModelConfig& c, int64_t N, int64_t max_pools) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size,
                F = c.moe_intermediate_size;
  z = a.alloc<T>(N * E);
  s = a.alloc<T>(N * E);
  idx = a.alloc<int32_t>(N * K);
  gate = a.alloc<T>(N * K);
  margin = a.alloc<T>(N);
  keep = a.alloc<uint8_t>(N * K);
  offsets = a.alloc<int32_t>(E + 1);
  row_pair = a.alloc<int32_t>(N * K);
  pair_row = a.alloc<int32_t>(N * K);
  xp = a.alloc<T>(N * K * D);  // dropless worst case: every (token, expert) pair
  gu = a.alloc<T>(N * K * 2 * F);
  h = a.alloc<T>(N * K * F);
  yp = a.alloc<T>(N * K * D);
  fpool = a.alloc<T>(max_pools * E);
  if (c.shared_width() > 0) shared.alloc(a, N, c.shared_width());
}

int64_t expert_capacity(double capacity_factor, int64_t tokens, int64_t K, int64_t E) {
  const double x = capacity_factor * static_cast<double>(tokens) * static_cast<double>(K) /
                   static_cast<double>(E);
  return static_cast<int64_t>(std::ceil(x - 1e-9));
}

namespace {

// Capacity mode (DESIGN 1.5): per expert keep the C pairs with the highest unbiased score,
// ties to the lower token index; the rest are dropped.
template <class T>
int64_t capacity_keep(uint8_t* keep, const int32_t* idx, const T* s, int64_t N, int64_t K,
                      int64_t E, int64_t C) {
  std::vector<std::vector<int64_t>> cand(E);
  for (int64_t p = 0; p < N * K; ++p) cand[idx[p]].push_back(p);
  int64_t dropped = 0;
  for (int64_t e = 0; e < E; ++e) {
    auto& v = cand[e];
    std::stable_sort(v.begin(), v.end(), [&](int64_t a, int64_t b) {
      return s[(a / K) * E + e] > s[(b / K) * E + e];  // stable: equal scores keep token order
    });
    for (size_t r = 0; r < v.size(); ++r) keep[v[r]] = r < static_cast<size_t>(C);
    dropped += std::max<int64_t>(0, static_cast<int64_t>(v.size()) - C);
  }
  return dropped;
}

// s' of DESIGN 1.6: the unbiased scores renormalised to sum 1 over all experts.
template <class T>
inline T renorm_denominator(const T* s_row, int64_t E, ScoreFunc f) {
  if (f == ScoreFunc::softmax) return T(1);
  T sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += s_row[e];
  return sum;
}

}  // namespace

template <class T>
void moe_forward(T* y, MoeActs<T>& a, MoeStats& st, const T* x, const T* w, const T* buffers,
                 const MoeParams& p, const ModelConfig& c, const MoeOptions& o, int64_t N,
                 const Ctx& ctx) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size,
                F = c.moe_intermediate_size;
  st.reset(E);
  st.tokens = N;

  // route: z = x Wr^T, scores, top-k on s + b, gates
  linear_forward<T>(a.z, E, x, D, w + p.router, N, D, E, ctx);
  router_scores_forward<T>(a.s, a.z, N, E, c.scoring_func, ctx);
  router_topk<T>(a.idx, a.margin, a.s, o.use_bias ? buffers + p.bias : nullptr, N, E, o.spec, ctx);
  router_gates_forward<T>(a.gate, a.s, a.idx, p.router_scale >= 0 ? w + p.router_scale : nullptr,
                          N, E, int(K), c.norm_topk_prob, c.routed_scaling_factor, ctx);
  for (int64_t n = 0; n < N; ++n) st.margin_min = std::min(st.margin_min, double(a.margin[n]));
  for (int64_t i = 0; i < N * K; ++i) ++st.load[a.idx[i]];

  // capacity, then the permutation that makes every expert's rows contiguous
  const uint8_t* keep = nullptr;
  if (o.capacity_factor > 0) {
    st.dropped = capacity_keep(a.keep, a.idx, a.s, N, K, E,
                               expert_capacity(o.capacity_factor, N, K, E));
    keep = a.keep;
  }
  a.rows = routing_permutation(a.offsets, a.row_pair, a.pair_row, a.idx, keep, N, int(K), E);

  // experts: permute -> [gate|up] grouped GEMM -> SwiGLU -> down grouped GEMM -> combine
  const int64_t stride = 3 * F * D;  // one expert's gate|up|down block
  permute_rows_forward<T>(a.xp, x, a.row_pair, a.rows, int(K), D, ctx);
  grouped_linear_forward<T>(a.gu, a.xp, D, w + p.experts, stride, a.offsets, E, D, 2 * F, ctx);
  swiglu_forward<T>(a.h, a.gu, a.rows, F, ctx);
  grouped_linear_forward<T>(a.yp, a.h, F, w + p.experts + 2 * F * D, stride, a.offsets, E, F, D, ctx);
  combine_rows_forward<T>(y, a.yp, a.gate, a.pair_row, N, int(K), D, false, ctx);
  if (p.shared.width > 0) mlp_forward<T>(y, true, a.shared, x, w, p.shared, N, D, ctx);

  // balance statistics over this micro-batch's pools (DESIGN 1.6)
  const int64_t pr = o.pool_rows, n_pools = N / pr;
  const T f_scale = T(E) / T(K * pr);
  for (int64_t q = 0; q < n_pools; ++q) {
    T* f = a.fpool + q * E;
    std::fill(f, f + E, T(0));
    for (int64_t i = q * pr * K; i < (q + 1) * pr * K; ++i) f[a.idx[i]] += 1;
    for (int64_t e = 0; e < E; ++e) f[e] *= f_scale;
  }
  for (int64_t n = 0; n < N; ++n) {
    const T* s_row = a.s + n * E;
    const T* f = a.fpool + (n / pr) * E;
    const T denom = renorm_denominator(s_row, E, c.scoring_func);
    double bal = 0, ent = 0;
    for (int64_t e = 0; e < E; ++e) {
      const double sp = double(s_row[e] / denom);
      bal += double(f[e]) * sp;
      if (sp > 0) ent -= sp * std::log(sp);
    }
    st.balance += bal / double(pr);
    st.entropy_sum += ent;
    const T* z_row = a.z + n * E;
    T m = *std::max_element(z_row, z_row + E), l = 0;
    for (int64_t e = 0; e < E; ++e) l += std::exp(z_row[e] - m);
    const double lse = double(m + std::log(l));
    st.z_sum += lse * lse;
  }
}

template <class T>
void moe_backward(T* dx, const T* dy, const MoeActs<T>& a, const T* x, const T* w, T* g,
                  const MoeParams& p, const ModelConfig& c, const MoeOptions& o, int64_t N,
                  Arena& scratch, const Ctx& ctx) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size,
                F = c.moe_intermediate_size, R = a.rows, stride = 3 * F * D;
  const size_t mark = scratch.mark();
  T* dyp = scratch.alloc<T>(R * D);
  T* dgate = scratch.alloc<T>(N * K);
  T* dh = scratch.alloc<T>(R * F);
  T* dgu = scratch.alloc<T>(R * 2 * F);
  T* dxp = scratch.alloc<T>(R * D);
  T* ds = scratch.alloc<T>(N * E);
  T* dz = scratch.alloc<T>(N * E);

  // routed experts, in reverse
  combine_rows_backward<T>(dyp, dgate, dy, a.yp, a.gate, a.pair_row, N, int(K), D, ctx);
  grouped_linear_backward<T>(dh, g + p.experts + 2 * F * D, dyp, a.h, F, w + p.experts + 2 * F * D,
                             stride, a.offsets, E, F, D, ctx);
  swiglu_backward<T>(dgu, dh, a.gu, R, F, ctx);
  grouped_linear_backward<T>(dxp, g + p.experts, dgu, a.xp, D, w + p.experts, stride, a.offsets,
                             E, D, 2 * F, ctx);
  permute_rows_backward<T>(dx, dxp, a.pair_row, N, int(K), D, false, ctx);
  if (p.shared.width > 0)
    mlp_backward<T>(dx, true, dy, a.shared, x, w, g, p.shared, N, D, scratch, ctx);

  // router: balance loss through s' (all experts), gates through the selected ones, z-loss
  const int64_t pr = o.pool_rows;
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * E))
  for (int64_t n = 0; n < N; ++n) {
    T* ds_row = ds + n * E;
    std::fill(ds_row, ds_row + E, T(0));
    if (o.balance_coef == 0) continue;
    const T* s_row = a.s + n * E;
    const T* f = a.fpool + (n / pr) * E;
    const T coef = T(o.balance_coef / double(pr));
    if (c.scoring_func == ScoreFunc::softmax) {
      for (int64_t e = 0; e < E; ++e) ds_row[e] = coef * f[e];
    } else {  // s' = s / sum(s)
      const T sum = renorm_denominator(s_row, E, c.scoring_func);
      T dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += coef * f[e] * s_row[e] / sum;
      for (int64_t e = 0; e < E; ++e) ds_row[e] = (coef * f[e] - dot) / sum;
    }
  }
  router_gates_backward<T>(ds, p.router_scale >= 0 ? g + p.router_scale : nullptr, dgate, a.s,
                           a.idx, p.router_scale >= 0 ? w + p.router_scale : nullptr, N, E, int(K),
                           c.norm_topk_prob, c.routed_scaling_factor, ctx);
  router_scores_backward<T>(dz, ds, a.s, N, E, c.scoring_func, ctx);
  if (o.z_coef != 0) {
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * E))
    for (int64_t n = 0; n < N; ++n) {
      const T* z_row = a.z + n * E;
      T m = *std::max_element(z_row, z_row + E), l = 0;
      for (int64_t e = 0; e < E; ++e) l += std::exp(z_row[e] - m);
      const T lse = m + std::log(l), c2 = T(2 * o.z_coef) * lse;
      for (int64_t e = 0; e < E; ++e) dz[n * E + e] += c2 * std::exp(z_row[e] - lse);
    }
  }
  linear_backward<T>(dx, D, g + p.router, dz, E, x, D, w + p.router, N, D, E, true, ctx);
  scratch.release(mark);
}

#define UM_INSTANTIATE(T)                                                                        \
  template struct MlpActs<T>;                                                                    \
  template struct MoeActs<T>;                                                                    \
  template void mlp_forward<T>(T*, bool, MlpActs<T>&, const T*, const T*, const MlpParams&,      \
                               int64_t, int64_t, const Ctx&);                                    \
  template void mlp_backward<T>(T*, bool, const T*, const MlpActs<T>&, const T*, const T*, T*,   \
                                const MlpParams&, int64_t, int64_t, Arena&, const Ctx&);         \
  template void moe_forward<T>(T*, MoeActs<T>&, MoeStats&, const T*, const T*, const T*,         \
                               const MoeParams&, const ModelConfig&, const MoeOptions&, int64_t, \
                               const Ctx&);                                                      \
  template void moe_backward<T>(T*, const T*, const MoeActs<T>&, const T*, const T*, T*,         \
                                const MoeParams&, const ModelConfig&, const MoeOptions&, int64_t, \
                                Arena&, const Ctx&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
#undef UM_INSTANTIATE

}  // namespace um
