#include "infer/decoder.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/arena.h"
#include "model/batch.h"
#include "model/ffn.h"
#include "model/layer.h"
#include "model/mla.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/linear.h"
#include "ops/permute.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/router.h"
#include "ops/skinny_linear.h"
#include "ops/softmax.h"
#include "ops/swiglu.h"

namespace um {

namespace {

// Rows [row0, row0 + m) of a chunk are positions [i0, i0 + m) of one slot.
struct Segment {
  int64_t slot = 0, row0 = 0, m = 0, i0 = 0;
  int64_t feed = 0;       // index of the feed the rows come from
  bool ends_feed = false; // the feed's last row is in this segment
};

// y (N, n_out) = x W^T: the few-row kernel for passes of at most `skinny` rows (decoding reads
// each weight once instead of packing it), BLAS GEMM above.
template <class T>
void dec_linear(T* y, int64_t ldy, const T* x, int64_t ldx, const T* W, int64_t N, int64_t n_in, int64_t n_out,
                int64_t skinny, const Ctx& ctx) {
  if (N <= skinny) skinny_linear_forward<T>(y, ldy, x, ldx, W, n_in, N, n_in, n_out, ctx);
  else linear_forward<T>(y, ldy, x, ldx, W, N, n_in, n_out, ctx);
}

// SwiGLU MLP on few rows (ffn.h mlp_forward with the few-row kernel): y (N, D) written.
template <class T>
void mlp_few_rows(T* y, MlpActs<T>& a, const T* x, const T* w, const MlpParams& p, int64_t N, int64_t D,
                  const Ctx& ctx) {
  // the decoder runs on the CPU types, whose compute weights are the master weights
  const int64_t F = p.width;
  skinny_linear_forward<T>(a.gu, 2 * F, x, D, w + p.gate_up, D, N, D, 2 * F, ctx);
  swiglu_forward<T>(a.h, a.gu, N, F, ctx);
  skinny_linear_forward<T>(y, D, a.h, F, w + p.down, F, N, F, D, ctx);
}

// The MoE block on few rows: the route of moe_forward (the same router ops: scores, top-k on s + b,
// gates) and its permute/combine ops, dropless; only the products differ — each expert's rows go
// through the few-row kernel, so an expert's weights are read once, and only the experts some row
// chose are touched. y (N, D) written.
template <class T>
void moe_few_rows(T* y, MoeActs<T>& a, const T* x, const T* w, const T* buffers, const MoeParams& p,
                  const ModelConfig& c, bool use_bias, int64_t N, const Ctx& ctx) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size,
                F = c.moe_intermediate_size;
  const TopkSpec spec{c.topk_method, int(K), int(c.n_group), int(c.topk_group)};
  skinny_linear_forward<T>(a.z, E, x, D, w + p.router, D, N, D, E, ctx);
  router_scores_forward<T>(a.s, a.z, N, E, c.scoring_func, ctx);
  router_topk<T>(a.idx, a.margin, a.s, use_bias ? buffers + p.bias : nullptr, N, E, spec, ctx);
  router_gates_forward<T>(a.gate, a.s, a.idx, p.router_scale >= 0 ? w + p.router_scale : nullptr, N, E, int(K),
                          c.norm_topk_prob, c.routed_scaling_factor, ctx);
  routing_permutation(a.offsets, a.row_pair, a.pair_row, a.idx, nullptr, N, int(K), E, ctx);
  const int64_t R = a.offsets[E];
  permute_rows_forward<T>(a.xp, x, a.row_pair, R, int(K), D, ctx);
  const bool shared = p.shared.width > 0;
  if (shared) mlp_few_rows<T>(y, a.shared, x, w, p.shared, N, D, ctx);
  const int64_t stride = 3 * F * D;  // one expert's gate|up|down block
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = a.offsets[e], n = a.offsets[e + 1] - r0;
    if (n == 0) continue;  // an expert no row chose: its weights stay unread
    const T* we = w + p.experts + e * stride;
    skinny_linear_forward<T>(a.gu + r0 * 2 * F, 2 * F, a.xp + r0 * D, D, we, D, n, D, 2 * F, ctx);
    swiglu_forward<T>(a.h + r0 * F, a.gu + r0 * 2 * F, n, F, ctx);
    skinny_linear_forward<T>(a.yp + r0 * D, D, a.h + r0 * F, F, we + 2 * F * D, F, n, F, D, ctx);
  }
  combine_rows_forward<T>(y, a.yp, a.gate, a.pair_row, N, int(K), D, shared, ctx);
}

}  // namespace

template <class T>
struct Decoder<T>::Impl {
  std::vector<LayerParams> layers;  // main layers, then the MTP layers kept
  int64_t embed = -1, final_norm = -1, head = -1;
  struct MtpP {
    int64_t enorm, hnorm, eh_proj, head_norm;
  };
  std::vector<MtpP> mtp_p;
  std::vector<acc_t<T>> rope_cos, rope_sin;

  // one chunk of at most max_rows rows
  Arena acts, moe_scratch;
  T *x = nullptr, *x2 = nullptr;      // (N, D) residual streams
  T *a_n = nullptr, *att = nullptr, *x_mid = nullptr, *f_n = nullptr, *ffn = nullptr;  // (N, D)
  acc_t<T>* rstd = nullptr;           // (N)
  T *cq_raw = nullptr, *cq = nullptr; // (N, q_lora)
  T* q = nullptr;                     // (N, H, dqk), rope part rotated
  T *kva = nullptr, *lat = nullptr;   // (N, W) raw [ckv ; k_pe] and the cached form
  T* qa = nullptr;                    // (N, H, W) absorbed queries [q_nope W_uk ; q_pe]
  T* olat = nullptr;                  // (N, H, kv_lora) attention output in the latent space
  T* o = nullptr;                     // (N, H, dv)
  T* h = nullptr;                     // (N, D) final-norm / head-norm output
  T* sel = nullptr;                   // (N, D) rows gathered for the LM head
  T *emb = nullptr, *cat = nullptr, *hprev = nullptr;  // MTP: (N, D), (N, 2D), (N, D)
  MlpActs<T> mlp;
  MoeActs<T> moe;
  MoeStats moe_stats;
  std::vector<int32_t> row_tok, row_pos;
  std::vector<Segment> segs;
  std::vector<T> naive_buf;           // the naive path's per-sequence K, V (reference path)

  AlignedArray<T> hist;               // (mtp_depth, slots, max_context, D)
  int64_t hist_slots = 0, hist_context = 0, hist_width = 0;
  T* hist_row(int k, int64_t slot, int64_t i) {
    return hist.data() + ((k * hist_slots + slot) * hist_context + i) * hist_width;
  }

  void layout(Arena& a, const ModelConfig& c, int64_t N) {
    const int64_t D = c.hidden_size, H = c.num_attention_heads, W = c.kv_lora_rank + c.qk_rope_head_dim;
    for (T** p : {&x, &x2, &a_n, &att, &x_mid, &f_n, &ffn, &h, &sel, &emb, &hprev}) *p = a.alloc<T>(N * D);
    cat = a.alloc<T>(N * 2 * D);
    rstd = a.alloc<acc_t<T>>(N);
    if (c.q_lora_rank > 0) {
      cq_raw = a.alloc<T>(N * c.q_lora_rank);
      cq = a.alloc<T>(N * c.q_lora_rank);
    }
    q = a.alloc<T>(N * H * c.qk_head_dim());
    kva = a.alloc<T>(N * W);
    lat = a.alloc<T>(N * W);
    qa = a.alloc<T>(N * H * W);
    olat = a.alloc<T>(N * H * c.kv_lora_rank);
    o = a.alloc<T>(N * H * c.v_head_dim);
    if (c.first_k_dense_replace > 0 || c.n_routed_experts == 0) mlp.alloc(a, N, c.intermediate_size);
    if (c.n_routed_experts > 0) moe.alloc(a, c, N, 1, 1);
  }
};

template <class T>
Decoder<T>::Decoder(const ModelConfig& c, const ParamTable& t, const ParamStore<T>& ps, const DecoderOptions& o)
    : cfg_(c), opt_(o), ps_(ps) {
  if (opt_.max_context == 0) opt_.max_context = c.max_position_embeddings;
  UM_CHECK(opt_.max_context >= 1 && opt_.max_context <= c.max_position_embeddings, "infer",
           "context of ", opt_.max_context, " tokens; the model allows 1 to max_position_embeddings = ",
           c.max_position_embeddings);
  UM_CHECK(opt_.slots >= 1, "infer", "decoder slots must be >= 1, got ", opt_.slots);
  UM_CHECK(opt_.max_rows >= 1, "infer", "max_rows must be >= 1, got ", opt_.max_rows);
  UM_CHECK(opt_.mtp_depth >= 0 && opt_.mtp_depth <= c.num_nextn_predict_layers, "infer", "MTP depth ",
           opt_.mtp_depth, " requested; the model has ", c.num_nextn_predict_layers, " MTP modules");
  UM_CHECK(c.n_routed_experts == 0 || t.n_local_experts == c.n_routed_experts, "infer",
           "the decoder needs every expert in one process; the parameter table holds ", t.n_local_experts,
           " of ", c.n_routed_experts);
  UM_CHECK(c.qk_rope_head_dim % 2 == 0, "infer", "qk_rope_head_dim must be even, got ", c.qk_rope_head_dim);
  UM_CHECK(c.rope_scaling.is_null(), "infer", "model.rope_scaling (YaRN) is not implemented; the config has ",
           c.rope_scaling.dump());
  const int64_t L = c.num_hidden_layers, depth = opt_.mtp_depth;
  cache_ = LatentCache<T>(c, L + depth, opt_.slots, opt_.max_context);

  impl_ = std::make_unique<Impl>();
  Impl& m = *impl_;
  for (int l = 0; l < L + depth; ++l) m.layers.push_back(LayerParams::resolve(t, c, l));
  m.embed = t.at("model.embed_tokens.weight").offset;
  m.final_norm = t.at("model.norm.weight").offset;
  m.head = c.tie_word_embeddings ? m.embed : t.at("lm_head.weight").offset;
  for (int64_t k = 1; k <= depth; ++k) {
    const std::string pre = "model.layers." + std::to_string(L + k - 1) + ".";
    m.mtp_p.push_back({t.at(pre + "enorm.weight").offset, t.at(pre + "hnorm.weight").offset,
                       t.at(pre + "eh_proj.weight").offset, t.at(pre + "shared_head.norm.weight").offset});
  }
  const int64_t half = c.qk_rope_head_dim / 2;
  m.rope_cos.resize(opt_.max_context * half);
  m.rope_sin.resize(opt_.max_context * half);
  rope_tables<T>(m.rope_cos.data(), m.rope_sin.data(), opt_.max_context, int(c.qk_rope_head_dim), c.rope_theta);

  Arena probe = Arena::counting();
  m.layout(probe, c, opt_.max_rows);
  m.acts = Arena(probe.used());
  m.layout(m.acts, c, opt_.max_rows);
  m.moe_scratch = Arena(64 * 1024);  // moe_forward uses scratch only in capacity and EP modes
  m.row_tok.resize(opt_.max_rows);
  m.row_pos.resize(opt_.max_rows);
  m.segs.reserve(opt_.max_rows);
  if (depth > 0) m.hist = AlignedArray<T>(depth * opt_.slots * opt_.max_context * c.hidden_size);
  m.hist_slots = opt_.slots;
  m.hist_context = opt_.max_context;
  m.hist_width = c.hidden_size;
}

template <class T>
Decoder<T>::~Decoder() = default;

template <class T>
const T* Decoder<T>::history(int k, int64_t slot, int64_t i) const {
  UM_CHECK(k >= 0 && k < opt_.mtp_depth, "infer", "no MTP history ", k, " (depth ", opt_.mtp_depth, ")");
  return impl_->hist_row(k, slot, i);
}

template <class T>
size_t Decoder<T>::bytes() const {
  return cache_.bytes() + size_t(impl_->hist.size()) * sizeof(T) + impl_->acts.capacity();
}

namespace {

// The chunk's attention, absorbed form: olat (N, H, kvr) from qa (N, H, W) against the cached
// rows of each segment's slot. Tasks are (segment, block of query rows); a task's scores are one
// GEMM of (rows*H, W) against the (keys, W) cache rows, masked per row to [doc start, position].
template <class T>
void attend_absorbed(T* olat, const T* qa, const std::vector<Segment>& segs, const LatentCache<T>& cache,
                     int64_t layer, int64_t H, double scale, const Ctx& ctx) {
  const int64_t W = cache.width(), kvr = cache.kv_lora(), ctx_len = cache.max_context();
  const int64_t qb = std::max<int64_t>(1, 128 / H);  // query rows per task: about 128 score rows
  int64_t n_tasks = 0, work = 0;
  for (const Segment& s : segs) {
    n_tasks += (s.m + qb - 1) / qb;
    work += s.m * H * (s.i0 + s.m) * W;
  }
  const int threads = n_tasks > 1 ? ctx.threads_for(work) : 1;
  T* bufs = ctx.scratch<T>(size_t(threads) * qb * H * ctx_len);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t task = 0; task < n_tasks; ++task) {
    int64_t t = task;
    size_t si = 0;
    for (; si < segs.size(); ++si) {  // find the task's segment (few segments: a linear scan)
      const int64_t nt = (segs[si].m + qb - 1) / qb;
      if (t < nt) break;
      t -= nt;
    }
    const Segment& s = segs[si];
    const int64_t a = t * qb, rows = std::min(qb, s.m - a);
    const int64_t i_first = s.i0 + a, i_last = i_first + rows - 1;
    const int64_t kmin = cache.seg_start(s.slot, i_first), nk = i_last - kmin + 1;
    const T* K = cache.rows(layer, s.slot) + kmin * W;
    const T* Q = qa + (s.row0 + a) * H * W;
    T* S = bufs + int64_t(omp_get_thread_num()) * qb * H * ctx_len;
    cpu::gemm<T>(false, true, rows * H, nk, W, T(scale), Q, W, K, W, T(0), S, nk);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i_first + r, lo = cache.seg_start(s.slot, i) - kmin, hi = i - kmin;
      masked_softmax_rows<T>(S + r * H * nk, H, nk, lo, hi, ctx);
    }
    cpu::gemm<T>(false, false, rows * H, kvr, nk, T(1), S, nk, K, W, T(0), olat + (s.row0 + a) * H * kvr, kvr);
  }
}

// The naive form (the reference): each segment's cached ckv up-projected to per-head K = [k_nope ;
// k_pe] and V, then standard attention per head; o (N, H, dv) from q (N, H, dqk).
template <class T>
void attend_naive(T* o, const T* q, const std::vector<Segment>& segs, const LatentCache<T>& cache,
                  int64_t layer, const T* kv_b, const ModelConfig& c, double scale,
                  std::vector<T>& buf, const Ctx& ctx) {
  const int64_t W = cache.width(), kvr = cache.kv_lora(), H = c.num_attention_heads,
                nope = c.qk_nope_head_dim, rd = c.qk_rope_head_dim, dqk = nope + rd, dv = c.v_head_dim;
  for (const Segment& s : segs) {
    const int64_t i_last = s.i0 + s.m - 1, kmin = cache.seg_start(s.slot, s.i0), nk = i_last - kmin + 1;
    buf.resize(nk * H * (nope + dv) + nk * H * dqk + nk * H * dv + s.m * nk);
    T* kv = buf.data();
    T* K = kv + nk * H * (nope + dv);
    T* V = K + nk * H * dqk;
    T* S = V + nk * H * dv;
    const T* rows = cache.rows(layer, s.slot) + kmin * W;
    linear_forward<T>(kv, H * (nope + dv), rows, W, kv_b, nk, kvr, H * (nope + dv), ctx);
    mla_kv_assemble_forward<T>(K, V, kv, rows, nk, int(H), int(nope), int(rd), int(dv), W, kvr, ctx);
    for (int64_t h = 0; h < H; ++h) {
      gemm<T>(false, true, s.m, nk, dqk, scale, q + s.row0 * H * dqk + h * dqk, H * dqk, K + h * dqk,
              H * dqk, 0.0, S, nk, ctx);
      for (int64_t r = 0; r < s.m; ++r) {
        const int64_t i = s.i0 + r;
        masked_softmax_rows<T>(S + r * nk, 1, nk, cache.seg_start(s.slot, i) - kmin, i - kmin, ctx);
      }
      gemm<T>(false, false, s.m, dv, nk, 1.0, S, nk, V + h * dv, H * dv, 0.0, o + s.row0 * H * dv + h * dv,
              H * dv, ctx);
    }
  }
}

}  // namespace

// Runs the chunk's rows (impl_->x holds their layer input, segs and row_pos describe them)
// through layers [layer_begin, layer_end); the output is left in impl_->x.
template <class T>
void Decoder<T>::head_logits(LogitRows which, T* logits, int64_t done_rows, int64_t N, const Ctx& ctx) {
  Impl& m = *impl_;
  const T* w = ps_.w.data();
  const int64_t D = cfg_.hidden_size, V = cfg_.vocab_size;
  if (which == LogitRows::all) {
    dec_linear<T>(logits + done_rows * V, V, m.h, D, w + m.head, N, D, V, opt_.skinny_rows, ctx);
  } else if (which == LogitRows::last) {
    int64_t n_sel = 0, first_feed = -1;
    for (const Segment& s : m.segs)
      if (s.ends_feed) {
        if (first_feed < 0) first_feed = s.feed;
        std::memcpy(m.sel + n_sel++ * D, m.h + (s.row0 + s.m - 1) * D, sizeof(T) * D);
      }
    if (n_sel > 0) dec_linear<T>(logits + first_feed * V, V, m.sel, D, w + m.head, n_sel, D, V, opt_.skinny_rows, ctx);
  }
}

template <class T>
void Decoder<T>::run_chunk(int layer_begin, int layer_end, const Ctx& ctx) {
  Impl& m = *impl_;
  const ModelConfig& c = cfg_;
  const T* w = ps_.w.data();
  const WeightPtrs<T> weights{w, w, nullptr, ps_.buf.data()};
  const int64_t N = m.segs.empty() ? 0 : m.segs.back().row0 + m.segs.back().m;
  const int64_t D = c.hidden_size, H = c.num_attention_heads, nope = c.qk_nope_head_dim,
                rd = c.qk_rope_head_dim, dqk = nope + rd, dv = c.v_head_dim, kvr = c.kv_lora_rank,
                W = kvr + rd, qr = c.q_lora_rank;
  const double eps = c.rms_norm_eps, scale = 1.0 / std::sqrt(double(dqk));
  const int32_t* pos = m.row_pos.data();
  const int64_t sk = opt_.skinny_rows;
  for (int l = layer_begin; l < layer_end; ++l) {
    const LayerParams& p = m.layers[l];
    const MlaParams& a = p.attn;
    // --- attention (design.md 1.4) ---
    rmsnorm_forward<T>(m.a_n, D, m.rstd, m.x, D, w + p.in_norm, N, D, eps, ctx);
    if (qr > 0) {
      dec_linear<T>(m.cq_raw, qr, m.a_n, D, w + a.q_a, N, D, qr, sk, ctx);
      rmsnorm_forward<T>(m.cq, qr, m.rstd, m.cq_raw, qr, w + a.q_a_norm, N, qr, eps, ctx);
      dec_linear<T>(m.q, H * dqk, m.cq, qr, w + a.q_b, N, qr, H * dqk, sk, ctx);
    } else {
      dec_linear<T>(m.q, H * dqk, m.a_n, D, w + a.q, N, D, H * dqk, sk, ctx);
    }
    rope_forward<T>(m.q + nope, m.q + nope, pos, m.rope_cos.data(), m.rope_sin.data(), N, int(H), H * dqk,
                    dqk, int(rd), ctx);
    dec_linear<T>(m.kva, W, m.a_n, D, w + a.kv_a, N, D, W, sk, ctx);
    rmsnorm_forward<T>(m.lat, W, m.rstd, m.kva, W, w + a.kv_a_norm, N, kvr, eps, ctx);
    rope_forward<T>(m.lat + kvr, m.kva + kvr, pos, m.rope_cos.data(), m.rope_sin.data(), N, 1, W, W,
                    int(rd), ctx);
    for (const Segment& s : m.segs)  // the new rows join the cache before anyone attends
      std::memcpy(cache_.rows(l, s.slot) + s.i0 * W, m.lat + s.row0 * W, sizeof(T) * s.m * W);
    const T* kv_b = w + a.kv_b;
    if (opt_.mla == MlaMode::absorbed) {
      for (int64_t h = 0; h < H; ++h) {  // q_nope_h W_uk_h; W_uk_h = kv_b rows [h(nope+dv), +nope)
        gemm<T>(false, false, N, kvr, nope, 1.0, m.q + h * dqk, H * dqk, kv_b + h * (nope + dv) * kvr, kvr,
                0.0, m.qa + h * W, H * W, ctx);
        copy_rows<T>(m.qa + h * W + kvr, H * W, m.q + h * dqk + nope, H * dqk, N, rd, false, ctx);
      }
      attend_absorbed<T>(m.olat, m.qa, m.segs, cache_, l, H, scale, ctx);
      for (int64_t h = 0; h < H; ++h)  // o_h = olat_h W_uv_h^T; W_uv_h = kv_b rows [h(nope+dv)+nope, +dv)
        gemm<T>(false, true, N, dv, kvr, 1.0, m.olat + h * kvr, H * kvr, kv_b + (h * (nope + dv) + nope) * kvr,
                kvr, 0.0, m.o + h * dv, H * dv, ctx);
    } else {
      attend_naive<T>(m.o, m.q, m.segs, cache_, l, kv_b, c, scale, m.naive_buf, ctx);
    }
    dec_linear<T>(m.att, D, m.o, H * dv, w + a.o, N, H * dv, D, sk, ctx);
    if (attn_capture_) {
      attn_capture_->resize(cache_.n_layers());
      (*attn_capture_)[l].assign(m.att, m.att + N * D);
    }
    // --- residual, FFN, residual (design.md 1.2) ---
    // out = h + post_norm(sub) with sandwich norm (the post norm at offset `norm`), h + sub without
    auto residual = [&](T* out, const T* h, const T* sub, int64_t norm) {
      if (c.sandwich_norm) {
        rmsnorm_forward<T>(out, D, m.rstd, sub, D, w + norm, N, D, eps, ctx);
        add_inplace<T>(out, h, N * D, ctx);
      } else {
        ctx.copy(out, h, size_t(N * D));
        add_inplace<T>(out, sub, N * D, ctx);
      }
    };
    residual(m.x_mid, m.x, m.att, p.post_attn_norm);
    rmsnorm_forward<T>(m.f_n, D, m.rstd, m.x_mid, D, w + p.pre_ffn_norm, N, D, eps, ctx);
    const bool use_bias = opt_.aux_free || c.aux_free_bias;
    if (p.moe && N <= sk) {
      moe_few_rows<T>(m.ffn, m.moe, m.f_n, w, ps_.buf.data(), p.moe_p, c, use_bias, N, ctx);
    } else if (p.moe) {
      MoeOptions mo;
      mo.spec = {c.topk_method, int(c.num_experts_per_tok), int(c.n_group), int(c.topk_group)};
      mo.use_bias = use_bias;
      mo.capacity_factor = 0;  // inference is always dropless (design.md 1.5)
      mo.pool_rows = N;        // statistics only; no loss here
      mo.layer = l;
      moe_forward<T>(m.ffn, m.moe, m.moe_stats, m.f_n, weights, p.moe_p, c, mo, N, m.moe_scratch, ctx);
    } else if (N <= sk) {
      mlp_few_rows<T>(m.ffn, m.mlp, m.f_n, w, p.dense, N, D, ctx);
    } else {
      mlp_forward<T>(m.ffn, false, m.mlp, m.f_n, weights, p.dense, N, D, ctx);
    }
    residual(m.x2, m.x_mid, m.ffn, p.post_ffn_norm);
    std::swap(m.x, m.x2);
  }
}

namespace {

// Splits feeds into chunks of at most max_rows rows, in feed order; `emit` gets each chunk's
// segments. A feed may straddle chunks.
template <class F>
void for_each_chunk(const std::vector<int64_t>& slot, const std::vector<int64_t>& first,
                    const std::vector<int64_t>& n, int64_t max_rows, std::vector<Segment>& segs, F&& emit) {
  size_t f = 0;
  int64_t off = 0;
  while (f < slot.size()) {
    segs.clear();
    int64_t N = 0;
    while (f < slot.size() && N < max_rows) {
      const int64_t take = std::min(n[f] - off, max_rows - N);
      Segment s;
      s.slot = slot[f];
      s.row0 = N;
      s.m = take;
      s.i0 = first[f] + off;
      s.feed = int64_t(f);
      off += take;
      N += take;
      s.ends_feed = off == n[f];
      segs.push_back(s);
      if (s.ends_feed) ++f, off = 0;
    }
    emit(N);
  }
}

}  // namespace

template <class T>
void Decoder<T>::forward(const std::vector<Feed>& feeds, LogitRows which, T* logits, const Ctx& ctx) {
  Impl& m = *impl_;
  const ModelConfig& c = cfg_;
  const int64_t D = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  const T* w = ps_.w.data();
  // check everything before changing any state
  std::vector<int64_t> slot(feeds.size()), first(feeds.size()), n(feeds.size());
  std::vector<char> seen(opt_.slots, 0);
  for (size_t f = 0; f < feeds.size(); ++f) {
    const Feed& fd = feeds[f];
    UM_CHECK(fd.slot >= 0 && fd.slot < opt_.slots, "infer", "sequence slot ", fd.slot, " out of range [0, ",
             opt_.slots, ")");
    UM_CHECK(!seen[fd.slot], "infer", "sequence slot ", fd.slot, " appears twice in one forward");
    seen[fd.slot] = 1;
    UM_CHECK(fd.n >= 1, "infer", "empty feed for sequence slot ", fd.slot);
    UM_CHECK(cache_.length(fd.slot) + fd.n <= opt_.max_context, "infer", "sequence slot ", fd.slot, " holds ",
             cache_.length(fd.slot), " tokens; ", fd.n, " more exceed the context of ", opt_.max_context);
    for (int64_t i = 0; i < fd.n; ++i)
      UM_CHECK(fd.tokens[i] >= 0 && fd.tokens[i] < V, "infer", "token id ", fd.tokens[i],
               " outside the vocabulary [0, ", V, ")");
    slot[f] = fd.slot;
    n[f] = fd.n;
  }
  for (size_t f = 0; f < feeds.size(); ++f) first[f] = cache_.append(slot[f], feeds[f].tokens, n[f]);

  int64_t done_rows = 0;
  for_each_chunk(slot, first, n, opt_.max_rows, m.segs, [&](int64_t N) {
    for (const Segment& s : m.segs)
      for (int64_t r = 0; r < s.m; ++r) {
        m.row_tok[s.row0 + r] = cache_.tokens(s.slot)[s.i0 + r];
        m.row_pos[s.row0 + r] = cache_.rope_pos(s.slot, s.i0 + r);
      }
    embedding_forward<T>(m.x, m.row_tok.data(), w + m.embed, N, D, ctx);
    run_chunk(0, int(L), ctx);
    rmsnorm_forward<T>(m.h, D, m.rstd, m.x, D, w + m.final_norm, N, D, c.rms_norm_eps, ctx);
    if (opt_.mtp_depth > 0)
      for (const Segment& s : m.segs)
        std::memcpy(m.hist_row(0, s.slot, s.i0), m.h + s.row0 * D, sizeof(T) * s.m * D);
    head_logits(which, logits, done_rows, N, ctx);
    done_rows += N;
  });
}

template <class T>
void Decoder<T>::mtp_forward(int k, const std::vector<MtpFeed>& feeds, LogitRows which, T* logits,
                             const Ctx& ctx) {
  Impl& m = *impl_;
  const ModelConfig& c = cfg_;
  const int64_t D = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  const T* w = ps_.w.data();
  UM_CHECK(k >= 1 && k <= opt_.mtp_depth, "infer", "MTP module ", k, " is not kept (depth ", opt_.mtp_depth, ")");
  std::vector<int64_t> slot(feeds.size()), first(feeds.size()), n(feeds.size());
  std::vector<char> seen(opt_.slots, 0);
  for (size_t f = 0; f < feeds.size(); ++f) {
    const MtpFeed& fd = feeds[f];
    UM_CHECK(fd.slot >= 0 && fd.slot < opt_.slots, "infer", "sequence slot ", fd.slot, " out of range");
    UM_CHECK(!seen[fd.slot], "infer", "sequence slot ", fd.slot, " appears twice in one MTP forward");
    seen[fd.slot] = 1;
    UM_CHECK(fd.n >= 1 && fd.first >= 0 && fd.first <= cache_.mtp_length(k, fd.slot) &&
                 fd.first + fd.n <= cache_.length(fd.slot),
             "infer", "MTP module ", k, ": rows [", fd.first, ", ", fd.first + fd.n, ") of slot ", fd.slot,
             " need the module's cache up to ", fd.first, " (it has ", cache_.mtp_length(k, fd.slot),
             ") and main positions up to ", fd.first + fd.n, " (it has ", cache_.length(fd.slot), ")");
    for (int64_t i = 0; i < fd.n; ++i)
      UM_CHECK(fd.tokens[i] >= 0 && fd.tokens[i] < V, "infer", "token id ", fd.tokens[i],
               " outside the vocabulary [0, ", V, ")");
    slot[f] = fd.slot;
    first[f] = fd.first;
    n[f] = fd.n;
  }
  const auto& mp = m.mtp_p[k - 1];
  const int layer = int(L + k - 1);
  int64_t done_rows = 0;
  // tokens of a chunk row: feed f's tokens at (position - first)
  for_each_chunk(slot, first, n, opt_.max_rows, m.segs, [&](int64_t N) {
    for (const Segment& s : m.segs)
      for (int64_t r = 0; r < s.m; ++r) {
        m.row_tok[s.row0 + r] = feeds[s.feed].tokens[s.i0 + r - first[s.feed]];
        m.row_pos[s.row0 + r] = cache_.rope_pos(s.slot, s.i0 + r);
        std::memcpy(m.hprev + (s.row0 + r) * D, m.hist_row(k - 1, s.slot, s.i0 + r), sizeof(T) * D);
      }
    // h' = eh_proj [enorm(Emb(x_{j+k})) ; hnorm(h^{k-1}_j)]  (embedding half first, design.md 1.7)
    embedding_forward<T>(m.emb, m.row_tok.data(), w + m.embed, N, D, ctx);
    rmsnorm_forward<T>(m.cat, 2 * D, m.rstd, m.emb, D, w + mp.enorm, N, D, c.rms_norm_eps, ctx);
    rmsnorm_forward<T>(m.cat + D, 2 * D, m.rstd, m.hprev, D, w + mp.hnorm, N, D, c.rms_norm_eps, ctx);
    dec_linear<T>(m.x, D, m.cat, 2 * D, w + mp.eh_proj, N, 2 * D, D, opt_.skinny_rows, ctx);
    run_chunk(layer, layer + 1, ctx);
    rmsnorm_forward<T>(m.h, D, m.rstd, m.x, D, w + mp.head_norm, N, D, c.rms_norm_eps, ctx);
    if (k < opt_.mtp_depth)
      for (const Segment& s : m.segs)
        std::memcpy(m.hist_row(k, s.slot, s.i0), m.h + s.row0 * D, sizeof(T) * s.m * D);
    head_logits(which, logits, done_rows, N, ctx);
    done_rows += N;
  });
  for (size_t f = 0; f < feeds.size(); ++f) cache_.set_mtp_length(k, slot[f], first[f] + n[f]);
}

template class Decoder<float>;
template class Decoder<double>;

}  // namespace um
