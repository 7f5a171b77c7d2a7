// Layout and geometry search, calibration input, and the `ultramoe plan` command line.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <memory>

#include "plan/calibrate.h"
#include "plan/search.h"
#include "plan_fixtures.h"

namespace um::plan {
namespace {

using testing::shipped_model;
using testing::source_path;

TEST(PlanSearch, RanksFittingLayoutsFastestFirst) {
  const Hardware hw = testing::ideal_hardware(Precision::bf16);
  const PlanModel m = testing::small_moe();
  const Workload w{8, 128, 32};
  const SearchResult r = search_layouts(m, hw, w);
  ASSERT_FALSE(r.ranked.empty());
  EXPECT_GE(r.evaluated, static_cast<int64_t>(r.ranked.size()));
  for (size_t i = 0; i < r.ranked.size(); ++i) {
    EXPECT_TRUE(r.ranked[i].fits);
    if (i > 0) {
      EXPECT_LE(r.ranked[i - 1].step_time_s, r.ranked[i].step_time_s);
    }
  }
  EXPECT_EQ(rank_among(r, r.ranked.front().step_time_s), 1);
  EXPECT_EQ(rank_among(r, r.ranked.back().step_time_s * 2), static_cast<int64_t>(r.ranked.size()) + 1);
  for (const Layout& l : enumerate_layouts(m, hw, w)) {
    EXPECT_EQ(static_cast<int64_t>(l.tp) * l.pp * l.dp, w.devices);
    EXPECT_EQ(m.n_experts % l.ep, 0);
  }
}

TEST(PlanSearch, ReportsWhenNothingFits) {
  // 719B parameters cannot live on 8 GPUs of 80 GB whatever the layout
  const PlanModel m = shipped_model("configs/pangu-ultra-moe-718b.json");
  const Hardware hw = read_hardware_file(source_path("configs/hardware/h100.json"));
  const SearchResult r = search_layouts(m, hw, Workload{8, 4096, 64});
  EXPECT_GT(r.evaluated, 0);
  EXPECT_TRUE(r.ranked.empty());
  EXPECT_GT(r.smallest.memory.total(), hw.memory_bytes);
}

TEST(PlanSearch, DerivedGeometryKeepsTheBudget) {
  const PlanModel base = shipped_model("configs/pangu-ultra-moe-718b.json");
  PlanModel same;
  ASSERT_TRUE(derive_geometry(base, base.n_layers, base.hidden, base.n_experts, 0.05, &same));
  EXPECT_EQ(same.expert_width, base.expert_width);
  EXPECT_EQ(same.top_k, base.top_k);
  PlanModel wider;
  ASSERT_TRUE(derive_geometry(base, 53, 8192, 256, 0.05, &wider));
  const PlanParamCounts b = plan_param_counts(base), g = plan_param_counts(wider);
  EXPECT_NEAR(double(g.total) / double(b.total), 1.0, 0.05);
  EXPECT_NEAR(double(g.active) / double(b.active), 1.0, 0.05);
  EXPECT_EQ(wider.expert_width % 128, 0);
  PlanModel impossible;
  EXPECT_FALSE(derive_geometry(base, 61, 7680, 4, 0.05, &impossible));  // 4 experts cannot hold 700B at 39B active
}

TEST(PlanSearch, GeometrySearchOnSmallModel) {
  const Hardware hw = testing::ideal_hardware(Precision::bf16);
  const PlanModel base = testing::small_moe();
  GeometryGrid grid;
  grid.layers = {3, 4, 5};
  grid.hidden = {256};
  grid.experts = {4, 8, 16};
  grid.tolerance = 0.15;
  SearchSpace space;
  space.mbs = {1};
  const std::vector<GeometryCandidate> c = search_geometry(base, hw, Workload{4, 64, 16}, grid, space);
  ASSERT_FALSE(c.empty());
  const PlanParamCounts target = plan_param_counts(base);
  for (size_t i = 0; i < c.size(); ++i) {
    EXPECT_NEAR(double(c[i].counts.total) / double(target.total), 1.0, 0.15);
    if (i > 0 && c[i].found) {
      EXPECT_GE(c[i - 1].best.tokens_per_s, c[i].best.tokens_per_s);
    }
  }
}

TEST(PlanCalibrate, EfficiencyFromBenchmarkJson) {
  Hardware hw = testing::ideal_hardware();
  hw.peak_flops = 80e9;
  const json bench = json::parse(R"({"context": {}, "benchmarks": [
    {"name": "BM_Linear/100/100/100/real_time", "run_type": "iteration", "GFLOP/s": 40.0},
    {"name": "BM_GroupedLinear/3200/16/100/100/real_time", "run_type": "iteration", "GFLOP/s": 20.0},
    {"name": "BM_Linear/100/100/100/real_time", "run_type": "iteration", "GFLOP/s": 30.0},
    {"name": "BM_Attention/8/512/4/0/real_time", "run_type": "iteration", "GFLOP/s": 16.0},
    {"name": "BM_Attention/8/512/4/1/real_time", "run_type": "iteration", "GFLOP/s": 16.0},
    {"name": "BM_Linear/100/100/100/real_time_mean", "run_type": "aggregate", "GFLOP/s": 1.0}]})");
  const Calibration c = calibrate_from_benchmark(bench, hw);
  ASSERT_EQ(c.gemm_efficiency.size(), 2u);
  EXPECT_DOUBLE_EQ(c.gemm_efficiency[0].first, 2e6);   // 100 x 100 x 100
  EXPECT_DOUBLE_EQ(c.gemm_efficiency[0].second, 0.5);  // the better of two repetitions
  EXPECT_DOUBLE_EQ(c.gemm_efficiency[1].first, 4e6);   // one group: 200 rows x 100 x 100
  EXPECT_DOUBLE_EQ(c.gemm_efficiency[1].second, 0.25);
  EXPECT_DOUBLE_EQ(c.attention_efficiency, 0.2);
  EXPECT_DOUBLE_EQ(c.attention_backward_ratio, 2.0);  // bench_ops counts backward as 2x forward
  const json fields = calibration_json(c);
  Hardware patched = hw;
  json full = {{"name", "x"}, {"precision", "fp32"}, {"peak_flops", 80e9}, {"memory_bytes", 1e9},
               {"memory_bandwidth", 1e9}, {"devices_per_node", 1},
               {"intra_node", {{"bandwidth", 1e9}}}, {"inter_node", {{"bandwidth", 1e9}}}};
  full.update(fields);
  EXPECT_NO_THROW(patched = parse_hardware(full));
  EXPECT_THROW(calibrate_from_benchmark(json::parse(R"({"benchmarks": []})"), hw), Error);
}

TEST(PlanCalibrate, MeasuredStepFromBenchJson) {
  const MeasuredStep m = read_measured_step(json::parse(R"({"tokens_per_s": 2000, "phases": {"forward": 0.1}})"),
                                            1000, "bench.json");
  EXPECT_DOUBLE_EQ(m.step_time_s, 0.5);
  EXPECT_DOUBLE_EQ(m.phases["forward"].get<double>(), 0.1);
  EXPECT_THROW(read_measured_step(json::parse(R"({"step_time_s": 1})"), 1000, "bench.json"), Error);
  // the keys `ultramoe bench --json` prints
  const MeasuredStep b = read_measured_step(
      json::parse(R"({"tokens_per_s": 3500, "step_s_median": 0.146, "phases_s_per_step": {"MTP": 0.067}})"), 512,
      "bench.json");
  EXPECT_DOUBLE_EQ(b.step_time_s, 0.146);
  EXPECT_DOUBLE_EQ(b.phases["MTP"].get<double>(), 0.067);
}

TEST(PlanHardware, ShippedFilesParseAndRejectNonsense) {
  for (const char* f : {"ascend-910b", "h100", "h800", "h200", "cpu-local"}) {
    const Hardware hw = read_hardware_file(source_path(std::string("configs/hardware/") + f + ".json"));
    EXPECT_GT(hw.peak_flops, 0) << f;
    EXPECT_FALSE(hw.sources.empty()) << f;
  }
  const Hardware ascend = read_hardware_file(source_path("configs/hardware/ascend-910b.json"));
  EXPECT_DOUBLE_EQ(ascend.peak_flops, 256e12);
  EXPECT_EQ(ascend.devices_per_node, 8);
  json bad = read_json_file(source_path("configs/hardware/h100.json"));
  bad["gemm_efficiency"] = json::array({json::array({1e9, 0.5}), json::array({1e8, 0.6})});
  EXPECT_THROW(parse_hardware(bad), Error);
  bad = read_json_file(source_path("configs/hardware/h100.json"));
  bad["attention_efficiency"] = 1.5;
  EXPECT_THROW(parse_hardware(bad), Error);
  bad = read_json_file(source_path("configs/hardware/h100.json"));
  bad["peak_tflops"] = 1;
  EXPECT_THROW(parse_hardware(bad), Error);
}

// Runs the CLI; returns {exit status, stdout + stderr}.
std::pair<int, std::string> run_cli(const std::string& args) {
  const std::string cmd = std::string(ULTRAMOE_BINARY) + " plan " + args + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd.c_str(), "r"), pclose);
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe.get())) out.append(buf.data(), n);
  const int status = pclose(pipe.release());
  return {WEXITSTATUS(status), out};
}

TEST(PlanCli, JsonForOneLayoutAndClearErrors) {
  const std::string base = "--model " + source_path("configs/mixtral-8x7b.json") + " --hardware " +
                           source_path("configs/hardware/h100.json") + " --devices 64 --seq 4096 --global-batch 256";
  auto [rc, out] = run_cli(base + " --layout tp=1,pp=4,vpp=8,ep=8,mbs=1 --json");
  ASSERT_EQ(rc, 0) << out;
  const json j = json::parse(out);
  EXPECT_GT(j["mfu"].get<double>(), 0);
  EXPECT_GT(j["step_time_s"].get<double>(), 0);
  EXPECT_GT(j["memory_per_device_bytes"].get<double>(), 0);
  EXPECT_EQ(j["layout"]["dp"].get<int>(), 16);

  auto [rc2, err] = run_cli(base + " --layout tp=1,pp=4,ep=3");
  EXPECT_NE(rc2, 0);
  EXPECT_NE(err.find("ultramoe: error: [plan] parallel layout ep=3 does not divide n_routed_experts=8"),
            std::string::npos) << err;

  auto [rc3, err3] = run_cli("--model " + source_path("configs/pangu-ultra-moe-718b.json") + " --hardware " +
                             source_path("configs/hardware/h100.json") + " --devices 8 --seq 4096 --global-batch 64");
  EXPECT_NE(rc3, 0);
  EXPECT_NE(err3.find("the model does not fit"), std::string::npos) << err3;

  auto [rc4, err4] = run_cli(base);
  EXPECT_EQ(rc4, 0) << err4;
  EXPECT_NE(err4.find("rank"), std::string::npos);
}

TEST(PlanCli, RunConfigLayoutAgainstAMeasuredStep) {
  // a run config gives seq, batch and the engine's layout; a metrics line gives the measurement
  const std::string measured = ::testing::TempDir() + "plan_measured.json";
  std::FILE* f = std::fopen(measured.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs(R"({"kind": "train", "step": 5, "tokens_per_s": 1000.0})", f);
  std::fclose(f);
  auto [rc, out] = run_cli("--model " + source_path("configs/tiny.json") + " --hardware " +
                           source_path("configs/hardware/cpu-local.json") +
                           " --devices 1 --layout config --measured " + measured + " --json");
  ASSERT_EQ(rc, 0) << out;
  const json j = json::parse(out);
  EXPECT_EQ(j["workload"]["seq_len"].get<int>(), 64);     // data.seq_len
  EXPECT_EQ(j["workload"]["global_batch"].get<int>(), 8); // train.batch_size
  EXPECT_EQ(j["layout"]["mbs"].get<int>(), 4);            // train.micro_batch_size
  EXPECT_DOUBLE_EQ(j["measured"]["step_time_s"].get<double>(), 8 * 64 / 1000.0);
  EXPECT_NEAR(j["predicted_over_measured"].get<double>(), j["step_time_s"].get<double>() / 0.512, 1e-12);
  std::remove(measured.c_str());
}

}  // namespace
}  // namespace um::plan
