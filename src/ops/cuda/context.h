// The CUDA backend's per-context state, reached from a Ctx (ctx.backend): the cuBLAS handle
// bound to the context's stream, a pinned staging ring for small host-to-device uploads, and
// device facts kernels size themselves by.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/ctx.h"

namespace um::cuda {

struct State {
  cublasHandle_t blas = nullptr;
  int sm_count = 1;
  size_t smem_optin = 48 * 1024;  // largest dynamic shared memory a block may ask for
  // pinned ring for uploads (grouped-GEMM pointer arrays): a region is reused only after the
  // stream has been synchronised on wrap-around, so an upload never races a pending copy
  char* ring = nullptr;
  size_t ring_bytes = 0, ring_at = 0;
  // cuBLAS grouped GEMM: 0 not tried yet, 1 works, -1 unsupported (one GEMM per group instead);
  // [0] T -> T, [1] T -> acc_t<T>, per element type index (0 f32, 1 bf16)
  int grouped_ok[2][2] = {{0, 0}, {0, 0}};
  // host scratch of the grouped GEMM's argument arrays (grows once)
  std::vector<int> g_int;
  std::vector<float> g_float;
  std::vector<const void*> g_ptr;
  std::vector<cublasOperation_t> g_op;
};

inline State& state_of(const Ctx& ctx) { return *static_cast<State*>(ctx.backend); }

// Copies `bytes` from host memory to `dst` (device memory) through the pinned ring,
// asynchronously on ctx's stream; src may be reused as soon as this returns.
void upload_async(const Ctx& ctx, void* dst, const void* src, size_t bytes);

inline void check_blas(cublasStatus_t s, const char* what) {
  UM_CHECK(s == CUBLAS_STATUS_SUCCESS, "cublas", what, ": status ", int(s));
}

}  // namespace um::cuda
