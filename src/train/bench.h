// `ultramoe bench` (design.md 7): warm-up, then timed training steps of a config on synthetic
// windows (or a data directory): tokens/s, model GFLOP/s, MFU against the FP32 peak and against
// the measured sgemm rate, peak RSS, allocations per steady-state step, memory per parameter and
// per token, and the step time by phase. Works under mpirun like `train`.
#pragma once

#include <string>
#include <vector>

#include "core/json_reader.h"

namespace um {

struct BenchOptions {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string data_dir;  // empty: synthetic windows
  int64_t steps = 5, warmup = 2;
  bool json = false;
  std::string save_windows;  // write the windows used, (steps, B, T+1) int32, for the PyTorch peer
  std::string device, dtype;  // --device cpu|cuda, --dtype f32|bf16
  std::string hardware;       // --hardware FILE: the device's peak for MFU (GPU runs)
};

int run_bench(const BenchOptions& opt);

// Deterministic synthetic windows: documents BOS w.. EOS of random lengths (1..2T) with ids
// >= 4, cut into (n, T+1) windows. The attention cost then resembles packed text.
std::vector<int32_t> synthetic_windows(int64_t n, int64_t T, int64_t vocab, uint64_t seed);

// This machine's large-sgemm rate with all threads, GFLOP/s (best of 3 at 2048^3).
double measure_sgemm_gflops();

}  // namespace um
