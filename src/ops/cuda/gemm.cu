// GEMMs on CUDA through cuBLAS (ops/gemm.h, ops/grouped_gemm.h). Row-major C = op(A) op(B) is
// computed as the column-major C^T = op(B)^T op(A)^T, so no data is transposed. f32: FP32 compute
// (no TF32: the f32 path exists to check the kernels against the CPU at float tolerance); bf16:
// tensor cores with FP32 accumulation, C in bf16 (gemm) or f32 (gemm_acc, parameter gradients).
// The grouped GEMM of the experts is one cublasGemmGroupedBatchedEx call; if the library refuses
// the type combination it falls back, once and visibly, to one GEMM per group.
#include <cstdio>

#include "ops/backend.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/blas.h"
#include "ops/cuda/context.h"

namespace um::cuda {
namespace {

template <class T> cudaDataType_t data_type();
template <> cudaDataType_t data_type<float>() { return CUDA_R_32F; }
template <> cudaDataType_t data_type<bf16>() { return CUDA_R_16BF; }

template <class T> constexpr int type_index() { return std::is_same_v<T, bf16> ? 1 : 0; }

// C = beta * C for a K = 0 product (no term to add)
template <class C>
__global__ void scale_rows_kernel(C* c, int64_t ldc, int64_t M, int64_t N, float beta) {
  UM_GRID_LOOP(i, M * N) {
    C* p = c + (i / N) * ldc + i % N;
    *p = st<C>(beta == 0.f ? 0.f : beta * ld(*p));
  }
}

}  // namespace

template <class T, class TC>
void gemm_rm(const Ctx& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const T* A,
             int64_t lda, const T* B, int64_t ldb, float beta, TC* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    UM_LAUNCH(scale_rows_kernel<dev_t<TC>>, grid_for(M * N), 256, 0, stream_of(ctx), dev(C), ldc, M, N, beta);
    check_launch("scale_rows_kernel");
    return;
  }
  check_blas(cublasGemmEx(state_of(ctx).blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                          int(N), int(M), int(K), &alpha, B, data_type<T>(), int(ldb), A, data_type<T>(),
                          int(lda), &beta, C, data_type<TC>(), int(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx");
}
template void gemm_rm<float, float>(const Ctx&, bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                                    const float*, int64_t, float, float*, int64_t);
template void gemm_rm<bf16, bf16>(const Ctx&, bool, bool, int64_t, int64_t, int64_t, float, const bf16*, int64_t,
                                  const bf16*, int64_t, float, bf16*, int64_t);
template void gemm_rm<bf16, float>(const Ctx&, bool, bool, int64_t, int64_t, int64_t, float, const bf16*, int64_t,
                                   const bf16*, int64_t, float, float*, int64_t);

namespace {

template <class T>
void gemm_entry(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const T* A, int64_t lda,
                const T* B, int64_t ldb, double beta, T* C, int64_t ldc, const Ctx& ctx) {
  gemm_rm<T, T>(ctx, ta, tb, M, N, K, float(alpha), A, lda, B, ldb, float(beta), C, ldc);
}

template <class T>
void gemm_acc_entry(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const T* A, int64_t lda,
                    const T* B, int64_t ldb, double beta, acc_t<T>* C, int64_t ldc, const Ctx& ctx) {
  gemm_rm<T, acc_t<T>>(ctx, ta, tb, M, N, K, float(alpha), A, lda, B, ldb, float(beta), C, ldc);
}

// One product of a grouped call, row-major.
struct Problem {
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  const void *A, *B;
  void* C;
  float beta;
};

// Runs the problems as one cuBLAS grouped GEMM (each its own group of size 1), or one GEMM each
// when cuBLAS does not support the types.
template <class T, class TC>
void grouped(const Ctx& ctx, const std::vector<Problem>& probs) {
  if (probs.empty()) return;
  State& s = state_of(ctx);
  int& ok = s.grouped_ok[type_index<T>()][std::is_same_v<T, TC> ? 0 : 1];
  if (ok >= 0) {
    const size_t G = probs.size();
    s.g_int.resize(7 * G);
    s.g_float.resize(2 * G);
    s.g_ptr.resize(3 * G);
    s.g_op.resize(2 * G);
    int *m = s.g_int.data(), *n = m + G, *k = n + G, *lda = k + G, *ldb = lda + G, *ldc = ldb + G,
        *size = ldc + G;
    float *alpha = s.g_float.data(), *beta = alpha + G;
    for (size_t i = 0; i < G; ++i) {  // column-major: C^T = op(B)^T op(A)^T
      const Problem& p = probs[i];
      s.g_op[i] = p.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
      s.g_op[G + i] = p.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
      m[i] = int(p.N), n[i] = int(p.M), k[i] = int(p.K);
      lda[i] = int(p.ldb), ldb[i] = int(p.lda), ldc[i] = int(p.ldc);
      size[i] = 1;
      alpha[i] = 1.f, beta[i] = p.beta;
      s.g_ptr[i] = p.B, s.g_ptr[G + i] = p.A, s.g_ptr[2 * G + i] = p.C;
    }
    // the pointer arrays live in device memory: staged through the pinned ring into scratch
    void** dptr = ctx.scratch<void*>(3 * G);
    upload_async(ctx, dptr, s.g_ptr.data(), sizeof(void*) * 3 * G);
    const cublasStatus_t st = cublasGemmGroupedBatchedEx(
        s.blas, s.g_op.data(), s.g_op.data() + G, m, n, k, alpha, const_cast<const void* const*>(dptr),
        data_type<T>(), lda, const_cast<const void* const*>(dptr + G), data_type<T>(), ldb, beta, dptr + 2 * G,
        data_type<TC>(), ldc, int(G), size, CUBLAS_COMPUTE_32F);
    if (st == CUBLAS_STATUS_SUCCESS) {
      ok = 1;
      return;
    }
    UM_CHECK(ok == 0 && (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE), "cublas",
             "cublasGemmGroupedBatchedEx: status ", int(st));
    ok = -1;
    std::fprintf(stderr, "ultramoe: cuBLAS grouped GEMM does not take %s -> %s (status %d); using one GEMM per expert\n",
                 std::is_same_v<T, bf16> ? "bf16" : "f32", std::is_same_v<TC, float> ? "f32" : "bf16", int(st));
  }
  for (const Problem& p : probs)
    gemm_rm<T, TC>(ctx, p.ta, p.tb, p.M, p.N, p.K, 1.f, static_cast<const T*>(p.A), p.lda,
                   static_cast<const T*>(p.B), p.ldb, p.beta, static_cast<TC*>(p.C), p.ldc);
}

template <class T>
void grouped_linear_forward(T* Y, const T* X, int64_t ldx, const T* W, int64_t w_stride, const int32_t* offsets,
                            int64_t n_groups, int64_t n_in, int64_t n_out, const Ctx& ctx) {
  std::vector<Problem> probs;
  probs.reserve(size_t(n_groups));
  for (int64_t e = 0; e < n_groups; ++e) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    probs.push_back({false, true, n, n_out, n_in, ldx, n_in, n_out, X + r0 * ldx, W + e * w_stride, Y + r0 * n_out, 0.f});
  }
  grouped<T, T>(ctx, probs);
}

template <class T>
void grouped_linear_backward(T* dX, acc_t<T>* dW, const T* dY, const T* X, int64_t ldx, const T* W,
                             int64_t w_stride, const int32_t* offsets, int64_t n_groups, int64_t n_in,
                             int64_t n_out, const Ctx& ctx) {
  std::vector<Problem> dx, dw;
  for (int64_t e = 0; e < n_groups; ++e) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    if (dX)  // dX_e (n, n_in) = dY_e W_e
      dx.push_back({false, false, n, n_in, n_out, n_out, n_in, ldx, dY + r0 * n_out, W + e * w_stride, dX + r0 * ldx, 0.f});
    if (dW)  // dW_e (n_out, n_in) += dY_e^T X_e
      dw.push_back({true, false, n_out, n_in, n, n_out, ldx, n_in, dY + r0 * n_out, X + r0 * ldx, dW + e * w_stride, 1.f});
  }
  grouped<T, T>(ctx, dx);
  grouped<T, acc_t<T>>(ctx, dw);
}

}  // namespace

void register_gemm(Backend& b) {
  b.f32.gemm = &gemm_entry<float>;
  b.f32.gemm_acc = &gemm_acc_entry<float>;
  b.b16.gemm = &gemm_entry<bf16>;
  b.b16.gemm_acc = &gemm_acc_entry<bf16>;
  b.f32.grouped_linear_forward = &grouped_linear_forward<float>;
  b.f32.grouped_linear_backward = &grouped_linear_backward<float>;
  b.b16.grouped_linear_forward = &grouped_linear_forward<bf16>;
  b.b16.grouped_linear_backward = &grouped_linear_backward<bf16>;
}

}  // namespace um::cuda
