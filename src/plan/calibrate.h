// Calibration of the planner against this engine's own measurements:
// - op level: turns a Google Benchmark JSON report of bench/bench_ops (GEMM, attention, grouped
//   GEMM GFLOP/s) and, optionally, timings of the engine's own sgemm over the small shapes
//   bench_ops does not cover and of its element-wise loops, into the efficiency fields of a
//   hardware file (gemm_efficiency, attention_efficiency, memory and element-wise bandwidth,
//   exp_element_s);
// - step level: reads a measured step (the JSON of `ultramoe bench`, or a metrics.jsonl line of
//   `ultramoe train`: tokens_per_s, and step_time_s and a per-phase breakdown when present) so a
//   prediction can be set against it.
// It changes no hardware file; it prints what to put there.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/json_reader.h"
#include "plan/hardware.h"

namespace um::plan {

struct OpMeasurement {
  std::string name;        // e.g. BM_Linear/4096/512/512/real_time or sgemm/256x512x512
  std::string kind;        // gemm, grouped_gemm, attention_forward, attention_backward
  double flops = 0;        // FLOPs of one GEMM (one group for grouped GEMMs) or one attention call
  double seconds = 0;      // time of that call
  double forward_flops = 0;  // attention: FLOPs of the forward of the same call
  double efficiency = 0;   // flops / seconds / hardware peak
};

struct Calibration {
  std::vector<OpMeasurement> ops;
  std::vector<std::pair<double, double>> gemm_efficiency;  // sorted (flops, efficiency)
  double attention_efficiency = 0;                          // from the forward benchmarks
  double attention_backward_ratio = 0;                      // measured backward / forward time
  double memory_bandwidth = 0;                              // bytes/s, when measured
  double elementwise_bandwidth = 0;                         // bytes/s of the engine's RMSNorm
  double exp_element_s = 0;                                 // seconds per SwiGLU output element
  double cross_entropy_logit_s = 0;                         // fused LM-head CE beyond its GEMMs
};

// `bench`: the output of `bench_ops --benchmark_format=json`, run with one thread per device
// (OMP_NUM_THREADS=1 for the one-core CPU device). Grouped GEMMs count as GEMMs of one group's
// size (so grouped_gemm_factor stays 1).
std::vector<OpMeasurement> ops_from_benchmark(const json& bench, const Hardware& hw);

// Times the engine's sgemm (ops/gemm.h, the call every linear makes) at the linear-layer shape
// y (m, n) = x (m, k) W^T for m in 64..4096 and n, k in 64..1024: best of several runs each.
std::vector<OpMeasurement> measure_gemm_sweep(const Hardware& hw);

// Best of several passes copying 64 MB: 2 x bytes / time.
double measure_memory_bandwidth();
// The engine's element-wise loops: RMSNorm forward bytes / time (8 MB), and SwiGLU forward time
// per output element (one exponential each).
double measure_elementwise_bandwidth();
double measure_exp_element_seconds();
// The engine's fused LM head + cross entropy (forward and backward) at N=256, D=64, V=8192,
// minus its three GEMMs timed alone, per logit.
double measure_cross_entropy_logit_seconds();

// The curve: measurements grouped in half-decades of FLOPs, each group the median efficiency at
// the geometric-mean size (repetitions of one benchmark keep their best run first: interference
// only slows a run down).
Calibration summarize_calibration(std::vector<OpMeasurement> ops);
Calibration calibrate_from_benchmark(const json& bench, const Hardware& hw);
json calibration_json(const Calibration& c);

// A measured training step: the JSON of `ultramoe bench --json` (tokens_per_s, step_s_median,
// phases_s_per_step) or a metrics.jsonl line of `ultramoe train` (tokens_per_s). tokens_per_s is
// required; the step time defaults to tokens_per_step / tokens_per_s; the phases are carried along.
struct MeasuredStep {
  double tokens_per_s = 0;
  double step_time_s = 0;
  json phases;
};
MeasuredStep read_measured_step(const json& j, double tokens_per_step, const std::string& file);

}  // namespace um::plan
