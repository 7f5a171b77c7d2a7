// ultramoe bench: see src/train/bench.h.
#include "commands.h"
#include "core/cli_args.h"
#include "core/error.h"
#include "train/bench.h"

namespace um::cli {

static const char* kUsage =
    "usage: ultramoe bench --config FILE [--steps N] [--warmup W] [--data DIR] [--json] [--set KEY=VALUE ...]\n"
    "                      [--device cpu|cuda] [--dtype f32|bf16] [--hardware FILE]\n"
    "\n"
    "Times training steps of FILE (on synthetic windows unless --data is given) and reports\n"
    "tokens/s, model GFLOP/s, MFU against the FP32 peak (cores x clock x 32 FLOP/cycle; the clock\n"
    "is measured) and against the measured sgemm rate, peak RSS, allocations per steady-state\n"
    "step, bytes per parameter and per token, and the step time by phase. Runs under mpirun.\n"
    "  --steps N    timed steps (default 5; the median is reported)\n"
    "  --warmup W   untimed steps first (default 2)\n"
    "  --data DIR   use the first windows of a prepared data directory\n"
    "  --json       one JSON object\n"
    "  --save-windows FILE  write the windows used ((warmup+steps) x batch x (seq_len+1) int32)\n"
    "  --device D   cpu (default) or cuda (built with the cuda preset)\n"
    "  --dtype T    compute type: f32, or bf16 (CUDA only; its default) with f32 master weights\n"
    "  --hardware FILE  the GPU's peak for MFU (e.g. configs/hardware/h200.json); the CPU's is measured\n";

int cmd_bench(const Args& args) {
  if (wants_help(args, kUsage)) return 0;
  CliArgs a("bench", args, {{"config", true}, {"steps", true}, {"warmup", true}, {"data", true}, {"json", false},
                            {"set", true, true}, {"save-windows", true}, {"device", true}, {"dtype", true},
                            {"hardware", true}});
  UM_CHECK(a.positional().empty(), "bench", "unexpected argument '", a.positional()[0], "'");
  BenchOptions o;
  o.config_path = a.require("config");
  o.steps = a.get_int("steps", 5);
  o.warmup = a.get_int("warmup", 2);
  o.data_dir = a.get_or("data", "");
  o.json = a.has("json");
  o.overrides = a.all("set");
  o.save_windows = a.get_or("save-windows", "");
  o.device = a.get_or("device", "");
  o.dtype = a.get_or("dtype", "");
  o.hardware = a.get_or("hardware", "");
  return run_bench(o);
}

}  // namespace um::cli
