// The MoE router and its statistics on CUDA (ops/router.h, ops/permute.h's routing_permutation
// and capacity_keep, ops/moe_stats.h), all on f32. The per-row selection ports the CPU's ranking
// exactly (ties to the lower index, group by group for moge), one thread per row: E is at most a
// few hundred and the work is tiny next to the expert GEMMs. Counts are integer atomics (exact in
// any order); every floating-point sum runs in a fixed order, so results are run-to-run
// identical.
#include <cfloat>

#include "ops/backend.h"
#include "ops/cuda/common.cuh"

namespace um::cuda {
namespace {

constexpr int kThreads = 256;

// ---- scores ----
__global__ void scores_fwd_kernel(float* s, const float* z, int64_t N, int64_t E, int softmax) {
  UM_GRID_LOOP(n, N) {
    const float* zr = z + n * E;
    float* sr = s + n * E;
    if (!softmax) {
      for (int64_t e = 0; e < E; ++e) sr[e] = 1.f / (1.f + expf(-zr[e]));
    } else {
      float m = -INFINITY, l = 0.f;
      for (int64_t e = 0; e < E; ++e) m = fmaxf(m, zr[e]);
      for (int64_t e = 0; e < E; ++e) l += (sr[e] = expf(zr[e] - m));
      for (int64_t e = 0; e < E; ++e) sr[e] /= l;
    }
  }
}
__global__ void scores_bwd_kernel(float* dz, const float* ds, const float* s, int64_t N, int64_t E, int softmax) {
  UM_GRID_LOOP(n, N) {
    const float *sr = s + n * E, *dsr = ds + n * E;
    float* dzr = dz + n * E;
    if (!softmax) {
      for (int64_t e = 0; e < E; ++e) dzr[e] = dsr[e] * sr[e] * (1.f - sr[e]);
    } else {
      float dot = 0.f;
      for (int64_t e = 0; e < E; ++e) dot += dsr[e] * sr[e];
      for (int64_t e = 0; e < E; ++e) dzr[e] = sr[e] * (dsr[e] - dot);
    }
  }
}
void router_scores_forward(float* s, const float* z, int64_t N, int64_t E, ScoreFunc f, const Ctx& ctx) {
  if (N == 0) return;
  UM_LAUNCH(scores_fwd_kernel, grid_for(N, 128), 128, 0, stream_of(ctx), s, z, N, E, int(f == ScoreFunc::softmax));
  check_launch("scores_fwd_kernel");
}
void router_scores_backward(float* dz, const float* ds, const float* s, int64_t N, int64_t E, ScoreFunc f,
                            const Ctx& ctx) {
  if (N == 0) return;
  UM_LAUNCH(scores_bwd_kernel, grid_for(N, 128), 128, 0, stream_of(ctx), dz, ds, s, N, E, int(f == ScoreFunc::softmax));
  check_launch("scores_bwd_kernel");
}

// ---- top-k: the CPU's pick_top, per thread ----
// Picks the k best of val[0..n) (ties: lower position) into out[0..k), best first; returns the
// gap between the k-th chosen and the best rejected value (+inf if none rejected). cand maps
// positions to experts (null: identity).
__device__ float pick_top(int* out, const float* val, const int* cand, int n, int k) {
  int chosen = 0;
  for (int i = 0; i < n; ++i) {
    int at = chosen;
    while (at > 0 && val[i] > val[out[at - 1]]) --at;
    if (at >= k) continue;
    const int last = chosen < k - 1 ? chosen : k - 1;
    for (int j = last; j > at; --j) out[j] = out[j - 1];
    out[at] = i;
    chosen = chosen + 1 < k ? chosen + 1 : k;
  }
  float best_rejected = -INFINITY;
  for (int i = 0; i < n; ++i) {
    bool taken = false;
    for (int j = 0; j < k; ++j) taken |= out[j] == i;
    if (!taken) best_rejected = fmaxf(best_rejected, val[i]);
  }
  const float gap = n > k ? val[out[k - 1]] - best_rejected : INFINITY;
  for (int j = 0; j < k; ++j) out[j] = cand ? cand[out[j]] : out[j];
  return gap;
}

template <int kMaxE>
__global__ void topk_kernel(int32_t* idx, float* margin, const float* s, const float* bias, int64_t N, int E,
                            int method, int k, int G, int topk_group) {
  UM_GRID_LOOP(n, N) {
    float biased[kMaxE], val[kMaxE], group_score[kMaxE];
    int cand[kMaxE], pick[kMaxE], out[kMaxE];
    const float* sr = s + n * E;
    for (int e = 0; e < E; ++e) biased[e] = sr[e] + (bias ? bias[e] : 0.f);
    float gap = INFINITY;
    const int per_group = E / (G > 0 ? G : 1);
    if (method == int(TopkMethod::greedy)) {
      gap = pick_top(out, biased, nullptr, E, k);
    } else if (method == int(TopkMethod::group_limited)) {
      const int top_in_group = per_group < 2 ? per_group : 2;
      for (int g = 0; g < G; ++g) {
        const float* b = biased + g * per_group;
        group_score[g] = 0.f;
        pick_top(pick, b, nullptr, per_group, top_in_group);
        for (int j = 0; j < top_in_group; ++j) group_score[g] += b[pick[j]];
      }
      gap = pick_top(pick, group_score, nullptr, G, topk_group);
      for (int a = 1; a < topk_group; ++a)  // the kept groups in expert order (insertion sort)
        for (int b = a; b > 0 && pick[b] < pick[b - 1]; --b) {
          const int t = pick[b];
          pick[b] = pick[b - 1];
          pick[b - 1] = t;
        }
      int n_cand = 0;
      for (int j = 0; j < topk_group; ++j)
        for (int e = pick[j] * per_group; e < (pick[j] + 1) * per_group; ++e) {
          cand[n_cand] = e;
          val[n_cand++] = biased[e];
        }
      gap = fminf(gap, pick_top(out, val, cand, n_cand, k));
    } else {  // moge
      const int k_per = k / G;
      for (int g = 0; g < G; ++g) {
        for (int j = 0; j < per_group; ++j) cand[j] = g * per_group + j;
        gap = fminf(gap, pick_top(out + g * k_per, biased + g * per_group, cand, per_group, k_per));
      }
    }
    for (int j = 0; j < k; ++j) idx[n * k + j] = out[j];
    if (margin) margin[n] = gap;
  }
}

void router_topk(int32_t* idx, float* margin, const float* s, const float* bias, int64_t N, int64_t E,
                 const TopkSpec& spec, const Ctx& ctx) {
  if (N == 0) return;
  UM_CHECK(E <= 256, "router_topk", "the CUDA backend supports at most 256 routed experts, the model has ", E);
  const int G = spec.n_group;
#define UM_TOPK(MAXE)                                                                                         \
  UM_LAUNCH(topk_kernel<MAXE>, grid_for(N, 64), 64, 0, stream_of(ctx), idx, margin, s, bias, N, int(E),          \
            int(spec.method), spec.k, G, spec.topk_group)
  if (E <= 32) UM_TOPK(32);
  else if (E <= 64) UM_TOPK(64);
  else if (E <= 128) UM_TOPK(128);
  else UM_TOPK(256);
#undef UM_TOPK
  check_launch("topk_kernel");
}

// ---- gates ----
__global__ void gates_fwd_kernel(float* g, const float* s, const int32_t* idx, const float* rs, int64_t N,
                                 int64_t E, int k, int norm, float scaling) {
  UM_GRID_LOOP(n, N) {
    const float* sr = s + n * E;
    const int32_t* ir = idx + n * k;
    float denom = 1.f;
    if (norm) {
      denom = 0.f;
      for (int j = 0; j < k; ++j) denom += sr[ir[j]];
      denom += 1e-20f;
    }
    for (int j = 0; j < k; ++j) {
      float v = sr[ir[j]] / denom * scaling;
      if (rs) v *= rs[ir[j]];
      g[n * k + j] = v;
    }
  }
}
__device__ float gate_denominator(const float* sr, const int32_t* ir, int k, int norm) {
  if (!norm) return 1.f;
  float d = 0.f;
  for (int j = 0; j < k; ++j) d += sr[ir[j]];
  return d + 1e-20f;
}
__global__ void gates_bwd_kernel(float* ds, const float* dg, const float* s, const int32_t* idx, const float* rs,
                                 int64_t N, int64_t E, int k, int norm, float c) {
  UM_GRID_LOOP(n, N) {
    const float* sr = s + n * E;
    const int32_t* ir = idx + n * k;
    const float* dgr = dg + n * k;
    float* dsr = ds + n * E;
    const float denom = gate_denominator(sr, ir, k, norm);
    float dot = 0.f;
    for (int j = 0; j < k; ++j) {
      const float u = dgr[j] * c * (rs ? rs[ir[j]] : 1.f);
      dsr[ir[j]] += u / denom;
      dot += u * sr[ir[j]];
    }
    if (norm)
      for (int j = 0; j < k; ++j) dsr[ir[j]] -= dot / (denom * denom);
  }
}
// d_router_scale: per 64-row block partial sums over experts, then the blocks in order
__global__ void gates_drs_partial_kernel(float* partial, const float* dg, const float* s, const int32_t* idx,
                                         int64_t N, int64_t E, int k, int norm, float c) {
  const int64_t b = blockIdx.x;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) partial[b * E + e] = 0.f;
  __syncthreads();
  if (threadIdx.x == 0) {  // one thread: the rows of the block in order, no atomics
    const int64_t n1 = (b + 1) * 64 < N ? (b + 1) * 64 : N;
    for (int64_t n = b * 64; n < n1; ++n) {
      const float denom = gate_denominator(s + n * E, idx + n * k, k, norm);
      for (int j = 0; j < k; ++j) {
        const int32_t e = idx[n * k + j];
        partial[b * E + e] += dg[n * k + j] * s[n * E + e] / denom * c;
      }
    }
  }
}
__global__ void column_sum_kernel(float* out, const float* partial, int64_t n_blocks, int64_t D) {
  UM_GRID_LOOP(d, D) {
    float s = 0.f;
    for (int64_t b = 0; b < n_blocks; ++b) s += partial[b * D + d];
    out[d] += s;
  }
}

void router_gates_forward(float* g, const float* s, const int32_t* idx, const float* rs, int64_t N, int64_t E, int k,
                          bool norm, double scaling, const Ctx& ctx) {
  if (N == 0) return;
  UM_LAUNCH(gates_fwd_kernel, grid_for(N, 128), 128, 0, stream_of(ctx), g, s, idx, rs, N, E, k, int(norm),
            float(scaling));
  check_launch("gates_fwd_kernel");
}
void router_gates_backward(float* ds, float* d_rs, const float* dg, const float* s, const int32_t* idx,
                           const float* rs, int64_t N, int64_t E, int k, bool norm, double scaling, const Ctx& ctx) {
  if (N == 0) return;
  UM_LAUNCH(gates_bwd_kernel, grid_for(N, 128), 128, 0, stream_of(ctx), ds, dg, s, idx, rs, N, E, k, int(norm),
            float(scaling));
  check_launch("gates_bwd_kernel");
  if (d_rs) {
    const int64_t n_blocks = (N + 63) / 64;
    float* partial = ctx.scratch<float>(size_t(n_blocks * E));
    UM_LAUNCH(gates_drs_partial_kernel, unsigned(n_blocks), 32, 0, stream_of(ctx), partial, dg, s, idx, N, E, k,
              int(norm), float(scaling));
    check_launch("gates_drs_partial_kernel");
    UM_LAUNCH(column_sum_kernel, grid_for(E), kThreads, 0, stream_of(ctx), d_rs, partial, n_blocks, E);
    check_launch("column_sum_kernel");
  }
}

// ---- routing permutation: a stable counting sort by expert ----
__device__ __forceinline__ bool kept(const uint8_t* keep, int64_t p) { return !keep || keep[p]; }

// Exclusive prefix count of `flag` over the block's threads; total in *total. red: 32 ints of
// __shared__ memory.
__device__ int block_exclusive_count(bool flag, int* red, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  const int in_warp = __popc(ballot & ((1u << lane) - 1u));
  __syncthreads();
  if (lane == 0) red[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < n_warps; ++w) {
    if (w < warp) before += red[w];
    all += red[w];
  }
  *total = all;
  return before + in_warp;
}

__global__ void count_expert_kernel(int32_t* counts, const int32_t* expert, const uint8_t* keep, int64_t P) {
  __shared__ int red[32];
  const int e = blockIdx.x;
  int c = 0;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) c += (expert[p] == e && kept(keep, p)) ? 1 : 0;
  int total = 0;
  for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 0; w < int(blockDim.x >> 5); ++w) total += red[w];
    counts[e] = total;
  }
}
__global__ void scan_offsets_kernel(int32_t* offsets, const int32_t* counts, int64_t E) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int32_t at = 0;
  for (int64_t e = 0; e < E; ++e) {
    offsets[e] = at;
    at += counts[e];
  }
  offsets[E] = at;
}
__global__ void mark_dropped_kernel(int32_t* pair_row, const uint8_t* keep, int64_t P) {
  UM_GRID_LOOP(p, P) if (!keep[p]) pair_row[p] = -1;
}
__global__ void place_expert_kernel(int32_t* row_pair, int32_t* pair_row, const int32_t* offsets,
                                    const int32_t* expert, const uint8_t* keep, int64_t P) {
  __shared__ int red[32];
  const int e = blockIdx.x;
  int base = offsets[e];
  for (int64_t p0 = 0; p0 < P; p0 += blockDim.x) {  // every thread runs the same number of rounds
    const int64_t p = p0 + threadIdx.x;
    const bool mine = p < P && expert[p] == e && kept(keep, p);
    int total = 0;
    const int at = base + block_exclusive_count(mine, red, &total);
    if (mine) {
      row_pair[at] = int32_t(p);
      pair_row[p] = at;
    }
    base += total;
  }
}

void permutation(int32_t* offsets, int32_t* row_pair, int32_t* pair_row, const int32_t* expert, const uint8_t* keep,
                 int64_t N, int K, int64_t E, int32_t* counts, const Ctx& ctx) {
  const int64_t P = N * K;
  cudaStream_t st = stream_of(ctx);
  UM_LAUNCH(count_expert_kernel, unsigned(E), kThreads, 0, st, counts, expert, keep, P);
  check_launch("count_expert_kernel");
  UM_LAUNCH(scan_offsets_kernel, 1, 32, 0, st, offsets, counts, E);
  check_launch("scan_offsets_kernel");
  if (keep && P > 0) {
    UM_LAUNCH(mark_dropped_kernel, grid_for(P), kThreads, 0, st, pair_row, keep, P);
    check_launch("mark_dropped_kernel");
  }
  UM_LAUNCH(place_expert_kernel, unsigned(E), kThreads, 0, st, row_pair, pair_row, offsets, expert, keep, P);
  check_launch("place_expert_kernel");
}

void routing_permutation(int32_t* offsets, int32_t* row_pair, int32_t* pair_row, const int32_t* expert,
                         const uint8_t* keep, int64_t N, int K, int64_t E, const Ctx& ctx) {
  permutation(offsets, row_pair, pair_row, expert, keep, N, K, E, ctx.scratch<int32_t>(size_t(E)), ctx);
}

// ---- capacity (design.md 1.5): per expert keep the C best pairs by (score desc, pair asc) ----
__global__ void capacity_rank_kernel(uint8_t* keep, const int32_t* offsets, const int32_t* row_pair, const float* s,
                                     int K, int64_t E, int64_t C) {
  const int e = blockIdx.x;
  const int32_t a = offsets[e], n = offsets[e + 1] - a;
  for (int32_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int32_t p = row_pair[a + i];
    const float si = s[int64_t(p / K) * E + e];
    int64_t rank = 0;
    for (int32_t j = 0; j < n; ++j) {
      const int32_t q = row_pair[a + j];
      const float sj = s[int64_t(q / K) * E + e];
      rank += (sj > si || (sj == si && q < p)) ? 1 : 0;
    }
    keep[p] = rank < C ? 1 : 0;
  }
}
void capacity_keep(uint8_t* keep, const int32_t* idx, const float* s, int64_t N, int64_t K, int64_t E, int64_t C,
                   const Ctx& ctx) {
  if (N == 0) return;
  int32_t* offsets = ctx.scratch<int32_t>(size_t(2 * E + 1 + 2 * N * K));
  int32_t *counts = offsets + E + 1, *row_pair = counts + E, *pair_row = row_pair + N * K;
  permutation(offsets, row_pair, pair_row, idx, nullptr, N, int(K), E, counts, ctx);
  UM_LAUNCH(capacity_rank_kernel, unsigned(E), kThreads, 0, stream_of(ctx), keep, offsets, row_pair, s, int(K), E, C);
  check_launch("capacity_rank_kernel");
}

// ---- balance statistics and losses (ops/moe_stats.h) ----
__global__ void balance_counts_kernel(float* fpool, const int32_t* idx, int64_t N, int K, int64_t E, int64_t pr) {
  UM_GRID_LOOP(i, N * K) atomicAdd(&fpool[(i / K / pr) * E + idx[i]], 1.f);  // integers: exact in any order
}
void balance_counts(float* fpool, const int32_t* idx, int64_t N, int K, int64_t E, int64_t pr, const Ctx& ctx) {
  ctx.zero(fpool, size_t(N / pr * E));
  if (N == 0) return;
  UM_LAUNCH(balance_counts_kernel, grid_for(N * K), kThreads, 0, stream_of(ctx), fpool, idx, N, K, E, pr);
  check_launch("balance_counts_kernel");
}

__device__ float renorm_denominator(const float* s_row, int64_t E, int softmax) {
  if (softmax) return 1.f;
  float sum = 0.f;
  for (int64_t e = 0; e < E; ++e) sum += s_row[e];
  return sum;
}

__global__ void scale_kernel(float* x, int64_t n, float c) {
  UM_GRID_LOOP(i, n) x[i] *= c;
}
__global__ void load_kernel(unsigned long long* load, const int32_t* idx, int64_t P) {
  UM_GRID_LOOP(i, P) atomicAdd(&load[idx[i]], 1ull);
}
// per row: [sum_e f_e s'_e / |S|, entropy of s', lse(z)^2, margin]
__global__ void row_stats_kernel(double* terms, const float* fpool, const float* s, const float* z,
                                 const float* margin, int64_t N, int64_t E, int64_t pr, double pool_size, int softmax) {
  UM_GRID_LOOP(n, N) {
    const float* s_row = s + n * E;
    const float* f = fpool + (n / pr) * E;
    const float denom = renorm_denominator(s_row, E, softmax);
    double bal = 0, ent = 0;
    for (int64_t e = 0; e < E; ++e) {
      const double sp = double(s_row[e] / denom);
      bal += double(f[e]) * sp;
      if (sp > 0) ent -= sp * log(sp);
    }
    const float* z_row = z + n * E;
    float m = -INFINITY, l = 0.f;
    for (int64_t e = 0; e < E; ++e) m = fmaxf(m, z_row[e]);
    for (int64_t e = 0; e < E; ++e) l += expf(z_row[e] - m);
    const double lse = double(m + logf(l));
    terms[n * 4 + 0] = bal / pool_size;
    terms[n * 4 + 1] = ent;
    terms[n * 4 + 2] = lse * lse;
    terms[n * 4 + 3] = double(margin[n]);
  }
}
// one block: thread t sums rows t, t + blockDim, ... in order; then a fixed tree
__global__ void reduce_stats_kernel(double* stats, const double* terms, int64_t N) {
  __shared__ double part[4][256];
  double a = 0, b = 0, c = 0, m = INFINITY;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    a += terms[n * 4], b += terms[n * 4 + 1], c += terms[n * 4 + 2];
    m = fmin(m, terms[n * 4 + 3]);
  }
  part[0][threadIdx.x] = a, part[1][threadIdx.x] = b, part[2][threadIdx.x] = c, part[3][threadIdx.x] = m;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) {
      for (int q = 0; q < 3; ++q) part[q][threadIdx.x] += part[q][threadIdx.x + w];
      part[3][threadIdx.x] = fmin(part[3][threadIdx.x], part[3][threadIdx.x + w]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0)
    for (int q = 0; q < 4; ++q) stats[q] = part[q][0];
}

void moe_router_stats(double* stats, int64_t* load, float* fpool, const float* s, const float* z, const int32_t* idx,
                      const float* margin, int64_t N, int K, int64_t E, int64_t pr, int64_t pool_ranks, ScoreFunc f,
                      const Ctx& ctx) {
  cudaStream_t st = stream_of(ctx);
  const int64_t n_pools = N / pr;
  ctx.zero(load, size_t(E));
  if (N == 0) {
    const double empty[4] = {0, 0, 0, INFINITY};
    ctx.upload(stats, empty, 4);
    return;
  }
  UM_LAUNCH(scale_kernel, grid_for(n_pools * E), kThreads, 0, st, fpool, n_pools * E,
            float(E) / float(K * pr * pool_ranks));
  check_launch("scale_kernel");
  UM_LAUNCH(load_kernel, grid_for(N * K), kThreads, 0, st, reinterpret_cast<unsigned long long*>(load), idx, N * K);
  check_launch("load_kernel");
  double* terms = ctx.scratch<double>(size_t(N * 4));
  UM_LAUNCH(row_stats_kernel, grid_for(N, 128), 128, 0, st, terms, fpool, s, z, margin, N, E, pr,
            double(pr * pool_ranks), int(f == ScoreFunc::softmax));
  check_launch("row_stats_kernel");
  UM_LAUNCH(reduce_stats_kernel, 1, 256, 0, st, stats, terms, N);
  check_launch("reduce_stats_kernel");
}

__global__ void balance_bwd_kernel(float* ds, const float* s, const float* fpool, int64_t N, int64_t E, int64_t pr,
                                   float coef, int softmax) {
  UM_GRID_LOOP(n, N) {
    float* ds_row = ds + n * E;
    const float* s_row = s + n * E;
    const float* f = fpool + (n / pr) * E;
    if (coef == 0.f) {
      for (int64_t e = 0; e < E; ++e) ds_row[e] = 0.f;
    } else if (softmax) {
      for (int64_t e = 0; e < E; ++e) ds_row[e] = coef * f[e];
    } else {
      const float sum = renorm_denominator(s_row, E, 0);
      float dot = 0.f;
      for (int64_t e = 0; e < E; ++e) dot += coef * f[e] * s_row[e] / sum;
      for (int64_t e = 0; e < E; ++e) ds_row[e] = (coef * f[e] - dot) / sum;
    }
  }
}
void balance_backward(float* ds, const float* s, const float* fpool, int64_t N, int64_t E, int64_t pr,
                      int64_t pool_ranks, double coef, ScoreFunc f, const Ctx& ctx) {
  if (N == 0) return;
  UM_LAUNCH(balance_bwd_kernel, grid_for(N, 128), 128, 0, stream_of(ctx), ds, s, fpool, N, E, pr,
            float(coef / double(pr * pool_ranks)), int(f == ScoreFunc::softmax));
  check_launch("balance_bwd_kernel");
}

__global__ void z_loss_bwd_kernel(float* dz, const float* z, int64_t N, int64_t E, float coef2) {
  UM_GRID_LOOP(n, N) {
    const float* z_row = z + n * E;
    float m = -INFINITY, l = 0.f;
    for (int64_t e = 0; e < E; ++e) m = fmaxf(m, z_row[e]);
    for (int64_t e = 0; e < E; ++e) l += expf(z_row[e] - m);
    const float lse = m + logf(l), c2 = coef2 * lse;
    for (int64_t e = 0; e < E; ++e) dz[n * E + e] += c2 * expf(z_row[e] - lse);
  }
}
void z_loss_backward(float* dz, const float* z, int64_t N, int64_t E, double coef, const Ctx& ctx) {
  if (N == 0) return;
  UM_LAUNCH(z_loss_bwd_kernel, grid_for(N, 128), 128, 0, stream_of(ctx), dz, z, N, E, float(2 * coef));
  check_launch("z_loss_bwd_kernel");
}

}  // namespace

void register_router(Backend& b) {
  OpTable<float>& t = b.f32;
  t.router_scores_forward = &router_scores_forward;
  t.router_scores_backward = &router_scores_backward;
  t.router_topk = &router_topk;
  t.router_gates_forward = &router_gates_forward;
  t.router_gates_backward = &router_gates_backward;
  t.capacity_keep = &capacity_keep;
  t.balance_counts = &balance_counts;
  t.moe_router_stats = &moe_router_stats;
  t.balance_backward = &balance_backward;
  t.z_loss_backward = &z_loss_backward;
  b.routing_permutation = &routing_permutation;
}

}  // namespace um::cuda
