// `ultramoe train` (design.md 8): the training loop around the step — data, initialisation or
// resume, progress, metrics.jsonl, periodic evaluation and checkpoints, spike detection, and a
// clean stop on SIGINT/SIGTERM (finish the step, checkpoint, exit 0).
#pragma once

#include <string>
#include <vector>

namespace um {

struct TrainOptions {
  std::string config_path;
  std::vector<std::string> overrides;  // --set KEY=VALUE, in order
  std::string data_dir;                // --data (overrides data.path)
  std::string out_dir;                 // --out
  bool resume = false;
  int64_t log_every = 1;               // progress lines (metrics.jsonl gets every step)
  std::string device, dtype;           // --device cpu|cuda, --dtype f32|bf16 (engine.h Placement)
  std::string hardware;                // --hardware FILE: the device's peak for MFU (GPU runs)
};

// Returns the process exit status. Errors are thrown as um::Error.
int run_training(const TrainOptions& opt);

}  // namespace um
