#include "parallel/attention_balance.h"

#include <algorithm>
#include <numeric>

#include "model/batch.h"

namespace um {

std::vector<double> attention_costs(const int32_t* windows, int64_t B, int64_t T) {
  std::vector<double> c(B, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* x = windows + b * (T + 1);
    int64_t len = 0;
    for (int64_t i = 0; i < T; ++i) {
      ++len;
      if (x[i] == kEosId) {
        c[b] += double(len) * double(len);
        len = 0;
      }
    }
    c[b] += double(len) * double(len);
  }
  return c;
}

namespace {

double max_over_mean(const std::vector<std::vector<int64_t>>& seqs, const std::vector<double>& costs) {
  double mx = 0, total = 0;
  for (const auto& s : seqs) {
    double c = 0;
    for (int64_t i : s) c += costs[i];
    mx = std::max(mx, c);
    total += c;
  }
  return total > 0 ? mx / (total / double(seqs.size())) : 1.0;
}

}  // namespace

SequenceAssignment canonical_assignment(const std::vector<double>& costs, int64_t W, int64_t m) {
  const int64_t B = int64_t(costs.size()), n_micro = B / (W * m);
  SequenceAssignment a;
  a.seqs.assign(W, {});
  for (int64_t s = 0; s < n_micro; ++s)
    for (int64_t r = 0; r < W; ++r)
      for (int64_t j = 0; j < m; ++j) a.seqs[r].push_back((s * W + r) * m + j);
  a.max_over_mean = a.canonical_max_over_mean = max_over_mean(a.seqs, costs);
  return a;
}

SequenceAssignment balance_attention(const std::vector<double>& costs, int64_t W, int64_t m, int64_t ep,
                                     BalanceScope scope, bool balance_loss_on, bool capacity_mode) {
  const int64_t B = int64_t(costs.size()), n_micro = B / (W * m);
  SequenceAssignment a = canonical_assignment(costs, W, m);
  std::vector<std::vector<int64_t>> out(W);
  std::vector<double> load(W, 0.0);
  // which ranks may exchange, and whether whole micro-batches move
  const bool whole_micro_batches = capacity_mode || (balance_loss_on && scope == BalanceScope::micro_batch);
  const int64_t group = (balance_loss_on && scope == BalanceScope::ep_group) ? ep : W;
  for (int64_t s = 0; s < n_micro; ++s) {
    for (int64_t g0 = 0; g0 < W; g0 += group) {
      // items: sequences (or micro-batches) of this micro-step held by the group's ranks
      std::vector<std::vector<int64_t>> items;
      for (int64_t r = g0; r < g0 + group; ++r) {
        const int64_t first = (s * W + r) * m;
        if (whole_micro_batches) {
          std::vector<int64_t> mb(m);
          std::iota(mb.begin(), mb.end(), first);
          items.push_back(mb);
        } else {
          for (int64_t j = 0; j < m; ++j) items.push_back({first + j});
        }
      }
      auto cost_of = [&](const std::vector<int64_t>& it) {
        double c = 0;
        for (int64_t i : it) c += costs[i];
        return c;
      };
      std::stable_sort(items.begin(), items.end(),
                       [&](const auto& x, const auto& y) { return cost_of(x) > cost_of(y); });
      std::vector<int64_t> room(group, m);
      for (const auto& it : items) {
        int64_t best = -1;
        for (int64_t r = 0; r < group; ++r)
          if (room[r] >= int64_t(it.size()) && (best < 0 || load[g0 + r] < load[g0 + best])) best = r;
        for (int64_t i : it) out[g0 + best].push_back(i);
        room[best] -= int64_t(it.size());
        load[g0 + best] += cost_of(it);
      }
    }
  }
  // keep each micro-step's sequences in data order on their rank (deterministic layout)
  for (auto& seq : out)
    for (int64_t s = 0; s < n_micro; ++s) std::sort(seq.begin() + s * m, seq.begin() + (s + 1) * m);
  a.seqs = out;
  a.max_over_mean = max_over_mean(a.seqs, costs);
  return a;
}

}  // namespace um
