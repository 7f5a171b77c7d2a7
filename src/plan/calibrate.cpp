#include "plan/calibrate.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <sstream>

#include "plan/cost.h"

namespace um::plan {

namespace {

// "BM_Linear/4096/512/512/real_time" -> {"BM_Linear", {4096, 512, 512}}
std::pair<std::string, std::vector<double>> split_name(const std::string& name) {
  std::stringstream ss(name);
  std::string part, head;
  std::vector<double> args;
  std::getline(ss, head, '/');
  while (std::getline(ss, part, '/')) {
    if (part.empty() || !std::isdigit(static_cast<unsigned char>(part[0]))) continue;
    args.push_back(std::stod(part));
  }
  return {head, args};
}

// bench_ops' attention benchmark uses these head sizes (bench/bench_ops.cpp BM_Attention).
constexpr double kBenchAttentionDqk = 96, kBenchAttentionDv = 64;

double measured_flops_per_s(const json& b, const std::string& name) {
  UM_CHECK(b.contains("GFLOP/s") && b["GFLOP/s"].is_number(), "plan", "benchmark ", name,
           " has no GFLOP/s counter");
  const double v = b["GFLOP/s"].get<double>();
  // Google Benchmark reports kIsRate counters in units/s; bench_ops divides by 1e9 first.
  return v * 1e9;
}

}  // namespace

Calibration calibrate_from_benchmark(const json& bench, const Hardware& hw) {
  UM_CHECK(bench.is_object() && bench.contains("benchmarks") && bench["benchmarks"].is_array(), "plan",
           "calibration input is not a Google Benchmark JSON report (no \"benchmarks\" list)");
  Calibration c;
  // Repetitions of one benchmark keep the best run: interference only ever slows a run down.
  std::map<double, double> curve;
  double attn_fwd_eff = 0, attn_fwd_s = 0, attn_bwd_s = 0;  // best forward efficiency, times per forward FLOP
  for (const json& b : bench["benchmarks"]) {
    if (b.value("run_type", "iteration") != "iteration") continue;
    const std::string name = b.value("name", "");
    auto [head, a] = split_name(name);
    OpMeasurement op;
    op.name = name;
    const double rate = measured_flops_per_s(b, name);
    if (head == "BM_Linear" && a.size() == 3) {
      op.kind = "gemm";
      op.flops = 2 * a[0] * a[1] * a[2];
    } else if (head == "BM_GroupedLinear" && a.size() == 4) {
      op.kind = "grouped_gemm";
      op.flops = 2 * (a[0] / a[1]) * a[2] * a[3];
    } else if (head == "BM_Attention" && a.size() == 4) {
      const double fwd = attention_forward_flops(a[0], a[1], a[2], kBenchAttentionDqk, kBenchAttentionDv);
      const bool backward = a[3] != 0;
      op.kind = backward ? "attention_backward" : "attention_forward";
      op.flops = backward ? 2 * fwd : fwd;  // bench_ops counts backward as twice the forward
      const double per_fwd_flop = op.flops / rate / fwd;
      double& best = backward ? attn_bwd_s : attn_fwd_s;
      best = best > 0 ? std::min(best, per_fwd_flop) : per_fwd_flop;
      if (!backward) attn_fwd_eff = std::max(attn_fwd_eff, rate / hw.peak_flops);
    } else {
      continue;
    }
    op.efficiency = rate / hw.peak_flops;
    if (op.kind == "gemm" || op.kind == "grouped_gemm")
      curve[op.flops] = std::max(curve[op.flops], std::min(1.0, op.efficiency));
    c.ops.push_back(op);
  }
  UM_CHECK(!curve.empty(), "plan", "calibration input has no BM_Linear or BM_GroupedLinear results");
  c.gemm_efficiency.assign(curve.begin(), curve.end());
  c.attention_efficiency = std::min(1.0, attn_fwd_eff);
  if (attn_fwd_s > 0 && attn_bwd_s > 0) c.attention_backward_ratio = attn_bwd_s / attn_fwd_s;
  return c;
}

json calibration_json(const Calibration& c) {
  json j;
  json curve = json::array();
  for (auto [f, e] : c.gemm_efficiency) curve.push_back({f, e});
  j["gemm_efficiency"] = curve;
  j["grouped_gemm_factor"] = 1.0;
  if (c.attention_efficiency > 0) j["attention_efficiency"] = c.attention_efficiency;
  return j;
}

MeasuredStep read_measured_step(const json& j, double tokens_per_step, const std::string& file) {
  UM_CHECK(j.is_object(), "plan", file, ": expected the JSON object `ultramoe bench` prints");
  MeasuredStep m;
  UM_CHECK(j.contains("tokens_per_s") && j["tokens_per_s"].is_number(), "plan", file,
           ": no numeric tokens_per_s");
  m.tokens_per_s = j["tokens_per_s"].get<double>();
  UM_CHECK(m.tokens_per_s > 0, "plan", file, ": tokens_per_s must be > 0, got ", m.tokens_per_s);
  m.step_time_s = j.contains("step_time_s") && j["step_time_s"].is_number() ? j["step_time_s"].get<double>()
                                                                           : tokens_per_step / m.tokens_per_s;
  if (j.contains("phases")) m.phases = j["phases"];
  return m;
}

}  // namespace um::plan
