#include "plan/hardware.h"

#include <algorithm>
#include <cmath>

namespace um::plan {

const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

int element_bytes(Precision p) { return p == Precision::bf16 ? 2 : 4; }

namespace {

double positive(JsonReader& r, const std::string& key) {
  double v = r.get<double>(key);
  UM_CHECK(v > 0 && std::isfinite(v), "plan", r.path(key), ": must be > 0, got ", v);
  return v;
}

double non_negative(JsonReader& r, const std::string& key, double fallback) {
  double v = r.opt<double>(key, fallback);
  UM_CHECK(v >= 0 && std::isfinite(v), "plan", r.path(key), ": must be >= 0, got ", v);
  return v;
}

double fraction(JsonReader& r, const std::string& key, double v) {
  UM_CHECK(v > 0 && v <= 1, "plan", r.path(key), ": must be in (0, 1], got ", v);
  return v;
}

Link parse_link(const json& j, const std::string& path) {
  JsonReader r(j, path, "plan");
  Link l;
  l.bandwidth = positive(r, "bandwidth");
  l.latency = non_negative(r, "latency", 0);
  r.finish();
  return l;
}

std::vector<std::pair<double, double>> parse_curve(const json& j, const std::string& path) {
  UM_CHECK(j.is_array() && !j.empty(), "plan", path,
           ": expected a non-empty list of [flops, efficiency] pairs, got ", j.dump());
  std::vector<std::pair<double, double>> curve;
  for (const json& p : j) {
    UM_CHECK(p.is_array() && p.size() == 2 && p[0].is_number() && p[1].is_number(), "plan", path,
             ": each point must be [flops, efficiency], got ", p.dump());
    double flops = p[0].get<double>(), eff = p[1].get<double>();
    UM_CHECK(flops > 0, "plan", path, ": flops must be > 0, got ", p.dump());
    UM_CHECK(eff > 0 && eff <= 1, "plan", path, ": efficiency must be in (0, 1], got ", p.dump());
    UM_CHECK(curve.empty() || flops > curve.back().first, "plan", path,
             ": points must be sorted by increasing flops, got ", p.dump(), " after ",
             curve.back().first);
    curve.emplace_back(flops, eff);
  }
  return curve;
}

}  // namespace

Hardware parse_hardware(const json& j, const std::string& path) {
  JsonReader r(j, path, "plan");
  Hardware hw;
  hw.name = r.get<std::string>("name");
  std::string precision = r.get<std::string>("precision");
  if (precision == "bf16" || precision == "fp16") hw.precision = Precision::bf16;
  else if (precision == "fp32") hw.precision = Precision::fp32;
  else fail("plan", r.path("precision"), ": expected bf16, fp16 or fp32, got \"", precision, "\"");
  hw.peak_flops = positive(r, "peak_flops");
  hw.memory_bytes = positive(r, "memory_bytes");
  hw.memory_bandwidth = positive(r, "memory_bandwidth");
  hw.memory_reserved_bytes = non_negative(r, "memory_reserved_bytes", 0);
  UM_CHECK(hw.memory_reserved_bytes < hw.memory_bytes, "plan", r.path("memory_reserved_bytes"),
           ": ", hw.memory_reserved_bytes, " leaves nothing of memory_bytes=", hw.memory_bytes);
  hw.devices_per_node = r.get<int>("devices_per_node");
  UM_CHECK(hw.devices_per_node >= 1, "plan", r.path("devices_per_node"), ": must be >= 1, got ",
           hw.devices_per_node);
  hw.intra_node = parse_link(r.raw("intra_node"), r.path("intra_node"));
  hw.inter_node = parse_link(r.raw("inter_node"), r.path("inter_node"));
  hw.gemm_efficiency = parse_curve(r.raw("gemm_efficiency"), r.path("gemm_efficiency"));
  hw.grouped_gemm_factor = fraction(r, "grouped_gemm_factor", r.opt<double>("grouped_gemm_factor", 1.0));
  hw.attention_efficiency = fraction(r, "attention_efficiency", r.get<double>("attention_efficiency"));
  hw.attention_backward_ratio = r.opt<double>("attention_backward_ratio", hw.attention_backward_ratio);
  UM_CHECK(hw.attention_backward_ratio >= 1, "plan", r.path("attention_backward_ratio"), ": must be >= 1, got ",
           hw.attention_backward_ratio);
  hw.op_overhead_s = non_negative(r, "op_overhead_s", 0);
  hw.elementwise_bandwidth = non_negative(r, "elementwise_bandwidth", 0);
  if (hw.elementwise_bandwidth == 0) hw.elementwise_bandwidth = hw.memory_bandwidth;
  hw.exp_element_s = non_negative(r, "exp_element_s", 0);
  hw.cross_entropy_logit_s = non_negative(r, "cross_entropy_logit_s", 0);
  const json& sources = r.raw("sources");
  if (!sources.is_null()) {
    UM_CHECK(sources.is_array(), "plan", r.path("sources"), ": expected a list of strings");
    for (const json& s : sources) {
      UM_CHECK(s.is_string(), "plan", r.path("sources"), ": expected strings, got ", s.dump());
      hw.sources.push_back(s.get<std::string>());
    }
  }
  r.finish();
  return hw;
}

Hardware read_hardware_file(const std::string& file) {
  json j = read_json_file(file, "plan");
  return parse_hardware(j.is_object() && j.contains("hardware") ? j["hardware"] : j,
                        j.is_object() && j.contains("hardware") ? "hardware" : file);
}

double gemm_efficiency(const Hardware& hw, double flops) {
  const auto& c = hw.gemm_efficiency;
  if (flops <= c.front().first) return c.front().second;
  if (flops >= c.back().first) return c.back().second;
  auto hi = std::upper_bound(c.begin(), c.end(), flops,
                             [](double f, const std::pair<double, double>& p) { return f < p.first; });
  auto lo = hi - 1;
  const double x = (std::log(flops) - std::log(lo->first)) / (std::log(hi->first) - std::log(lo->first));
  return lo->second + x * (hi->second - lo->second);
}

}  // namespace um::plan
