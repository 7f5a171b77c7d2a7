// `ultramoe sample` and `ultramoe eval` end to end through the binary on a small checkpoint
// (the tiny config with a plain normal init, saved with a tokenizer trained on synthetic text):
// the cached decoder prints what the full-recompute path prints, speculative greedy too, batches
// and the interactive mode work, bad input gives one clear error line, the bench runs.
// f32: the cached and full-recompute logits differ by round-off (test_decoder: < 5e-5), far below
// the gaps between the top greedy logits of this model, so equal text is expected.
#include <gtest/gtest.h>

#include "../model/cli_harness.h"
#include "core/json_reader.h"
#include "model/weights.h"
#include "train/checkpoint.h"
#include "train/run_config.h"

namespace um::test {
namespace {

class InferCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir;
    data_ = prepare_synthetic_data(dir_->path);
    RunConfig rc = load_run_config(tiny_config(), {"model.vocab_size=512", "data.seq_len=48", "model.init=fixed",
                                                   "model.initializer_range=0.08", "data.path=" + data_});
    const ParamTable table = build_param_table(rc.model);
    ParamStore<float> ps(table);
    init_params(ps, table, rc.model, 3);
    ckpt_ = save_checkpoint(dir_->path + "/checkpoints", rc, table, ps, TrainerState{}, data_ + "/tokenizer.model");
  }
  static void TearDownTestSuite() { delete dir_; }
  static CmdResult sample(const std::string& flags) {
    return run_cmd(bin() + " sample --ckpt " + ckpt_ + " " + flags, dir_->path);
  }
  static void expect_error(const CmdResult& r, const std::string& needle) {
    EXPECT_NE(r.status, 0) << r.out;
    EXPECT_NE(r.err.find("ultramoe: error: "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;  // one line
  }
  static ScratchDir* dir_;
  static std::string data_, ckpt_;
};
ScratchDir* InferCli::dir_ = nullptr;
std::string InferCli::data_, InferCli::ckpt_;

TEST_F(InferCli, CachedPrintsWhatFullRecomputePrints) {
  for (const std::string flags : {"--temperature 0", "--temperature 0.9 --top-k 40 --seed 4"}) {
    const CmdResult full = sample("--prompt 'the cat' --max-new-tokens 24 --full-recompute " + flags);
    const CmdResult cached = sample("--prompt 'the cat' --max-new-tokens 24 " + flags);
    ASSERT_EQ(full.status, 0) << full.err;
    ASSERT_EQ(cached.status, 0) << cached.err;
    EXPECT_EQ(cached.out.rfind("the cat", 0), 0u) << cached.out;
    EXPECT_GT(cached.out.size(), std::string("the cat\n").size());
    EXPECT_EQ(cached.out, full.out) << flags;
  }
  const CmdResult greedy = sample("--prompt 'the cat' --max-new-tokens 24 --temperature 0");
  const CmdResult spec = sample("--prompt 'the cat' --max-new-tokens 24 --temperature 0 --speculative --stats");
  ASSERT_EQ(spec.status, 0) << spec.err;
  EXPECT_EQ(spec.out, greedy.out);
  EXPECT_NE(spec.err.find("drafts accepted"), std::string::npos) << spec.err;
  EXPECT_NE(spec.err.find("decode"), std::string::npos) << spec.err;
}

TEST_F(InferCli, BatchAndInteractive) {
  const CmdResult one = sample("--prompt 'a dog' --max-new-tokens 10 --temperature 0");
  const CmdResult two = sample("--prompt 'the girl' --prompt 'a dog' --max-new-tokens 10 --temperature 0");
  ASSERT_EQ(two.status, 0) << two.err;
  const size_t nl = two.out.find('\n');
  ASSERT_NE(nl, std::string::npos);
  EXPECT_EQ(two.out.rfind("the girl", 0), 0u);
  EXPECT_EQ(two.out.substr(nl + 1), one.out);  // greedy: the batch does not change a sequence
  const CmdResult it = run_cmd("printf 'a dog\\nthe girl\\n\\n' | " + bin() + " sample --ckpt " + ckpt_ +
                                   " --interactive --max-new-tokens 10 --temperature 0", dir_->path);
  ASSERT_EQ(it.status, 0) << it.err;
  EXPECT_EQ(it.out.rfind(one.out, 0), 0u) << it.out;  // first turn as the one-shot run
  EXPECT_NE(it.out.find("\nthe girl"), std::string::npos) << it.out;
}

TEST_F(InferCli, BadInputGivesOneClearError) {
  expect_error(sample("--prompt ''"), "the prompt is empty");
  expect_error(run_cmd(bin() + " sample --ckpt " + dir_->path + "/nowhere --prompt hi", dir_->path),
               "not a checkpoint directory");
  expect_error(sample("--prompt 'the cat looked at the garden' --context 3"), "but the context is 3");
  expect_error(sample("--prompt hi --context 5000"), "max_position_embeddings");
  expect_error(sample("--prompt hi --speculative --draft 2"), "draft length 2");
  expect_error(sample("--prompt hi --batch 2"), "--batch is a --bench option");
  expect_error(run_cmd(bin() + " sample --bench --config " + tiny_config() + " --ckpt " + ckpt_, dir_->path),
               "exactly one of --ckpt and --config");
}

TEST_F(InferCli, EvalReportsPerplexity) {
  const CmdResult e = run_cmd(bin() + " eval --ckpt " + ckpt_ + " --data " + data_ + " --batches 1", dir_->path);
  ASSERT_EQ(e.status, 0) << e.err;
  EXPECT_NE(e.out.find("perplexity"), std::string::npos) << e.out;
}

TEST_F(InferCli, BenchReportsThroughputCacheAndAcceptance) {
  const CmdResult b = run_cmd(bin() + " sample --bench --config " + tiny_config() +
                                  " --set model.vocab_size=512 --batch 2 --prompt-len 6 --max-new-tokens 8 --repeats 1 --json",
                              dir_->path);
  ASSERT_EQ(b.status, 0) << b.err;
  const json j = json::parse(b.out);
  // tiny: 2 layers, kv_lora 32 + rope 8 = 40 values per layer vs 2 heads x (24 + 16) = 80
  EXPECT_EQ(j["cache_bytes_per_token_latent_f32"].get<int64_t>(), 2 * 40 * 4);
  EXPECT_EQ(j["cache_bytes_per_token_mha_f32"].get<int64_t>(), 2 * 80 * 4);
  EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(j["prefill_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(j["full_recompute_tokens_per_s"].get<double>(), 0);
  EXPECT_TRUE(j["spec_greedy"]["identical_to_plain"].get<bool>());
  EXPECT_GT(j["spec_greedy"]["drafted"].get<int64_t>(), 0);
}

}  // namespace
}  // namespace um::test
