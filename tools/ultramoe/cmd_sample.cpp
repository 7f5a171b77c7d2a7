// ultramoe sample: generate text from a checkpoint.
#include <cstdio>

#include "commands.h"
#include "core/cli_args.h"
#include "core/error.h"
#include "infer/generate.h"
#include "train/checkpoint.h"
#include "train/tokenizer.h"

namespace um::cli {

static const char* kUsage =
    "usage: ultramoe sample --ckpt DIR --prompt TEXT [--max-new-tokens N] [--temperature T]\n"
    "                       [--top-k K] [--top-p P] [--seed S]\n"
    "\n"
    "Generates a continuation of TEXT (BOS is prepended) with the checkpoint's weights and\n"
    "tokenizer, printing it as it goes. Sampling: temperature, then top-k, then top-p, then a draw\n"
    "keyed by (seed, position); --temperature 0 is greedy.\n"
    "  --ckpt DIR            a checkpoint directory (runs/NAME/checkpoints/step_NNNNNNN)\n"
    "  --prompt TEXT         the prompt (may be empty only with --allow-empty)\n"
    "  --max-new-tokens N    default 100; generation also stops at EOS or a full context\n"
    "  --temperature T       default 0.8\n"
    "  --top-k K             default 0 (all)\n"
    "  --top-p P             default 0.95\n"
    "  --seed S              default 0\n";

int cmd_sample(const Args& args) {
  if (wants_help(args, kUsage)) return 0;
  CliArgs a("sample", args,
            {{"ckpt", true}, {"prompt", true}, {"max-new-tokens", true}, {"temperature", true},
             {"top-k", true}, {"top-p", true}, {"seed", true}});
  UM_CHECK(a.positional().empty(), "sample", "unexpected argument '", a.positional()[0], "'");
  const std::string prompt = a.require("prompt");
  UM_CHECK(!prompt.empty(), "sample", "the prompt is empty");
  SamplingParams sp;
  sp.temperature = a.get_double("temperature", 0.8);
  sp.top_k = a.get_int("top-k", 0);
  sp.top_p = a.get_double("top-p", 0.95);
  sp.seed = static_cast<uint64_t>(a.get_int("seed", 0));
  const int64_t max_new = a.get_int("max-new-tokens", 100);
  UM_CHECK(sp.temperature >= 0, "sample", "--temperature must be >= 0");
  UM_CHECK(sp.top_p > 0 && sp.top_p <= 1, "sample", "--top-p must be in (0, 1]");
  UM_CHECK(sp.top_k >= 0 && max_new >= 1, "sample", "--top-k must be >= 0 and --max-new-tokens >= 1");

  OpenedCheckpoint ck = open_checkpoint(a.require("ckpt"));
  UM_CHECK(!ck.tokenizer_path.empty(), "sample", ck.dir, " has no tokenizer.model");
  const Tokenizer tok = Tokenizer::load(ck.tokenizer_path);
  std::vector<int32_t> ids = {tok.bos_id()};
  for (int32_t id : tok.encode(prompt)) ids.push_back(id);
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  Model<float> model(ck.rc.model, ck.table, {1, ck.rc.data.seq_len, ck.rc.train.balance_scope, 0, ck.rc.train.aux_free});
  std::printf("%s", prompt.c_str());
  std::fflush(stdout);
  std::vector<int32_t> out;
  std::string printed;
  GenerateResult r = generate_full_recompute<float>(model, ck.ps, ids, max_new, sp, ctx, [&](int32_t id) {
    if (id == tok.eos_id()) return;
    out.push_back(id);
    const std::string text = tok.decode(out);  // decode the whole tail: byte pieces join up
    if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::printf("%s", text.substr(printed.size()).c_str());
      std::fflush(stdout);
      printed = text;
    }
  });
  std::printf("\n");
  if (r.hit_context)
    std::fprintf(stderr, "(stopped: the context of %lld tokens is full)\n", (long long)ck.rc.data.seq_len);
  return 0;
}

}  // namespace um::cli
