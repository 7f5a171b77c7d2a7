#include "ops/cross_entropy.h"
#include "ops/vmath.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "ops/backend.h"

namespace um {

int64_t ce_chunk_rows(int64_t V) {
  return std::clamp<int64_t>((int64_t{1} << 22) / std::max<int64_t>(V, 1), 16, 4096);
}

namespace cpu {

template <class T>
double lm_head_cross_entropy(T* dh, T* dW, T* logits_out, int32_t* argmax_out, const T* h,
                             const T* W, const int32_t* targets, int64_t N, int64_t D, int64_t V,
                             double scale, const Ctx& ctx) {
  for (int64_t n = 0; n < N; ++n)
    UM_CHECK(targets[n] < V, "cross_entropy", "target id ", targets[n], " at row ", n,
             " is outside the vocabulary of ", V);
  const int64_t C = std::min(ce_chunk_rows(V), std::max<int64_t>(N, 1));
  T* logits = ctx.scratch<T>(static_cast<size_t>(C * V + C * 2));
  double* row_loss = reinterpret_cast<double*>(logits + C * V);  // C doubles fit in 2C T's
  const bool backward = dh != nullptr || dW != nullptr;
  double total = 0;

  for (int64_t n0 = 0; n0 < N; n0 += C) {
    const int64_t nc = std::min(C, N - n0);
    cpu::gemm<T>(false, true, nc, V, D, T(1), h + n0 * D, D, W, D, T(0), logits, V);
    if (logits_out) std::memcpy(logits_out + n0 * V, logits, sizeof(T) * nc * V);

#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(nc * V))
    for (int64_t r = 0; r < nc; ++r) {
      T* row = logits + r * V;
      const int32_t tgt = targets[n0 + r];
      int64_t best = 0;
      T m = row[0];
      for (int64_t j = 1; j < V; ++j)
        if (row[j] > m) m = row[j], best = j;  // strict >: ties go to the lower id
      if (argmax_out) argmax_out[n0 + r] = static_cast<int32_t>(best);
      T l = 0;
#pragma omp simd reduction(+ : l)
      for (int64_t j = 0; j < V; ++j) l += exp_fast(row[j] - m);
      const T lse = m + std::log(l);
      row_loss[r] = tgt >= 0 ? static_cast<double>(lse - row[tgt]) : 0.0;
      if (!backward) continue;
      if (tgt < 0) {
        std::fill(row, row + V, T(0));
        continue;
      }
      const T s = T(scale);
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) row[j] = s * exp_fast(row[j] - lse);
      row[tgt] -= s;
    }
    for (int64_t r = 0; r < nc; ++r) total += row_loss[r];
    if (dh) cpu::gemm<T>(false, false, nc, D, V, T(1), logits, V, W, D, T(0), dh + n0 * D, D);
    if (dW) cpu::gemm<T>(true, false, V, D, nc, T(1), logits, V, h + n0 * D, D, T(1), dW, D);
  }
  return total;
}

void register_cross_entropy(Backend& b) {
  b.f32.lm_head_cross_entropy = &lm_head_cross_entropy<float>;
  b.f64.lm_head_cross_entropy = &lm_head_cross_entropy<double>;
}

}  // namespace cpu

template <class T>
double lm_head_cross_entropy(T* dh, acc_t<T>* dW, T* logits_out, int32_t* argmax_out, const T* h,
                             const T* W, const int32_t* targets, int64_t N, int64_t D, int64_t V,
                             double scale, const Ctx& ctx) {
  return UM_OP(lm_head_cross_entropy, T, ctx)(dh, dW, logits_out, argmax_out, h, W, targets, N, D, V,
                                              scale, ctx);
}

UM_INSTANTIATE_OP(lm_head_cross_entropy)

}  // namespace um
