// Op backends: every op of src/ops is an entry of a table, one table per element type, and a
// backend (CPU, CUDA) fills the entries it implements — ggml's backend op table, in C++. The
// public op functions (ops/*.h) dispatch on ctx.device through this table; an empty entry is an
// op the backend does not support, and calling it is one clear error naming the op, the device
// and the type. Backends and their types:
//   cpu:  f32 (training), f64 (references, tests)
//   cuda: f32 (tests against the CPU at float tolerance) and bf16 (training: bf16 compute,
//         acc_t<bf16> = f32 statistics, gradients and optimizer state)
// Ops that run on the accumulation type (router, optimizer, statistics) are filled in the
// tables of f32 and f64 only: a bf16 model calls them with its f32 tensors.
// What it is not: a graph executor. The model calls ops one after another on one stream.
#pragma once

#include <type_traits>

#include "core/ctx.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/grouped_gemm.h"
#include "ops/linear.h"
#include "ops/moe_stats.h"
#include "ops/optim.h"
#include "ops/permute.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/skinny_linear.h"
#include "ops/softmax.h"
#include "ops/router.h"
#include "ops/swiglu.h"

namespace um {

// Ops templated on the element type T. Each name is a function template of ops/*.h.
#define UM_TYPED_OPS(X)                                                                         \
  X(gemm) X(gemm_acc) X(grouped_linear_forward)            \
  X(grouped_linear_backward) X(rmsnorm_forward) X(rmsnorm_backward) X(rope_forward)             \
  X(rope_backward) X(swiglu_forward) X(swiglu_backward) X(embedding_forward)                    \
  X(embedding_backward) X(attention_forward) X(attention_backward) X(lm_head_cross_entropy)     \
  X(router_scores_forward) X(router_scores_backward) X(router_topk) X(router_gates_forward)      \
  X(router_gates_backward) X(capacity_keep) X(permute_rows_forward) X(permute_rows_backward)    \
  X(combine_rows_forward) X(combine_rows_backward) X(gather_rows) X(scatter_rows)               \
  X(balance_counts) X(moe_router_stats) X(balance_backward) X(z_loss_backward)                  \
  X(add_inplace) X(copy_rows) X(cast_to_acc) X(cast_from_acc) X(fill) X(adamw_update)           \
  X(sum_squares) X(scale_inplace) X(mla_kv_assemble_forward) X(mla_kv_assemble_backward)     \
  X(masked_softmax_rows) X(skinny_linear_forward)

// Pointer to the function type F (some front ends, nvcc's among them, give decltype of a named
// function template specialization as a reference).
template <class F>
using fn_ptr = std::add_pointer_t<std::remove_reference_t<F>>;

template <class T>
struct OpTable {
  using value_type = T;
#define UM_OP_FIELD(op) fn_ptr<decltype(::um::op<T>)> op = nullptr;
  UM_TYPED_OPS(UM_OP_FIELD)
#undef UM_OP_FIELD
};

struct Backend {
  Device device = Device::cpu;
  OpTable<float> f32;
  OpTable<double> f64;
  OpTable<um::bf16> b16;
  fn_ptr<decltype(::um::routing_permutation)> routing_permutation = nullptr;  // untyped

  template <class T>
  const OpTable<T>& ops() const {
    if constexpr (std::is_same_v<T, float>) return f32;
    else if constexpr (std::is_same_v<T, double>) return f64;
    else return b16;
  }
};

// The backend of a device (throws when the device was not built in).
const Backend& backend_of(Device d);

// The table entry of `op` for T on ctx's device, or an error naming what is missing.
template <class F>
F* op_entry(F* f, const char* op, Device d, DType t) {
  UM_CHECK(f != nullptr, op, "not implemented on ", device_name(d), " for ", dtype_name(t));
  return f;
}
#define UM_OP(op, T, ctx) \
  ::um::op_entry(::um::backend_of((ctx).device).template ops<T>().op, #op, (ctx).device, ::um::dtype_of<T>())

// Explicit instantiation of a public op for every element type.
#define UM_INSTANTIATE_OP(op)              \
  template decltype(op<float>) op<float>;   \
  template decltype(op<double>) op<double>; \
  template decltype(op<bf16>) op<bf16>;

// Ops on the accumulation type only (router, optimizer, statistics): f32 and f64.
#define UM_INSTANTIATE_ACC_OP(op)         \
  template decltype(op<float>) op<float>; \
  template decltype(op<double>) op<double>;

// Filled by each backend (ops/cpu_backend.cpp, ops/cuda/backend.cu).
const Backend& cpu_backend();
#if defined(ULTRAMOE_WITH_CUDA)
const Backend& cuda_backend();
#endif

}  // namespace um
