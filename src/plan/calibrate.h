// Calibration of the planner against this engine's own measurements:
// - op level: turns a Google Benchmark JSON report of bench/bench_ops (GEMM, attention, grouped
//   GEMM GFLOP/s) into the efficiency fields of a hardware file (gemm_efficiency points,
//   attention_efficiency);
// - step level: reads the JSON that `ultramoe bench --config FILE` prints (tokens_per_s, and
//   step_time_s and a per-phase breakdown when present) so a prediction can be set against it.
// It changes no hardware file; it prints what to put there.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/json_reader.h"
#include "plan/hardware.h"

namespace um::plan {

struct OpMeasurement {
  std::string name;     // the benchmark's name, e.g. BM_Linear/4096/512/512/real_time
  std::string kind;     // gemm, grouped_gemm, attention_forward, attention_backward
  double flops = 0;     // FLOPs of one GEMM (one group for grouped GEMMs) or one attention call
  double efficiency = 0;  // achieved / hardware peak
};

struct Calibration {
  std::vector<OpMeasurement> ops;
  std::vector<std::pair<double, double>> gemm_efficiency;  // sorted (flops, efficiency)
  double attention_efficiency = 0;                          // from the forward benchmarks
  double attention_backward_ratio = 0;                      // measured backward / forward time
};

// `bench`: the output of `bench_ops --benchmark_format=json`, run with one thread per device
// (OMP_NUM_THREADS=1 for the one-core CPU device). Grouped GEMMs count as GEMMs of one group's
// size (so grouped_gemm_factor stays 1).
Calibration calibrate_from_benchmark(const json& bench, const Hardware& hw);
json calibration_json(const Calibration& c);

// A measured training step: the JSON of `ultramoe bench`. tokens_per_s is required; step_time_s
// defaults to tokens_per_step / tokens_per_s; `phases` (seconds per phase) is carried along.
struct MeasuredStep {
  double tokens_per_s = 0;
  double step_time_s = 0;
  json phases;
};
MeasuredStep read_measured_step(const json& j, double tokens_per_step, const std::string& file);

}  // namespace um::plan
