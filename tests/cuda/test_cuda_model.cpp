// The model and the training step on the CUDA backend (a GPU, or the CPU emulation of CUDA):
// the PyTorch goldens in f32 on the device (every loss part, every parameter gradient, ten
// optimizer steps), the bf16 model against them at bf16 tolerance, run-to-run determinism, and
// `ultramoe train --device cuda` end to end: the loss falls, resume is bit-identical, and bad
// placements give one clear error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "../model/cli_harness.h"
#include "../model/golden.h"
#include "../ops/op_harness.h"
#include "core/json_reader.h"
#include "train/step.h"

namespace um::test {
namespace {

// f32 on the device against the f64 golden: the CPU's f32 tolerances (test_golden.cpp) with 5x
// margin for other summation orders and libm's expf against the CPU's vectorised exp.
constexpr double kLoss = 1e-6, kGrad = 1e-4;
// bf16 compute (f32 master weights and statistics): losses to 2%, the gradient as a whole to
// 10% normwise (routing decisions may flip where bf16 rounding moves a margin).
constexpr double kBf16Loss = 2e-2, kBf16Grad = 0.1;

struct Device {
  Workspace ws{um::Device::cuda};
  Ctx ctx = cuda_context().ctx(&ws);
};

template <class T>
std::unique_ptr<ParamStore<T>> device_store(const Golden& g, const Ctx& ctx) {
  ParamStore<float> host(g.table);
  g.load(host);
  auto ps = std::make_unique<ParamStore<T>>(g.table, -1, um::Device::cuda);
  upload_state(*ps, host, ctx);
  return ps;
}

ModelOptions options_of(const Golden& g) {
  const TrainConfig& tc = g.rc.train;
  ModelOptions mo{tc.micro_batch_size, g.T, tc.balance_scope, tc.capacity_factor, tc.aux_free};
  mo.device = um::Device::cuda;
  return mo;
}

template <class T>
std::vector<double> download_grads(const ParamStore<T>& ps, const Ctx& ctx) {
  std::vector<float> g(size_t(ps.g.size()));
  ctx.download(g.data(), ps.g.data(), g.size());
  return std::vector<double>(g.begin(), g.end());
}

class GoldenOnDevice : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenOnDevice, StepOneF32) {
  const Golden g(GetParam());
  Device d;
  auto ps = device_store<float>(g, d.ctx);
  Model<float> model(g.rc.model, g.table, options_of(g));
  const StepOutcome out = accumulate_step<float>(model, *ps, g.rc.train, 1, g.batch(1), StepGroups{}, d.ctx);
  const json& j = g.meta;
  EXPECT_EQ(out.n_main, j["n_main"].get<int64_t>());
  EXPECT_LE(rel_error(out.loss, j["loss"]), kLoss) << "loss " << out.loss;
  EXPECT_LE(rel_error(out.loss_mtp + 1, j["loss_mtp"].get<double>() + 1), kLoss) << "loss_mtp";
  EXPECT_LE(rel_error(out.loss_bal + 1, j["loss_bal"].get<double>() + 1), kLoss) << "loss_bal";
  EXPECT_LE(rel_error(out.loss_z + 1, j["loss_z"].get<double>() + 1), kLoss) << "loss_z";
  EXPECT_LE(rel_error(out.loss_total, j["loss_total"]), kLoss) << "loss_total";
  for (size_t l = 0; l < out.balance.size(); ++l) {
    EXPECT_EQ(out.moe[l].load, j["expert_load"][l].get<std::vector<int64_t>>()) << "expert load " << l;
    EXPECT_EQ(out.moe[l].dropped, j["dropped_pairs"][l].get<int64_t>()) << "dropped " << l;
  }
  const std::vector<double> grad = download_grads(*ps, d.ctx);
  double gmax = 0;
  for (double x : grad) gmax = std::max(gmax, std::fabs(x));
  for (const ParamInfo& p : g.table.params) {
    const std::vector<double> want = g.tensor("grad." + p.name);
    const std::vector<double> got(grad.begin() + p.offset, grad.begin() + p.offset + p.numel);
    double wmax = 0;
    for (double x : want) wmax = std::max(wmax, std::fabs(x));
    if (wmax < 1e-12 * gmax) {
      for (double x : got) EXPECT_LE(std::fabs(x), 1e-7 * gmax) << p.name;
      continue;
    }
    EXPECT_LE(normwise(got, want), kGrad) << "grad." << p.name;
  }
}

TEST_P(GoldenOnDevice, StepOneBf16) {
  const Golden g(GetParam());
  Device d;
  auto ps = device_store<bf16>(g, d.ctx);
  Model<bf16> model(g.rc.model, g.table, options_of(g));
  const StepOutcome out = accumulate_step<bf16>(model, *ps, g.rc.train, 1, g.batch(1), StepGroups{}, d.ctx);
  const json& j = g.meta;
  EXPECT_LE(rel_error(out.loss, j["loss"]), kBf16Loss) << "loss " << out.loss;
  EXPECT_LE(rel_error(out.loss_total, j["loss_total"]), kBf16Loss) << "loss_total " << out.loss_total;
  std::vector<double> want(size_t(g.table.n_elements), 0.0);
  for (const ParamInfo& p : g.table.params) {
    const std::vector<double> w = g.tensor("grad." + p.name);
    std::copy(w.begin(), w.end(), want.begin() + p.offset);
  }
  EXPECT_LE(normwise(download_grads(*ps, d.ctx), want), kBf16Grad);
}

// Ten optimizer steps in f32 on the device: schedule, clipping, AdamW, aux-free biases.
TEST_P(GoldenOnDevice, TenStepsF32) {
  const Golden g(GetParam());
  Device d;
  auto ps = device_store<float>(g, d.ctx);
  const TrainConfig& tc = g.rc.train;
  Model<float> model(g.rc.model, g.table, options_of(g));
  const Optimizer opt = Optimizer::full(g.table, tc.weight_decay_norms);
  int64_t adam_step = 0;
  const json& steps = g.meta["steps"];
  for (int64_t s = 1; s <= g.S; ++s) {
    StepOutcome o = train_step<float>(model, *ps, opt, tc, s, adam_step, g.batch(s), StepGroups{}, d.ctx);
    const json& want = steps[s - 1];
    EXPECT_LE(rel_error(o.loss, want["loss"]), 1e-5) << "loss at step " << s;
    EXPECT_LE(rel_error(o.grad_norm, want["grad_norm"]), 1e-4) << "grad_norm at step " << s;
    EXPECT_EQ(o.clipped, want["clipped"].get<bool>()) << "clipped at step " << s;
  }
  // Adam normalises each update (m / sqrt(v)): where a gradient is tiny its rounding moves the
  // weight by up to ~lr either way, so the final weights agree less closely than the losses
  // (measured under the emulation: <= 5.3e-4 normwise per tensor; bound 2e-3).
  ParamStore<float> host(g.table);
  download_state(*ps, host, d.ctx);
  for (const ParamInfo& p : g.table.params) {
    std::vector<double> got(host.w.data() + p.offset, host.w.data() + p.offset + p.numel);
    EXPECT_LE(normwise(got, g.tensor("final.param." + p.name)), 2e-3) << "final " << p.name;
  }
}

// Two runs of the same steps on the device give the same bits (what resume relies on).
TEST_P(GoldenOnDevice, StepsAreRunToRunIdentical) {
  const Golden g(GetParam());
  Device d;
  const TrainConfig& tc = g.rc.train;
  auto run = [&]() {
    auto ps = device_store<bf16>(g, d.ctx);
    Model<bf16> model(g.rc.model, g.table, options_of(g));
    const Optimizer opt = Optimizer::full(g.table, tc.weight_decay_norms);
    int64_t adam_step = 0;
    for (int64_t s = 1; s <= 3; ++s) train_step<bf16>(model, *ps, opt, tc, s, adam_step, g.batch(s), StepGroups{}, d.ctx);
    ParamStore<float> host(g.table);
    download_state(*ps, host, d.ctx);
    return std::vector<float>(host.w.data(), host.w.data() + host.w.size());
  };
  const std::vector<float> a = run(), b = run();
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(Reference, GoldenOnDevice,
                         ::testing::Values("tiny_dssn", "tiny_preln", "tiny_grouped", "tiny_moge"),
                         [](const auto& info) { return info.param; });

// ---------------------------------------------------------------------------------------------
// `ultramoe train --device cuda` through the binary.
std::vector<json> train_lines(const std::string& path) {
  std::vector<json> v;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    json j = json::parse(line);
    if (j["kind"] == "train") v.push_back(j);
  }
  return v;
}

class TrainOnDevice : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir();
    data_ = prepare_synthetic_data(scratch_->path);
  }
  static void TearDownTestSuite() { delete scratch_; }
  std::string train_cmd(const std::string& out, const std::string& extra) const {
    return bin() + " train --device cuda --config " + tiny_config() + " --data " + data_ + " --out " + out +
           tiny_overrides() + " --set train.eval_every=0" + extra;
  }
  ScratchDir dir_;
  static ScratchDir* scratch_;
  static std::string data_;
};
ScratchDir* TrainOnDevice::scratch_ = nullptr;
std::string TrainOnDevice::data_;

TEST_F(TrainOnDevice, LossFallsAndResumeIsBitIdentical) {
  const std::string a = dir_.path + "/a", b = dir_.path + "/b";
  const std::string common = " --set train.decay_steps=16 --set train.aux_free=true";
  CmdResult r = run_cmd(train_cmd(a, common + " --set train.steps=16"), dir_.path);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("bf16 compute"), std::string::npos) << r.out;
  ASSERT_EQ(run_cmd(train_cmd(b, common + " --set train.steps=8"), dir_.path).status, 0);
  r = run_cmd(train_cmd(b, common + " --set train.steps=16 --resume"), dir_.path);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto ma = train_lines(a + "/metrics.jsonl"), mb = train_lines(b + "/metrics.jsonl");
  ASSERT_EQ(ma.size(), 16u);
  ASSERT_EQ(mb.size(), 16u);
  EXPECT_LT(ma[15]["loss"].get<double>(), ma[0]["loss"].get<double>() - 0.5);
  for (size_t i = 0; i < 16; ++i)
    for (const char* k : {"loss", "loss_total", "grad_norm"})
      EXPECT_EQ(ma[i][k].dump(), mb[i][k].dump()) << "step " << i + 1 << " " << k;
  EXPECT_EQ(slurp(a + "/checkpoints/step_0000016/model.safetensors"),
            slurp(b + "/checkpoints/step_0000016/model.safetensors"));
  EXPECT_EQ(slurp(a + "/checkpoints/step_0000016/optimizer.safetensors"),
            slurp(b + "/checkpoints/step_0000016/optimizer.safetensors"));
}

TEST_F(TrainOnDevice, BadPlacementGivesOneClearError) {
  CmdResult r = run_cmd(bin() + " train --device tpu --config " + tiny_config() + " --data " + data_ + " --out " +
                            dir_.path + "/x",
                        dir_.path);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("unknown device \"tpu\""), std::string::npos) << r.err;
  r = run_cmd(bin() + " train --dtype bf16 --config " + tiny_config() + " --data " + data_ + " --out " + dir_.path + "/y",
              dir_.path);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("--dtype bf16 needs --device cuda"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace um::test
