// ultramoe sample: generate text from a checkpoint with the KV-cached decoder (infer/decoder.h),
// optionally with MTP self-speculative decoding, interactively, or as a throughput benchmark.
// The full-recompute path stays available (--full-recompute) as the reference.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "commands.h"
#include "core/cli_args.h"
#include "core/error.h"
#include "infer/generate.h"
#include "infer/infer_bench.h"
#include "train/checkpoint.h"
#include "train/tokenizer.h"

namespace um::cli {

static const char* kUsage =
    "usage: ultramoe sample --ckpt DIR --prompt TEXT [--prompt TEXT ...] [--max-new-tokens N]\n"
    "                       [--temperature T] [--top-k K] [--top-p P] [--seed S] [--speculative]\n"
    "                       [--draft N] [--context N] [--stats] [--full-recompute]\n"
    "       ultramoe sample --ckpt DIR --interactive [options as above]\n"
    "       ultramoe sample --bench (--ckpt DIR | --config FILE [--set KEY=VALUE ...]) [--data DIR]\n"
    "                       [--batch B] [--prompt-len N] [--max-new-tokens N] [--repeats R] [--json]\n"
    "\n"
    "Generates a continuation of TEXT (BOS is prepended) with the checkpoint's weights and\n"
    "tokenizer, printing it as it goes. Several --prompt are generated together as one batch and\n"
    "printed one after the other. Sampling: temperature, then top-k, then top-p, then a draw keyed by\n"
    "(seed, sequence, position); --temperature 0 is greedy. Decoding keeps a latent KV cache\n"
    "(kv_lora + rope values per token per layer) and runs one forward pass per new token.\n"
    "  --ckpt DIR            a checkpoint directory (runs/NAME/checkpoints/step_NNNNNNN)\n"
    "  --prompt TEXT         the prompt (not empty); repeat for a batch\n"
    "  --max-new-tokens N    default 100; generation also stops at EOS or a full context\n"
    "  --temperature T       default 0.8\n"
    "  --top-k K             default 0 (all)\n"
    "  --top-p P             default 0.95\n"
    "  --seed S              default 0\n"
    "  --speculative         MTP self-speculative decoding: the MTP modules draft, one pass verifies;\n"
    "                        greedy output is identical to plain decoding, sampled output has the\n"
    "                        same distribution (exact acceptance rule)\n"
    "  --draft N             drafted tokens per round (1 to the model's MTP depth; default all)\n"
    "  --context N           tokens per sequence, prompt included (default: the trained seq_len;\n"
    "                        at most max_position_embeddings)\n"
    "  --stats               print prefill/decode tokens per second (and the acceptance rate) to stderr\n"
    "  --full-recompute      the reference path: re-run the whole window for every token (slow)\n"
    "  --interactive         read prompts from stdin, one per line, until EOF or an empty line\n"
    "  --bench               measure prefill/decode tokens/s, the full-recompute rate, cache bytes per\n"
    "                        token and speculative acceptance/speed-up (see docs/inference.md)\n"
    "  --config FILE         (--bench) a config with random weights instead of --ckpt\n"
    "  --data DIR            (--bench) prompts from this data directory's validation shard\n"
    "  --batch B             (--bench) sequences decoded together (default 8)\n"
    "  --prompt-len N        (--bench) prompt tokens with BOS (default 32)\n"
    "  --repeats R           (--bench) timed repeats, median reported (default 3)\n"
    "  --json                (--bench) one JSON object\n";

namespace {

struct Session {
  OpenedCheckpoint ck;
  Tokenizer tok;
};

// Prints the decoded tail of a stream of ids as it grows (byte pieces join up across ids).
struct StreamPrinter {
  const Tokenizer& tok;
  std::vector<int32_t> ids;
  std::string printed;
  void add(int32_t id) {
    if (id == tok.eos_id()) return;
    ids.push_back(id);
    const std::string text = tok.decode(ids);
    if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::printf("%s", text.substr(printed.size()).c_str());
      std::fflush(stdout);
      printed = text;
    }
  }
};

void print_stats(const GenerateStats& st, bool speculative) {
  std::fflush(stdout);  // the text first
  std::fprintf(stderr, "(prefill %lld tokens: %.1f tok/s; decode %lld tokens in %lld passes: %.1f tok/s",
               (long long)st.prompt_tokens, st.prefill_tokens_per_s(), (long long)(st.generated_tokens - st.sequences),
               (long long)st.decode_passes, st.decode_tokens_per_s());
  if (speculative)
    std::fprintf(stderr, "; drafts accepted %lld/%lld = %.1f%%", (long long)st.accepted, (long long)st.drafted,
                 100 * st.acceptance());
  std::fprintf(stderr, ")\n");
}

}  // namespace

int cmd_sample(const Args& args) {
  if (wants_help(args, kUsage)) return 0;
  CliArgs a("sample", args,
            {{"ckpt", true}, {"prompt", true, true}, {"max-new-tokens", true}, {"temperature", true},
             {"top-k", true}, {"top-p", true}, {"seed", true}, {"speculative", false}, {"draft", true},
             {"context", true}, {"stats", false}, {"full-recompute", false}, {"interactive", false},
             {"bench", false}, {"config", true}, {"set", true, true}, {"data", true}, {"batch", true},
             {"prompt-len", true}, {"repeats", true}, {"json", false}});
  UM_CHECK(a.positional().empty(), "sample", "unexpected argument '", a.positional()[0], "'");
  const int64_t max_new = a.get_int("max-new-tokens", a.has("bench") ? 64 : 100);
  UM_CHECK(max_new >= 1, "sample", "--max-new-tokens must be >= 1, got ", max_new);

  if (a.has("bench")) {
    InferBenchOptions o;
    o.ckpt = a.get_or("ckpt", "");
    o.config = a.get_or("config", "");
    o.overrides = a.all("set");
    o.data_dir = a.get_or("data", "");
    o.batch = a.get_int("batch", 8);
    o.prompt_len = a.get_int("prompt-len", 32);
    o.new_tokens = max_new;
    o.repeats = a.get_int("repeats", 3);
    o.temperature = a.get_double("temperature", 0.8);
    o.seed = static_cast<uint64_t>(a.get_int("seed", 1));
    o.json = a.has("json");
    return run_infer_bench(o);
  }
  for (const char* bench_only : {"config", "set", "data", "batch", "prompt-len", "repeats", "json"})
    UM_CHECK(!a.has(bench_only), "sample", "--", bench_only, " is a --bench option");

  SamplingParams sp;
  sp.temperature = a.get_double("temperature", 0.8);
  sp.top_k = a.get_int("top-k", 0);
  sp.top_p = a.get_double("top-p", 0.95);
  sp.seed = static_cast<uint64_t>(a.get_int("seed", 0));
  UM_CHECK(sp.temperature >= 0, "sample", "--temperature must be >= 0, got ", sp.temperature);
  UM_CHECK(sp.top_p > 0 && sp.top_p <= 1, "sample", "--top-p must be in (0, 1], got ", sp.top_p);
  UM_CHECK(sp.top_k >= 0, "sample", "--top-k must be >= 0, got ", sp.top_k);
  const bool interactive = a.has("interactive"), full = a.has("full-recompute"), spec = a.has("speculative");
  const std::vector<std::string> texts = a.all("prompt");
  UM_CHECK(interactive || !texts.empty(), "sample", "give --prompt TEXT (or --interactive)");
  UM_CHECK(!(interactive && !texts.empty()), "sample", "--prompt and --interactive exclude each other");
  for (const std::string& p : texts) UM_CHECK(!p.empty(), "sample", "the prompt is empty");
  UM_CHECK(!(full && spec), "sample", "--full-recompute and --speculative exclude each other");
  UM_CHECK(!(full && texts.size() > 1), "sample", "--full-recompute takes one prompt");

  const std::string dir = a.require("ckpt");
  OpenedCheckpoint ck = open_checkpoint(dir);
  UM_CHECK(!ck.tokenizer_path.empty(), "sample", ck.dir, " has no tokenizer.model");
  const Tokenizer tok = Tokenizer::load(ck.tokenizer_path);
  sp.vocab_limit = tok.vocab_size();  // a model vocabulary padded past the tokenizer's
  const ModelConfig& mc = ck.rc.model;
  const int64_t n_ctx = a.get_int("context", ck.rc.data.seq_len);
  UM_CHECK(n_ctx >= 1 && n_ctx <= mc.max_position_embeddings, "sample", "--context ", n_ctx,
           ": must be 1 to max_position_embeddings = ", mc.max_position_embeddings);
  UM_CHECK(!spec || mc.num_nextn_predict_layers > 0, "sample", "--speculative needs MTP modules; ", ck.dir,
           " has num_nextn_predict_layers = 0");
  auto encode = [&](const std::string& text) {
    std::vector<int32_t> ids = {tok.bos_id()};
    for (int32_t id : tok.encode(text)) ids.push_back(id);
    return ids;
  };
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);

  if (full) {  // the reference path, one prompt
    const std::vector<int32_t> ids = encode(texts[0]);
    Model<float> model(mc, ck.table, {1, n_ctx, ck.rc.train.balance_scope, 0, ck.rc.train.aux_free});
    std::printf("%s", texts[0].c_str());
    std::fflush(stdout);
    StreamPrinter out{tok, {}, {}};
    auto t0 = std::chrono::steady_clock::now();
    GenerateResult r = generate_full_recompute<float>(model, ck.ps, ids, max_new, sp, ctx, [&](int32_t id) { out.add(id); });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("\n");
    std::fflush(stdout);
    if (r.hit_context) std::fprintf(stderr, "(stopped: the context of %lld tokens is full)\n", (long long)n_ctx);
    if (a.has("stats"))
      std::fprintf(stderr, "(full recompute: %zu tokens in %.2f s: %.1f tok/s)\n", r.tokens.size(), s,
                   double(r.tokens.size()) / s);
    return 0;
  }

  DecoderOptions d;
  d.slots = interactive ? 1 : int64_t(texts.size());
  d.max_context = n_ctx;
  d.aux_free = ck.rc.train.aux_free;
  d.mtp_depth = spec ? mc.num_nextn_predict_layers : 0;
  Decoder<float> dec(mc, ck.table, ck.ps, d);
  GenerateOptions go;
  go.max_new_tokens = max_new;
  go.sampling = sp;
  go.speculative = spec;
  go.draft = a.get_int("draft", 0);

  if (!interactive) {
    std::vector<std::vector<int32_t>> prompts;
    for (const std::string& p : texts) prompts.push_back(encode(p));
    const bool stream = prompts.size() == 1;
    StreamPrinter out{tok, {}, {}};
    if (stream) {
      std::printf("%s", texts[0].c_str());
      std::fflush(stdout);
    }
    GenerateStats st;
    std::vector<GenerateResult> res = generate<float>(dec, prompts, go, ctx, &st, [&](int64_t, int32_t id) {
      if (stream) out.add(id);
    });
    for (size_t b = 0; b < res.size(); ++b) {
      if (!stream) {
        std::vector<int32_t> ids;
        for (int32_t id : res[b].tokens)
          if (id != tok.eos_id()) ids.push_back(id);
        std::printf("%s%s", texts[b].c_str(), tok.decode(ids).c_str());
      }
      std::printf("\n");
      std::fflush(stdout);
      if (res[b].hit_context)
        std::fprintf(stderr, "(stopped: the context of %lld tokens is full)\n", (long long)n_ctx);
    }
    if (a.has("stats")) print_stats(st, spec);
    return 0;
  }

  // interactive: one prompt per line; the turn number keys the sampling stream
  std::fprintf(stderr, "(interactive: type a prompt and press enter; an empty line or EOF ends)\n");
  std::string line;
  for (int64_t turn = 0;; ++turn) {
    std::fprintf(stderr, "> ");
    std::fflush(stderr);
    if (!std::getline(std::cin, line) || line.empty()) break;
    std::vector<int32_t> ids = encode(line);
    if (int64_t(ids.size()) > n_ctx) {
      std::fprintf(stderr, "(the prompt has %zu tokens with BOS; the context is %lld: shorten it)\n", ids.size(),
                   (long long)n_ctx);
      continue;
    }
    StreamPrinter out{tok, {}, {}};
    std::printf("%s", line.c_str());
    std::fflush(stdout);
    GenerateStats st;
    std::vector<GenerateResult> res =
        generate<float>(dec, {ids}, go, ctx, &st, [&](int64_t, int32_t id) { out.add(id); }, {turn});
    std::printf("\n");
    std::fflush(stdout);
    if (res[0].hit_context) std::fprintf(stderr, "(stopped: the context of %lld tokens is full)\n", (long long)n_ctx);
    if (a.has("stats")) print_stats(st, spec);
  }
  return 0;
}

}  // namespace um::cli
