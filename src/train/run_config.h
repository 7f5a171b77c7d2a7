// The run configuration (design.md 8): one JSON object with sections `model` (design.md 1.1), `train`,
// `data` and `parallel`, overridable with `--set section.key=value`. Strict: unknown keys and
// wrong types are errors naming the key. The resolved config (every default filled in) is
// printed at start and saved with every checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/json_reader.h"
#include "model/config.h"
#include "model/model.h"

namespace um {

// A value that may change with the optimizer step: a number, or [[step, value], ...] —
// piecewise constant, each value applying from its step on; before the first listed step, the
// first value (design.md 1.10).
struct StepSchedule {
  std::vector<std::pair<int64_t, double>> points;  // sorted by step; one point = constant
  double at(int64_t step) const;
  json to_json() const;
  static StepSchedule parse(const json& v, const std::string& where);
  static StepSchedule constant(double v) { return {{{1, v}}}; }
};

enum class LrSchedule : uint8_t { constant, cosine, wsd };

struct TrainConfig {
  int64_t steps = 100;              // absolute index of the last optimizer step (first is 1)
  int64_t batch_size = 8;           // global sequences per step
  int64_t micro_batch_size = 8;     // per rank per forward
  uint64_t seed = 0;
  double lr = 3e-4, min_lr = 0;
  LrSchedule lr_schedule = LrSchedule::cosine;
  int64_t warmup_steps = 0, decay_steps = 0, decay_start = 0;
  double weight_decay = 0.1;
  bool weight_decay_norms = false;
  double adam_beta1 = 0.9, adam_beta2 = 0.95, adam_eps = 1e-8;
  double grad_clip = 1.0;
  StepSchedule mtp_lambda = StepSchedule::constant(0.3);
  BalanceScope balance_scope = BalanceScope::micro_batch;
  double balance_alpha = 0.01;
  bool aux_free = false;
  StepSchedule aux_free_gamma = StepSchedule::constant(1e-3);
  double z_loss_coef = 0;
  double capacity_factor = 0;       // 0 = dropless
  int64_t checkpoint_every = 0;     // 0 = only at the end
  int64_t keep_checkpoints = 3;
  int64_t eval_every = 0;           // 0 = only at the end
  int64_t eval_batches = 0;         // 0 = the whole validation shard
  int64_t spike_window = 100;
  double grad_spike_factor = 2.0, loss_spike_factor = 1.05;
  std::vector<std::string> recompute;
  int64_t imbalance_devices = 0;    // 0 = parallel.ep when > 1, else 8 (capped at E)
};

struct DataConfig {
  std::string path;
  int64_t seq_len = 256;
};

struct ParallelConfig {
  int64_t ep = 1;
  int64_t zero = 0;
  int64_t ranks_per_node = 0;       // 0 = all ranks on one node
  bool dp_attention_balance = false;
  // pipeline parallelism (docs/pipeline.md): pp stages of consecutive ranks, vpp model chunks per
  // stage (interleaved 1F1B); pp_layers: main decoder layers per virtual stage (pp*vpp numbers
  // summing to num_hidden_layers; empty: as even as possible); mtp_stage "last": the tail (final
  // norm, LM head, MTP) shares the last virtual stage with its layers, "own": the last virtual
  // stage holds the tail only
  int64_t pp = 1, vpp = 1;
  std::vector<int64_t> pp_layers;
  std::string mtp_stage = "last";
  int64_t data_ranks(int world) const { return world / pp; }
};

struct RunConfig {
  ModelConfig model;
  TrainConfig train;
  DataConfig data;
  ParallelConfig parallel;
  json model_json;                  // the model section as given (re-parsed on load)

  json to_json() const;             // resolved, every key present
};

// Parses a run config object (after overrides). `world` is the number of ranks of the run that
// uses it (for checks that depend on it: parallel.pp divides it, batch_size divisible by
// micro_batch_size x data-parallel ranks); 0 for a config read back from a checkpoint or used
// without a run, whose layout is not checked against any world (one data-parallel rank).
RunConfig parse_run_config(const json& j, int world = 0);

// Reads FILE, applies `--set` overrides in order, parses.
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides,
                          int world = 0);

// The learning rate of optimizer step s (design.md 8); a function of s only.
double learning_rate(const TrainConfig& t, int64_t step);

const char* lr_schedule_name(LrSchedule s);

}  // namespace um
