// ultramoe plan: predict a training run before spending it (design.md 5). Searches parallel layouts
// (or evaluates one), searches model geometries, calibrates the CPU hardware file from
// bench_ops, and sets predictions against measured `ultramoe bench` steps. The cost model lives
// in src/plan; this file reads options and prints.
#include <cmath>
#include <cstdio>
#include <optional>
#include <sstream>

#include "commands.h"
#include "core/cli_args.h"
#include "core/json_reader.h"
#include "plan/calibrate.h"
#include "plan/report.h"
#include "plan/search.h"

namespace um::cli {

using namespace um::plan;

static const char* kUsage =
    "usage: ultramoe plan --model FILE --hardware FILE --devices N [--seq S --global-batch G] [options]\n"
    "\n"
    "Predicts step time, MFU (design.md 7), tokens/s and memory per device of a training run, for\n"
    "every parallel layout of N devices that fits in memory (fastest first), or for one layout.\n"
    "FILE (--model) is a run config with a `model` section, a flat HF-style config, or a file with\n"
    "a planner-only `plan_model` section (GQA models such as configs/mixtral-8x7b.json). --seq and\n"
    "--global-batch default to the run config's data.seq_len and train.batch_size.\n"
    "\n"
    "  --layout SPEC          evaluate one layout, e.g. tp=8,pp=16,vpp=2,ep=4,mbs=2 (dp follows\n"
    "                         from N); keys tp pp vpp ep etp dp mbs tp_extend_ep recompute\n"
    "                         (none|selective|full) zero (0|1) dispatch (flat|hier). `config`\n"
    "                         takes ep, zero, micro_batch_size and recompute from the run config\n"
    "  --rank-layout SPEC     search, and say where SPEC ranks among the layouts that fit\n"
    "  --top K                rows to print (5)\n"
    "  --overlap MODE         EP all-to-all overlap: none, shared (behind the shared experts,\n"
    "                         default) or full (behind another micro-batch, as DualPipe)\n"
    "  --imbalance X          max/mean routed tokens per device (1.0 = balanced)\n"
    "  --search-geometry      search layers x hidden x experts at the model's total/active budget\n"
    "  --layers L,..  --hidden D,..  --experts E,..  --tolerance X   the geometry grid (default\n"
    "                         around the model) and the allowed budget mismatch (0.05)\n"
    "  --measured FILE        with --layout: compare with a measured step (JSON with tokens_per_s:\n"
    "                         `ultramoe bench --json` or a metrics.jsonl line of `ultramoe train`)\n"
    "  --calibrate FILE       print the efficiency fields for --hardware from the JSON of\n"
    "                         `OMP_NUM_THREADS=1 bench_ops --benchmark_format=json`\n"
    "  --measure              (with or without --calibrate) also time this engine's sgemm over\n"
    "                         small linear-layer shapes, its element-wise loops and the memory\n"
    "                         bandwidth, here and now (run with OMP_NUM_THREADS=1 per CPU core)\n"
    "  --json                 print one JSON object (mfu, step_time_s, memory_per_device_bytes, ...)\n";

namespace {

double gb(double bytes) { return std::round(bytes / 1e8) / 10; }  // GB with one decimal, for messages

std::vector<int64_t> int_list(const CliArgs& a, const std::string& name) {
  std::vector<int64_t> out;
  auto v = a.get(name);
  if (!v) return out;
  std::stringstream ss(*v);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long x = 0;
    try {
      x = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    UM_CHECK(used == item.size() && !item.empty() && x > 0, "plan", "--", name, " expects positive integers, got '",
             *v, "'");
    out.push_back(x);
  }
  return out;
}

EpOverlap parse_overlap(const std::string& s) {
  if (s == "none") return EpOverlap::none;
  if (s == "shared") return EpOverlap::shared;
  if (s == "full") return EpOverlap::full;
  fail("plan", "--overlap ", s, ": expected none, shared or full");
}

// Optional run-config value: present and of the right type, else the fallback.
int64_t run_int(const json& file, const char* section, const char* key, int64_t fallback) {
  if (!file.contains(section) || !file[section].is_object()) return fallback;
  const json& s = file[section];
  return s.contains(key) && s[key].is_number_integer() ? s[key].get<int64_t>() : fallback;
}

// The layout the ultramoe engine runs for a run config: data + expert parallel only (design.md 4).
Layout layout_from_run_config(const json& file) {
  Layout l;
  l.ep = static_cast<int>(run_int(file, "parallel", "ep", 1));
  l.zero = static_cast<int>(run_int(file, "parallel", "zero", 0));
  l.mbs = static_cast<int>(run_int(file, "train", "micro_batch_size", 1));
  const bool recompute = file.contains("train") && file["train"].is_object() && file["train"].contains("recompute") &&
                         file["train"]["recompute"].is_array() && !file["train"]["recompute"].empty();
  l.recompute = recompute ? Recompute::selective : Recompute::none;
  return l;
}

int calibrate(const CliArgs& a) {
  const Hardware hw = read_hardware_file(a.require("hardware"));
  std::vector<OpMeasurement> ops;
  if (a.has("calibrate")) ops = ops_from_benchmark(read_json_file(a.require("calibrate"), "plan"), hw);
  if (a.has("measure")) {
    std::vector<OpMeasurement> sweep = measure_gemm_sweep(hw);
    ops.insert(ops.end(), sweep.begin(), sweep.end());
  }
  Calibration c = summarize_calibration(ops);
  if (a.has("measure")) {
    c.memory_bandwidth = measure_memory_bandwidth();
    c.elementwise_bandwidth = measure_elementwise_bandwidth();
    c.exp_element_s = measure_exp_element_seconds();
    c.cross_entropy_logit_s = measure_cross_entropy_logit_seconds();
  }
  if (a.has("json")) {
    std::printf("%s\n", calibration_json(c).dump(2).c_str());
    return 0;
  }
  std::printf("calibration of %s (peak %.4g FLOP/s per device)\n\n", hw.name.c_str(), hw.peak_flops);
  std::printf("%-44s %-20s %12s %10s %12s\n", "benchmark", "kind", "FLOPs", "eff", "file eff");
  for (const OpMeasurement& op : c.ops) {
    const double model = op.kind == "gemm" || op.kind == "grouped_gemm" ? gemm_efficiency(hw, op.flops)
                                                                        : hw.attention_efficiency;
    std::printf("%-44s %-20s %12.4g %10.3f %12.3f\n", op.name.c_str(), op.kind.c_str(), op.flops, op.efficiency,
                model);
  }
  if (c.attention_backward_ratio > 0)
    std::printf("\nattention backward / forward time: %.2f (file: %.2f)\n", c.attention_backward_ratio,
                hw.attention_backward_ratio);
  if (c.memory_bandwidth > 0)
    std::printf("memory bandwidth %.3g B/s (file %.3g), element-wise %.3g B/s (file %.3g),\n"
                "%.3g s per exp (file %.3g), cross entropy %.3g s per logit (file %.3g)\n",
                c.memory_bandwidth, hw.memory_bandwidth, c.elementwise_bandwidth, hw.elementwise_bandwidth,
                c.exp_element_s, hw.exp_element_s, c.cross_entropy_logit_s, hw.cross_entropy_logit_s);
  std::printf("\nhardware-file fields:\n%s\n", calibration_json(c).dump(2).c_str());
  return 0;
}

struct Inputs {
  PlanModel model;
  Hardware hw;
  Workload w;
  json file;
};

Inputs read_inputs(const CliArgs& a) {
  Inputs in;
  const std::string model_path = a.require("model");
  in.file = read_json_file(model_path, "plan");
  in.model = read_plan_model(in.file, model_path);
  in.hw = read_hardware_file(a.require("hardware"));
  UM_CHECK(a.has("devices"), "plan", "missing required option --devices");
  in.w.devices = a.get_int("devices", 0);
  in.w.seq_len = a.get_int("seq", run_int(in.file, "data", "seq_len", 0));
  in.w.global_batch = a.get_int("global-batch", run_int(in.file, "train", "batch_size", 0));
  UM_CHECK(in.w.seq_len > 0, "plan", "missing --seq (and ", model_path, " has no data.seq_len)");
  UM_CHECK(in.w.global_batch > 0, "plan", "missing --global-batch (and ", model_path, " has no train.batch_size)");
  in.w.ep_overlap = parse_overlap(a.get_or("overlap", "shared"));
  in.w.moe_imbalance = a.get_double("imbalance", 1.0);
  check_workload(in.w);
  return in;
}

json header_json(const Inputs& in) {
  json j;
  j["model"] = model_json(in.model);
  j["hardware"] = hardware_json(in.hw);
  j["workload"] = workload_json(in.w);
  return j;
}

Prediction evaluate_spec(const Inputs& in, const std::string& spec) {
  Layout l = spec == "config" ? layout_from_run_config(in.file) : parse_layout(spec);
  check_layout(in.model, in.w, l);
  return evaluate(in.model, in.hw, in.w, l);
}

int one_layout(const CliArgs& a, const Inputs& in) {
  const Prediction p = evaluate_spec(in, a.require("layout"));
  json j = header_json(in);
  j.update(prediction_to_json(p));
  std::optional<MeasuredStep> measured;
  if (a.has("measured")) {
    const std::string file = a.require("measured");
    measured = read_measured_step(read_json_file(file, "plan"), double(in.w.global_batch) * in.w.seq_len, file);
    j["measured"] = {{"step_time_s", measured->step_time_s}, {"tokens_per_s", measured->tokens_per_s},
                     {"phases", measured->phases}};
    j["predicted_over_measured"] = p.step_time_s / measured->step_time_s;
  }
  if (a.has("json")) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    print_header(stdout, in.model, in.hw, in.w);
    print_breakdown(stdout, p, in.w);
    if (measured) {
      std::printf("measured    %.4g s per step (%.4g tokens/s): predicted / measured = %.3f\n", measured->step_time_s,
                  measured->tokens_per_s, p.step_time_s / measured->step_time_s);
      if (measured->phases.is_object())
        for (auto it = measured->phases.begin(); it != measured->phases.end(); ++it)
          if (it.value().is_number())
            std::printf("            %-28s %.4g s\n", it.key().c_str(), it.value().get<double>());
    }
  }
  UM_CHECK(p.fits, "plan", "layout ", layout_string(p.layout), " needs ", gb(p.memory.total()),
           " GB per device (stage ", p.memory_stage, "), ", in.hw.name, " has ", gb(in.hw.memory_bytes),
           " GB: the model does not fit this layout (try recompute=selective or full, more pp, tp or ep)");
  return 0;
}

size_t top_rows(const CliArgs& a, long long fallback) {
  const long long top = a.get_int("top", fallback);
  UM_CHECK(top >= 1, "plan", "--top must be >= 1, got ", top);
  return static_cast<size_t>(top);
}

int search(const CliArgs& a, const Inputs& in) {
  const size_t top = top_rows(a, 5);
  const SearchResult r = search_layouts(in.model, in.hw, in.w);
  UM_CHECK(r.evaluated > 0, "plan", "no parallel layout of ", in.w.devices, " devices is valid for ", in.model.name,
           " with global batch ", in.w.global_batch, " (check that --global-batch is a multiple of the data-parallel",
           " size and --devices of the tensor x pipeline sizes)");
  UM_CHECK(!r.ranked.empty(), "plan", "the model does not fit: none of the ", r.evaluated, " layouts of ",
           in.w.devices, " devices fits in ", gb(in.hw.memory_bytes), " GB; the smallest, ",
           layout_string(r.smallest.layout), ", needs ", gb(r.smallest.memory.total()), " GB per device");
  std::optional<Prediction> given;
  int64_t given_rank = 0, given_rank_by_time = 0;
  if (a.has("rank-layout")) {
    given = evaluate_spec(in, a.require("rank-layout"));
    given_rank = rank_among(r, given->step_time_s);
    given_rank_by_time = rank_by_time(r, given->step_time_s);
  }
  if (a.has("json")) {
    json j = header_json(in);
    j.update(prediction_to_json(r.ranked.front()));
    j["evaluated"] = r.evaluated;
    j["fitting"] = r.ranked.size();
    json list = json::array();
    for (size_t i = 0; i < std::min(top, r.ranked.size()); ++i) list.push_back(prediction_to_json(r.ranked[i]));
    j["top"] = list;
    if (given) {
      j["rank_layout"] = prediction_to_json(*given);
      j["rank_layout"]["rank"] = given->fits ? json(given_rank) : json(nullptr);
      j["rank_layout"]["rank_by_time"] = given_rank_by_time;
    }
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  print_header(stdout, in.model, in.hw, in.w);
  std::printf("%lld layouts evaluated, %zu fit; times in seconds per step (exposed communication)\n\n",
              (long long)r.evaluated, r.ranked.size());
  print_layout_table(stdout, r.ranked, top);
  std::printf("\nbest:\n");
  print_breakdown(stdout, r.ranked.front(), in.w);
  if (given) {
    std::printf("\ngiven layout ");
    if (given->fits) std::printf("ranks %lld of the %zu that fit", (long long)given_rank, r.ranked.size());
    else std::printf("does not fit");
    std::printf(" (%lld of all %lld by step time alone):\n", (long long)given_rank_by_time, (long long)r.evaluated);
    print_breakdown(stdout, *given, in.w);
  }
  return 0;
}

int geometry(const CliArgs& a, const Inputs& in) {
  GeometryGrid grid;
  grid.layers = int_list(a, "layers");
  grid.hidden = int_list(a, "hidden");
  grid.experts = int_list(a, "experts");
  grid.tolerance = a.get_double("tolerance", grid.tolerance);
  UM_CHECK(grid.tolerance > 0, "plan", "--tolerance must be > 0, got ", grid.tolerance);
  SearchSpace space;
  const std::vector<GeometryCandidate> c = search_geometry(in.model, in.hw, in.w, grid, space);
  UM_CHECK(!c.empty(), "plan", "no geometry of the grid matches the budget of ", in.model.name, " within ",
           grid.tolerance * 100, "%");
  const size_t top = top_rows(a, 10);
  if (a.has("json")) {
    json j = header_json(in);
    json list = json::array();
    for (size_t i = 0; i < std::min(top, c.size()); ++i) {
      json g = model_json(c[i].model);
      g["fits"] = c[i].found;
      g["best"] = prediction_to_json(c[i].best);
      list.push_back(g);
    }
    j["geometries"] = list;
    if (c.front().found) j.update(prediction_to_json(c.front().best));
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  print_header(stdout, in.model, in.hw, in.w);
  std::printf("%zu geometries within %.0f%% of the total/active budget, best layout each, fastest first\n\n",
              c.size(), grid.tolerance * 100);
  print_geometry_table(stdout, c, top);
  return 0;
}

}  // namespace

int cmd_plan(const Args& args) {
  if (wants_help(args, kUsage)) return 0;
  CliArgs a("plan", args,
            {{"model", true}, {"hardware", true}, {"devices", true}, {"seq", true}, {"global-batch", true},
             {"layout", true}, {"rank-layout", true}, {"top", true}, {"overlap", true}, {"imbalance", true},
             {"search-geometry", false}, {"layers", true}, {"hidden", true}, {"experts", true}, {"tolerance", true},
             {"measured", true}, {"calibrate", true}, {"measure", false}, {"json", false}});
  UM_CHECK(a.positional().empty(), "plan", "unexpected argument '", a.positional()[0], "'");
  if (a.has("calibrate") || a.has("measure")) return calibrate(a);
  const Inputs in = read_inputs(a);
  UM_CHECK(!(a.has("layout") && a.has("search-geometry")), "plan", "--layout and --search-geometry exclude each other");
  UM_CHECK(!a.has("measured") || a.has("layout"), "plan", "--measured needs --layout (the layout that was measured)");
  if (a.has("search-geometry")) return geometry(a, in);
  if (a.has("layout")) return one_layout(a, in);
  return search(a, in);
}

}  // namespace um::cli
