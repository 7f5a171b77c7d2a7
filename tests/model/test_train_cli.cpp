// `ultramoe train / eval / sample / inspect` end to end through the binary: the loss falls,
// resume is bit-identical, SIGTERM and a crash mid-checkpoint lose nothing, and bad input gives
// one clear error line and a non-zero exit.
#include <gtest/gtest.h>

#include <csignal>
#include <thread>

#include "cli_harness.h"
#include "core/json_reader.h"
#include "core/safetensors.h"

namespace um::test {
namespace {

std::vector<json> read_metrics(const std::string& path, const char* kind = "train") {
  std::vector<json> v;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    json j = json::parse(line);
    if (j["kind"] == kind) v.push_back(j);
  }
  return v;
}

// One clear error line on stderr, non-zero exit.
void expect_error(const CmdResult& r, const std::string& fragment) {
  EXPECT_NE(r.status, 0) << "expected failure; stdout: " << r.out;
  EXPECT_EQ(r.err.rfind("ultramoe: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << "stderr: " << r.err;
}

class TrainCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir();
    data_ = prepare_synthetic_data(scratch_->path);
  }
  static void TearDownTestSuite() { delete scratch_; }
  std::string train_cmd(const std::string& out, const std::string& extra = "") const {
    return bin() + " train --config " + tiny_config() + " --data " + data_ + " --out " + out + tiny_overrides() + extra;
  }
  ScratchDir dir_;
  static ScratchDir* scratch_;
  static std::string data_;
};
ScratchDir* TrainCli::scratch_ = nullptr;
std::string TrainCli::data_;

TEST_F(TrainCli, LossFallsAndEvalSampleInspectWork) {
  const std::string out = dir_.path + "/run";
  CmdResult r = run_cmd(train_cmd(out, " --set train.steps=40 --set train.decay_steps=40 --set train.eval_every=20"), dir_.path);
  ASSERT_EQ(r.status, 0) << r.err;
  auto m = read_metrics(out + "/metrics.jsonl");
  ASSERT_EQ(m.size(), 40u);
  double last = 0;
  for (size_t i = 35; i < 40; ++i) last += m[i]["loss"].get<double>() / 5;
  EXPECT_LT(last, m[0]["loss"].get<double>() - 1.5) << "first " << m[0]["loss"] << " last5 " << last;
  auto ev = read_metrics(out + "/metrics.jsonl", "eval");
  ASSERT_EQ(ev.size(), 2u);  // step 20 and the final one
  EXPECT_LT(ev[1]["val_loss"].get<double>(), ev[0]["val_loss"].get<double>());
  EXPECT_FALSE(m[0].contains("val_loss"));
  EXPECT_TRUE(m[0]["moe"].is_array());
  const std::string ck = out + "/checkpoints/step_0000040";
  ASSERT_TRUE(fs::exists(ck + "/model.safetensors"));
  for (const char* f : {"config.json", "ultramoe.json", "tokenizer.model", "optimizer.safetensors", "trainer_state.json"})
    EXPECT_TRUE(fs::exists(ck + "/" + f)) << f;

  // the trainer scored train.eval_batches = 2 micro-batches; so does this
  CmdResult e = run_cmd(bin() + " eval --ckpt " + ck + " --data " + data_ + " --batches 2 --json", dir_.path);
  ASSERT_EQ(e.status, 0) << e.err;
  json ej = json::parse(e.out);
  EXPECT_NEAR(ej["val_loss"].get<double>(), ev[1]["val_loss"].get<double>(), 1e-9);  // the same scoring
  // per-layer expert load on the scored tokens: every token of a MoE layer picks K = 2 experts
  CmdResult es = run_cmd(bin() + " eval --ckpt " + ck + " --data " + data_ + " --batches 2 --expert-stats " +
                             dir_.path + "/es.json", dir_.path);
  ASSERT_EQ(es.status, 0) << es.err;
  const json st = read_json_file(dir_.path + "/es.json");
  ASSERT_EQ(st["layers"].size(), 2u);
  int64_t pairs = 0;
  for (int64_t x : st["layers"][0]["load"].get<std::vector<int64_t>>()) pairs += x;
  EXPECT_EQ(pairs, 2 * st["layers"][0]["tokens"].get<int64_t>());
  EXPECT_EQ(st["layers"][0]["tokens"].get<int64_t>(), 2 * 2 * 32);  // 2 micro-batches of 2 x 32 tokens

  CmdResult s = run_cmd(bin() + " sample --ckpt " + ck + " --prompt 'the cat' --max-new-tokens 12 --temperature 0", dir_.path);
  ASSERT_EQ(s.status, 0) << s.err;
  EXPECT_EQ(s.out.rfind("the cat", 0), 0u) << s.out;
  EXPECT_GT(s.out.size(), std::string("the cat\n").size());
  CmdResult s2 = run_cmd(bin() + " sample --ckpt " + ck + " --prompt 'the cat' --max-new-tokens 12 --temperature 0", dir_.path);
  EXPECT_EQ(s.out, s2.out);  // greedy is deterministic

  CmdResult i = run_cmd(bin() + " inspect --ckpt " + ck + " --json", dir_.path);
  ASSERT_EQ(i.status, 0) << i.err;
  json ij = json::parse(i.out);
  EXPECT_EQ(ij["checkpoint"]["step"], 40);
  EXPECT_EQ(ij["checkpoint"]["expert_load"].size(), 2u);  // one MoE main layer + the MTP layer
}

// The steady-state training step does not allocate (design.md 7; counted by the binary's operator
// new), dropless or in capacity mode, and bench reports what it measured.
TEST_F(TrainCli, SteadyStateStepDoesNotAllocate) {
  for (const std::string extra : {"", " --set train.capacity_factor=1.25 --set train.z_loss_coef=0.01"}) {
    CmdResult r = run_cmd(bin() + " bench --config " + tiny_config() + tiny_overrides() + extra +
                              " --steps 2 --warmup 2 --json", dir_.path);
    ASSERT_EQ(r.status, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["allocations_per_step"].get<double>(), 0.0) << extra;
    EXPECT_GT(j["tokens_per_s"].get<double>(), 0.0);
    // the exclusive phases add up to the timed step (the step time also covers a clock read)
    double phases = 0;
    for (auto& [k, v] : j["phases_s_per_step"].items()) phases += v.get<double>();
    const double mean_step = (j["step_s"][0].get<double>() + j["step_s"][1].get<double>()) / 2;
    EXPECT_NEAR(phases, mean_step, 0.05 * mean_step + 1e-3);
  }
}

TEST_F(TrainCli, ResumeIsBitIdentical) {
  const std::string a = dir_.path + "/a", b = dir_.path + "/b";
  const std::string common = " --set train.decay_steps=8 --set train.aux_free=true --set train.eval_every=0";
  ASSERT_EQ(run_cmd(train_cmd(a, common + " --set train.steps=8"), dir_.path).status, 0);
  ASSERT_EQ(run_cmd(train_cmd(b, common + " --set train.steps=4"), dir_.path).status, 0);
  CmdResult r = run_cmd(train_cmd(b, common + " --set train.steps=8 --resume"), dir_.path);
  ASSERT_EQ(r.status, 0) << r.err;
  auto ma = read_metrics(a + "/metrics.jsonl"), mb = read_metrics(b + "/metrics.jsonl");
  ASSERT_EQ(ma.size(), 8u);
  ASSERT_EQ(mb.size(), 8u);
  for (size_t i = 0; i < 8; ++i)
    for (const char* k : {"loss", "loss_total", "loss_mtp", "loss_bal", "grad_norm", "lr"})
      EXPECT_EQ(ma[i][k].dump(), mb[i][k].dump()) << "step " << i + 1 << " " << k;
  EXPECT_EQ(slurp(a + "/checkpoints/step_0000008/model.safetensors"),
            slurp(b + "/checkpoints/step_0000008/model.safetensors"));
  EXPECT_EQ(slurp(a + "/checkpoints/step_0000008/optimizer.safetensors"),
            slurp(b + "/checkpoints/step_0000008/optimizer.safetensors"));
}

TEST_F(TrainCli, CrashMidCheckpointKeepsThePreviousOne) {
  const std::string a = dir_.path + "/a", b = dir_.path + "/b";
  const std::string common = " --set train.decay_steps=6 --set train.checkpoint_every=2 --set train.eval_every=0";
  ASSERT_EQ(run_cmd(train_cmd(a, common + " --set train.steps=6"), dir_.path).status, 0);
  // killed (SIGKILL) inside the second checkpoint write, after model.safetensors
  CmdResult r = run_cmd("ULTRAMOE_FAILPOINT=checkpoint.after_model:2 " + train_cmd(b, common + " --set train.steps=6"), dir_.path);
  EXPECT_EQ(r.status, 128 + SIGKILL);
  EXPECT_TRUE(fs::exists(b + "/checkpoints/step_0000004.tmp/model.safetensors"));  // the torn write
  EXPECT_FALSE(fs::exists(b + "/checkpoints/step_0000004"));
  // the previous checkpoint is intact and identical to the uninterrupted run's
  EXPECT_EQ(slurp(a + "/checkpoints/step_0000002/model.safetensors"),
            slurp(b + "/checkpoints/step_0000002/model.safetensors"));
  CmdResult res = run_cmd(train_cmd(b, common + " --set train.steps=6 --resume"), dir_.path);
  ASSERT_EQ(res.status, 0) << res.err;
  EXPECT_NE(res.out.find("resumed from"), std::string::npos);
  EXPECT_FALSE(fs::exists(b + "/checkpoints/step_0000004.tmp"));  // cleaned up
  EXPECT_EQ(slurp(a + "/checkpoints/step_0000006/model.safetensors"),
            slurp(b + "/checkpoints/step_0000006/model.safetensors"));
}

TEST_F(TrainCli, SigtermFinishesTheStepAndCheckpoints) {
  const std::string out = dir_.path + "/run";
  const std::string pidfile = dir_.path + "/pid";
  // the trainer runs in the background with its pid recorded; its exit status is the command's
  const std::string cmd = "(exec " + train_cmd(out, " --set train.steps=100000 --set train.decay_steps=100000 --set train.eval_every=0") +
                          ") & echo $! > " + pidfile + "; wait $!";
  std::thread t([&] {
    // wait until a few steps are logged, then SIGTERM the trainer
    for (int i = 0; i < 1200; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (read_metrics(out + "/metrics.jsonl").size() >= 3) break;
    }
    const pid_t pid = static_cast<pid_t>(std::atol(slurp(pidfile).c_str()));
    if (pid > 0) kill(pid, SIGTERM);
  });
  CmdResult r = run_cmd(cmd, dir_.path);
  t.join();
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("stopping on a signal"), std::string::npos) << r.out;
  const auto m = read_metrics(out + "/metrics.jsonl");
  ASSERT_GE(m.size(), 3u);
  const int64_t last = m.back()["step"].get<int64_t>();
  char name[32];
  std::snprintf(name, sizeof name, "/checkpoints/step_%07lld", (long long)last);
  EXPECT_TRUE(fs::exists(out + name + "/model.safetensors")) << name;
}

// MoGE guarantees equal device loads only when the device count divides n_group (design.md 1.5):
// the run says so once on stderr and goes on; a dividing count says nothing.
TEST_F(TrainCli, MogeWarnsWhenDevicesDoNotDivideGroups) {
  const std::string moge = " --set model.topk_method=moge --set model.n_group=2 --set model.scoring_func=softmax"
                           " --set model.routed_scaling_factor=1 --set model.norm_topk_prob=false"
                           " --set train.steps=1 --set train.decay_steps=4";
  const CmdResult bad = run_cmd(train_cmd(dir_.path + "/four", moge + " --set train.imbalance_devices=4"), dir_.path);
  EXPECT_EQ(bad.status, 0) << bad.err;
  EXPECT_NE(bad.err.find("warning: MoGE balances devices only when their number divides n_group; 4 devices"),
            std::string::npos) << bad.err;
  const CmdResult good = run_cmd(train_cmd(dir_.path + "/two", moge + " --set train.imbalance_devices=2"), dir_.path);
  EXPECT_EQ(good.status, 0) << good.err;
  EXPECT_EQ(good.err.find("warning"), std::string::npos) << good.err;
}

TEST_F(TrainCli, BadInputGivesOneClearError) {
  const std::string out = dir_.path + "/run";
  const std::string cfg = dir_.path + "/bad.json";
  auto write = [](const std::string& p, const std::string& s) { std::ofstream(p) << s; };

  expect_error(run_cmd(bin() + " train --config " + dir_.path + "/nope.json --data " + data_, dir_.path), "cannot open");
  write(cfg, "{\"model\": {");
  expect_error(run_cmd(bin() + " train --config " + cfg + " --data " + data_, dir_.path), "is not valid JSON");
  expect_error(run_cmd(train_cmd(out, " --set train.bogus=1"), dir_.path), "unknown key train.bogus");
  expect_error(run_cmd(train_cmd(out, " --set train.lr=fast"), dir_.path), "train.lr: expected a number");
  expect_error(run_cmd(train_cmd(out, " --set model.num_experts_per_tok=9"), dir_.path), "num_experts_per_tok");
  expect_error(run_cmd(bin() + " train --config " + tiny_config() + " --data " + dir_.path + "/missing --out " + out,
                       dir_.path), "missing");
  expect_error(run_cmd(train_cmd(out, " --set model.vocab_size=100"), dir_.path), "vocab");
  expect_error(run_cmd(bin() + " train --config " + tiny_config() + " --data " + data_ + " --out /proc/ultramoe" +
                           tiny_overrides(), dir_.path), "cannot create output directory");
  expect_error(run_cmd(train_cmd(out, " --resume"), dir_.path), "no complete checkpoint");
  expect_error(run_cmd(bin() + " train --config " + tiny_config() + " --bogus", dir_.path), "unknown option --bogus");

  // shards: truncated, foreign
  const std::string bad_data = dir_.path + "/bad_data";
  fs::copy(data_, bad_data, fs::copy_options::recursive);
  fs::resize_file(bad_data + "/train.bin", fs::file_size(bad_data + "/train.bin") - 3);
  expect_error(run_cmd(train_cmd(out).replace(train_cmd(out).find(data_), data_.size(), bad_data), dir_.path), "truncated");
  write(bad_data + "/train.bin", "this is not a shard at all, just some text");
  expect_error(run_cmd(train_cmd(out).replace(train_cmd(out).find(data_), data_.size(), bad_data), dir_.path), "not an ultramoe token shard");

  // a good run to have checkpoints, then: fresh start refused, changed key on resume refused
  ASSERT_EQ(run_cmd(train_cmd(out, " --set train.steps=2 --set train.decay_steps=4"), dir_.path).status, 0);
  const std::string ck = out + "/checkpoints/step_0000002";
  const std::string before = slurp(ck + "/model.safetensors");
  expect_error(run_cmd(train_cmd(out, " --set train.steps=2 --set train.decay_steps=4"), dir_.path), "already holds checkpoints");
  expect_error(run_cmd(train_cmd(out, " --set train.steps=4 --set train.decay_steps=4 --set train.lr=0.1 --resume"), dir_.path),
               "train.lr is 0.1 but the checkpoint was trained with");
  // data encoded with another tokenizer: the ids would mean other text (data.path may change)
  const std::string other = dir_.path + "/other_tok";
  ASSERT_EQ(run_cmd(bin() + " data prepare --input " + scratch_->path + "/corpus.jsonl --out " + other +
                        " --vocab-size 380 --val-fraction 0.1", dir_.path).status, 0);
  expect_error(run_cmd(train_cmd(out, " --set train.steps=4 --set train.decay_steps=4 --resume")
                           .replace(train_cmd(out).find(data_), data_.size(), other), dir_.path),
               "was encoded with another tokenizer");

  // disk full while writing the next checkpoint (file-size limit, EFBIG): error, old checkpoint kept
  CmdResult full = run_cmd("trap '' XFSZ; ulimit -f 40; " +
                               train_cmd(out, " --set train.steps=4 --set train.decay_steps=4 --resume"), dir_.path);
  expect_error(full, "failed");
  EXPECT_EQ(slurp(ck + "/model.safetensors"), before);

  // damaged checkpoints: each gives a precise error from inspect/eval/sample/resume
  auto damaged = [&](const std::string& name) {
    const std::string d = dir_.path + "/" + name;
    fs::copy(ck, d, fs::copy_options::recursive);
    return d;
  };
  {
    const std::string d = damaged("missing_tensor");
    SafetensorsFile f(d + "/model.safetensors");
    SafetensorsWriter w;
    std::vector<std::vector<float>> keep;
    for (const auto& [name, e] : f.entries()) {
      if (name == "model.norm.weight") continue;
      keep.push_back(f.read<float>(name));
      w.add(name, DType::f32, e.shape, keep.back().data());
    }
    w.write(d + "/model.safetensors", false);
    expect_error(run_cmd(bin() + " inspect --ckpt " + d, dir_.path), "missing tensor model.norm.weight");
  }
  {
    const std::string d = damaged("wrong_shape");
    SafetensorsFile f(d + "/model.safetensors");
    SafetensorsWriter w;
    std::vector<std::vector<float>> keep;
    for (const auto& [name, e] : f.entries()) {
      keep.push_back(f.read<float>(name));
      Shape sh = e.shape;
      if (name == "model.layers.0.self_attn.o_proj.weight") sh = {sh[1], sh[0]};
      w.add(name, DType::f32, sh, keep.back().data());
    }
    w.write(d + "/model.safetensors", false);
    expect_error(run_cmd(bin() + " eval --ckpt " + d + " --data " + data_, dir_.path),
                 "tensor model.layers.0.self_attn.o_proj.weight: expected (64,32), file has (32,64)");
  }
  {
    const std::string d = damaged("truncated");
    fs::resize_file(d + "/model.safetensors", fs::file_size(d + "/model.safetensors") / 2);
    expect_error(run_cmd(bin() + " sample --ckpt " + d + " --prompt hi", dir_.path), "truncated");
  }
  {
    const std::string d = damaged("mismatched");
    json c = read_json_file(d + "/config.json");
    c["hidden_size"] = 128;
    std::ofstream(d + "/config.json") << c.dump();
    expect_error(run_cmd(bin() + " inspect --ckpt " + d, dir_.path), "config.json and ultramoe.json disagree on hidden_size");
  }
  expect_error(run_cmd(bin() + " sample --ckpt " + ck + " --prompt ''", dir_.path), "prompt is empty");
  expect_error(run_cmd(bin() + " sample --ckpt " + dir_.path + "/nowhere --prompt hi", dir_.path), "not a checkpoint directory");
  EXPECT_EQ(slurp(ck + "/model.safetensors"), before);  // nothing touched the saved checkpoint
}

}  // namespace
}  // namespace um::test
