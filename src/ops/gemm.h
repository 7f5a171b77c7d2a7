// Row-major GEMM on the CPU through BLAS (OpenBLAS, OpenMP build):
//   C (M,N) = alpha * op(A) * op(B) + beta * C,   op(X) = X or X^T
// lda/ldb/ldc are row strides in elements. f32 is the compute path (sgemm); f64 runs dgemm and is
// used by references and tests. Called outside an OpenMP region, BLAS uses all threads; called
// inside one, the OpenMP build of OpenBLAS runs single-threaded, so nothing oversubscribes.
#pragma once

#include <cstdint>

namespace um {

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// Which OpenBLAS build is linked: "openmp", "pthread" or "sequential".
const char* blas_parallel_kind();
int blas_num_threads();

}  // namespace um
