// ultramoe: train, post-train and run sparse Mixture-of-Experts language models.
#include <cstdio>
#include <cstring>
#include <exception>

#include "commands.h"
#include "core/error.h"
#include "parallel/comm.h"

namespace um::cli {

static const Command kCommands[] = {
    {"bench", "time training steps: tokens/s, MFU, memory, step time by phase", cmd_bench},
    {"data", "prepare text into a tokenizer and token shards", cmd_data},
    {"eval", "validation loss and perplexity of a checkpoint", cmd_eval},
    {"export", "write a checkpoint as a Hugging Face DeepSeek-V3 folder", cmd_export},
    {"import", "read a Hugging Face DeepSeek-V3/V2 folder into a checkpoint", cmd_import},
    {"inspect", "print a model's configuration and parameter counts", cmd_inspect},
    {"plan", "predict step time, MFU and memory of parallel layouts and geometries", cmd_plan},
    {"sample", "generate text from a checkpoint", cmd_sample},
    {"train", "train a model on a prepared data directory", cmd_train},
};

bool wants_help(const Args& args, const char* usage) {
  for (const auto& a : args)
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      return true;
    }
  return false;
}

static void print_usage() {
  std::printf("ultramoe %s — sparse Mixture-of-Experts training\n\n", ULTRAMOE_VERSION);
  std::printf("usage: ultramoe <command> [options]   (ultramoe <command> --help for details)\n\n");
  std::printf("commands:\n");
  for (const Command& c : kCommands) std::printf("  %-10s %s\n", c.name, c.summary);
}

static int dispatch(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("ultramoe %s\n", ULTRAMOE_VERSION);
    return 0;
  }
  for (const Command& c : kCommands)
    if (!std::strcmp(argv[1], c.name)) return c.run(Args(argv + 2, argv + argc));
  fail("cli", "unknown command '", argv[1], "' (run `ultramoe --help` for the list)");
}

}  // namespace um::cli

// An error in one rank of a distributed job ends the whole job (MPI_Abort), never a hang.
static int report(const char* what) {
  um::Runtime* rt = um::Runtime::current();
  const bool multi = rt && rt->world().size() > 1;
  if (multi)
    std::fprintf(stderr, "ultramoe: error: [rank %d of %d] %s\n", rt->world().rank(), rt->world().size(), what);
  else
    std::fprintf(stderr, "ultramoe: error: %s\n", what);
  if (multi) rt->abort(1);
  return 1;
}

int main(int argc, char** argv) {
  um::Runtime runtime(&argc, &argv);
  try {
    return um::cli::dispatch(argc, argv);
  } catch (const um::Error& e) {
    return report(e.what());
  } catch (const std::exception& e) {
    return report(e.what());
  }
}
