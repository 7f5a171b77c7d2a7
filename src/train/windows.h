// Training and evaluation windows over a token shard (design.md 3, 1.8).
//
// A window is T+1 consecutive ids x_0..x_T (T = data.seq_len): inputs x_0..x_{T-1}, targets
// x_1..x_T. Window w starts at token w*T, so consecutive windows share one token.
//
// Training order: the windows of one epoch are a seeded permutation (Fisher-Yates driven by
// Philox keyed by (seed, "data.epoch.<e>")); the running order is epoch 0's permutation, then
// epoch 1's, and so on. Optimizer steps are numbered from 1 (design.md 8), and step s with global
// batch B takes positions [(s-1)*B, s*B) of the running order (design.md 3): the first step takes
// the first B windows. A batch may straddle two
// epochs. Every window is a pure function of (shard, T, seed, step, B, index), which is what makes
// a resumed run see exactly the batches of an uninterrupted one.
//
// Not here: document masks and positions (the model derives them from EOS, design.md 1.8), which
// rank or micro-batch takes which slice of a step (the trainer calls fill with its slice).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "train/shard.h"

namespace um {

class TrainWindows {
 public:
  // The shard must outlive this object. seq_len T >= 1; the shard needs at least T+1 tokens.
  TrainWindows(const Shard& shard, int64_t seq_len, uint64_t seed);

  int64_t seq_len() const { return seq_len_; }
  int64_t window_len() const { return seq_len_ + 1; }
  // (n_tokens - 1) / T: the incomplete tail is dropped.
  int64_t n_windows() const { return n_windows_; }
  uint64_t seed() const { return seed_; }

  // Writes windows first..first+count-1 of step `step`'s batch of `batch_size` windows to
  // out: (count, T+1) ids, row-major. step >= 1, 0 <= first, first + count <= batch_size.
  void fill(int64_t step, int64_t batch_size, int64_t first, int64_t count, int32_t* out) const;

  // The shard-order index of the window at position `index` of step `step`'s batch.
  int64_t window_of(int64_t step, int64_t batch_size, int64_t index) const;
  // The epoch (0-based) of the first window of step `step`.
  int64_t epoch_of(int64_t step, int64_t batch_size) const;
  // Epoch e's order of the windows: a permutation of [0, n_windows).
  std::vector<int64_t> permutation(int64_t epoch) const;

 private:
  using Perm = std::vector<uint32_t>;
  std::shared_ptr<const Perm> epoch_permutation(int64_t epoch) const;
  int64_t position(int64_t step, int64_t batch_size, int64_t index) const;

  const Shard* shard_;
  int64_t seq_len_;
  int64_t n_windows_;
  uint64_t seed_;
  // The last two epochs' permutations: a batch touches at most two, and steps go forward.
  mutable std::mutex mutex_;
  mutable std::vector<std::pair<int64_t, std::shared_ptr<const Perm>>> cache_;
};

// Validation windows: every token after the first is a target of exactly one window. Window i
// holds tokens [i*T, i*T + T] with stride T; the last one is padded with pad_id past the end of
// the shard, and valid_targets(i) says how many of its T targets are real (targets at positions
// 0..valid-1 count; padded positions never do). The document rule of design.md 1.8 (no target
// across an EOS) still applies on top, in the loss.
class EvalWindows {
 public:
  // The shard must outlive this object.
  EvalWindows(const Shard& shard, int64_t seq_len, int32_t pad_id = 3);

  int64_t seq_len() const { return seq_len_; }
  int64_t window_len() const { return seq_len_ + 1; }
  // ceil((n_tokens - 1) / T); 0 for a shard with fewer than 2 tokens.
  int64_t n_windows() const { return n_windows_; }
  // n_tokens - 1: the targets over all windows.
  int64_t n_targets() const { return n_targets_; }
  int64_t valid_targets(int64_t i) const;
  // Writes window i (T+1 ids) to out and returns valid_targets(i).
  int64_t fill(int64_t i, int32_t* out) const;

 private:
  const Shard* shard_;
  int64_t seq_len_;
  int32_t pad_id_;
  int64_t n_targets_;
  int64_t n_windows_;
};

}  // namespace um
