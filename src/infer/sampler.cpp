#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/rng.h"

namespace um {

double SamplingDist::probability(int32_t id) const {
  for (int64_t i = 0; i < n; ++i)
    if (cand[i].second == id) return cand[i].first / total;
  return 0;
}

int32_t SamplingDist::draw(double u, int32_t exclude) const {
  double mass = total;
  for (int64_t i = 0; i < n; ++i)
    if (cand[i].second == exclude) mass -= cand[i].first;
  double left = u * mass;
  int32_t last = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (cand[i].second == exclude) continue;
    last = cand[i].second;
    left -= cand[i].first;
    if (left < 0) return last;
  }
  // rounding left a sliver of u past the end, or every candidate was excluded (a one-candidate
  // distribution whose token was rejected cannot happen: it has probability 1)
  return last >= 0 ? last : cand[0].second;
}

template <class T>
int32_t argmax_token(const T* logits, int64_t V) {
  int32_t best = 0;
  for (int64_t j = 1; j < V; ++j)
    if (logits[j] > logits[best]) best = static_cast<int32_t>(j);
  return best;
}

template <class T>
void sampling_distribution(const T* logits, int64_t V, const SamplingParams& p, SamplingDist& d) {
  V = p.usable(V);
  // candidates by probability, descending (ties: lower id first)
  auto& cand = d.cand;
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
  d.n = n;
  d.total = total;
}

double sampling_uniform(const SamplingParams& p, const char* stream, int64_t sequence, int64_t position) {
  const Philox rng(p.seed, std::string(stream) + "." + std::to_string(sequence));
  return rng.uniform(static_cast<uint64_t>(position));
}

template <class T>
int32_t sample_token(const T* logits, int64_t V, const SamplingParams& p, int64_t sequence,
                     int64_t position, SamplingDist& dist) {
  if (p.greedy()) return argmax_token(logits, p.usable(V));
  sampling_distribution(logits, V, p, dist);
  return dist.draw(sampling_uniform(p, "sample", sequence, position));
}

#define UM_INSTANTIATE(T)                                                                          \
  template int32_t argmax_token<T>(const T*, int64_t);                                             \
  template void sampling_distribution<T>(const T*, int64_t, const SamplingParams&, SamplingDist&); \
  template int32_t sample_token<T>(const T*, int64_t, const SamplingParams&, int64_t, int64_t, SamplingDist&);
UM_INSTANTIATE(float)
UM_INSTANTIATE(double)
#undef UM_INSTANTIATE

}  // namespace um
