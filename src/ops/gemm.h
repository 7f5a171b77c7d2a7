// Row-major GEMM:  C (M,N) = alpha * op(A) * op(B) + beta * C,   op(X) = X or X^T
// lda/ldb/ldc are row strides in elements. gemm writes C in T; gemm_acc writes C in acc_t<T>
// (for parameter gradients: bf16 inputs, f32 accumulate and f32 output).
//   cpu:  BLAS (OpenBLAS, OpenMP build): sgemm for f32, dgemm for f64 (references and tests).
//         Called outside an OpenMP region BLAS uses all threads; inside one, the OpenMP build of
//         OpenBLAS runs single-threaded, so nothing oversubscribes.
//   cuda: cuBLAS (f32: FP32 compute; bf16: tensor cores with FP32 accumulation).
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, double beta, T* C, int64_t ldc, const Ctx& ctx);

template <class T>
void gemm_acc(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
              const T* A, int64_t lda, const T* B, int64_t ldb, double beta, acc_t<T>* C,
              int64_t ldc, const Ctx& ctx);

namespace cpu {
// The BLAS call itself, for CPU ops that run GEMMs inside their own threading.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);
}  // namespace cpu

// Which OpenBLAS build is linked: "openmp", "pthread" or "sequential".
const char* blas_parallel_kind();
int blas_num_threads();

}  // namespace um
