// Validation loss (design.md 3, 8): every validation token scored exactly once (stride-T windows,
// the last one padded and masked), main CE only, dropless routing, no MTP.
#pragma once

#include <cstdint>

#include "model/model.h"
#include "parallel/comm.h"
#include "train/windows.h"

namespace um {

struct EvalResult {
  double loss = 0;       // mean CE over the scored targets
  double ppl = 0;
  int64_t tokens = 0;    // targets scored
  int64_t windows = 0;
};

// max_windows 0 = all windows of the shard. With a world of W ranks the windows are shared out
// in lock-step rounds (ranks without a window in the last round run a padding-only window, which
// scores nothing, so the expert-parallel collectives stay matched) and the sums all-reduced.
// expert_load (optional): per MoE layer, the routing statistics summed over the scored windows
// (tokens per expert with the biased selection, router entropy), for `eval --expert-stats`.
// Pipeline parallelism (pipe, design.md 4): `world` is the stage's data-parallel group; each window
// flows through the pipeline's stages and the last one scores it.
template <class T>
EvalResult evaluate(Model<T>& model, ParamStore<T>& ps, const EvalWindows& windows,
                    int64_t max_windows, const Ctx& ctx, Comm* world = nullptr,
                    std::vector<MoeStats>* expert_load = nullptr, Comm* pipe = nullptr);

}  // namespace um
