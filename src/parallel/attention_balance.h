// DP attention balancing (Pangu; design.md 3): with document masks a sequence's attention cost
// grows with the sum of its squared document lengths, so ranks that draw long documents finish
// late. The balancer assigns the sequences of a global batch to (micro-step, rank) slots so the
// per-rank totals are even, greedily (largest first to the least loaded rank with room), moving
// sequences only between ranks that share a balance pool, so the loss never changes:
//   ep_group                       within the EP group, at the same micro-step
//   micro_batch                    whole micro-batches, between ranks at the same micro-step
//   global, sequence (or alpha 0)  across all ranks, at the same micro-step
// In capacity mode only whole micro-batches move: capacity is decided per rank's micro-batch.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"

namespace um {

// Sum of squared document lengths of each window (B, T+1): documents end at EOS (design.md 1.8).
std::vector<double> attention_costs(const int32_t* windows, int64_t B, int64_t T);

struct SequenceAssignment {
  // per rank: the global sequence indices it runs, micro-step after micro-step (n_micro * m)
  std::vector<std::vector<int64_t>> seqs;
  double max_over_mean = 1;            // attention cost per rank, this assignment
  double canonical_max_over_mean = 1;  // the same for the canonical placement
};

SequenceAssignment canonical_assignment(const std::vector<double>& costs, int64_t world, int64_t m);
SequenceAssignment balance_attention(const std::vector<double>& costs, int64_t world, int64_t m,
                                     int64_t ep, BalanceScope scope, bool balance_loss_on,
                                     bool capacity_mode);

}  // namespace um
