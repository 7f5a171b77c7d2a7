// `mpirun -np N ultramoe train ...` end to end (label mpi): the launched job matches one
// process, a checkpoint written by N ranks resumes on M ranks with another ep, and a rank that
// fails takes the whole job down with a clear message instead of hanging.
#include <gtest/gtest.h>

#include <chrono>

#include "../model/cli_harness.h"
#include "core/json_reader.h"

namespace um::test {
namespace {

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

std::string mpirun(int np) {
  return "env OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np " + std::to_string(np) + " ";
}

class MpiCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir();
    data_ = prepare_synthetic_data(scratch_->path);
  }
  static void TearDownTestSuite() { delete scratch_; }
  std::string train(const std::string& out, const std::string& extra) const {
    return bin() + " train --config " + tiny_config() + " --data " + data_ + " --out " + out + tiny_overrides() +
           " --set train.batch_size=8 --set train.eval_every=0 --set train.decay_steps=6" + extra;
  }
  ScratchDir dir_;
  static ScratchDir* scratch_;
  static std::string data_;
};
ScratchDir* MpiCli::scratch_ = nullptr;
std::string MpiCli::data_;

// f32 runs: the ranks sum gradients in another order than one process, so agreement is to
// float round-off amplified over a few steps, not bit for bit (the f64 equivalence is test_mpi).
void expect_close_losses(const std::vector<json>& a, const std::vector<json>& b, double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_NEAR(a[i]["loss"].get<double>(), b[i]["loss"].get<double>(), tol) << "step " << i + 1;
    EXPECT_NEAR(a[i]["loss_total"].get<double>(), b[i]["loss_total"].get<double>(), tol) << "step " << i + 1;
  }
}

TEST_F(MpiCli, LaunchedJobMatchesOneProcessAndResumesOnOtherRankCounts) {
  const std::string one = dir_.path + "/one", two = dir_.path + "/two";
  ASSERT_EQ(run_cmd(train(one, " --set train.steps=6"), dir_.path).status, 0);
  CmdResult r = run_cmd(mpirun(2) + train(two, " --set train.steps=3 --set train.checkpoint_every=3 --set parallel.ep=2 "
                                           "--set parallel.zero=1"), dir_.path);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("layout: 2 ranks x 1 threads, ep 2, ZeRO-1"), std::string::npos) << r.out;
  // each EP rank wrote its own shard (its experts, a share of the rest); the index ties them
  const std::string ck = two + "/checkpoints/step_0000003";
  for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                        "model.safetensors.index.json", "optimizer-00001-of-00002.safetensors",
                        "optimizer-00002-of-00002.safetensors", "optimizer.safetensors.index.json"})
    EXPECT_TRUE(fs::exists(ck + "/" + f)) << f;
  EXPECT_FALSE(fs::exists(ck + "/model.safetensors"));
  // the checkpoint of 2 ranks with ep 2 and ZeRO-1 resumes on 4 ranks with ep 4, then on 1 rank
  r = run_cmd(mpirun(4) + train(two, " --set train.steps=5 --set parallel.ep=4 --resume"), dir_.path);
  ASSERT_EQ(r.status, 0) << r.err;
  r = run_cmd(train(two, " --set train.steps=6 --resume"), dir_.path);
  ASSERT_EQ(r.status, 0) << r.err;
  expect_close_losses(train_lines(two + "/metrics.jsonl"), train_lines(one + "/metrics.jsonl"), 2e-4);
}

// Pipeline parallelism end to end: 2 stages (1F1B) checkpoint, the run resumes as 2 stages x
// 2 virtual stages x 2 data-parallel ranks with EP and ZeRO-1, then on one process; the losses
// follow the one-process run (evaluation runs through the pipeline at the end of each leg).
TEST_F(MpiCli, PipelineJobMatchesOneProcessAndResumesAcrossLayouts) {
  const std::string one = dir_.path + "/one", pipe = dir_.path + "/pipe";
  ASSERT_EQ(run_cmd(train(one, " --set train.steps=6"), dir_.path).status, 0);
  CmdResult r = run_cmd(mpirun(2) + train(pipe, " --set train.steps=3 --set train.checkpoint_every=3 --set parallel.pp=2"),
                        dir_.path);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("layout: 2 ranks x 1 threads, ep 1, pp 2 (layers 1/1 + tail"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("eval step 3"), std::string::npos) << r.out;
  // one shard per stage, the embedding written once
  const std::string ck = pipe + "/checkpoints/step_0000003";
  for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                        "model.safetensors.index.json"})
    EXPECT_TRUE(fs::exists(ck + "/" + f)) << f;
  r = run_cmd(mpirun(4) + train(pipe, " --set train.steps=5 --set parallel.pp=2 --set parallel.vpp=2 "
                                      "--set parallel.pp_layers=[0,1,1,0] --set parallel.ep=2 --set parallel.zero=1 --resume"),
              dir_.path);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("pp 2 x vpp 2 (layers 0/1/1/0 + tail"), std::string::npos) << r.out;
  r = run_cmd(train(pipe, " --set train.steps=6 --resume"), dir_.path);
  ASSERT_EQ(r.status, 0) << r.err;
  const std::vector<json> a = train_lines(pipe + "/metrics.jsonl"), b = train_lines(one + "/metrics.jsonl");
  expect_close_losses(a, b, 2e-4);
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    EXPECT_NEAR(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>(), 1e-3 * b[i]["grad_norm"].get<double>());
}

// The distributed steady-state step allocates nothing either: expert parallelism, ZeRO-1's
// reduce-scatter and all-gather, the overlapped gradient all-reduce (rank 0's count).
TEST_F(MpiCli, DistributedStepDoesNotAllocate) {
  for (const std::string layout : {" --set parallel.ep=1", " --set parallel.ep=2",
                                   " --set parallel.ep=2 --set parallel.zero=1", " --set parallel.zero=1"}) {
    CmdResult r = run_cmd(mpirun(2) + bin() + " bench --config " + tiny_config() + tiny_overrides() +
                              " --set train.batch_size=8" + layout + " --steps 2 --warmup 2 --json", dir_.path);
    ASSERT_EQ(r.status, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["ranks"].get<int>(), 2);
    EXPECT_EQ(j["allocations_per_step"].get<double>(), 0.0) << layout;
  }
}

TEST_F(MpiCli, AFailingRankEndsTheJob) {
  const auto t0 = std::chrono::steady_clock::now();
  CmdResult r = run_cmd("ULTRAMOE_FAILPOINT=train.step:2@1 timeout 120 " + mpirun(2) +
                            train(dir_.path + "/run", " --set train.steps=50 --set parallel.ep=2"),
                        dir_.path);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.status, 124) << "the job hung until the timeout";
  EXPECT_NE(r.err.find("ultramoe: error: [rank 1 of 2] [failpoint] train.step triggered"), std::string::npos) << r.err;
  EXPECT_LT(s, 60);
}

}  // namespace
}  // namespace um::test
