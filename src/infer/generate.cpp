#include "infer/generate.h"

#include <algorithm>
#include <chrono>

#include "model/batch.h"

namespace um {

template <class T>
GenerateResult generate_full_recompute(Model<T>& model, ParamStore<T>& ps,
                                       const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                                       const SamplingParams& sp, const Ctx& ctx,
                                       const std::function<void(int32_t)>& on_token) {
  const int64_t T_ = model.options().seq_len, V = model.config().vocab_size;
  UM_CHECK(!prompt.empty(), "sample", "empty prompt");
  UM_CHECK(int64_t(prompt.size()) <= T_, "sample", "the prompt has ", prompt.size(),
           " tokens (with BOS) but the model's context is ", T_);
  // one window of T+1 ids; positions past the sequence hold PAD, which causal attention never
  // lets the real positions see
  std::vector<int32_t> window(T_ + 1, kPadId);
  std::copy(prompt.begin(), prompt.end(), window.begin());
  int64_t len = int64_t(prompt.size());
  StepScales sc;
  sc.n_mtp.assign(model.config().num_nextn_predict_layers, 1.0);
  sc.with_mtp = false;
  Capture<T> cap;
  SamplingDist dist;
  GenerateResult r;
  for (int64_t i = 0; i < max_new_tokens; ++i) {
    if (len > T_) {  // the next token would need position T
      r.hit_context = true;
      break;
    }
    model.forward_backward(ps, window.data(), 1, sc, false, ctx, &cap);
    const int32_t next = sample_token<T>(cap.logits.data() + (len - 1) * V, V, sp, 0, len, dist);
    r.tokens.push_back(next);
    if (on_token) on_token(next);
    if (next == kEosId) {
      r.hit_eos = true;
      break;
    }
    window[len++] = next;
  }
  return r;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

template <class T>
std::vector<GenerateResult> generate(Decoder<T>& dec, const std::vector<std::vector<int32_t>>& prompts,
                                     const GenerateOptions& o, const Ctx& ctx, GenerateStats* stats,
                                     const std::function<void(int64_t, int32_t)>& on_token,
                                     const std::vector<int64_t>& sequence_ids) {
  const int64_t B = int64_t(prompts.size()), V = dec.config().vocab_size,
                n_ctx = dec.options().max_context, depth = dec.options().mtp_depth;
  const SamplingParams& sp = o.sampling;
  const int64_t Vs = sp.usable(V);  // ids that may be drawn (drafts included)
  UM_CHECK(B >= 1, "sample", "no prompts to generate from");
  UM_CHECK(B <= dec.options().slots, "sample", B, " prompts, but the decoder has ", dec.options().slots,
           " sequence slots");
  UM_CHECK(sequence_ids.empty() || int64_t(sequence_ids.size()) == B, "sample", sequence_ids.size(),
           " sequence ids for ", B, " prompts");
  UM_CHECK(o.max_new_tokens >= 1, "sample", "max_new_tokens must be >= 1, got ", o.max_new_tokens);
  for (int64_t b = 0; b < B; ++b) {
    UM_CHECK(!prompts[b].empty(), "sample", "prompt ", b, " is empty (it needs at least BOS)");
    UM_CHECK(int64_t(prompts[b].size()) <= n_ctx, "sample", "prompt ", b, " has ", prompts[b].size(),
             " tokens (with BOS) but the context is ", n_ctx);
  }
  int64_t G = 0;
  if (o.speculative) {
    UM_CHECK(depth >= 1, "sample", "speculative decoding drafts with the MTP modules, but the decoder keeps none (",
             "the model has num_nextn_predict_layers = ", dec.config().num_nextn_predict_layers, ")");
    G = o.draft == 0 ? depth : o.draft;
    UM_CHECK(G >= 1 && G <= depth, "sample", "draft length ", o.draft, ": must be 1 to the MTP depth ", depth);
  }
  auto seq_id = [&](int64_t b) { return sequence_ids.empty() ? b : sequence_ids[b]; };
  LatentCache<T>& cache = dec.cache();

  std::vector<GenerateResult> res(B);
  std::vector<char> active(B, 1);
  std::vector<int32_t> pending(B);  // sampled, not yet fed to the model
  SamplingDist dist;
  GenerateStats st;
  st.sequences = B;
  auto emit = [&](int64_t b, int32_t id) {
    res[b].tokens.push_back(id);
    ++st.generated_tokens;
    if (on_token) on_token(b, id);
    if (id == kEosId && o.stop_at_eos) {
      res[b].hit_eos = true;
      active[b] = 0;
    } else if (int64_t(res[b].tokens.size()) >= o.max_new_tokens) {
      active[b] = 0;
    }
  };

  // ---- prefill: all prompts in one pass (chunked by the decoder), logits of each last row ----
  auto t0 = std::chrono::steady_clock::now();
  std::vector<T> logits(B * (G + 1) * V);
  std::vector<Feed> feeds;
  for (int64_t b = 0; b < B; ++b) {
    cache.clear(b);
    feeds.push_back({b, prompts[b].data(), int64_t(prompts[b].size())});
    st.prompt_tokens += int64_t(prompts[b].size());
  }
  dec.forward(feeds, LogitRows::last, logits.data(), ctx);
  for (int64_t b = 0; b < B; ++b) {
    pending[b] = sample_token<T>(logits.data() + b * V, V, sp, seq_id(b), cache.length(b), dist);
    emit(b, pending[b]);
  }
  st.prefill_seconds = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();

  // ---- decode ----
  std::vector<std::vector<int32_t>> drafts(B, std::vector<int32_t>(G)), rows(B);
  std::vector<int64_t> g(B, 0);
  std::vector<int64_t> order;
  std::vector<MtpFeed> mtp_feeds;
  for (;;) {
    order.clear();
    for (int64_t b = 0; b < B; ++b) {
      if (!active[b]) continue;
      if (cache.length(b) >= n_ctx) {  // the pending token would need a position past the context
        res[b].hit_context = true;
        active[b] = 0;
        continue;
      }
      order.push_back(b);
    }
    if (order.empty()) break;

    // drafts: module k proposes x_{P+k+1} from h^{k-1}_P and x_{P+k}; its rows [v_k, P] first
    // catch up on the positions accepted since its last run
    for (int64_t b : order) {
      const int64_t len = cache.length(b);
      g[b] = std::max<int64_t>(0, std::min({G, n_ctx - len - 1, o.max_new_tokens - int64_t(res[b].tokens.size()) - 1}));
    }
    for (int64_t k = 1; k <= G; ++k) {
      mtp_feeds.clear();
      for (int64_t b : order) {
        if (g[b] < k) continue;
        const int64_t P = cache.length(b) - 1, v = cache.mtp_length(k, b);
        std::vector<int32_t>& tok = rows[b];
        tok.clear();
        for (int64_t j = v; j <= P; ++j) {  // x_{j+k}: cached, the pending token, or a draft
          const int64_t i = j + k;
          tok.push_back(i <= P ? cache.tokens(b)[i] : (i == P + 1 ? pending[b] : drafts[b][i - P - 2]));
        }
        mtp_feeds.push_back({b, v, tok.data(), int64_t(tok.size())});
      }
      if (mtp_feeds.empty()) break;
      dec.mtp_forward(int(k), mtp_feeds, LogitRows::last, logits.data(), ctx);
      for (size_t f = 0; f < mtp_feeds.size(); ++f) {
        const int64_t b = mtp_feeds[f].slot, P = cache.length(b) - 1;
        drafts[b][k - 1] = argmax_token(logits.data() + int64_t(f) * V, Vs);
        // rows whose x_{j+k} was a draft are recomputed next round
        cache.set_mtp_length(k, b, std::min(P + 1, P + 2 - k));
      }
    }

    // one main pass over the pending token and the drafts of every running sequence
    feeds.clear();
    for (int64_t b : order) {
      rows[b].assign(1, pending[b]);
      rows[b].insert(rows[b].end(), drafts[b].begin(), drafts[b].begin() + g[b]);
      feeds.push_back({b, rows[b].data(), int64_t(rows[b].size())});
    }
    dec.forward(feeds, LogitRows::all, logits.data(), ctx);
    ++st.decode_passes;
    int64_t row = 0;
    for (int64_t b : order) {
      const int64_t P = cache.length(b) - 1 - g[b] - 1;  // last position before this pass
      int64_t a = 0;
      int32_t next = -1;
      for (int64_t r = 0; r <= g[b]; ++r) {
        const T* lg = logits.data() + (row + r) * V;
        const int64_t position = P + 2 + r;  // index of the token row r predicts
        const bool has_draft = r < g[b];
        const int32_t d = has_draft ? drafts[b][r] : -1;
        if (sp.greedy()) {
          const int32_t y = argmax_token(lg, Vs);
          if (has_draft && d == y) {
            ++a;
            continue;
          }
          next = y;
        } else if (!has_draft) {
          next = sample_token<T>(lg, V, sp, seq_id(b), position, dist);
        } else {
          sampling_distribution(lg, V, sp, dist);
          if (sampling_uniform(sp, "accept", seq_id(b), position) < dist.probability(d)) {
            ++a;
            continue;
          }
          next = dist.draw(sampling_uniform(sp, "sample", seq_id(b), position), d);
        }
        break;
      }
      row += g[b] + 1;
      st.drafted += g[b];
      st.accepted += a;
      cache.truncate(b, P + 2 + a);  // the pending token and the accepted drafts stay cached
      for (int64_t r = 0; r < a && active[b]; ++r) emit(b, drafts[b][r]);
      if (active[b]) emit(b, next);
      pending[b] = next;
    }
  }
  st.decode_seconds = seconds_since(t0);
  if (stats) *stats = st;
  return res;
}

#define UM_INSTANTIATE(T)                                                                                   \
  template GenerateResult generate_full_recompute<T>(Model<T>&, ParamStore<T>&, const std::vector<int32_t>&, \
                                                     int64_t, const SamplingParams&, const Ctx&,            \
                                                     const std::function<void(int32_t)>&);                  \
  template std::vector<GenerateResult> generate<T>(Decoder<T>&, const std::vector<std::vector<int32_t>>&,   \
                                                   const GenerateOptions&, const Ctx&, GenerateStats*,      \
                                                   const std::function<void(int64_t, int32_t)>&,            \
                                                   const std::vector<int64_t>&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
#undef UM_INSTANTIATE

}  // namespace um
