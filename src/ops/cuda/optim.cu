// The optimizer ops on CUDA (ops/optim.h), on the f32 master buffers: AdamW element-wise, the
// squared gradient norm as a two-pass fixed-order reduction in double (its return is a host
// sync, one per tensor range per step), and the clipping scale.
#include <cmath>

#include "ops/backend.h"
#include "ops/cuda/common.cuh"

namespace um::cuda {
namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per partial sum

__global__ void adamw_kernel(float* p, float* m, float* v, const float* g, int64_t n, float decay, float b1, float b2,
                             float step_size, float sqrt_bc2, float eps) {
  UM_GRID_LOOP(i, n) {
    const float gi = g[i];
    const float pi = p[i] * decay;
    const float mi = b1 * m[i] + (1.f - b1) * gi;
    const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * mi / (sqrtf(vi) / sqrt_bc2 + eps);
  }
}
void adamw_update(float* p, float* m, float* v, const float* g, int64_t n, const AdamWHyper& h, const Ctx& ctx) {
  if (n == 0) return;
  const double bc1 = 1.0 - std::pow(h.beta1, double(h.step)), bc2 = 1.0 - std::pow(h.beta2, double(h.step));
  UM_LAUNCH(adamw_kernel, grid_for(n), 256, 0, stream_of(ctx), p, m, v, g, n, float(1.0 - h.lr * h.weight_decay),
            float(h.beta1), float(h.beta2), float(h.lr / bc1), float(std::sqrt(bc2)), float(h.eps));
  check_launch("adamw_kernel");
}

__global__ void sum_squares_partial_kernel(double* partial, const float* g, int64_t n) {
  __shared__ double red[32];
  const int64_t b = blockIdx.x, a = b * kChunk, e = a + kChunk < n ? a + kChunk : n;
  double s = 0;
  for (int64_t i = a + threadIdx.x; i < e; i += blockDim.x) s += double(g[i]) * double(g[i]);
  s = block_sum(s, red);
  if (threadIdx.x == 0) partial[b] = s;
}
__global__ void sum_partials_kernel(double* out, const double* partial, int64_t n_blocks) {
  __shared__ double red[32];
  double s = 0;
  for (int64_t b = threadIdx.x; b < n_blocks; b += blockDim.x) s += partial[b];
  s = block_sum(s, red);
  if (threadIdx.x == 0) *out = s;
}
double sum_squares(const float* g, int64_t n, const Ctx& ctx) {
  if (n == 0) return 0.0;
  const int64_t n_blocks = (n + kChunk - 1) / kChunk;
  double* partial = ctx.scratch<double>(size_t(n_blocks + 1));
  UM_LAUNCH(sum_squares_partial_kernel, unsigned(n_blocks), 256, 0, stream_of(ctx), partial + 1, g, n);
  check_launch("sum_squares_partial_kernel");
  UM_LAUNCH(sum_partials_kernel, 1, 256, 0, stream_of(ctx), partial, partial + 1, n_blocks);
  check_launch("sum_partials_kernel");
  double total = 0;
  ctx.download(&total, partial, 1);
  return total;
}

__global__ void scale_kernel(float* g, int64_t n, float c) {
  UM_GRID_LOOP(i, n) g[i] *= c;
}
void scale_inplace(float* g, int64_t n, double c, const Ctx& ctx) {
  if (n == 0) return;
  UM_LAUNCH(scale_kernel, grid_for(n), 256, 0, stream_of(ctx), g, n, float(c));
  check_launch("scale_kernel");
}

}  // namespace

void register_optim(Backend& b) {
  b.f32.adamw_update = &adamw_update;
  b.f32.sum_squares = &sum_squares;
  b.f32.scale_inplace = &scale_inplace;
}

}  // namespace um::cuda
