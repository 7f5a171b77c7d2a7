// ultramoe data prepare: text/JSONL files to a data directory (tokenizer + token shards,
// design.md 3, 8). The work is prepare_data() in src/train/data.cpp; this file parses the options
// and prints the summary.
#include <chrono>
#include <cstdio>

#include "commands.h"
#include "core/cli_args.h"
#include "core/error.h"
#include "train/data.h"

namespace um::cli {

static const char* kUsage =
    "usage: ultramoe data prepare --input PATH... --out DIR [--vocab-size N] [--tokenizer FILE]\n"
    "                             [--val-fraction F]\n"
    "\n"
    "Turns text into a data directory for `ultramoe train --data DIR` (docs/data.md):\n"
    "  DIR/tokenizer.model  SentencePiece BPE model (byte fallback: decode(encode(x)) == x)\n"
    "  DIR/train.bin        training tokens, documents stored as BOS tokens EOS\n"
    "  DIR/val.bin          validation tokens\n"
    "  DIR/meta.json        sizes, sources, tokenizer SHA-256, the split rule used\n"
    "A PATH ending in .jsonl holds one document per line (a JSON object with a string \"text\");\n"
    "any other file is one document. Files are replaced atomically.\n"
    "\n"
    "Validation split: with 20 or more documents, a fraction F of the documents chosen by a hash\n"
    "of their text; with fewer, the last F of each document's lines.\n"
    "\n"
    "  --input PATH...     input files (repeat --input, or list several paths after it)\n"
    "  --out DIR           output directory (created if missing)\n"
    "  --vocab-size N      maximum vocabulary of the trained tokenizer (default 8192, at least\n"
    "                      264; a small text may give fewer, the actual size is recorded)\n"
    "  --tokenizer FILE    encode with this SentencePiece model instead of training one (ids unk 0,\n"
    "                      bos 1, eos 2, pad 3, <|system|> <|user|> <|assistant|> <|end|> 4..7)\n"
    "  --val-fraction F    validation fraction in [0, 1) (default 0.05)\n";

static int data_prepare(const Args& args) {
  // `--input a.txt b.txt --input c.jsonl`: every word after --input up to the next option is an
  // input, kept in the order given (CliArgs would separate repeated and positional words).
  PrepareOptions o;
  Args rest;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].rfind("--input=", 0) == 0) {
      o.inputs.push_back(args[i].substr(8));
    } else if (args[i] == "--input") {
      const size_t before = o.inputs.size();
      while (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) o.inputs.push_back(args[++i]);
      UM_CHECK(o.inputs.size() > before, "data", "option --input needs at least one path");
    } else {
      rest.push_back(args[i]);
    }
  }
  CliArgs a("data prepare", rest,
            {{"out", true}, {"vocab-size", true}, {"tokenizer", true}, {"val-fraction", true}});
  UM_CHECK(a.positional().empty(), "data", "unexpected argument '",
           a.positional().empty() ? "" : a.positional()[0], "' (input paths follow --input)");
  UM_CHECK(!o.inputs.empty(), "data", "missing required option --input");
  o.out_dir = a.require("out");
  UM_CHECK(!(a.has("tokenizer") && a.has("vocab-size")), "data",
           "--vocab-size and --tokenizer exclude each other (the given tokenizer fixes the "
           "vocabulary)");
  o.vocab_size = a.get_int("vocab-size", o.vocab_size);
  if (a.has("tokenizer")) o.tokenizer = a.require("tokenizer");
  o.val_fraction = a.get_double("val-fraction", o.val_fraction);

  const auto t0 = std::chrono::steady_clock::now();
  const nlohmann::json meta = prepare_data(o);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const nlohmann::json& tok = meta["tokenizer"];
  const nlohmann::json& train = meta["splits"]["train"];
  const nlohmann::json& val = meta["splits"]["val"];
  std::printf("data: %lld documents from %zu file%s (%lld bytes), split %s, val fraction %g\n",
              meta["documents"].get<long long>(), o.inputs.size(),
              o.inputs.size() == 1 ? "" : "s", meta["input_bytes"].get<long long>(),
              meta["split_rule"]["rule"].get<std::string>().c_str(), o.val_fraction);
  if (tok["trained"].get<bool>())
    std::printf("tokenizer: trained SentencePiece BPE, vocab %lld (max %lld), sha256 %s\n",
                tok["vocab_size"].get<long long>(), tok["vocab_size_requested"].get<long long>(),
                tok["sha256"].get<std::string>().substr(0, 16).c_str());
  else
    std::printf("tokenizer: %s, vocab %lld, sha256 %s\n",
                tok["source"].get<std::string>().c_str(), tok["vocab_size"].get<long long>(),
                tok["sha256"].get<std::string>().substr(0, 16).c_str());
  std::printf("train: %lld tokens in %lld documents\n", train["tokens"].get<long long>(),
              train["documents"].get<long long>());
  std::printf("val:   %lld tokens in %lld documents\n", val["tokens"].get<long long>(),
              val["documents"].get<long long>());
  std::printf("wrote %s/{tokenizer.model,train.bin,val.bin,meta.json} in %.1f s\n",
              o.out_dir.c_str(), seconds);
  return 0;
}

int cmd_data(const Args& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::fputs(kUsage, stdout);
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "prepare") {
    const Args rest(args.begin() + 1, args.end());
    if (wants_help(rest, kUsage)) return 0;
    return data_prepare(rest);
  }
  fail("data", "unknown data command '", args[0], "' (the one there is: prepare)");
}

}  // namespace um::cli
