// Training and evaluation windows (see windows.h for the order rule).
#include "train/windows.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <string>

#include "core/error.h"
#include "core/rng.h"

namespace um {

TrainWindows::TrainWindows(const Shard& shard, int64_t seq_len, uint64_t seed)
    : shard_(&shard), seq_len_(seq_len), n_windows_(0), seed_(seed) {
  UM_CHECK(seq_len >= 1, "data", "seq_len must be >= 1, got ", seq_len);
  n_windows_ = shard.size() > 0 ? (shard.size() - 1) / seq_len : 0;
  UM_CHECK(n_windows_ >= 1, "data", shard.path(), ": ", shard.size(),
           " tokens are too few for one training window of seq_len + 1 = ", seq_len + 1);
  // permutations are stored as u32 to halve their memory
  UM_CHECK(n_windows_ <= std::numeric_limits<uint32_t>::max(), "data", shard.path(), ": ",
           n_windows_, " windows of ", seq_len, " tokens: more than 2^32");
}

std::shared_ptr<const TrainWindows::Perm> TrainWindows::epoch_permutation(int64_t epoch) const {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [e, p] : cache_)
      if (e == epoch) return p;
  }
  // Fisher-Yates from the top: element i of the epoch's Philox stream picks the partner of
  // position i, so the permutation depends on nothing but (seed, epoch, n_windows).
  auto perm = std::make_shared<Perm>(static_cast<size_t>(n_windows_));
  std::iota(perm->begin(), perm->end(), 0u);
  const Philox rng(seed_, "data.epoch." + std::to_string(epoch));
  for (int64_t i = n_windows_ - 1; i > 0; --i) {
    const uint64_t j = rng.below(static_cast<uint64_t>(i), static_cast<uint64_t>(i) + 1);
    std::swap((*perm)[i], (*perm)[j]);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [e, p] : cache_)  // another thread got there first
    if (e == epoch) return p;
  if (cache_.size() >= 2)
    cache_.erase(std::min_element(cache_.begin(), cache_.end(),
                                  [](auto& a, auto& b) { return a.first < b.first; }));
  cache_.emplace_back(epoch, perm);
  return perm;
}

std::vector<int64_t> TrainWindows::permutation(int64_t epoch) const {
  UM_CHECK(epoch >= 0, "data", "epoch must be >= 0, got ", epoch);
  auto p = epoch_permutation(epoch);
  return std::vector<int64_t>(p->begin(), p->end());
}

int64_t TrainWindows::position(int64_t step, int64_t batch_size, int64_t index) const {
  UM_CHECK(step >= 1, "data", "optimizer steps are numbered from 1, got step ", step);
  UM_CHECK(batch_size >= 1, "data", "batch size must be >= 1, got ", batch_size);
  UM_CHECK(index >= 0 && index < batch_size, "data", "window ", index, " outside the batch of ",
           batch_size);
  UM_CHECK(step - 1 <= (std::numeric_limits<int64_t>::max() - index) / batch_size, "data",
           "step ", step, " x batch size ", batch_size, " overflows");
  return (step - 1) * batch_size + index;
}

int64_t TrainWindows::window_of(int64_t step, int64_t batch_size, int64_t index) const {
  const int64_t pos = position(step, batch_size, index);
  return (*epoch_permutation(pos / n_windows_))[pos % n_windows_];
}

int64_t TrainWindows::epoch_of(int64_t step, int64_t batch_size) const {
  return position(step, batch_size, 0) / n_windows_;
}

void TrainWindows::fill(int64_t step, int64_t batch_size, int64_t first, int64_t count,
                        int32_t* out) const {
  UM_CHECK(first >= 0 && count >= 0 && first <= batch_size - count, "data", "windows [", first,
           ", ", first + count, ") outside the batch of ", batch_size);
  if (count == 0) return;
  position(step, batch_size, first);  // validates step and batch
  const int64_t len = window_len();
  std::shared_ptr<const Perm> perm;
  int64_t perm_epoch = -1;
  for (int64_t k = 0; k < count; ++k) {
    const int64_t pos = (step - 1) * batch_size + first + k;
    const int64_t epoch = pos / n_windows_;
    if (epoch != perm_epoch) {
      perm = epoch_permutation(epoch);
      perm_epoch = epoch;
    }
    const int64_t w = (*perm)[pos % n_windows_];
    shard_->copy(w * seq_len_, len, out + k * len);
  }
}

EvalWindows::EvalWindows(const Shard& shard, int64_t seq_len, int32_t pad_id)
    : shard_(&shard), seq_len_(seq_len), pad_id_(pad_id) {
  UM_CHECK(seq_len >= 1, "data", "seq_len must be >= 1, got ", seq_len);
  n_targets_ = std::max<int64_t>(0, shard.size() - 1);
  n_windows_ = (n_targets_ + seq_len - 1) / seq_len;
}

int64_t EvalWindows::valid_targets(int64_t i) const {
  UM_CHECK(i >= 0 && i < n_windows_, "data", "eval window ", i, " outside [0, ", n_windows_,
           ")");
  return std::min(seq_len_, n_targets_ - i * seq_len_);
}

int64_t EvalWindows::fill(int64_t i, int32_t* out) const {
  const int64_t valid = valid_targets(i);
  // tokens 0..valid are real: the inputs of the valid targets and the last target itself
  shard_->copy(i * seq_len_, valid + 1, out);
  std::fill(out + valid + 1, out + window_len(), pad_id_);
  return valid;
}

}  // namespace um
