#include "ops/gemm.h"

#include <cblas.h>

#include "ops/backend.h"

namespace um {

namespace cpu {

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                  const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                  double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
}

// The table entries (on the CPU acc_t<T> = T, so gemm_acc is gemm).
template <class T>
void gemm_entry(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const T* A,
                int64_t lda, const T* B, int64_t ldb, double beta, T* C, int64_t ldc, const Ctx&) {
  gemm<T>(ta, tb, M, N, K, T(alpha), A, lda, B, ldb, T(beta), C, ldc);
}

void register_gemm(Backend& b) {
  b.f32.gemm = b.f32.gemm_acc = &gemm_entry<float>;
  b.f64.gemm = b.f64.gemm_acc = &gemm_entry<double>;
}

}  // namespace cpu

template <class T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, double beta, T* C, int64_t ldc, const Ctx& ctx) {
  UM_OP(gemm, T, ctx)(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ctx);
}

template <class T>
void gemm_acc(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const T* A,
              int64_t lda, const T* B, int64_t ldb, double beta, acc_t<T>* C, int64_t ldc,
              const Ctx& ctx) {
  UM_OP(gemm_acc, T, ctx)(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ctx);
}

UM_INSTANTIATE_OP(gemm)
UM_INSTANTIATE_OP(gemm_acc)

const char* blas_parallel_kind() {
  switch (openblas_get_parallel()) {
    case 0: return "sequential";
    case 1: return "pthread";
    case 2: return "openmp";
  }
  return "unknown";
}

int blas_num_threads() { return openblas_get_num_threads(); }

}  // namespace um
