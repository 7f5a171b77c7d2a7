// ultramoe import: a Hugging Face DeepSeek-V3/V2 folder as a checkpoint (see train/hf.h).
#include <cstdio>

#include "commands.h"
#include "core/cli_args.h"
#include "core/error.h"
#include "train/hf.h"

namespace um::cli {

static const char* kUsage =
    "usage: ultramoe import --hf HFDIR --out DIR [--config FILE] [--max-shard-size SIZE] [--json]\n"
    "\n"
    "Reads a Hugging Face folder — config.json with model_type deepseek_v3 or deepseek_v2 (or one\n"
    "written by `ultramoe export`), weights in BF16 or F32, one model.safetensors or shards tied by\n"
    "model.safetensors.index.json — and writes the checkpoint directory DIR (step 0, no optimizer\n"
    "state), which eval and sample read as --ckpt. To continue training, import into\n"
    "RUN/checkpoints/step_0000000 and run `ultramoe train --out RUN --resume`.\n"
    "The run config (train, data, parallel sections; init and DSSN keys) comes from --config, else\n"
    "from the ultramoe.json an export left beside the weights, else from the defaults; its model must\n"
    "describe the network config.json describes. Tensors the model would not use, YaRN rope scaling\n"
    "and routing the model does not implement are errors. DIR must not exist.\n"
    "  --hf HFDIR             the Hugging Face folder\n"
    "  --out DIR              the checkpoint directory to create\n"
    "  --config FILE          run config for the imported model\n"
    "  --max-shard-size SIZE  split model.safetensors into shards of SIZE (default 5GB)\n"
    "  --json                 print a JSON summary\n";

int cmd_import(const Args& args) {
  if (wants_help(args, kUsage)) return 0;
  CliArgs a("import", args, {{"hf", true}, {"out", true}, {"config", true}, {"max-shard-size", true}, {"json", false}});
  UM_CHECK(a.positional().empty(), "import", "unexpected argument '", a.positional()[0], "'");
  ImportOptions o;
  o.hf = a.require("hf");
  o.out = a.require("out");
  o.config = a.get_or("config", "");
  if (a.has("max-shard-size")) o.max_shard_bytes = parse_byte_size(a.require("max-shard-size"), "--max-shard-size");
  const json r = import_hf(o);
  if (a.has("json")) {
    std::printf("%s\n", r.dump().c_str());
  } else {
    for (const auto& n : r["notes"]) std::printf("note: %s\n", n.get<std::string>().c_str());
    std::printf("imported %lld tensors into %s (run config: %s)\n", (long long)r["tensors"].get<int64_t>(),
                o.out.c_str(), r["run_config"].get<std::string>().c_str());
  }
  return 0;
}

}  // namespace um::cli
