// The fused LM head + cross-entropy on CUDA (ops/cross_entropy.h), chunked over rows so the
// (N, V) logits never exist at once: per chunk, the logits in f32 from one cuBLAS GEMM (bf16
// inputs, f32 output), one block per row for max / argmax / log-sum-exp / loss and the gradient
// rows dl = scale (softmax - onehot) in T, then dh = dl W and dW += dl^T h (f32) as two GEMMs.
// Row losses are summed in a fixed order on the device and read back once per call.
#include "ops/backend.h"
#include "ops/cuda/blas.h"
#include "ops/cuda/common.cuh"

namespace um::cuda {
namespace {

// About 64M logits per chunk: large GEMMs, bounded scratch (256 MiB of f32 logits).
int64_t gpu_chunk_rows(int64_t V) {
  const int64_t c = (int64_t{1} << 26) / (V > 0 ? V : 1);
  return c < 16 ? 16 : (c > 8192 ? 8192 : c);
}

template <class T>
__global__ void ce_rows_kernel(T* dl, T* logits_out, int32_t* argmax_out, double* row_loss, const float* logits,
                               const int32_t* targets, int64_t V, float scale, int backward) {
  __shared__ float red[32];
  __shared__ int red_i[32];
  const int64_t r = blockIdx.x;
  const float* row = logits + r * V;
  const int32_t tgt = targets[r];
  // read before anyone writes: with T = f32 the gradient rows overwrite the logits in place
  const float x_tgt = threadIdx.x == 0 && tgt >= 0 ? row[tgt] : 0.f;
  // max and argmax (ties: the lower id)
  float m = -INFINITY;
  int best = 0x7fffffff;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float x = row[j];
    if (x > m || (x == m && int(j) < best)) m = x, best = int(j);
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, m, o);
    const int ob = __shfl_xor_sync(0xffffffffu, best, o);
    if (om > m || (om == m && ob < best)) m = om, best = ob;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  if (lane == 0) red[warp] = m, red_i[warp] = best;
  __syncthreads();
  m = -INFINITY, best = 0x7fffffff;
  for (int w = 0; w < n_warps; ++w)
    if (red[w] > m || (red[w] == m && red_i[w] < best)) m = red[w], best = red_i[w];
  float l = 0.f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) l += expf(row[j] - m);
  l = block_sum(l, red);
  const float lse = m + logf(l);
  if (threadIdx.x == 0) {
    row_loss[r] = tgt >= 0 ? double(lse - x_tgt) : 0.0;
    if (argmax_out) argmax_out[r] = best;
  }
  if (logits_out)
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) logits_out[r * V + j] = st<T>(row[j]);
  if (!backward) return;
  T* out = dl + r * V;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float g = tgt < 0 ? 0.f : scale * expf(row[j] - lse) - (j == tgt ? scale : 0.f);
    out[j] = st<T>(g);
  }
}

__global__ void sum_rows_kernel(double* out, const double* rows, int64_t n) {
  __shared__ double red[32];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += rows[i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) *out = s;
}

template <class T>
double lm_head_cross_entropy(T* dh, float* dW, T* logits_out, int32_t* argmax_out, const T* h, const T* W,
                             const int32_t* targets, int64_t N, int64_t D, int64_t V, double scale, const Ctx& ctx) {
  if (N == 0) return 0.0;
  const bool backward = dh != nullptr || dW != nullptr;
  const int64_t C = std::min(gpu_chunk_rows(V), N);
  // scratch: f32 logits (C, V) | dl in T (C, V), unless T is f32 (then dl overwrites the logits) |
  // row losses (N) | the total
  const size_t logit_bytes = size_t(C * V) * sizeof(float), dl_bytes = std::is_same_v<T, float> ? 0 : size_t(C * V) * sizeof(T);
  char* base = ctx.scratch<char>(logit_bytes + dl_bytes + size_t(N + 1) * sizeof(double) + 64);
  float* logits = reinterpret_cast<float*>(base);
  T* dl = dl_bytes ? reinterpret_cast<T*>(base + logit_bytes) : reinterpret_cast<T*>(logits);
  double* row_loss = reinterpret_cast<double*>(base + (logit_bytes + dl_bytes + 63) / 64 * 64);
  double* total = row_loss + N;
  for (int64_t n0 = 0; n0 < N; n0 += C) {
    const int64_t nc = std::min(C, N - n0);
    gemm_rm<T, float>(ctx, false, true, nc, V, D, 1.f, h + n0 * D, D, W, D, 0.f, logits, V);
    UM_LAUNCH(ce_rows_kernel<dev_t<T>>, unsigned(nc), 256, 0, stream_of(ctx), dev(dl),
              logits_out ? dev(logits_out + n0 * V) : nullptr, argmax_out ? argmax_out + n0 : nullptr, row_loss + n0,
              logits, targets + n0, V, float(scale), int(backward));
    check_launch("ce_rows_kernel");
    if (dh) gemm_rm<T, T>(ctx, false, false, nc, D, V, 1.f, dl, V, W, D, 0.f, dh + n0 * D, D);
    if (dW) gemm_rm<T, float>(ctx, true, false, V, D, nc, 1.f, dl, V, h + n0 * D, D, 1.f, dW, D);
  }
  UM_LAUNCH(sum_rows_kernel, 1, 256, 0, stream_of(ctx), total, row_loss, N);
  check_launch("sum_rows_kernel");
  double result = 0;
  ctx.download(&result, total, 1);
  return result;
}

}  // namespace

void register_cross_entropy(Backend& b) {
  b.f32.lm_head_cross_entropy = &lm_head_cross_entropy<float>;
  b.b16.lm_head_cross_entropy = &lm_head_cross_entropy<bf16>;
}

}  // namespace um::cuda
