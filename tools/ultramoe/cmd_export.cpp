// ultramoe export: a checkpoint as a Hugging Face DeepSeek-V3 folder (see train/hf.h).
#include <cstdio>

#include "commands.h"
#include "core/cli_args.h"
#include "core/error.h"
#include "train/hf.h"

namespace um::cli {

static const char* kUsage =
    "usage: ultramoe export --ckpt DIR --out HFDIR [--dtype f32|bf16] [--max-shard-size SIZE] [--json]\n"
    "\n"
    "Writes the checkpoint as a folder that transformers' AutoModelForCausalLM loads as DeepSeek-V3:\n"
    "config.json (model_type deepseek_v3), sharded safetensors tied by model.safetensors.index.json\n"
    "(rope rows interleaved, as DeepSeek's files are), the MTP modules with their copies of the\n"
    "embedding and head, and a tokenizer AutoTokenizer loads (tokenizer.json, tokenizer.model).\n"
    "Models DeepSeek-V3 cannot express (sandwich norm, MoGE, softmax scores, the router scale) are\n"
    "refused, naming every reason. HFDIR must not exist.\n"
    "  --ckpt DIR             a checkpoint directory\n"
    "  --out HFDIR            the folder to create\n"
    "  --dtype T              f32 (default) or bf16 (the aux-free bias stays f32)\n"
    "  --max-shard-size SIZE  per safetensors file, e.g. 5GB (default), 200MB\n"
    "  --json                 print a JSON summary\n";

int cmd_export(const Args& args) {
  if (wants_help(args, kUsage)) return 0;
  CliArgs a("export", args, {{"ckpt", true}, {"out", true}, {"dtype", true}, {"max-shard-size", true}, {"json", false}});
  UM_CHECK(a.positional().empty(), "export", "unexpected argument '", a.positional()[0], "'");
  ExportOptions o;
  o.ckpt = a.require("ckpt");
  o.out = a.require("out");
  const std::string dtype = a.get_or("dtype", "f32");
  UM_CHECK(dtype == "f32" || dtype == "bf16", "export", "--dtype must be f32 or bf16, got '", dtype, "'");
  o.dtype = dtype == "bf16" ? DType::bf16 : DType::f32;
  if (a.has("max-shard-size")) o.max_shard_bytes = parse_byte_size(a.require("max-shard-size"), "--max-shard-size");
  const json r = export_hf(o);
  if (a.has("json")) {
    std::printf("%s\n", r.dump().c_str());
  } else {
    std::printf("exported %lld tensors (%.1f MB, %s) to %s: %zu files\n", (long long)r["tensors"].get<int64_t>(),
                r["bytes"].get<double>() / 1e6, r["dtype"].get<std::string>().c_str(), o.out.c_str(), r["files"].size());
  }
  return 0;
}

}  // namespace um::cli
