// Sampling one token from logits (DESIGN 1.9): temperature -> top-k -> top-p on the renormalised
// distribution -> draw. Each draw uses a counter-based stream keyed by (seed, sequence index,
// position), so batching never changes results. temperature 0 (or top_k 1) is greedy, ties to
// the lower token id.
#pragma once

#include <cstdint>
#include <vector>

namespace um {

struct SamplingParams {
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = all
  double top_p = 1.0;        // 1 = all
  uint64_t seed = 0;
};

// `scratch` is reused between calls to avoid allocation.
template <class T>
int32_t sample_token(const T* logits, int64_t V, const SamplingParams& p, int64_t sequence,
                     int64_t position, std::vector<std::pair<double, int32_t>>& scratch);

}  // namespace um
