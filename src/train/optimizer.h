// The optimizer step over the flat parameter buffers (DESIGN 2): global gradient norm, clipping,
// AdamW with decoupled weight decay on 2-D weights only, and the aux-loss-free bias update of
// DESIGN 1.6. Parameter groups are runs of the table with the same decay, so the update is a few
// passes over contiguous memory.
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

// One AdamW update of every parameter; `step` is the Adam step count after this update.
template <class T>
void adamw_step(ParamStore<T>& ps, const std::vector<DecayRun>& runs, const TrainConfig& tc,
                double lr, int64_t step, const Ctx& ctx);

// b_i += gamma * sign(mean_j load_j - load_i) for one MoE layer (sign(0) = 0). load: (E).
template <class T>
void aux_free_update(T* bias, const std::vector<int64_t>& load, double gamma);

}  // namespace um
