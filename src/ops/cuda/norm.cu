// RMSNorm on CUDA (ops/rmsnorm.h): one block per row; statistics in f32. The gain gradient is a
// column reduction done in two fixed passes (per 64-row block partial sums, then the blocks in
// order), so it is run-to-run identical without atomics.
#include "ops/backend.h"
#include "ops/cuda/common.cuh"

namespace um::cuda {
namespace {

constexpr int kRowBlock = 64;

inline int row_threads(int64_t D) { return D >= 1024 ? 256 : (D >= 256 ? 128 : 64); }

template <class T>
__global__ void rmsnorm_fwd_kernel(T* y, int64_t ldy, float* rstd, const T* x, int64_t ldx, const float* g,
                                   int64_t D, float eps) {
  __shared__ float red[32];
  const int64_t n = blockIdx.x;
  const T* xr = x + n * ldx;
  T* yr = y + n * ldy;
  float ss = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float v = ld(xr[d]);
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float r = 1.f / sqrtf(ss / float(D) + eps);
  if (threadIdx.x == 0) rstd[n] = r;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) yr[d] = st<T>(g[d] * (ld(xr[d]) * r));
}

template <class T>
__global__ void rmsnorm_bwd_dx_kernel(T* dx, int64_t lddx, const T* dy, int64_t lddy, const T* x, int64_t ldx,
                                      const float* g, const float* rstd, int64_t D, int accumulate) {
  __shared__ float red[32];
  const int64_t n = blockIdx.x;
  const T* xr = x + n * ldx;
  const T* dyr = dy + n * lddy;
  T* dxr = dx + n * lddx;
  const float r = rstd[n];
  float dot = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dot += ld(dyr[d]) * g[d] * ld(xr[d]);
  dot = block_sum(dot, red);
  const float c = dot * r * r / float(D);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float v = r * (ld(dyr[d]) * g[d] - ld(xr[d]) * c);
    dxr[d] = st<T>(accumulate ? ld(dxr[d]) + v : v);
  }
}

// partial[b, d] = sum over rows of block b of dy * x * rstd
template <class T>
__global__ void rmsnorm_dg_partial_kernel(float* partial, const T* dy, int64_t lddy, const T* x, int64_t ldx,
                                          const float* rstd, int64_t N, int64_t D) {
  const int64_t d = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const int64_t b = blockIdx.x, n0 = b * kRowBlock, n1 = n0 + kRowBlock < N ? n0 + kRowBlock : N;
  float acc = 0.f;
  for (int64_t n = n0; n < n1; ++n) acc += ld(dy[n * lddy + d]) * ld(x[n * ldx + d]) * rstd[n];
  partial[b * D + d] = acc;
}

__global__ void column_sum_kernel(float* out, const float* partial, int64_t n_blocks, int64_t D) {
  UM_GRID_LOOP(d, D) {
    float s = 0.f;
    for (int64_t b = 0; b < n_blocks; ++b) s += partial[b * D + d];
    out[d] += s;
  }
}

template <class T>
void rmsnorm_forward(T* y, int64_t ldy, float* rstd, const T* x, int64_t ldx, const float* g, int64_t N,
                     int64_t D, double eps, const Ctx& ctx) {
  if (N == 0) return;
  UM_LAUNCH(rmsnorm_fwd_kernel<dev_t<T>>, unsigned(N), row_threads(D), 0, stream_of(ctx), dev(y), ldy, rstd,
            dev(x), ldx, g, D, float(eps));
  check_launch("rmsnorm_fwd_kernel");
}

template <class T>
void rmsnorm_backward(T* dx, int64_t lddx, float* dg, const T* dy, int64_t lddy, const T* x, int64_t ldx,
                      const float* g, const float* rstd, int64_t N, int64_t D, bool accumulate_dx, const Ctx& ctx) {
  if (N == 0) return;
  if (dx) {
    UM_LAUNCH(rmsnorm_bwd_dx_kernel<dev_t<T>>, unsigned(N), row_threads(D), 0, stream_of(ctx), dev(dx), lddx,
              dev(dy), lddy, dev(x), ldx, g, rstd, D, int(accumulate_dx));
    check_launch("rmsnorm_bwd_dx_kernel");
  }
  if (dg) {
    const int64_t n_blocks = (N + kRowBlock - 1) / kRowBlock;
    float* partial = ctx.scratch<float>(size_t(n_blocks * D));
    UM_LAUNCH(rmsnorm_dg_partial_kernel<dev_t<T>>, dim3(unsigned(n_blocks), blocks_for(D, 128)), 128, 0,
              stream_of(ctx), partial, dev(dy), lddy, dev(x), ldx, rstd, N, D);
    check_launch("rmsnorm_dg_partial_kernel");
    UM_LAUNCH(column_sum_kernel, grid_for(D), 256, 0, stream_of(ctx), dg, partial, n_blocks, D);
    check_launch("column_sum_kernel");
  }
}

}  // namespace

void register_rmsnorm(Backend& b) {
  b.f32.rmsnorm_forward = &rmsnorm_forward<float>;
  b.f32.rmsnorm_backward = &rmsnorm_backward<float>;
  b.b16.rmsnorm_forward = &rmsnorm_forward<bf16>;
  b.b16.rmsnorm_backward = &rmsnorm_backward<bf16>;
}

}  // namespace um::cuda
