#include "plan/calibrate.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#include "core/ctx.h"
#include "ops/cross_entropy.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"
#include "ops/swiglu.h"
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
  // bench_ops' counter is FLOPs / 1e9 per second of real time
  return b["GFLOP/s"].get<double>() * 1e9;
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Best time of one call to f over `reps` rounds of at least `min_round` seconds each.
template <class F>
double best_time(F f, int reps, double min_round) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) {
    int calls = 0;
    const auto t0 = Clock::now();
    do {
      f();
      ++calls;
    } while (seconds_since(t0) < min_round);
    best = std::min(best, seconds_since(t0) / calls);
  }
  return best;
}

// Sweep timing: best of kSweepReps rounds of at least kSweepRound seconds.
constexpr int kSweepReps = 3;
constexpr double kSweepRound = 0.01;
// Groups of the efficiency curve: half a decade of FLOPs each.
constexpr double kBinsPerDecade = 2;

}  // namespace

std::vector<OpMeasurement> ops_from_benchmark(const json& bench, const Hardware& hw) {
  UM_CHECK(bench.is_object() && bench.contains("benchmarks") && bench["benchmarks"].is_array(), "plan",
           "calibration input is not a Google Benchmark JSON report (no \"benchmarks\" list)");
  std::vector<OpMeasurement> ops;
  for (const json& b : bench["benchmarks"]) {
    if (b.value("run_type", "iteration") != "iteration") continue;
    OpMeasurement op;
    op.name = b.value("name", "");
    auto [head, a] = split_name(op.name);
    if (head == "BM_Linear" && a.size() == 3) {
      op.kind = "gemm";
      op.flops = 2 * a[0] * a[1] * a[2];
    } else if (head == "BM_GroupedLinear" && a.size() == 4) {
      op.kind = "grouped_gemm";
      op.flops = 2 * (a[0] / a[1]) * a[2] * a[3];
    } else if (head == "BM_Attention" && a.size() == 4) {
      op.forward_flops = attention_forward_flops(a[0], a[1], a[2], kBenchAttentionDqk, kBenchAttentionDv);
      const bool backward = a[3] != 0;
      op.kind = backward ? "attention_backward" : "attention_forward";
      op.flops = backward ? 2 * op.forward_flops : op.forward_flops;  // bench_ops counts backward as 2x
    } else {
      continue;
    }
    const double rate = measured_flops_per_s(b, op.name);
    op.seconds = op.flops / rate;
    op.efficiency = rate / hw.peak_flops;
    ops.push_back(op);
  }
  return ops;
}

std::vector<OpMeasurement> measure_gemm_sweep(const Hardware& hw) {
  std::vector<OpMeasurement> ops;
  const int64_t rows[] = {64, 256, 1024, 4096}, widths[] = {64, 128, 256, 512, 1024};
  for (int64_t m : rows)
    for (int64_t n : widths)
      for (int64_t k : widths) {
        if (n != k && (n != 4 * k && k != 4 * n)) continue;  // square, and the FFN's 4x shapes
        std::vector<float> x(static_cast<size_t>(m * k), 0.5f), w(static_cast<size_t>(n * k), 0.25f),
            y(static_cast<size_t>(m * n));
        auto call = [&] { cpu::gemm<float>(false, true, m, n, k, 1.f, x.data(), k, w.data(), k, 0.f, y.data(), n); };
        OpMeasurement op;
        op.name = "sgemm/" + std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k);
        op.kind = "gemm";
        op.flops = 2.0 * m * n * k;
        op.seconds = best_time(call, kSweepReps, kSweepRound);
        op.efficiency = op.flops / op.seconds / hw.peak_flops;
        ops.push_back(op);
      }
  return ops;
}

double measure_memory_bandwidth() {
  const size_t n = size_t{64} << 20;  // 64 MB: far beyond the caches
  std::vector<char> a(n, 1), b(n, 2);
  const double t = best_time([&] { std::memcpy(b.data(), a.data(), n); }, 5, 0.05);
  return 2.0 * static_cast<double>(n) / t;
}

double measure_elementwise_bandwidth() {
  const int64_t N = 4096, D = 256;  // 4 MB in, 4 MB out
  std::vector<float> x(static_cast<size_t>(N * D), 0.5f), y(x.size()), g(static_cast<size_t>(D), 1.f),
      rstd(static_cast<size_t>(N));
  Workspace ws;
  const Ctx ctx = Ctx::cpu(&ws);
  const double t = best_time([&] { rmsnorm_forward<float>(y.data(), D, rstd.data(), x.data(), D, g.data(), N, D, 1e-5, ctx); },
                             kSweepReps, kSweepRound);
  return 2.0 * sizeof(float) * static_cast<double>(N * D) / t;
}

double measure_exp_element_seconds() {
  const int64_t N = 1024, F = 256;  // one sigmoid per output element
  std::vector<float> gu(static_cast<size_t>(2 * N * F), 0.3f), h(static_cast<size_t>(N * F));
  Workspace ws;
  const Ctx ctx = Ctx::cpu(&ws);
  const double t = best_time([&] { swiglu_forward<float>(h.data(), gu.data(), N, F, ctx); }, kSweepReps, kSweepRound);
  return t / static_cast<double>(N * F);
}

double measure_cross_entropy_logit_seconds() {
  const int64_t N = 256, D = 64, V = 8192;  // one chunk of rows: the tiny configs' LM head
  std::vector<float> h(static_cast<size_t>(N * D), 0.1f), W(static_cast<size_t>(V * D), 0.01f), dh(h.size()),
      dW(W.size()), logits(static_cast<size_t>(N * V));
  std::vector<int32_t> targets(static_cast<size_t>(N), 5);
  Workspace ws;
  const Ctx ctx = Ctx::cpu(&ws);
  const double fused = best_time([&] {
    lm_head_cross_entropy<float>(dh.data(), dW.data(), nullptr, nullptr, h.data(), W.data(), targets.data(), N, D, V,
                                 1.0, ctx);
  }, kSweepReps, kSweepRound);
  // the fused op's three GEMMs: logits = h W^T, dh = dl W, dW += dl^T h
  const double gemms =
      best_time([&] { cpu::gemm<float>(false, true, N, V, D, 1.f, h.data(), D, W.data(), D, 0.f, logits.data(), V); },
                kSweepReps, kSweepRound) +
      best_time([&] { cpu::gemm<float>(false, false, N, D, V, 1.f, logits.data(), V, W.data(), D, 0.f, dh.data(), D); },
                kSweepReps, kSweepRound) +
      best_time([&] { cpu::gemm<float>(true, false, V, D, N, 1.f, logits.data(), V, h.data(), D, 1.f, dW.data(), D); },
                kSweepReps, kSweepRound);
  return std::max(0.0, fused - gemms) / static_cast<double>(N * V);
}

Calibration summarize_calibration(std::vector<OpMeasurement> ops) {
  Calibration c;
  std::map<std::string, double> best;  // name -> best efficiency over repetitions
  for (const OpMeasurement& op : ops) best[op.name] = std::max(best[op.name], op.efficiency);
  std::map<long, std::vector<std::pair<double, double>>> bins;  // half-decade -> (flops, efficiency)
  double attn_fwd_s = 0, attn_bwd_s = 0;  // best seconds per forward FLOP
  std::map<std::string, bool> seen;
  for (const OpMeasurement& op : ops) {
    if (seen[op.name]) continue;  // one entry per benchmark: its best repetition
    seen[op.name] = true;
    const double eff = std::min(1.0, best[op.name]);
    OpMeasurement kept = op;  // reported at its best repetition
    kept.seconds = op.seconds * op.efficiency / eff;
    kept.efficiency = eff;
    if (op.kind == "gemm" || op.kind == "grouped_gemm") {
      bins[std::lround(std::floor(std::log10(op.flops) * kBinsPerDecade))].emplace_back(op.flops, eff);
    } else if (op.forward_flops > 0) {
      const double per_fwd_flop = kept.seconds / op.forward_flops;
      double& slot = op.kind == "attention_backward" ? attn_bwd_s : attn_fwd_s;
      slot = slot > 0 ? std::min(slot, per_fwd_flop) : per_fwd_flop;
      if (op.kind == "attention_forward") c.attention_efficiency = std::max(c.attention_efficiency, eff);
    }
    c.ops.push_back(kept);
  }
  UM_CHECK(!bins.empty(), "plan", "calibration input has no GEMM results (BM_Linear, BM_GroupedLinear or a sweep)");
  for (auto& [bin, points] : bins) {
    std::sort(points.begin(), points.end(), [](auto& x, auto& y) { return x.second < y.second; });
    double log_sum = 0;
    for (auto& p : points) log_sum += std::log(p.first);
    const size_t n = points.size();
    const double median = n % 2 ? points[n / 2].second : 0.5 * (points[n / 2 - 1].second + points[n / 2].second);
    c.gemm_efficiency.emplace_back(std::exp(log_sum / n), median);
  }
  if (attn_fwd_s > 0 && attn_bwd_s > 0) c.attention_backward_ratio = attn_bwd_s / attn_fwd_s;
  return c;
}

Calibration calibrate_from_benchmark(const json& bench, const Hardware& hw) {
  return summarize_calibration(ops_from_benchmark(bench, hw));
}

json calibration_json(const Calibration& c) {
  json j;
  json curve = json::array();
  for (auto [f, e] : c.gemm_efficiency) {
    // three significant digits are all a measurement supports
    char fb[32], eb[32];
    std::snprintf(fb, sizeof fb, "%.3g", f);
    std::snprintf(eb, sizeof eb, "%.3f", e);
    curve.push_back({std::stod(fb), std::stod(eb)});
  }
  j["gemm_efficiency"] = curve;
  j["grouped_gemm_factor"] = 1.0;
  if (c.attention_efficiency > 0) j["attention_efficiency"] = std::round(c.attention_efficiency * 1000) / 1000;
  if (c.attention_backward_ratio > 0)
    j["attention_backward_ratio"] = std::round(c.attention_backward_ratio * 100) / 100;
  if (c.memory_bandwidth > 0) j["memory_bandwidth"] = std::round(c.memory_bandwidth / 1e8) * 1e8;
  if (c.elementwise_bandwidth > 0) j["elementwise_bandwidth"] = std::round(c.elementwise_bandwidth / 1e8) * 1e8;
  auto three_digits = [](double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", x);
    return std::stod(buf);
  };
  if (c.exp_element_s > 0) j["exp_element_s"] = three_digits(c.exp_element_s);
  if (c.cross_entropy_logit_s > 0) j["cross_entropy_logit_s"] = three_digits(c.cross_entropy_logit_s);
  return j;
}

MeasuredStep read_measured_step(const json& j, double tokens_per_step, const std::string& file) {
  UM_CHECK(j.is_object(), "plan", file, ": expected a JSON object with tokens_per_s");
  MeasuredStep m;
  UM_CHECK(j.contains("tokens_per_s") && j["tokens_per_s"].is_number(), "plan", file,
           ": no numeric tokens_per_s");
  m.tokens_per_s = j["tokens_per_s"].get<double>();
  UM_CHECK(m.tokens_per_s > 0, "plan", file, ": tokens_per_s must be > 0, got ", m.tokens_per_s);
  // `ultramoe bench` names them step_s_median and phases_s_per_step
  m.step_time_s = tokens_per_step / m.tokens_per_s;
  for (const char* key : {"step_time_s", "step_s_median"})
    if (j.contains(key) && j[key].is_number()) m.step_time_s = j[key].get<double>();
  for (const char* key : {"phases", "phases_s_per_step"})
    if (j.contains(key)) m.phases = j[key];
  return m;
}

}  // namespace um::plan
