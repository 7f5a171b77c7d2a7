// The optimizer step over the flat parameter buffers (design.md 2): AdamW with decoupled weight
// decay on 2-D weights only, optionally ZeRO-1 (each rank keeps the Adam moments of one shard of
// the replicated region and of its expert region, updates only that shard, and the updated
// weights are all-gathered), and the aux-loss-free bias update of design.md 1.6.
#pragma once

#include <cstdint>
#include <vector>

#include "core/ctx.h"
#include "model/params.h"
#include "model/weights.h"
#include "train/run_config.h"

namespace um {

struct DecayRun {
  int64_t begin, end;  // element range
  bool decay;
};

// Contiguous element ranges of the table with equal weight-decay flags.
std::vector<DecayRun> decay_runs(const ParamTable& t, bool decay_norms);

// Which elements this rank updates and keeps moments for: without ZeRO, the whole flat buffer;
// with ZeRO-1, shard r of W of the replicated region and shard e of W/ep of the expert region
// (e = this rank's index among the ranks holding the same experts).
struct Optimizer {
  std::vector<DecayRun> runs;  // the table's runs, clipped to the shard
  int64_t dense_begin = 0, dense_end = 0, expert_begin = 0, expert_end = 0;
  bool zero = false;
  int64_t moment_elements() const { return (dense_end - dense_begin) + (expert_end - expert_begin); }
  // index of absolute element i in the moment arrays
  int64_t moment_index(int64_t i) const {
    return i < dense_end ? i - dense_begin : (dense_end - dense_begin) + (i - expert_begin);
  }
  static Optimizer full(const ParamTable& t, bool decay_norms);
  static Optimizer zero_shard(const ParamTable& t, bool decay_norms, int world_rank, int world_size,
                              int edp_rank, int edp_size);
};

// One AdamW update of every element the optimizer owns; `step` is the Adam step count after
// this update. Moments live in ps.m / ps.v at moment_index(). The caller refreshes the compute
// copy of the weights (ps.sync_compute) afterwards.
template <class T>
void adamw_step(ParamStore<T>& ps, const Optimizer& opt, const TrainConfig& tc, double lr,
                int64_t step, const Ctx& ctx);

// b_i += gamma * sign(mean_j load_j - load_i) for one MoE layer (sign(0) = 0). load: (E), on the
// host; bias: (E) on ctx's device (E values: updated on the host through `host`, reused storage).
template <class T>
void aux_free_update(T* bias, const std::vector<int64_t>& load, double gamma, std::vector<std::byte>& host,
                     const Ctx& ctx);

}  // namespace um
