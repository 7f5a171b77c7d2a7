#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/rng.h"

namespace um {

template <class T>
int32_t sample_token(const T* logits, int64_t V, const SamplingParams& p, int64_t sequence,
                     int64_t position, std::vector<std::pair<double, int32_t>>& cand) {
  if (p.temperature <= 0 || p.top_k == 1) {
    int32_t best = 0;
    for (int64_t j = 1; j < V; ++j)
      if (logits[j] > logits[best]) best = static_cast<int32_t>(j);
    return best;
  }
  // candidates by probability, descending (ties: lower id first)
  cand.resize(V);
  double m = -INFINITY;
  for (int64_t j = 0; j < V; ++j) m = std::max(m, double(logits[j]) / p.temperature);
  for (int64_t j = 0; j < V; ++j) cand[j] = {std::exp(double(logits[j]) / p.temperature - m), int32_t(j)};
  auto by_prob = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  int64_t n = V;
  if (p.top_k > 0 && p.top_k < V) {
    std::partial_sort(cand.begin(), cand.begin() + p.top_k, cand.end(), by_prob);
    n = p.top_k;
  } else {
    std::sort(cand.begin(), cand.end(), by_prob);
  }
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += cand[i].first;
  if (p.top_p < 1.0) {  // smallest prefix whose renormalised mass reaches top_p
    double mass = 0;
    int64_t keep = 0;
    while (keep < n) {
      mass += cand[keep++].first / total;
      if (mass >= p.top_p) break;
    }
    n = keep;
    total = 0;
    for (int64_t i = 0; i < n; ++i) total += cand[i].first;
  }
  const Philox rng(p.seed, "sample." + std::to_string(sequence));
  double u = rng.uniform(static_cast<uint64_t>(position)) * total;
  for (int64_t i = 0; i < n; ++i) {
    u -= cand[i].first;
    if (u < 0) return cand[i].second;
  }
  return cand[n - 1].second;
}

template int32_t sample_token<float>(const float*, int64_t, const SamplingParams&, int64_t, int64_t,
                                     std::vector<std::pair<double, int32_t>>&);
template int32_t sample_token<double>(const double*, int64_t, const SamplingParams&, int64_t, int64_t,
                                      std::vector<std::pair<double, int32_t>>&);

}  // namespace um
