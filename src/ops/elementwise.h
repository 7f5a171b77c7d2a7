// Small element-wise and copy ops the model needs between the big ones: residual adds, strided
// row copies (MTP inputs, MLA's per-head K/V), casts between the compute type and its
// accumulation type (the f32 router path of a bf16 model, the bf16 compute copy of the f32
// master weights), and fills. Each is one pass over memory on every backend.
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

// y += x   (n elements)
template <class T>
void add_inplace(T* y, const T* x, int64_t n, const Ctx& ctx);

// dst (rows, cols), row stride ld_dst  =  (or +=)  src (rows, cols), row stride ld_src
template <class T>
void copy_rows(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t rows, int64_t cols,
               bool accumulate, const Ctx& ctx);

// dst (n, acc_t<T>) = src (n, T)
template <class T>
void cast_to_acc(acc_t<T>* dst, const T* src, int64_t n, const Ctx& ctx);
// dst (n, T) = src, or dst += src with the sum in acc_t<T>, rounded once
template <class T>
void cast_from_acc(T* dst, const acc_t<T>* src, int64_t n, bool accumulate, const Ctx& ctx);

// p[i] = value
template <class T>
void fill(T* p, int64_t n, double value, const Ctx& ctx);

// MLA's per-head keys and values (design.md 1.4) from the up-projection kv (N, H*(nope+dv)) and the
// one rope key shared by all heads, kva[n, kv_lora : kv_lora+rd] (kva row stride kva_ld):
//   k (N, H, nope+rd): k[n,h] = [kv[n,h,0:nope] ; kva[n, kv_lora:kv_lora+rd]]
//   v (N, H, dv):      v[n,h] = kv[n,h,nope:nope+dv]
template <class T>
void mla_kv_assemble_forward(T* k, T* v, const T* kv, const T* kva, int64_t N, int H, int nope,
                             int rd, int dv, int64_t kva_ld, int64_t kv_lora, const Ctx& ctx);
// dkv (N, H*(nope+dv)) written from dk's nope part and dv; the shared rope key collects the sum
// over heads: dkva[n, kv_lora:kv_lora+rd] = sum_h dk[n,h,nope:] (written, summed in acc_t<T>;
// the other columns of dkva untouched).
template <class T>
void mla_kv_assemble_backward(T* dkv, T* dkva, const T* dk, const T* dv, int64_t N, int H, int nope,
                              int rd, int dv_dim, int64_t kva_ld, int64_t kv_lora, const Ctx& ctx);

}  // namespace um
