// One optimizer step (design.md 1.8, 2, 4): the micro-batches this rank runs, each a forward +
// backward whose loss terms are pre-divided by the global counts, so gradients just add; then
// the gradient reductions (dense over all ranks, experts over the ranks holding them; plain
// sums), the global gradient norm with every parameter counted once, the non-finite check,
// clipping, AdamW (optionally ZeRO-1 sharded) and the aux-free bias update.
// With all groups null it is the single-process step, through the same code.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"
#include "parallel/groups.h"
#include "train/optimizer.h"
#include "train/pipeline.h"
#include "train/run_config.h"

namespace um {

struct StepOutcome {
  int64_t step = 0;
  double lr = 0;
  double loss = 0;         // main CE (design.md 1.8)
  double loss_mtp = 0;     // (lambda/D) sum_k CE^k
  std::vector<double> mtp_ce;
  double loss_bal = 0;     // alpha sum_l mean_pools B_l
  double loss_z = 0;
  double loss_total = 0;   // J
  double grad_norm = 0;    // before clipping
  bool clipped = false;
  bool skipped = false;    // non-finite loss or gradient: no update
  std::vector<MoeStats> moe;    // per MoE layer, summed over the step's micro-batches and ranks
  std::vector<double> balance;  // per MoE layer: mean over pools of B_l (without alpha)
  int64_t n_main = 0;
  std::vector<int64_t> n_mtp;
  // dense-gradient all-reduces started during the last micro-batch's backward (design.md 4)
  std::vector<Request> pending;
  int64_t pending_elements = 0;
  bool reduce_started = false;
  // reused from step to step so the steady state does not allocate
  struct Scratch {
    StepScales scales;
    std::vector<int64_t> counts;
    std::vector<int32_t> eos;
    std::vector<double> stats;
    DeviceBuffer<std::byte> shard;  // ZeRO-1: one shard of gradients or weights, on the device
    std::vector<std::byte> bias;    // aux-free biases of one layer (host copy)
    PipelineScratch pipe;           // pipeline parallelism: the schedule, activation slots, sends
  } scratch;
};

// Balance pools in a step of B global sequences (design.md 1.6).
double pools_per_step(const TrainConfig& tc, int64_t world, int64_t ep);

// Scales of a step: the target counts of this rank's windows (n_local sequences), summed over
// the world, and the step's loss coefficients. `counts`/`eos` are reused storage.
void step_scales(StepScales& sc, const ModelConfig& c, const TrainConfig& tc, const int32_t* windows,
                 int64_t n_local, int64_t T, int64_t step, const StepGroups& g,
                 std::vector<int64_t>& counts, std::vector<int32_t>& eos);
StepScales step_scales(const ModelConfig& c, const TrainConfig& tc, const int32_t* windows,
                       int64_t n_local, int64_t T, int64_t step, const StepGroups& g);

// Forward + backward of this rank's micro-batches of step `step` (1-based): `windows` holds
// tc.batch_size / world sequences, micro-batch after micro-batch (canonical placement: rank r
// runs sequences [(a*W + r)*m, (a*W + r + 1)*m) at micro-step a). Gradients of J in ps.g
// (zeroed first; not yet reduced across ranks), losses and routing statistics (reduced) in
// the outcome.
// With an optimizer that does not shard (no ZeRO) and several ranks, the dense gradients of the
// last micro-batch are all-reduced range by range as the backward finishes them.
template <class T>
void accumulate_step(StepOutcome& out, Model<T>& model, ParamStore<T>& ps, const TrainConfig& tc,
                     int64_t step, const int32_t* windows, const StepGroups& g, const Ctx& ctx,
                     const Optimizer* opt = nullptr);
template <class T>
StepOutcome accumulate_step(Model<T>& model, ParamStore<T>& ps, const TrainConfig& tc,
                            int64_t step, const int32_t* windows, const StepGroups& g,
                            const Ctx& ctx, const Optimizer* opt = nullptr);

// Reduces the gradients, then norm, non-finite check, clipping, AdamW, aux-free biases.
// adam_step counts applied updates; incremented unless the step is skipped.
template <class T>
void apply_update(StepOutcome& out, Model<T>& model, ParamStore<T>& ps, const Optimizer& opt,
                  const TrainConfig& tc, int64_t& adam_step, const StepGroups& g, const Ctx& ctx);

// accumulate_step then apply_update, into `out` (reused: no allocation in the steady state).
template <class T>
void train_step(StepOutcome& out, Model<T>& model, ParamStore<T>& ps, const Optimizer& opt,
                const TrainConfig& tc, int64_t step, int64_t& adam_step, const int32_t* windows,
                const StepGroups& g, const Ctx& ctx);
template <class T>
StepOutcome train_step(Model<T>& model, ParamStore<T>& ps, const Optimizer& opt,
                       const TrainConfig& tc, int64_t step, int64_t& adam_step,
                       const int32_t* windows, const StepGroups& g, const Ctx& ctx);

// The sequences (global indices in data order) rank r runs at micro-step a.
inline int64_t canonical_first_sequence(int64_t a, int64_t r, int64_t world, int64_t m) {
  return (a * world + r) * m;
}

}  // namespace um
