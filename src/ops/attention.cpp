#include "ops/attention.h"
#include "ops/vmath.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "ops/backend.h"

namespace um {
namespace cpu {
namespace {

struct Segment {
  int64_t b, start, end;  // tokens [start, end) of sequence b
};

// Splits every sequence into its documents; returns the count written to `out` (may be null to
// count only).
int64_t find_segments(Segment* out, const int32_t* seg_start, int64_t B, int64_t T_len) {
  int64_t n = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* ss = seg_start + b * T_len;
    int64_t start = 0;
    for (int64_t i = 0; i < T_len; ++i) {
      bool opens = ss[i] == i;
      UM_CHECK(opens || (i > 0 && ss[i] == ss[i - 1]), "attention",
               "seg_start must be i or seg_start[i-1]; sequence ", b, " position ", i, " has ",
               ss[i]);
      if (opens && i > start) {
        if (out) out[n] = {b, start, i};
        ++n;
        start = i;
      }
    }
    if (T_len > start) {
      if (out) out[n] = {b, start, T_len};
      ++n;
    }
  }
  return n;
}

// Scratch layout: the segment list, then per-thread score buffers of n_bufs * kQueryBlock * T_len.
template <class T>
Segment* carve(const Ctx& ctx, int64_t n_seg, int64_t T_len, int n_bufs, T** bufs) {
  size_t seg_bytes = (n_seg * sizeof(Segment) + 63) / 64 * 64;
  size_t per_thread = static_cast<size_t>(n_bufs * kQueryBlock * T_len);
  std::byte* base = ctx.scratch<std::byte>(seg_bytes + per_thread * ctx.n_threads * sizeof(T));
  *bufs = reinterpret_cast<T*>(base + seg_bytes);
  return reinterpret_cast<Segment*>(base);
}

}  // namespace

template <class T>
void attention_forward(T* o, T* lse, const T* q, const T* k, const T* v, const int32_t* seg_start,
                       int64_t B, int64_t T_len, int H, int dqk, int dv, double scale,
                       const Ctx& ctx) {
  int64_t n_seg = find_segments(nullptr, seg_start, B, T_len);
  T* bufs;
  Segment* segs = carve<T>(ctx, n_seg, T_len, 1, &bufs);
  find_segments(segs, seg_start, B, T_len);
  const int64_t ldqk = static_cast<int64_t>(H) * dqk, ldv = static_cast<int64_t>(H) * dv;
  const int64_t n_tasks = n_seg * H;

#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx.threads_for(n_tasks * T_len * (dqk + dv)))
  for (int64_t task = 0; task < n_tasks; ++task) {
    const Segment sg = segs[task / H];
    const int h = static_cast<int>(task % H);
    T* S = bufs + static_cast<int64_t>(omp_get_thread_num()) * kQueryBlock * T_len;
    const int64_t row0 = sg.b * T_len + sg.start, n = sg.end - sg.start;
    const T* qb = q + row0 * ldqk + h * dqk;
    const T* kb = k + row0 * ldqk + h * dqk;
    const T* vb = v + row0 * ldv + h * dv;
    T* ob = o + row0 * ldv + h * dv;
    T* lb = lse + (sg.b * H + h) * T_len + sg.start;
    for (int64_t i0 = 0; i0 < n; i0 += kQueryBlock) {
      const int64_t nq = std::min(kQueryBlock, n - i0), nk = i0 + nq;
      cpu::gemm<T>(false, true, nq, nk, dqk, T(scale), qb + i0 * ldqk, ldqk, kb, ldqk, T(0), S, nk);
      for (int64_t r = 0; r < nq; ++r) {
        T* row = S + r * nk;
        const int64_t n_valid = i0 + r + 1;  // keys 0..i0+r
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < n_valid; ++j) m = std::max(m, row[j]);
        T l = 0;
#pragma omp simd reduction(+ : l)
        for (int64_t j = 0; j < n_valid; ++j) {
          row[j] = exp_fast(row[j] - m);
          l += row[j];
        }
        T inv = T(1) / l;
        for (int64_t j = 0; j < n_valid; ++j) row[j] *= inv;
        for (int64_t j = n_valid; j < nk; ++j) row[j] = 0;
        lb[i0 + r] = m + std::log(l);
      }
      cpu::gemm<T>(false, false, nq, dv, nk, T(1), S, nk, vb, ldv, T(0), ob + i0 * ldv, ldv);
    }
  }
}

template <class T>
void attention_backward(T* dq, T* dk, T* dv_out, const T* d_o, const T* o, const T* lse,
                        const T* q, const T* k, const T* v, const int32_t* seg_start, int64_t B,
                        int64_t T_len, int H, int dqk, int dv, double scale, const Ctx& ctx) {
  int64_t n_seg = find_segments(nullptr, seg_start, B, T_len);
  T* bufs;
  Segment* segs = carve<T>(ctx, n_seg, T_len, 2, &bufs);
  find_segments(segs, seg_start, B, T_len);
  const int64_t ldqk = static_cast<int64_t>(H) * dqk, ldv = static_cast<int64_t>(H) * dv;
  const int64_t n_tasks = n_seg * H;

#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx.threads_for(n_tasks * T_len * (dqk + dv)))
  for (int64_t task = 0; task < n_tasks; ++task) {
    const Segment sg = segs[task / H];
    const int h = static_cast<int>(task % H);
    T* P = bufs + static_cast<int64_t>(omp_get_thread_num()) * 2 * kQueryBlock * T_len;
    T* dS = P + kQueryBlock * T_len;
    const int64_t row0 = sg.b * T_len + sg.start, n = sg.end - sg.start;
    const T* qb = q + row0 * ldqk + h * dqk;
    const T* kb = k + row0 * ldqk + h * dqk;
    const T* vb = v + row0 * ldv + h * dv;
    const T* ob = o + row0 * ldv + h * dv;
    const T* dob = d_o + row0 * ldv + h * dv;
    T* dqb = dq + row0 * ldqk + h * dqk;
    T* dkb = dk + row0 * ldqk + h * dqk;
    T* dvb = dv_out + row0 * ldv + h * dv;
    const T* lb = lse + (sg.b * H + h) * T_len + sg.start;
    for (int64_t i = 0; i < n; ++i) {
      std::fill(dkb + i * ldqk, dkb + i * ldqk + dqk, T(0));
      std::fill(dvb + i * ldv, dvb + i * ldv + dv, T(0));
    }
    for (int64_t i0 = 0; i0 < n; i0 += kQueryBlock) {
      const int64_t nq = std::min(kQueryBlock, n - i0), nk = i0 + nq;
      cpu::gemm<T>(false, true, nq, nk, dqk, T(scale), qb + i0 * ldqk, ldqk, kb, ldqk, T(0), P, nk);
      for (int64_t r = 0; r < nq; ++r) {
        T* row = P + r * nk;
        const int64_t n_valid = i0 + r + 1;
        const T l = lb[i0 + r];
#pragma omp simd
        for (int64_t j = 0; j < n_valid; ++j) row[j] = exp_fast(row[j] - l);
        for (int64_t j = n_valid; j < nk; ++j) row[j] = 0;
      }
      // dV += P^T dO ;  dP = dO V^T
      cpu::gemm<T>(true, false, nk, dv, nq, T(1), P, nk, dob + i0 * ldv, ldv, T(1), dvb, ldv);
      cpu::gemm<T>(false, true, nq, nk, dv, T(1), dob + i0 * ldv, ldv, vb, ldv, T(0), dS, nk);
      // dS = P * (dP - rowsum(dO * O))
      for (int64_t r = 0; r < nq; ++r) {
        const T* dor = dob + (i0 + r) * ldv;
        const T* orow = ob + (i0 + r) * ldv;
        T D = 0;
        for (int c = 0; c < dv; ++c) D += dor[c] * orow[c];
        T* ds = dS + r * nk;
        const T* p = P + r * nk;
        for (int64_t j = 0; j < nk; ++j) ds[j] = p[j] * (ds[j] - D);
      }
      // dQ = scale dS K ;  dK += scale dS^T Q
      cpu::gemm<T>(false, false, nq, dqk, nk, T(scale), dS, nk, kb, ldqk, T(0), dqb + i0 * ldqk, ldqk);
      cpu::gemm<T>(true, false, nk, dqk, nq, T(scale), dS, nk, qb + i0 * ldqk, ldqk, T(1), dkb, ldqk);
    }
  }
}

void register_attention(Backend& b) {
  b.f32.attention_forward = &attention_forward<float>;
  b.f32.attention_backward = &attention_backward<float>;
  b.f64.attention_forward = &attention_forward<double>;
  b.f64.attention_backward = &attention_backward<double>;
}

}  // namespace cpu

template <class T>
void attention_forward(T* o, acc_t<T>* lse, const T* q, const T* k, const T* v, const int32_t* seg_start,
                       int64_t B, int64_t T_len, int H, int dqk, int dv, double scale, const Ctx& ctx) {
  UM_OP(attention_forward, T, ctx)(o, lse, q, k, v, seg_start, B, T_len, H, dqk, dv, scale, ctx);
}

template <class T>
void attention_backward(T* dq, T* dk, T* dv_out, const T* d_o, const T* o, const acc_t<T>* lse,
                        const T* q, const T* k, const T* v, const int32_t* seg_start, int64_t B,
                        int64_t T_len, int H, int dqk, int dv, double scale, const Ctx& ctx) {
  UM_OP(attention_backward, T, ctx)(dq, dk, dv_out, d_o, o, lse, q, k, v, seg_start, B, T_len, H, dqk, dv,
                                    scale, ctx);
}

UM_INSTANTIATE_OP(attention_forward)
UM_INSTANTIATE_OP(attention_backward)

}  // namespace um
