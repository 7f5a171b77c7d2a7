// ultramoe train: see src/train/trainer.h.
#include "commands.h"
#include "core/cli_args.h"
#include "core/error.h"
#include "train/trainer.h"

namespace um::cli {

static const char* kUsage =
    "usage: ultramoe train --config FILE [--data DIR] [--out DIR] [--resume] [--set KEY=VALUE ...]\n"
    "                      [--device cpu|cuda] [--dtype f32|bf16] [--hardware FILE]\n"
    "\n"
    "Trains the model of FILE (sections model, train, data, parallel) on a data directory made by\n"
    "`ultramoe data prepare`. Writes DIR/metrics.jsonl and DIR/checkpoints/step_NNNNNNN/.\n"
    "  --config FILE      run config (JSON)\n"
    "  --data DIR         prepared data directory (default: data.path of the config)\n"
    "  --out DIR          output directory (default: runs/<config name>)\n"
    "  --resume           continue from the newest checkpoint in DIR; only train.steps, the\n"
    "                     every-N keys and data.path may differ from the checkpoint's config, and\n"
    "                     the data must be encoded with the checkpoint's tokenizer\n"
    "  --set KEY=VALUE    override a config key, e.g. --set train.lr=3e-4 (repeatable)\n"
    "  --log-every N      print progress every N steps (default 1; metrics.jsonl gets every step)\n"
    "  --device D         cpu (default) or cuda (built with the cuda preset; one GPU)\n"
    "  --dtype T          compute type: f32, or bf16 (CUDA only; its default) with f32 master weights\n"
    "  --hardware FILE    the GPU's peak for MFU (e.g. configs/hardware/h200.json)\n"
    "Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and exits 0.\n";

int cmd_train(const Args& args) {
  if (wants_help(args, kUsage)) return 0;
  CliArgs a("train", args,
            {{"config", true}, {"data", true}, {"out", true}, {"resume", false}, {"set", true, true},
             {"log-every", true}, {"device", true}, {"dtype", true}, {"hardware", true}});
  UM_CHECK(a.positional().empty(), "train", "unexpected argument '", a.positional()[0], "'");
  TrainOptions o;
  o.config_path = a.require("config");
  o.data_dir = a.get_or("data", "");
  o.out_dir = a.get_or("out", "");
  o.resume = a.has("resume");
  o.overrides = a.all("set");
  o.log_every = a.get_int("log-every", 1);
  o.device = a.get_or("device", "");
  o.dtype = a.get_or("dtype", "");
  o.hardware = a.get_or("hardware", "");
  UM_CHECK(o.log_every >= 1, "train", "--log-every must be >= 1");
  return run_training(o);
}

}  // namespace um::cli
