// cuda-emu's cuBLAS: the GEMMs of cublas_v2.h on the CPU. Each GEMM copies the referenced part
// of A, B (and C if beta != 0) into dense float (double for 64F) column-major temporaries —
// bf16 widened exactly —, calls OpenBLAS's sgemm (dgemm), and writes C back, rounding once to
// C's type; elements outside the m x n region of C, such as the padding between columns when
// ldc > m, are never written. Before computing, every matrix and pointer array must lie inside
// one live device allocation; a violation is reported and the call returns
// CUBLAS_STATUS_EXECUTION_FAILED, as a GPU's illegal address would fail the kernel.

#include <cblas.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <set>
#include <vector>

#include "internal.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

using um_emu::detail::report;

std::mutex g_mutex;
std::set<const cublasContext*> g_handles;

// One GEMM of a call: C (m x n) = alpha op(A) op(B) + beta C, all column-major.
struct Gemm {
  cublasOperation_t transa, transb;
  int m, n, k;
  const void* A;
  int lda;
  const void* B;
  int ldb;
  void* C;
  int ldc;
};

struct Types {
  cudaDataType a, b, c;
  cublasComputeType_t compute;
};

bool is_transposed(cublasOperation_t op) { return op != CUBLAS_OP_N; }  // C is T for reals

size_t element_size(cudaDataType type) {
  switch (type) {
    case CUDA_R_16BF: return 2;
    case CUDA_R_32F: return 4;
    case CUDA_R_64F: return 8;
    default: return 0;
  }
}

bool is_supported(const Types& t) {
  const bool compute_32f =
      t.compute == CUBLAS_COMPUTE_32F || t.compute == CUBLAS_COMPUTE_32F_PEDANTIC;
  const bool compute_32f_fast = t.compute == CUBLAS_COMPUTE_32F_FAST_TF32 ||
                                t.compute == CUBLAS_COMPUTE_32F_FAST_16BF ||
                                t.compute == CUBLAS_COMPUTE_32F_FAST_16F;
  const bool compute_64f =
      t.compute == CUBLAS_COMPUTE_64F || t.compute == CUBLAS_COMPUTE_64F_PEDANTIC;
  if (t.a != t.b) return false;
  switch (t.a) {
    case CUDA_R_32F: return t.c == CUDA_R_32F && (compute_32f || compute_32f_fast);
    case CUDA_R_16BF: return (t.c == CUDA_R_16BF || t.c == CUDA_R_32F) && compute_32f;
    case CUDA_R_64F: return t.c == CUDA_R_64F && compute_64f;
    default: return false;
  }
}

// The stored shape of op(X) = rows x cols: X itself is cols x rows when transposed.
struct Stored {
  int rows, cols;
};
Stored stored_a(const Gemm& g) {
  return is_transposed(g.transa) ? Stored{g.k, g.m} : Stored{g.m, g.k};
}
Stored stored_b(const Gemm& g) {
  return is_transposed(g.transb) ? Stored{g.n, g.k} : Stored{g.k, g.n};
}

bool valid_operation(cublasOperation_t op) {
  return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
}

// The checks cuBLAS makes of its arguments (CUBLAS_STATUS_INVALID_VALUE).
bool valid_arguments(const Gemm& g) {
  return valid_operation(g.transa) && valid_operation(g.transb) && g.m >= 0 && g.n >= 0 &&
         g.k >= 0 && g.lda >= std::max(1, stored_a(g).rows) &&
         g.ldb >= std::max(1, stored_b(g).rows) && g.ldc >= std::max(1, g.m);
}

// Whether the referenced elements of a rows x cols matrix with leading dimension ld lie in
// one live allocation; reports if not.
bool check_matrix(const char* api, const char* name, const void* p, Stored shape, int ld,
                  cudaDataType type) {
  if (shape.rows == 0 || shape.cols == 0) return true;
  const size_t bytes =
      (size_t(shape.cols - 1) * size_t(ld) + size_t(shape.rows)) * element_size(type);
  char why[256];
  if (um_emu::detail::check_device_span(p, bytes, why, sizeof(why))) return true;
  report("%s: matrix %s (%d x %d, ld %d): %s", api, name, shape.rows, shape.cols, ld, why);
  return false;
}

// C must be device memory even when beta == 0 and it is only written.
bool check_memory(const char* api, const Gemm& g, const Types& t) {
  if (g.m == 0 || g.n == 0) return true;
  return (g.k == 0 || (check_matrix(api, "A", g.A, stored_a(g), g.lda, t.a) &&
                       check_matrix(api, "B", g.B, stored_b(g), g.ldb, t.b))) &&
         check_matrix(api, "C", g.C, {g.m, g.n}, g.ldc, t.c);
}

bool check_pointer_array(const char* api, const char* name, const void* array, size_t count) {
  char why[256];
  if (count == 0 ||
      um_emu::detail::check_device_span(array, count * sizeof(void*), why, sizeof(why)))
    return true;
  report("%s: pointer array %s (%zu entries): %s", api, name, count, why);
  return false;
}

template <class Acc>
Acc load_element(const void* p, cudaDataType type, size_t i) {
  switch (type) {
    case CUDA_R_16BF: return Acc(float(static_cast<const __nv_bfloat16*>(p)[i]));
    case CUDA_R_32F: return Acc(static_cast<const float*>(p)[i]);
    default: return Acc(static_cast<const double*>(p)[i]);
  }
}

template <class Acc>
void store_element(void* p, cudaDataType type, size_t i, Acc value) {
  switch (type) {
    case CUDA_R_16BF: static_cast<__nv_bfloat16*>(p)[i] = __nv_bfloat16(float(value)); break;
    case CUDA_R_32F: static_cast<float*>(p)[i] = float(value); break;
    default: static_cast<double*>(p)[i] = double(value); break;
  }
}

// The referenced part of a stored matrix as a dense column-major array (leading dimension rows).
template <class Acc>
std::vector<Acc> load(const void* p, cudaDataType type, Stored shape, int ld) {
  std::vector<Acc> dense(size_t(shape.rows) * size_t(shape.cols));
  for (int j = 0; j < shape.cols; ++j)
    for (int i = 0; i < shape.rows; ++i)
      dense[size_t(j) * shape.rows + i] = load_element<Acc>(p, type, size_t(j) * ld + i);
  return dense;
}

template <class Acc>
void compute(const Gemm& g, const Types& t, Acc alpha, Acc beta) {
  const Stored sa = stored_a(g), sb = stored_b(g);
  const std::vector<Acc> a = load<Acc>(g.A, t.a, sa, g.lda), b = load<Acc>(g.B, t.b, sb, g.ldb);
  // With beta == 0, C is output only: cuBLAS does not read it (it may hold NaN).
  std::vector<Acc> c = beta != Acc(0) ? load<Acc>(g.C, t.c, {g.m, g.n}, g.ldc)
                                      : std::vector<Acc>(size_t(g.m) * size_t(g.n));
  const auto op = [](cublasOperation_t o) { return is_transposed(o) ? CblasTrans : CblasNoTrans; };
  if constexpr (std::is_same_v<Acc, float>)
    cblas_sgemm(CblasColMajor, op(g.transa), op(g.transb), g.m, g.n, g.k, alpha, a.data(),
                std::max(1, sa.rows), b.data(), std::max(1, sb.rows), beta, c.data(), g.m);
  else
    cblas_dgemm(CblasColMajor, op(g.transa), op(g.transb), g.m, g.n, g.k, alpha, a.data(),
                std::max(1, sa.rows), b.data(), std::max(1, sb.rows), beta, c.data(), g.m);
  for (int j = 0; j < g.n; ++j)
    for (int i = 0; i < g.m; ++i)
      store_element(g.C, t.c, size_t(j) * g.ldc + i, c[size_t(j) * g.m + i]);
}

// alpha and beta are host scalars of the compute type's precision.
void compute(const Gemm& g, const Types& t, const void* alpha, const void* beta) {
  if (g.m == 0 || g.n == 0) return;
  if (t.a == CUDA_R_64F)
    compute<double>(g, t, *static_cast<const double*>(alpha), *static_cast<const double*>(beta));
  else
    compute<float>(g, t, *static_cast<const float*>(alpha), *static_cast<const float*>(beta));
}

size_t scalar_size(const Types& t) { return t.a == CUDA_R_64F ? sizeof(double) : sizeof(float); }

// The checks every call starts with: a live handle on a live stream, a supported combination.
cublasStatus_t check_call(const char* api, cublasHandle_t handle, const Types& t) {
  {
    std::lock_guard lock(g_mutex);
    if (!handle || g_handles.count(handle) == 0) {
      report("%s: %p is not a live cuBLAS handle", api, static_cast<void*>(handle));
      return CUBLAS_STATUS_NOT_INITIALIZED;
    }
  }
  if (!um_emu::detail::is_valid_stream(handle->stream)) {
    report("%s: the handle's stream %p is no longer live", api, static_cast<void*>(handle->stream));
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (!is_supported(t)) {
    report("%s: A type %d, B type %d, C type %d with compute type %d is not supported", api,
           int(t.a), int(t.b), int(t.c), int(t.compute));
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext;
  std::lock_guard lock(g_mutex);
  g_handles.insert(*handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  {
    std::lock_guard lock(g_mutex);
    if (g_handles.erase(handle) == 0) return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t streamId) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!um_emu::detail::is_valid_stream(streamId)) {
    report("cublasSetStream: %p is not a live stream", static_cast<void*>(streamId));
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  handle->stream = streamId;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t* streamId) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!streamId) return CUBLAS_STATUS_INVALID_VALUE;
  *streamId = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->math;
  return CUBLAS_STATUS_SUCCESS;
}

// The workspace is not used, but checked like cuBLAS would need it: device memory, aligned.
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void* workspace,
                                  size_t workspaceSizeInBytes) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (workspaceSizeInBytes == 0) return CUBLAS_STATUS_SUCCESS;
  char why[256];
  if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0) {
    report("cublasSetWorkspace: %p is not 256-byte aligned", workspace);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (!um_emu::detail::check_device_span(workspace, workspaceSizeInBytes, why, sizeof(why))) {
    report("cublasSetWorkspace: %s", why);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "the device architecture does not support it";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "the functionality requested requires a license";
  }
  return "unknown status";
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t) {
  const char* api = "cublasGemmEx";
  const Types t{Atype, Btype, Ctype, computeType};
  if (const cublasStatus_t s = check_call(api, handle, t)) return s;
  const Gemm g{transa, transb, m, n, k, A, lda, B, ldb, C, ldc};
  if (!alpha || !beta || !valid_arguments(g)) return CUBLAS_STATUS_INVALID_VALUE;
  if (!check_memory(api, g, t)) return CUBLAS_STATUS_EXECUTION_FAILED;
  um_emu::DeviceAccess access;
  compute(g, t, alpha, beta);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                          cublasOperation_t transb, int m, int n, int k,
                                          const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long int strideA, const void* B,
                                          cudaDataType Btype, int ldb, long long int strideB,
                                          const void* beta, void* C, cudaDataType Ctype, int ldc,
                                          long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t) {
  const char* api = "cublasGemmStridedBatchedEx";
  const Types t{Atype, Btype, Ctype, computeType};
  if (const cublasStatus_t s = check_call(api, handle, t)) return s;
  const Gemm first{transa, transb, m, n, k, A, lda, B, ldb, C, ldc};
  if (!alpha || !beta || batchCount < 0 || !valid_arguments(first))
    return CUBLAS_STATUS_INVALID_VALUE;
  // Strides count elements of each matrix's type.
  auto batch = [&](int i) {
    const auto offset = [i](long long stride, cudaDataType type) {
      return i * stride * static_cast<long long>(element_size(type));
    };
    Gemm g = first;
    g.A = static_cast<const char*>(A) + offset(strideA, Atype);
    g.B = static_cast<const char*>(B) + offset(strideB, Btype);
    g.C = static_cast<char*>(C) + offset(strideC, Ctype);
    return g;
  };
  for (int i = 0; i < batchCount; ++i)
    if (!check_memory(api, batch(i), t)) return CUBLAS_STATUS_EXECUTION_FAILED;
  um_emu::DeviceAccess access;
  for (int i = 0; i < batchCount; ++i) compute(batch(i), t, alpha, beta);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                   cublasOperation_t transb, int m, int n, int k, const void* alpha,
                                   const void* const Aarray[], cudaDataType Atype, int lda,
                                   const void* const Barray[], cudaDataType Btype, int ldb,
                                   const void* beta, void* const Carray[], cudaDataType Ctype,
                                   int ldc, int batchCount, cublasComputeType_t computeType,
                                   cublasGemmAlgo_t) {
  const char* api = "cublasGemmBatchedEx";
  const Types t{Atype, Btype, Ctype, computeType};
  if (const cublasStatus_t s = check_call(api, handle, t)) return s;
  const Gemm shape{transa, transb, m, n, k, nullptr, lda, nullptr, ldb, nullptr, ldc};
  if (!alpha || !beta || batchCount < 0 || !valid_arguments(shape))
    return CUBLAS_STATUS_INVALID_VALUE;
  const size_t count = size_t(batchCount);
  if (!check_pointer_array(api, "Aarray", Aarray, count) ||
      !check_pointer_array(api, "Barray", Barray, count) ||
      !check_pointer_array(api, "Carray", Carray, count))
    return CUBLAS_STATUS_EXECUTION_FAILED;
  um_emu::DeviceAccess access;  // the pointer arrays are device memory
  std::vector<Gemm> gemms(count, shape);
  for (size_t i = 0; i < count; ++i) {
    gemms[i].A = Aarray[i];
    gemms[i].B = Barray[i];
    gemms[i].C = Carray[i];
    if (!check_memory(api, gemms[i], t)) return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  for (const Gemm& g : gemms) compute(g, t, alpha, beta);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmGroupedBatchedEx(
    cublasHandle_t handle, const cublasOperation_t transa_array[],
    const cublasOperation_t transb_array[], const int m_array[], const int n_array[],
    const int k_array[], const void* alpha_array, const void* const Aarray[], cudaDataType_t Atype,
    const int lda_array[], const void* const Barray[], cudaDataType_t Btype, const int ldb_array[],
    const void* beta_array, void* const Carray[], cudaDataType_t Ctype, const int ldc_array[],
    int group_count, const int group_size[], cublasComputeType_t computeType) {
  const char* api = "cublasGemmGroupedBatchedEx";
  const Types t{Atype, Btype, Ctype, computeType};
  if (const cublasStatus_t s = check_call(api, handle, t)) return s;
  if (group_count < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (group_count == 0) return CUBLAS_STATUS_SUCCESS;
  if (!transa_array || !transb_array || !m_array || !n_array || !k_array || !alpha_array ||
      !lda_array || !ldb_array || !beta_array || !ldc_array || !group_size)
    return CUBLAS_STATUS_INVALID_VALUE;
  size_t total = 0;
  for (int g = 0; g < group_count; ++g) {
    const Gemm shape{transa_array[g], transb_array[g], m_array[g], n_array[g], k_array[g],
                     nullptr, lda_array[g], nullptr, ldb_array[g], nullptr, ldc_array[g]};
    if (group_size[g] < 0 || !valid_arguments(shape)) return CUBLAS_STATUS_INVALID_VALUE;
    total += size_t(group_size[g]);
  }
  if (!check_pointer_array(api, "Aarray", Aarray, total) ||
      !check_pointer_array(api, "Barray", Barray, total) ||
      !check_pointer_array(api, "Carray", Carray, total))
    return CUBLAS_STATUS_EXECUTION_FAILED;
  um_emu::DeviceAccess access;  // the pointer arrays are device memory
  struct Problem {
    Gemm gemm;
    const void *alpha, *beta;
  };
  std::vector<Problem> problems;
  problems.reserve(total);
  const size_t scalar = scalar_size(t);
  for (int g = 0; g < group_count; ++g) {
    const void* alpha = static_cast<const char*>(alpha_array) + g * scalar;
    const void* beta = static_cast<const char*>(beta_array) + g * scalar;
    for (int i = 0; i < group_size[g]; ++i) {
      const size_t p = problems.size();
      const Gemm gemm{transa_array[g], transb_array[g], m_array[g], n_array[g], k_array[g],
                      Aarray[p], lda_array[g], Barray[p], ldb_array[g], Carray[p], ldc_array[g]};
      if (!check_memory(api, gemm, t)) return CUBLAS_STATUS_EXECUTION_FAILED;
      problems.push_back({gemm, alpha, beta});
    }
  }
  for (const Problem& p : problems) compute(p.gemm, t, p.alpha, p.beta);
  return CUBLAS_STATUS_SUCCESS;
}
