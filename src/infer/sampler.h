// Sampling one token from logits (design.md 1.9): temperature -> top-k -> top-p on the renormalised
// distribution -> draw. Each draw uses a counter-based stream keyed by (seed, sequence index,
// position), so batching never changes results. temperature 0 (or top_k 1) is greedy, ties to
// the lower token id.
// Also the pieces speculative sampling needs (infer/generate.h): the truncated distribution made
// explicit, the probability it gives a drafted token, and a draw with that token excluded.
// Not here: logits (infer/decoder.h), the generation loops.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace um {

struct SamplingParams {
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = all
  double top_p = 1.0;        // 1 = all
  uint64_t seed = 0;
  // > 0: only ids below it are drawn (the tokenizer's vocabulary when the model's is larger; the
  // extra rows are never trained as targets, design.md 3)
  int64_t vocab_limit = 0;
  int64_t usable(int64_t V) const { return vocab_limit > 0 && vocab_limit < V ? vocab_limit : V; }
  bool greedy() const { return temperature <= 0 || top_k == 1; }
};

// The distribution a draw uses: the first n candidates (by probability descending, ties to the
// lower id) with unnormalised weights summing to total.
struct SamplingDist {
  std::vector<std::pair<double, int32_t>> cand;  // (weight, id)
  int64_t n = 0;
  double total = 0;
  double probability(int32_t id) const;          // 0 for ids cut by top-k / top-p
  // The candidate at cumulative mass u * (total - weight of `exclude`), skipping `exclude`
  // (-1: none). Used with exclude = a rejected draft: the residual max(0, p - q) of a one-hot
  // draft q, renormalised, is p without that token.
  int32_t draw(double u, int32_t exclude = -1) const;
};

// Not for greedy params (their distribution is the argmax). Honours p.vocab_limit.
template <class T>
void sampling_distribution(const T* logits, int64_t V, const SamplingParams& p, SamplingDist& out);

// The lowest id among the largest logits.
template <class T>
int32_t argmax_token(const T* logits, int64_t V);

// The uniform of the draw for (sequence, position); `stream` separates the draw itself ("sample")
// from the speculative acceptance test ("accept").
double sampling_uniform(const SamplingParams& p, const char* stream, int64_t sequence, int64_t position);

// `dist` is reused between calls to avoid allocation. Honours p.vocab_limit.
template <class T>
int32_t sample_token(const T* logits, int64_t V, const SamplingParams& p, int64_t sequence,
                     int64_t position, SamplingDist& dist);

}  // namespace um
