// Memory-bound ops on CUDA: SwiGLU, RoPE, embedding, residual adds, strided copies, casts,
// fills, MLA's per-head K/V assembly, and the MoE row movement (permute, combine, gather,
// scatter). One thread per output element (grid-stride), computing in f32; every output element
// is written by one thread, and sums over a fixed list (a token's K pairs, a row's heads, an
// id's tokens) run in that list's order, so results are run-to-run identical.
#include "ops/backend.h"
#include "ops/cuda/common.cuh"

namespace um::cuda {
namespace {

constexpr int kThreads = 256;

// ---- SwiGLU (ops/swiglu.h) ----
template <class T>
__global__ void swiglu_fwd_kernel(T* h, const T* gu, int64_t N, int64_t F) {
  UM_GRID_LOOP(i, N * F) {
    const int64_t n = i / F, f = i % F;
    const float g = ld(gu[n * 2 * F + f]), u = ld(gu[n * 2 * F + F + f]);
    h[i] = st<T>(g / (1.f + expf(-g)) * u);
  }
}
template <class T>
__global__ void swiglu_bwd_kernel(T* dgu, const T* dh, const T* gu, int64_t N, int64_t F) {
  UM_GRID_LOOP(i, N * F) {
    const int64_t n = i / F, f = i % F;
    const float g = ld(gu[n * 2 * F + f]), u = ld(gu[n * 2 * F + F + f]), d = ld(dh[i]);
    const float sig = 1.f / (1.f + expf(-g));
    dgu[n * 2 * F + f] = st<T>(d * u * sig * (1.f + g * (1.f - sig)));
    dgu[n * 2 * F + F + f] = st<T>(d * g * sig);
  }
}
template <class T>
void swiglu_forward(T* h, const T* gu, int64_t N, int64_t F, const Ctx& ctx) {
  if (N * F == 0) return;
  UM_LAUNCH(swiglu_fwd_kernel<dev_t<T>>, grid_for(N * F), kThreads, 0, stream_of(ctx), dev(h), dev(gu), N, F);
  check_launch("swiglu_fwd_kernel");
}
template <class T>
void swiglu_backward(T* dgu, const T* dh, const T* gu, int64_t N, int64_t F, const Ctx& ctx) {
  if (N * F == 0) return;
  UM_LAUNCH(swiglu_bwd_kernel<dev_t<T>>, grid_for(N * F), kThreads, 0, stream_of(ctx), dev(dgu), dev(dh), dev(gu),
            N, F);
  check_launch("swiglu_bwd_kernel");
}

// ---- RoPE (ops/rope.h): rotate-half pairs (j, j + d/2), in place allowed ----
template <class T>
__global__ void rope_kernel(T* y, const T* x, const int32_t* pos, const float* cos_tab, const float* sin_tab,
                            int64_t N, int n_heads, int64_t ld_, int64_t head_stride, int half, float sign) {
  UM_GRID_LOOP(i, N * n_heads * half) {
    const int64_t n = i / (int64_t(n_heads) * half), rem = i % (int64_t(n_heads) * half);
    const int64_t h = rem / half, j = rem % half;
    const int64_t at = n * ld_ + h * head_stride + j;
    const float c = cos_tab[int64_t(pos[n]) * half + j], s = sign * sin_tab[int64_t(pos[n]) * half + j];
    const float a = ld(x[at]), b = ld(x[at + half]);
    y[at] = st<T>(a * c - b * s);
    y[at + half] = st<T>(b * c + a * s);
  }
}
template <class T>
void rope(T* y, const T* x, const int32_t* pos, const float* cos_tab, const float* sin_tab, int64_t N, int n_heads,
          int64_t ld_, int64_t head_stride, int d, float sign, const Ctx& ctx) {
  const int64_t n = N * n_heads * (d / 2);
  if (n == 0) return;
  UM_LAUNCH(rope_kernel<dev_t<T>>, grid_for(n), kThreads, 0, stream_of(ctx), dev(y), dev(x), pos, cos_tab, sin_tab,
            N, n_heads, ld_, head_stride, d / 2, sign);
  check_launch("rope_kernel");
}
template <class T>
void rope_forward(T* y, const T* x, const int32_t* pos, const float* c, const float* s, int64_t N, int n_heads,
                  int64_t ld_, int64_t head_stride, int d, const Ctx& ctx) {
  rope<T>(y, x, pos, c, s, N, n_heads, ld_, head_stride, d, 1.f, ctx);
}
template <class T>
void rope_backward(T* dx, const T* dy, const int32_t* pos, const float* c, const float* s, int64_t N, int n_heads,
                   int64_t ld_, int64_t head_stride, int d, const Ctx& ctx) {
  rope<T>(dx, dy, pos, c, s, N, n_heads, ld_, head_stride, d, -1.f, ctx);
}

// ---- embedding (ops/embedding.h) ----
template <class T>
__global__ void embedding_fwd_kernel(T* y, const int32_t* ids, const T* W, int64_t N, int64_t D) {
  UM_GRID_LOOP(i, N * D) y[i] = W[int64_t(ids[i / D]) * D + i % D];
}
// one thread per (distinct id, column): the id's rows summed in token order, then added
template <class T>
__global__ void embedding_bwd_kernel(float* dW, const T* dy, const int32_t* rows, const int32_t* start,
                                     const int32_t* id, int64_t n_ids, int64_t D) {
  UM_GRID_LOOP(i, n_ids * D) {
    const int64_t u = i / D, d = i % D;
    float s = 0.f;
    for (int32_t r = start[u]; r < start[u + 1]; ++r) s += ld(dy[int64_t(rows[r]) * D + d]);
    dW[int64_t(id[u]) * D + d] += s;
  }
}
template <class T>
void embedding_forward(T* y, const int32_t* ids, const T* W, int64_t N, int64_t D, const Ctx& ctx) {
  if (N * D == 0) return;
  UM_LAUNCH(embedding_fwd_kernel<dev_t<T>>, grid_for(N * D), kThreads, 0, stream_of(ctx), dev(y), ids, dev(W), N, D);
  check_launch("embedding_fwd_kernel");
}
template <class T>
void embedding_backward(float* dW, const T* dy, const int32_t*, const TokensById& by, int64_t N, int64_t D,
                        const Ctx& ctx) {
  if (N == 0) return;
  UM_CHECK(by.rows != nullptr && by.n_ids > 0, "embedding_backward", "the CUDA backend needs the tokens grouped by id");
  UM_LAUNCH(embedding_bwd_kernel<dev_t<T>>, grid_for(by.n_ids * D), kThreads, 0, stream_of(ctx), dW, dev(dy),
            by.rows, by.start, by.id, by.n_ids, D);
  check_launch("embedding_bwd_kernel");
}

// ---- residual adds, copies, casts, fills (ops/elementwise.h) ----
template <class T>
__global__ void add_kernel(T* y, const T* x, int64_t n) {
  UM_GRID_LOOP(i, n) y[i] = st<T>(ld(y[i]) + ld(x[i]));
}
template <class T>
void add_inplace(T* y, const T* x, int64_t n, const Ctx& ctx) {
  if (n == 0) return;
  UM_LAUNCH(add_kernel<dev_t<T>>, grid_for(n), kThreads, 0, stream_of(ctx), dev(y), dev(x), n);
  check_launch("add_kernel");
}

template <class T>
__global__ void copy_rows_kernel(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t rows, int64_t cols,
                                 int accumulate) {
  UM_GRID_LOOP(i, rows * cols) {
    const int64_t r = i / cols, c = i % cols;
    T* d = dst + r * ld_dst + c;
    const T s = src[r * ld_src + c];
    *d = accumulate ? st<T>(ld(*d) + ld(s)) : s;
  }
}
template <class T>
void copy_rows(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t rows, int64_t cols, bool accumulate,
               const Ctx& ctx) {
  if (rows * cols == 0) return;
  if (!accumulate && ld_dst == cols && ld_src == cols) {
    ctx.copy(dst, src, size_t(rows * cols));
    return;
  }
  UM_LAUNCH(copy_rows_kernel<dev_t<T>>, grid_for(rows * cols), kThreads, 0, stream_of(ctx), dev(dst), ld_dst,
            dev(src), ld_src, rows, cols, int(accumulate));
  check_launch("copy_rows_kernel");
}

template <class T>
__global__ void cast_to_acc_kernel(float* dst, const T* src, int64_t n) {
  UM_GRID_LOOP(i, n) dst[i] = ld(src[i]);
}
template <class T>
__global__ void cast_from_acc_kernel(T* dst, const float* src, int64_t n, int accumulate) {
  UM_GRID_LOOP(i, n) dst[i] = st<T>(accumulate ? ld(dst[i]) + src[i] : src[i]);
}
template <class T>
void cast_to_acc(float* dst, const T* src, int64_t n, const Ctx& ctx) {
  if (n == 0) return;
  UM_LAUNCH(cast_to_acc_kernel<dev_t<T>>, grid_for(n), kThreads, 0, stream_of(ctx), dst, dev(src), n);
  check_launch("cast_to_acc_kernel");
}
template <class T>
void cast_from_acc(T* dst, const float* src, int64_t n, bool accumulate, const Ctx& ctx) {
  if (n == 0) return;
  UM_LAUNCH(cast_from_acc_kernel<dev_t<T>>, grid_for(n), kThreads, 0, stream_of(ctx), dev(dst), src, n,
            int(accumulate));
  check_launch("cast_from_acc_kernel");
}

template <class T>
__global__ void fill_kernel(T* p, int64_t n, float v) {
  UM_GRID_LOOP(i, n) p[i] = st<T>(v);
}
template <class T>
void fill(T* p, int64_t n, double value, const Ctx& ctx) {
  if (n == 0) return;
  UM_LAUNCH(fill_kernel<dev_t<T>>, grid_for(n), kThreads, 0, stream_of(ctx), dev(p), n, float(value));
  check_launch("fill_kernel");
}

// ---- MLA per-head K and V (ops/elementwise.h) ----
template <class T>
__global__ void mla_kv_fwd_kernel(T* k, T* v, const T* kv, const T* kva, int64_t N, int H, int nope, int rd, int dv,
                                  int64_t kva_ld, int64_t kv_lora) {
  const int64_t dqk = nope + rd, row = dqk + dv;  // per (n, h): k's dqk then v's dv elements
  UM_GRID_LOOP(i, N * H * row) {
    const int64_t nh = i / row, c = i % row, n = nh / H, h = nh % H;
    const T* src = kv + n * H * (nope + dv) + h * (nope + dv);
    if (c < nope) k[nh * dqk + c] = src[c];
    else if (c < dqk) k[nh * dqk + c] = kva[n * kva_ld + kv_lora + (c - nope)];
    else v[nh * dv + (c - dqk)] = src[nope + (c - dqk)];
  }
}
template <class T>
__global__ void mla_kv_bwd_kernel(T* dkv, T* dkva, const T* dk, const T* dvv, int64_t N, int H, int nope, int rd,
                                  int dv, int64_t kva_ld, int64_t kv_lora) {
  const int64_t dqk = nope + rd, width = int64_t(H) * (nope + dv) + rd;  // dkv row, then the shared rope key
  UM_GRID_LOOP(i, N * width) {
    const int64_t n = i / width, c = i % width;
    if (c < int64_t(H) * (nope + dv)) {
      const int64_t h = c / (nope + dv), j = c % (nope + dv);
      dkv[n * H * (nope + dv) + c] = j < nope ? dk[(n * H + h) * dqk + j] : dvv[(n * H + h) * dv + (j - nope)];
    } else {
      const int64_t j = c - int64_t(H) * (nope + dv);
      float s = 0.f;
      for (int h = 0; h < H; ++h) s += ld(dk[(n * H + h) * dqk + nope + j]);
      dkva[n * kva_ld + kv_lora + j] = st<T>(s);
    }
  }
}
template <class T>
void mla_kv_assemble_forward(T* k, T* v, const T* kv, const T* kva, int64_t N, int H, int nope, int rd, int dv,
                             int64_t kva_ld, int64_t kv_lora, const Ctx& ctx) {
  const int64_t n = N * H * (nope + rd + dv);
  if (n == 0) return;
  UM_LAUNCH(mla_kv_fwd_kernel<dev_t<T>>, grid_for(n), kThreads, 0, stream_of(ctx), dev(k), dev(v), dev(kv),
            dev(kva), N, H, nope, rd, dv, kva_ld, kv_lora);
  check_launch("mla_kv_fwd_kernel");
}
template <class T>
void mla_kv_assemble_backward(T* dkv, T* dkva, const T* dk, const T* dv, int64_t N, int H, int nope, int rd,
                              int dv_dim, int64_t kva_ld, int64_t kv_lora, const Ctx& ctx) {
  const int64_t n = N * (int64_t(H) * (nope + dv_dim) + rd);
  if (n == 0) return;
  UM_LAUNCH(mla_kv_bwd_kernel<dev_t<T>>, grid_for(n), kThreads, 0, stream_of(ctx), dev(dkv), dev(dkva), dev(dk),
            dev(dv), N, H, nope, rd, dv_dim, kva_ld, kv_lora);
  check_launch("mla_kv_bwd_kernel");
}

// ---- MoE row movement (ops/permute.h) ----
template <class T>
__global__ void permute_fwd_kernel(T* xp, const T* x, const int32_t* row_pair, int64_t R, int K, int64_t D) {
  UM_GRID_LOOP(i, R * D) xp[i] = x[int64_t(row_pair[i / D] / K) * D + i % D];
}
template <class T>
__global__ void permute_bwd_kernel(T* dx, const T* dxp, const int32_t* pair_row, int64_t N, int K, int64_t D,
                                   int accumulate) {
  UM_GRID_LOOP(i, N * D) {
    const int64_t t = i / D, d = i % D;
    float s = accumulate ? ld(dx[i]) : 0.f;
    for (int j = 0; j < K; ++j) {
      const int32_t r = pair_row[t * K + j];
      if (r >= 0) s += ld(dxp[int64_t(r) * D + d]);
    }
    dx[i] = st<T>(s);
  }
}
template <class T>
__global__ void combine_fwd_kernel(T* y, const T* yp, const float* gate, const int32_t* pair_row, int64_t N, int K,
                                   int64_t D, int accumulate) {
  UM_GRID_LOOP(i, N * D) {
    const int64_t t = i / D, d = i % D;
    float s = accumulate ? ld(y[i]) : 0.f;
    for (int j = 0; j < K; ++j) {
      const int32_t r = pair_row[t * K + j];
      if (r >= 0) s += gate[t * K + j] * ld(yp[int64_t(r) * D + d]);
    }
    y[i] = st<T>(s);
  }
}
template <class T>
__global__ void combine_bwd_dyp_kernel(T* dyp, const T* dy, const float* gate, const int32_t* pair_row, int64_t N,
                                       int K, int64_t D) {
  UM_GRID_LOOP(i, N * K * D) {
    const int64_t p = i / D, d = i % D;
    const int32_t r = pair_row[p];
    if (r >= 0) dyp[int64_t(r) * D + d] = st<T>(gate[p] * ld(dy[(p / K) * D + d]));
  }
}
// one warp per pair: dgate[p] = dy[t] . yp[row]
template <class T>
__global__ void combine_bwd_dgate_kernel(float* dgate, const T* dy, const T* yp, const int32_t* pair_row, int64_t N,
                                         int K, int64_t D) {
  const int64_t p = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (p >= N * K) return;  // whole warps leave together
  const int32_t r = pair_row[p];
  float s = 0.f;
  if (r >= 0)
    for (int64_t d = lane; d < D; d += 32) s += ld(dy[(p / K) * D + d]) * ld(yp[int64_t(r) * D + d]);
  s = warp_sum(s);
  if (lane == 0) dgate[p] = s;
}
template <class T>
__global__ void gather_kernel(T* dst, const T* src, const int32_t* perm, int64_t n, int64_t D) {
  UM_GRID_LOOP(i, n * D) dst[i] = src[int64_t(perm[i / D]) * D + i % D];
}
template <class T>
__global__ void scatter_kernel(T* dst, const T* src, const int32_t* perm, int64_t n, int64_t D) {
  UM_GRID_LOOP(i, n * D) dst[int64_t(perm[i / D]) * D + i % D] = src[i];
}

template <class T>
void permute_rows_forward(T* xp, const T* x, const int32_t* row_pair, int64_t R, int K, int64_t D, const Ctx& ctx) {
  if (R * D == 0) return;
  UM_LAUNCH(permute_fwd_kernel<dev_t<T>>, grid_for(R * D), kThreads, 0, stream_of(ctx), dev(xp), dev(x), row_pair,
            R, K, D);
  check_launch("permute_fwd_kernel");
}
template <class T>
void permute_rows_backward(T* dx, const T* dxp, const int32_t* pair_row, int64_t N, int K, int64_t D,
                           bool accumulate, const Ctx& ctx) {
  if (N * D == 0) return;
  UM_LAUNCH(permute_bwd_kernel<dev_t<T>>, grid_for(N * D), kThreads, 0, stream_of(ctx), dev(dx), dev(dxp), pair_row,
            N, K, D, int(accumulate));
  check_launch("permute_bwd_kernel");
}
template <class T>
void combine_rows_forward(T* y, const T* yp, const float* gate, const int32_t* pair_row, int64_t N, int K, int64_t D,
                          bool accumulate, const Ctx& ctx) {
  if (N * D == 0) return;
  UM_LAUNCH(combine_fwd_kernel<dev_t<T>>, grid_for(N * D), kThreads, 0, stream_of(ctx), dev(y), dev(yp), gate,
            pair_row, N, K, D, int(accumulate));
  check_launch("combine_fwd_kernel");
}
template <class T>
void combine_rows_backward(T* dyp, float* dgate, const T* dy, const T* yp, const float* gate, const int32_t* pair_row,
                           int64_t N, int K, int64_t D, const Ctx& ctx) {
  if (N * K == 0) return;
  UM_LAUNCH(combine_bwd_dyp_kernel<dev_t<T>>, grid_for(N * K * D), kThreads, 0, stream_of(ctx), dev(dyp), dev(dy),
            gate, pair_row, N, K, D);
  check_launch("combine_bwd_dyp_kernel");
  UM_LAUNCH(combine_bwd_dgate_kernel<dev_t<T>>, blocks_for(N * K, kThreads / 32), kThreads, 0, stream_of(ctx), dgate,
            dev(dy), dev(yp), pair_row, N, K, D);
  check_launch("combine_bwd_dgate_kernel");
}
template <class T>
void gather_rows(T* dst, const T* src, const int32_t* perm, int64_t n, int64_t D, const Ctx& ctx) {
  if (n * D == 0) return;
  UM_LAUNCH(gather_kernel<dev_t<T>>, grid_for(n * D), kThreads, 0, stream_of(ctx), dev(dst), dev(src), perm, n, D);
  check_launch("gather_kernel");
}
template <class T>
void scatter_rows(T* dst, const T* src, const int32_t* perm, int64_t n, int64_t D, const Ctx& ctx) {
  if (n * D == 0) return;
  UM_LAUNCH(scatter_kernel<dev_t<T>>, grid_for(n * D), kThreads, 0, stream_of(ctx), dev(dst), dev(src), perm, n, D);
  check_launch("scatter_kernel");
}

template <class T>
void register_types(OpTable<T>& t) {
  t.swiglu_forward = &swiglu_forward<T>;
  t.swiglu_backward = &swiglu_backward<T>;
  t.rope_forward = &rope_forward<T>;
  t.rope_backward = &rope_backward<T>;
  t.embedding_forward = &embedding_forward<T>;
  t.embedding_backward = &embedding_backward<T>;
  t.add_inplace = &add_inplace<T>;
  t.copy_rows = &copy_rows<T>;
  t.cast_to_acc = &cast_to_acc<T>;
  t.cast_from_acc = &cast_from_acc<T>;
  t.fill = &fill<T>;
  t.mla_kv_assemble_forward = &mla_kv_assemble_forward<T>;
  t.mla_kv_assemble_backward = &mla_kv_assemble_backward<T>;
  t.permute_rows_forward = &permute_rows_forward<T>;
  t.permute_rows_backward = &permute_rows_backward<T>;
  t.combine_rows_forward = &combine_rows_forward<T>;
  t.combine_rows_backward = &combine_rows_backward<T>;
  t.gather_rows = &gather_rows<T>;
  t.scatter_rows = &scatter_rows<T>;
}

}  // namespace

void register_elementwise(Backend& b) {
  register_types(b.f32);
  register_types(b.b16);
}

}  // namespace um::cuda
