// One optimizer step (DESIGN 1.8, 2): the micro-batches of the step's global batch, each a
// forward + backward whose loss terms are pre-divided by the global counts, so gradients just
// add; then the global gradient norm, the non-finite check, clipping, AdamW and the aux-free
// bias update. Single process here; the distributed engine wraps the same pieces.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"
#include "train/optimizer.h"
#include "train/run_config.h"

namespace um {

struct StepOutcome {
  int64_t step = 0;
  double lr = 0;
  double loss = 0;         // main CE (DESIGN 1.8)
  double loss_mtp = 0;     // (lambda/D) sum_k CE^k
  std::vector<double> mtp_ce;
  double loss_bal = 0;     // alpha sum_l mean_pools B_l
  double loss_z = 0;
  double loss_total = 0;   // J
  double grad_norm = 0;    // before clipping
  bool clipped = false;
  bool skipped = false;    // non-finite loss or gradient: no update
  std::vector<MoeStats> moe;    // per MoE layer, summed over the step's micro-batches
  std::vector<double> balance;  // per MoE layer: mean over pools of B_l (without alpha)
  int64_t n_main = 0;
  std::vector<int64_t> n_mtp;
};

// Scales of a step from its global batch (B, T+1) for one process.
StepScales step_scales(const ModelConfig& c, const TrainConfig& tc, const int32_t* windows,
                       int64_t B, int64_t T, int64_t step);

// Forward + backward of every micro-batch of step `step` (1-based) on the global batch
// `windows` (B = tc.batch_size sequences): gradients of J in ps.g (zeroed first), losses and
// routing statistics in the outcome. No update.
template <class T>
StepOutcome accumulate_step(Model<T>& model, ParamStore<T>& ps, const TrainConfig& tc,
                            int64_t step, const int32_t* windows, const Ctx& ctx);

// Gradient norm, non-finite check, clipping, AdamW, aux-free biases for an accumulated step.
// adam_step is the count of applied updates so far; incremented unless the step is skipped.
template <class T>
void apply_update(StepOutcome& out, Model<T>& model, ParamStore<T>& ps,
                  const std::vector<DecayRun>& runs, const TrainConfig& tc, int64_t& adam_step,
                  const Ctx& ctx);

// accumulate_step then apply_update.
template <class T>
StepOutcome train_step(Model<T>& model, ParamStore<T>& ps, const std::vector<DecayRun>& runs,
                       const TrainConfig& tc, int64_t step, int64_t& adam_step,
                       const int32_t* windows, const Ctx& ctx);

}  // namespace um
