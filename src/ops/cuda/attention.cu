// Causal attention with document masks on CUDA (ops/attention.h), flash style: a block owns one
// tile of BQ query rows of one (sequence, head), walks the key tiles its documents reach, and keeps
// a running max and sum per row (online softmax), so the (T, T) scores never exist in memory and
// only the log-sum-exp is saved for the backward. Key tiles wholly outside the tile's documents
// are skipped: seg_start is non-decreasing inside a sequence, so the tile's keys are
// [seg_start[q0], q_last].
// Backward, deterministic (no atomics): a dQ kernel per query tile and a dK/dV kernel per key
// tile each recompute the probabilities from the saved log-sum-exp (FlashAttention-2's scheme
// without its atomic dQ), plus a pre-pass for Delta_i = dO_i . O_i.
// Tile products run on tensor cores for bf16 (WMMA 16x16x16, f32 accumulation; head dims are
// zero-padded to multiples of 16 in shared memory) and as plain f32 loops for the f32 path,
// which exists to check the kernels against the CPU at float tolerance. Probabilities are
// rounded to bf16 before the P.V and dS products, as in FlashAttention.
#include <mma.h>

#include <algorithm>
#include <climits>

#include "ops/backend.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/context.h"

namespace um::cuda {
namespace {

constexpr int kThreads = 128;  // 4 warps per block

// ---- tile products in shared memory ----
// C (M x N, f32, row stride ldc) = (or +=) A B, where A(m, k) = a[m*lda + k] (or a[k*lda + m] when
// A_COL) and B(k, n) = b[k*ldb + n] (or b[n*ldb + k] when B_COL). M, N, K multiples of 16 on the
// tensor-core path.
template <class ET, bool A_COL, bool B_COL>
struct TileGemm;

template <bool A_COL, bool B_COL>
struct TileGemm<float, A_COL, B_COL> {
  __device__ static void run(float* C, int ldc, const float* a, int lda, const float* b, int ldb, int M, int N, int K,
                             bool accumulate) {
    for (int i = threadIdx.x; i < M * N; i += blockDim.x) {
      const int m = i / N, n = i % N;
      float s = accumulate ? C[m * ldc + n] : 0.f;
      for (int k = 0; k < K; ++k) s += (A_COL ? a[k * lda + m] : a[m * lda + k]) * (B_COL ? b[n * ldb + k] : b[k * ldb + n]);
      C[m * ldc + n] = s;
    }
  }
};

template <bool A_COL, bool B_COL>
struct TileGemm<__nv_bfloat16, A_COL, B_COL> {
  __device__ static void run(float* C, int ldc, const __nv_bfloat16* a, int lda, const __nv_bfloat16* b, int ldb,
                             int M, int N, int K, bool accumulate) {
    using namespace nvcuda;
    using LA = std::conditional_t<A_COL, wmma::col_major, wmma::row_major>;
    using LB = std::conditional_t<B_COL, wmma::col_major, wmma::row_major>;
    const int warp = threadIdx.x / 32, n_warps = blockDim.x / 32, tn = N / 16;
    for (int t = warp; t < (M / 16) * tn; t += n_warps) {
      const int m0 = (t / tn) * 16, n0 = (t % tn) * 16;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      if (accumulate) wmma::load_matrix_sync(acc, C + m0 * ldc + n0, unsigned(ldc), wmma::mem_row_major);
      else wmma::fill_fragment(acc, 0.f);
      for (int k0 = 0; k0 < K; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LA> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LB> fb;
        wmma::load_matrix_sync(fa, A_COL ? a + k0 * lda + m0 : a + m0 * lda + k0, unsigned(lda));
        wmma::load_matrix_sync(fb, B_COL ? b + n0 * ldb + k0 : b + k0 * ldb + n0, unsigned(ldb));
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(C + m0 * ldc + n0, acc, unsigned(ldc), wmma::mem_row_major);
    }
  }
};

template <bool A_COL, bool B_COL, class ET>
__device__ __forceinline__ void tile_gemm(float* C, int ldc, const ET* a, int lda, const ET* b, int ldb, int M, int N,
                                          int K, bool accumulate) {
  TileGemm<ET, A_COL, B_COL>::run(C, ldc, a, lda, b, ldb, M, N, K, accumulate);
}

template <class ET> __device__ __forceinline__ ET from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// Loads rows [t0, t0 + n_rows) of one head (row t at src + t*ld_row, `cols` valid columns) into
// a shared tile of `cols_p` columns (row stride lds), zero beyond T and beyond cols.
template <class T, class ET>
__device__ void load_tile(ET* dst, int lds, const T* src, int64_t ld_row, int64_t t0, int n_rows, int64_t T_len,
                          int cols, int cols_p) {
  for (int i = threadIdx.x; i < n_rows * cols_p; i += blockDim.x) {
    const int r = i / cols_p, c = i % cols_p;
    const int64_t t = t0 + r;
    dst[r * lds + c] = (t < T_len && c < cols) ? from_f<ET>(ld(src[t * ld_row + c])) : from_f<ET>(0.f);
  }
}

// Shared-memory layout of one kernel: arrays carved in order, each aligned to 128 bytes.
struct Carver {
  char* base;
  size_t at = 0;
  template <class X>
  __device__ __host__ X* take(size_t n) {
    X* p = reinterpret_cast<X*>(base + at);
    at += (n * sizeof(X) + 127) / 128 * 128;
    return p;
  }
};

inline int pad16(int d) { return (d + 15) / 16 * 16; }
// row strides: +8 elements (bf16) / +4 (f32) keep 32-byte alignment of 16-row steps and spread banks
template <class ET> constexpr int kPad = std::is_same_v<ET, float> ? 4 : 8;

struct Dims {
  int64_t T;
  int H, dqk, dv, dqk_p, dv_p;
  float scale;
};

// ---- forward ----
template <class ET, int BQ, int BK>
size_t fwd_smem(const Dims& d) {
  const int ldq = d.dqk_p + kPad<ET>, ldv = d.dv_p + kPad<ET>;
  auto al = [](size_t b) { return (b + 127) / 128 * 128; };
  return al(sizeof(ET) * BQ * ldq) + al(sizeof(ET) * BK * ldq) + al(sizeof(ET) * BK * ldv) +
         al(sizeof(float) * BQ * (BK + 4)) + al(sizeof(ET) * BQ * (BK + kPad<ET>)) +
         al(sizeof(float) * BQ * (d.dv_p + 4)) + 4 * al(sizeof(float) * BQ);
}

template <class T, class ET, int BQ, int BK>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(T* o, float* lse, const T* q, const T* k, const T* v,
                                                            const int32_t* seg_start, Dims d) {
  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t q0 = int64_t(blockIdx.x) * BQ;
  if (q0 >= d.T) return;
  const int ldq = d.dqk_p + kPad<ET>, ldv = d.dv_p + kPad<ET>, lds = BK + 4, ldp = BK + kPad<ET>, ldo = d.dv_p + 4;
  UM_DYNAMIC_SMEM(char, smem);
  Carver cv{smem};
  ET* Qs = cv.take<ET>(size_t(BQ) * ldq);
  ET* Ks = cv.take<ET>(size_t(BK) * ldq);
  ET* Vs = cv.take<ET>(size_t(BK) * ldv);
  float* S = cv.take<float>(size_t(BQ) * lds);
  ET* Ps = cv.take<ET>(size_t(BQ) * ldp);
  float* O = cv.take<float>(size_t(BQ) * ldo);
  float* m = cv.take<float>(BQ);
  float* l = cv.take<float>(BQ);
  float* alpha = cv.take<float>(BQ);
  int* seg = cv.take<int>(BQ);

  const int64_t ldqk = int64_t(d.H) * d.dqk, ldvv = int64_t(d.H) * d.dv;
  const T* qb = q + int64_t(b) * d.T * ldqk + int64_t(h) * d.dqk;
  const T* kb = k + int64_t(b) * d.T * ldqk + int64_t(h) * d.dqk;
  const T* vb = v + int64_t(b) * d.T * ldvv + int64_t(h) * d.dv;
  const int32_t* sb = seg_start + int64_t(b) * d.T;
  load_tile<T, ET>(Qs, ldq, qb, ldqk, q0, BQ, d.T, d.dqk, d.dqk_p);
  for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
    seg[r] = q0 + r < d.T ? sb[q0 + r] : INT_MAX;
    m[r] = -INFINITY, l[r] = 0.f;
  }
  for (int i = threadIdx.x; i < BQ * d.dv_p; i += blockDim.x) O[(i / d.dv_p) * ldo + i % d.dv_p] = 0.f;
  const int64_t q_last = (q0 + BQ < d.T ? q0 + BQ : d.T) - 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, n_warps = blockDim.x / 32;
  for (int64_t k0 = int64_t(sb[q0]) / BK * BK; k0 <= q_last; k0 += BK) {
    __syncthreads();  // the previous tile's K, V and P are no longer read
    load_tile<T, ET>(Ks, ldq, kb, ldqk, k0, BK, d.T, d.dqk, d.dqk_p);
    load_tile<T, ET>(Vs, ldv, vb, ldvv, k0, BK, d.T, d.dv, d.dv_p);
    __syncthreads();
    tile_gemm<false, true>(S, lds, Qs, ldq, Ks, ldq, BQ, BK, d.dqk_p, false);  // S = Q K^T
    __syncthreads();
    for (int r = warp; r < BQ; r += n_warps) {  // online softmax, one warp per row
      const int64_t i = q0 + r;
      float x[BK / 32], mx = -INFINITY;
      for (int c = 0; c < BK / 32; ++c) {
        const int64_t j = k0 + lane + 32 * c;
        const bool valid = i < d.T && j >= seg[r] && j <= i;
        x[c] = valid ? S[r * lds + lane + 32 * c] * d.scale : -INFINITY;
        mx = fmaxf(mx, x[c]);
      }
      mx = warp_max(mx);
      const float m_old = m[r], m_new = fmaxf(m_old, mx);
      float sum = 0.f;
      for (int c = 0; c < BK / 32; ++c) {
        const float p = x[c] == -INFINITY ? 0.f : expf(x[c] - m_new);
        Ps[r * ldp + lane + 32 * c] = from_f<ET>(p);
        sum += p;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float a = m_new == -INFINITY ? 1.f : expf(m_old - m_new);
        alpha[r] = a;
        l[r] = l[r] * a + sum;
        m[r] = m_new;
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < BQ * d.dv_p; i += blockDim.x) O[(i / d.dv_p) * ldo + i % d.dv_p] *= alpha[i / d.dv_p];
    __syncthreads();
    tile_gemm<false, false>(O, ldo, Ps, ldp, Vs, ldv, BQ, d.dv_p, BK, true);  // O += P V
  }
  __syncthreads();
  T* ob = o + int64_t(b) * d.T * ldvv + int64_t(h) * d.dv;
  for (int i = threadIdx.x; i < BQ * d.dv; i += blockDim.x) {
    const int r = i / d.dv, c = i % d.dv;
    if (q0 + r < d.T) ob[(q0 + r) * ldvv + c] = st<T>(O[r * ldo + c] / l[r]);
  }
  for (int r = threadIdx.x; r < BQ; r += blockDim.x)
    if (q0 + r < d.T) lse[(int64_t(b) * d.H + h) * d.T + q0 + r] = m[r] + logf(l[r]);
}

// ---- backward ----
// delta[b, h, t] = dO . O over the head's dv values
template <class T>
__global__ void attn_delta_kernel(float* delta, const T* d_o, const T* o, int64_t B, Dims d) {
  UM_GRID_LOOP(i, B * d.T * d.H) {  // i = (b*T + t)*H + h
    const int64_t bt = i / d.H, h = i % d.H;
    const T* a = d_o + i * d.dv;
    const T* c = o + i * d.dv;
    float s = 0.f;
    for (int x = 0; x < d.dv; ++x) s += ld(a[x]) * ld(c[x]);
    delta[((bt / d.T) * d.H + h) * d.T + bt % d.T] = s;
  }
}

// P (in S, f32) = masked exp(scale S - lse) for the (query tile q0, key tile k0) pair
template <int BQ, int BK>
__device__ void probabilities(float* S, int lds, const int* seg, const float* lse_r, int64_t q0, int64_t k0,
                              int64_t T_len, float scale) {
  for (int i = threadIdx.x; i < BQ * BK; i += blockDim.x) {
    const int r = i / BK, c = i % BK;
    const int64_t qi = q0 + r, j = k0 + c;
    const bool valid = qi < T_len && j >= seg[r] && j <= qi;
    S[r * lds + c] = valid ? expf(S[r * lds + c] * scale - lse_r[r]) : 0.f;
  }
}

template <class ET, int BQ, int BK>
size_t dq_smem(const Dims& d) {
  const int ldq = d.dqk_p + kPad<ET>, ldv = d.dv_p + kPad<ET>;
  auto al = [](size_t b) { return (b + 127) / 128 * 128; };
  return al(sizeof(ET) * BQ * ldq) + al(sizeof(ET) * BQ * ldv) + al(sizeof(ET) * BK * ldq) + al(sizeof(ET) * BK * ldv) +
         2 * al(sizeof(float) * BQ * (BK + 4)) + al(sizeof(ET) * BQ * (BK + kPad<ET>)) +
         al(sizeof(float) * BQ * (d.dqk_p + 4)) + 3 * al(sizeof(float) * BQ);
}

template <class T, class ET, int BQ, int BK>
__global__ void __launch_bounds__(kThreads) attn_dq_kernel(T* dq, const T* d_o, const float* lse, const float* delta,
                                                           const T* q, const T* k, const T* v,
                                                           const int32_t* seg_start, Dims d) {
  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t q0 = int64_t(blockIdx.x) * BQ;
  if (q0 >= d.T) return;
  const int ldq = d.dqk_p + kPad<ET>, ldv = d.dv_p + kPad<ET>, lds = BK + 4, ldp = BK + kPad<ET>, ldg = d.dqk_p + 4;
  UM_DYNAMIC_SMEM(char, smem);
  Carver cv{smem};
  ET* Qs = cv.take<ET>(size_t(BQ) * ldq);
  ET* dOs = cv.take<ET>(size_t(BQ) * ldv);
  ET* Ks = cv.take<ET>(size_t(BK) * ldq);
  ET* Vs = cv.take<ET>(size_t(BK) * ldv);
  float* S = cv.take<float>(size_t(BQ) * lds);
  float* dP = cv.take<float>(size_t(BQ) * lds);
  ET* dSs = cv.take<ET>(size_t(BQ) * ldp);
  float* dQ = cv.take<float>(size_t(BQ) * ldg);
  float* lse_r = cv.take<float>(BQ);
  float* delta_r = cv.take<float>(BQ);
  int* seg = cv.take<int>(BQ);

  const int64_t ldqk = int64_t(d.H) * d.dqk, ldvv = int64_t(d.H) * d.dv, row0 = int64_t(b) * d.T;
  const int64_t stat0 = (int64_t(b) * d.H + h) * d.T;
  const int32_t* sb = seg_start + row0;
  load_tile<T, ET>(Qs, ldq, q + row0 * ldqk + int64_t(h) * d.dqk, ldqk, q0, BQ, d.T, d.dqk, d.dqk_p);
  load_tile<T, ET>(dOs, ldv, d_o + row0 * ldvv + int64_t(h) * d.dv, ldvv, q0, BQ, d.T, d.dv, d.dv_p);
  for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
    const bool in = q0 + r < d.T;
    seg[r] = in ? sb[q0 + r] : INT_MAX;
    lse_r[r] = in ? lse[stat0 + q0 + r] : 0.f;
    delta_r[r] = in ? delta[stat0 + q0 + r] : 0.f;
  }
  for (int i = threadIdx.x; i < BQ * d.dqk_p; i += blockDim.x) dQ[(i / d.dqk_p) * ldg + i % d.dqk_p] = 0.f;
  const int64_t q_last = (q0 + BQ < d.T ? q0 + BQ : d.T) - 1;
  for (int64_t k0 = int64_t(sb[q0]) / BK * BK; k0 <= q_last; k0 += BK) {
    __syncthreads();
    load_tile<T, ET>(Ks, ldq, k + row0 * ldqk + int64_t(h) * d.dqk, ldqk, k0, BK, d.T, d.dqk, d.dqk_p);
    load_tile<T, ET>(Vs, ldv, v + row0 * ldvv + int64_t(h) * d.dv, ldvv, k0, BK, d.T, d.dv, d.dv_p);
    __syncthreads();
    tile_gemm<false, true>(S, lds, Qs, ldq, Ks, ldq, BQ, BK, d.dqk_p, false);    // S = Q K^T
    tile_gemm<false, true>(dP, lds, dOs, ldv, Vs, ldv, BQ, BK, d.dv_p, false);   // dP = dO V^T
    __syncthreads();
    probabilities<BQ, BK>(S, lds, seg, lse_r, q0, k0, d.T, d.scale);
    __syncthreads();
    for (int i = threadIdx.x; i < BQ * BK; i += blockDim.x) {  // dS = P (dP - Delta)
      const int r = i / BK, c = i % BK;
      dSs[r * ldp + c] = from_f<ET>(S[r * lds + c] * (dP[r * lds + c] - delta_r[r]));
    }
    __syncthreads();
    tile_gemm<false, false>(dQ, ldg, dSs, ldp, Ks, ldq, BQ, d.dqk_p, BK, true);  // dQ += dS K
  }
  __syncthreads();
  T* out = dq + row0 * ldqk + int64_t(h) * d.dqk;
  for (int i = threadIdx.x; i < BQ * d.dqk; i += blockDim.x) {
    const int r = i / d.dqk, c = i % d.dqk;
    if (q0 + r < d.T) out[(q0 + r) * ldqk + c] = st<T>(dQ[r * ldg + c] * d.scale);
  }
}

template <class ET, int BQ, int BK>
size_t dkv_smem(const Dims& d) {
  const int ldq = d.dqk_p + kPad<ET>, ldv = d.dv_p + kPad<ET>;
  auto al = [](size_t b) { return (b + 127) / 128 * 128; };
  return al(sizeof(ET) * BK * ldq) + al(sizeof(ET) * BK * ldv) + al(sizeof(ET) * BQ * ldq) + al(sizeof(ET) * BQ * ldv) +
         2 * al(sizeof(float) * BQ * (BK + 4)) + al(sizeof(ET) * BQ * (BK + kPad<ET>)) +
         al(sizeof(float) * BK * (d.dqk_p + 4)) + al(sizeof(float) * BK * (d.dv_p + 4)) + 3 * al(sizeof(float) * BQ);
}

template <class T, class ET, int BQ, int BK>
__global__ void __launch_bounds__(kThreads) attn_dkv_kernel(T* dk, T* dv, const T* d_o, const float* lse,
                                                            const float* delta, const T* q, const T* k, const T* v,
                                                            const int32_t* seg_start, Dims d) {
  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t k0 = int64_t(blockIdx.x) * BK;
  if (k0 >= d.T) return;
  const int ldq = d.dqk_p + kPad<ET>, ldv = d.dv_p + kPad<ET>, lds = BK + 4, ldp = BK + kPad<ET>;
  const int ldk = d.dqk_p + 4, ldw = d.dv_p + 4;
  UM_DYNAMIC_SMEM(char, smem);
  Carver cv{smem};
  ET* Ks = cv.take<ET>(size_t(BK) * ldq);
  ET* Vs = cv.take<ET>(size_t(BK) * ldv);
  ET* Qs = cv.take<ET>(size_t(BQ) * ldq);
  ET* dOs = cv.take<ET>(size_t(BQ) * ldv);
  float* S = cv.take<float>(size_t(BQ) * lds);
  float* dP = cv.take<float>(size_t(BQ) * lds);
  ET* Ps = cv.take<ET>(size_t(BQ) * ldp);  // P, then dS
  float* dK = cv.take<float>(size_t(BK) * ldk);
  float* dV = cv.take<float>(size_t(BK) * ldw);
  float* lse_r = cv.take<float>(BQ);
  float* delta_r = cv.take<float>(BQ);
  int* seg = cv.take<int>(BQ);

  const int64_t ldqk = int64_t(d.H) * d.dqk, ldvv = int64_t(d.H) * d.dv, row0 = int64_t(b) * d.T;
  const int64_t stat0 = (int64_t(b) * d.H + h) * d.T;
  const int32_t* sb = seg_start + row0;
  const T* qb = q + row0 * ldqk + int64_t(h) * d.dqk;
  const T* dob = d_o + row0 * ldvv + int64_t(h) * d.dv;
  load_tile<T, ET>(Ks, ldq, k + row0 * ldqk + int64_t(h) * d.dqk, ldqk, k0, BK, d.T, d.dqk, d.dqk_p);
  load_tile<T, ET>(Vs, ldv, v + row0 * ldvv + int64_t(h) * d.dv, ldvv, k0, BK, d.T, d.dv, d.dv_p);
  for (int i = threadIdx.x; i < BK * d.dqk_p; i += blockDim.x) dK[(i / d.dqk_p) * ldk + i % d.dqk_p] = 0.f;
  for (int i = threadIdx.x; i < BK * d.dv_p; i += blockDim.x) dV[(i / d.dv_p) * ldw + i % d.dv_p] = 0.f;
  const int64_t k_last = (k0 + BK < d.T ? k0 + BK : d.T) - 1;
  // queries that see a key of this tile: from the tile's first key to the end of the last key's
  // document; seg_start is non-decreasing, so stop at the first query tile that starts after it
  for (int64_t q0 = k0 / BQ * BQ; q0 < d.T && sb[q0] <= k_last; q0 += BQ) {
    __syncthreads();
    load_tile<T, ET>(Qs, ldq, qb, ldqk, q0, BQ, d.T, d.dqk, d.dqk_p);
    load_tile<T, ET>(dOs, ldv, dob, ldvv, q0, BQ, d.T, d.dv, d.dv_p);
    for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
      const bool in = q0 + r < d.T;
      seg[r] = in ? sb[q0 + r] : INT_MAX;
      lse_r[r] = in ? lse[stat0 + q0 + r] : 0.f;
      delta_r[r] = in ? delta[stat0 + q0 + r] : 0.f;
    }
    __syncthreads();
    tile_gemm<false, true>(S, lds, Qs, ldq, Ks, ldq, BQ, BK, d.dqk_p, false);   // S = Q K^T
    tile_gemm<false, true>(dP, lds, dOs, ldv, Vs, ldv, BQ, BK, d.dv_p, false);  // dP = dO V^T
    __syncthreads();
    probabilities<BQ, BK>(S, lds, seg, lse_r, q0, k0, d.T, d.scale);
    __syncthreads();
    for (int i = threadIdx.x; i < BQ * BK; i += blockDim.x) Ps[(i / BK) * ldp + i % BK] = from_f<ET>(S[(i / BK) * lds + i % BK]);
    __syncthreads();
    tile_gemm<true, false>(dV, ldw, Ps, ldp, dOs, ldv, BK, d.dv_p, BQ, true);  // dV += P^T dO
    __syncthreads();
    for (int i = threadIdx.x; i < BQ * BK; i += blockDim.x) {  // dS = P (dP - Delta), over P
      const int r = i / BK, c = i % BK;
      Ps[r * ldp + c] = from_f<ET>(S[r * lds + c] * (dP[r * lds + c] - delta_r[r]));
    }
    __syncthreads();
    tile_gemm<true, false>(dK, ldk, Ps, ldp, Qs, ldq, BK, d.dqk_p, BQ, true);  // dK += dS^T Q
  }
  __syncthreads();
  T* dkb = dk + row0 * ldqk + int64_t(h) * d.dqk;
  T* dvb = dv + row0 * ldvv + int64_t(h) * d.dv;
  for (int i = threadIdx.x; i < BK * d.dqk; i += blockDim.x) {
    const int r = i / d.dqk, c = i % d.dqk;
    if (k0 + r < d.T) dkb[(k0 + r) * ldqk + c] = st<T>(dK[r * ldk + c] * d.scale);
  }
  for (int i = threadIdx.x; i < BK * d.dv; i += blockDim.x) {
    const int r = i / d.dv, c = i % d.dv;
    if (k0 + r < d.T) dvb[(k0 + r) * ldvv + c] = st<T>(dV[r * ldw + c]);
  }
}

// ---- launch ----
// f32 tiles of 32 (the checking path); bf16 tiles of 64 rows (keys of the dK/dV kernel: 64, or
// 32 when the head dims need more shared memory than the device gives a block).
template <class Kernel>
void set_smem(Kernel k, size_t bytes, const Ctx& ctx, const char* name) {
  UM_CHECK(bytes <= state_of(ctx).smem_optin, "attention", name, " needs ", bytes,
           " bytes of shared memory for these head dims; the device allows ", state_of(ctx).smem_optin);
  check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), "cudaFuncSetAttribute");
}

template <class T>
Dims dims_of(int64_t T_len, int H, int dqk, int dv, double scale) {
  const bool tc = std::is_same_v<T, bf16>;
  return {T_len, H, dqk, dv, tc ? pad16(dqk) : dqk, tc ? pad16(dv) : dv, float(scale)};
}

template <class T>
void attention_forward(T* o, float* lse, const T* q, const T* k, const T* v, const int32_t* seg_start, int64_t B,
                       int64_t T_len, int H, int dqk, int dv, double scale, const Ctx& ctx) {
  if (B * T_len == 0) return;
  const Dims d = dims_of<T>(T_len, H, dqk, dv, scale);
  using D = dev_t<T>;
  using ET = std::conditional_t<std::is_same_v<T, bf16>, __nv_bfloat16, float>;
  constexpr int BQ = std::is_same_v<T, bf16> ? 64 : 32, BK = BQ;
  const size_t smem = fwd_smem<ET, BQ, BK>(d);
  auto kern = attn_fwd_kernel<D, ET, BQ, BK>;
  set_smem(kern, smem, ctx, "attention forward");
  UM_LAUNCH(kern, dim3(blocks_for(T_len, BQ), unsigned(H), unsigned(B)), kThreads, smem, stream_of(ctx), dev(o), lse,
            dev(q), dev(k), dev(v), seg_start, d);
  check_launch("attn_fwd_kernel");
}

template <class T, class ET, int BQ, int BK>
bool launch_dkv(T* dk, T* dv_out, const T* d_o, const float* lse, const float* delta, const T* q, const T* k,
                const T* v, const int32_t* seg_start, int64_t B, const Dims& d, const Ctx& ctx) {
  const size_t smem = dkv_smem<ET, BQ, BK>(d);
  if (smem > state_of(ctx).smem_optin) return false;
  auto kern = attn_dkv_kernel<dev_t<T>, ET, BQ, BK>;
  set_smem(kern, smem, ctx, "attention dK/dV");
  UM_LAUNCH(kern, dim3(blocks_for(d.T, BK), unsigned(d.H), unsigned(B)), kThreads, smem, stream_of(ctx), dev(dk),
            dev(dv_out), dev(d_o), lse, delta, dev(q), dev(k), dev(v), seg_start, d);
  check_launch("attn_dkv_kernel");
  return true;
}

template <class T>
void attention_backward(T* dq, T* dk, T* dv_out, const T* d_o, const T* o, const float* lse, const T* q, const T* k,
                        const T* v, const int32_t* seg_start, int64_t B, int64_t T_len, int H, int dqk, int dv,
                        double scale, const Ctx& ctx) {
  if (B * T_len == 0) return;
  const Dims d = dims_of<T>(T_len, H, dqk, dv, scale);
  using D = dev_t<T>;
  using ET = std::conditional_t<std::is_same_v<T, bf16>, __nv_bfloat16, float>;
  constexpr int BQ = std::is_same_v<T, bf16> ? 64 : 32, BK = BQ;
  float* delta = ctx.scratch<float>(size_t(B * H * T_len));
  UM_LAUNCH(attn_delta_kernel<D>, grid_for(B * T_len * H), 256, 0, stream_of(ctx), delta, dev(d_o), dev(o), B, d);
  check_launch("attn_delta_kernel");
  const size_t smem = dq_smem<ET, BQ, BK>(d);
  auto kern = attn_dq_kernel<D, ET, BQ, BK>;
  set_smem(kern, smem, ctx, "attention dQ");
  UM_LAUNCH(kern, dim3(blocks_for(T_len, BQ), unsigned(H), unsigned(B)), kThreads, smem, stream_of(ctx), dev(dq),
            dev(d_o), lse, delta, dev(q), dev(k), dev(v), seg_start, d);
  check_launch("attn_dq_kernel");
  if (!launch_dkv<T, ET, BQ, BK>(dk, dv_out, d_o, lse, delta, q, k, v, seg_start, B, d, ctx))
    UM_CHECK((launch_dkv<T, ET, BQ, BK / 2>(dk, dv_out, d_o, lse, delta, q, k, v, seg_start, B, d, ctx)), "attention",
             "dK/dV needs more shared memory than the device gives a block (dqk ", dqk, ", dv ", dv, ")");
}

}  // namespace

void register_attention(Backend& b) {
  b.f32.attention_forward = &attention_forward<float>;
  b.f32.attention_backward = &attention_backward<float>;
  b.b16.attention_forward = &attention_forward<bf16>;
  b.b16.attention_backward = &attention_backward<bf16>;
}

}  // namespace um::cuda
