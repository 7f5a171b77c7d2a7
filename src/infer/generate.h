// Text generation loops (design.md 1.9). Prompts get BOS prepended by the caller (the ids passed
// here start with it); generation stops at EOS (which is kept in the output), at max_new_tokens,
// or when the context is full (the next token would need a position past it).
//
// generate_full_recompute: every new token re-runs the whole window through the training forward
// (no cache). Slow and simple: the reference the cached decoder must match and beat.
//
// generate: the cached decoder (infer/decoder.h) on a batch of prompts at once: one prefill pass
// over all prompts, then one decode pass per step over the sequences still running. Sampling
// keys every draw by (seed, sequence id, position), so a prompt gets the same tokens alone or in
// any batch.
//
// Speculative mode (MTP self-speculative decoding, DeepSeek-V3 sec. 5.4.3 / design.md 1.9): each round
// the MTP modules draft up to G tokens after the pending one (module k, fed the module k-1 state
// and token x_{P+k}, proposes x_{P+k+1}), one main pass verifies the pending token and the drafts
// together, and the longest prefix of drafts that the main model itself would have produced is
// accepted, plus the main model's own token after it (the correction, or a bonus when all drafts
// pass). Greedy: a draft passes iff it is the argmax, so the tokens are exactly those of plain
// greedy decoding. Sampling: the standard exact rule for a one-hot draft q = [d]: accept d with
// probability p(d) (p after temperature/top-k/top-p), else draw from p without d (= the
// renormalised max(0, p - q)); the output distribution is exactly p at every position, though the
// individual tokens differ from plain sampling (the draws are used differently). The MTP caches
// are then extended with the accepted positions at the start of the next round.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "infer/decoder.h"
#include "infer/sampler.h"
#include "model/model.h"

namespace um {

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (without the prompt)
  bool hit_eos = false;
  bool hit_context = false;
};

// on_token (optional) is called with each new id as it is produced (for streaming output).
template <class T>
GenerateResult generate_full_recompute(Model<T>& model, ParamStore<T>& ps,
                                       const std::vector<int32_t>& prompt_with_bos,
                                       int64_t max_new_tokens, const SamplingParams& sp,
                                       const Ctx& ctx,
                                       const std::function<void(int32_t)>& on_token = {});

struct GenerateOptions {
  int64_t max_new_tokens = 100;
  SamplingParams sampling;
  bool speculative = false;  // MTP self-speculative decoding (the decoder needs mtp_depth >= 1)
  int64_t draft = 0;         // drafted tokens per round, <= the decoder's mtp_depth; 0 = all of it
  bool stop_at_eos = true;   // false: EOS is generated like any token (fixed-length benchmarks)
};

struct GenerateStats {
  int64_t sequences = 0;
  int64_t prompt_tokens = 0;      // prefill rows (BOS included)
  int64_t generated_tokens = 0;   // all emitted ids (EOS included)
  double prefill_seconds = 0;     // the prefill pass, which also yields each sequence's first token
  double decode_seconds = 0;      // everything after it (MTP drafting of the prompt included)
  int64_t decode_passes = 0;      // main-model passes after the prefill (decode or verify)
  int64_t drafted = 0;            // speculative: drafts proposed
  int64_t accepted = 0;           // speculative: drafts accepted
  // tokens per second of the prefill and of the decode phase (tokens after each first one)
  double prefill_tokens_per_s() const { return prefill_seconds > 0 ? double(prompt_tokens) / prefill_seconds : 0; }
  double decode_tokens_per_s() const {
    return decode_seconds > 0 ? double(generated_tokens - sequences) / decode_seconds : 0;
  }
  double acceptance() const { return drafted > 0 ? double(accepted) / double(drafted) : 0; }
};

// Generates a continuation of every prompt (ids with BOS) in decoder slots 0..B-1 (cleared first).
// sequence_ids key the sampling streams (default 0..B-1). on_token(b, id) streams the output.
// Errors: no prompts, an empty prompt, more prompts than slots, a prompt longer than the context.
template <class T>
std::vector<GenerateResult> generate(Decoder<T>& dec, const std::vector<std::vector<int32_t>>& prompts,
                                     const GenerateOptions& o, const Ctx& ctx, GenerateStats* stats = nullptr,
                                     const std::function<void(int64_t, int32_t)>& on_token = {},
                                     const std::vector<int64_t>& sequence_ids = {});

}  // namespace um
