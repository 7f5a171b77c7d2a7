// cuBLAS GEMM of the CUDA backend, for kernels files that need a product in the middle of an op
// (the chunked LM head): row-major C (M,N) = alpha op(A) op(B) + beta C with C of type TC
// (T, or f32 for bf16 inputs). Instantiated for (f32, f32), (bf16, bf16), (bf16, f32).
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um::cuda {

template <class T, class TC>
void gemm_rm(const Ctx& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const T* A,
             int64_t lda, const T* B, int64_t ldb, float beta, TC* C, int64_t ldc);

}  // namespace um::cuda
