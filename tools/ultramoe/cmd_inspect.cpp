// ultramoe inspect: configuration and parameter counts of a model config (design.md 7, 8).
#include <cstdio>

#include "commands.h"
#include "core/cli_args.h"
#include "core/json_reader.h"
#include "model/config.h"
#include "model/params.h"
#include "train/checkpoint.h"

#include <algorithm>

namespace um::cli {

static const char* kUsage =
    "usage: ultramoe inspect --config FILE | --ckpt DIR  [--json]\n"
    "\n"
    "Prints the model configuration, total and active parameter counts (design.md 7) and a\n"
    "per-component breakdown. FILE is a run config with a `model` section or a flat HF-style\n"
    "config.json. For a checkpoint, also its step and the expert load of its last step.\n"
    "  --config FILE   config to inspect\n"
    "  --ckpt DIR      checkpoint to inspect\n"
    "  --json          print one JSON object (total_params, active_params, ...)\n";

static std::string human(int64_t n) {
  char buf[64];
  if (n >= 1000000000LL) std::snprintf(buf, sizeof buf, "%.1fB", n / 1e9);
  else if (n >= 1000000LL) std::snprintf(buf, sizeof buf, "%.1fM", n / 1e6);
  else if (n >= 1000LL) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

int cmd_inspect(const Args& args) {
  if (wants_help(args, kUsage)) return 0;
  CliArgs a("inspect", args, {{"config", true}, {"ckpt", true}, {"json", false}});
  UM_CHECK(a.positional().empty(), "inspect", "unexpected argument '", a.positional()[0], "'");
  UM_CHECK(a.has("config") != a.has("ckpt"), "inspect", "give exactly one of --config FILE and --ckpt DIR");
  std::string path;
  ModelConfig c;
  json ckpt_info;
  if (a.has("config")) {
    path = a.require("config");
    json file = read_json_file(path);
    const bool sectioned = file.is_object() && file.contains("model");
    c = parse_model_config(sectioned ? file["model"] : file, sectioned ? "model" : "");
  } else {
    path = a.require("ckpt");
    OpenedCheckpoint ck = open_checkpoint(path);
    c = ck.rc.model;
    ckpt_info = {{"step", ck.state.step}, {"adam_step", ck.state.adam_step},
                 {"tokens_seen", ck.state.counters.value("tokens_seen", 0.0)},
                 {"skipped_steps", ck.state.counters.value("skipped_steps", 0)},
                 {"expert_load", ck.state.counters.value("expert_load", json::array())}};
    json bias = json::array();
    for (const BufferInfo& b : ck.table.buffers) {
      float lo = 0, hi = 0;
      for (int64_t i = 0; i < b.numel; ++i) {
        lo = i ? std::min(lo, ck.ps.buf[b.offset + i]) : ck.ps.buf[b.offset + i];
        hi = i ? std::max(hi, ck.ps.buf[b.offset + i]) : ck.ps.buf[b.offset + i];
      }
      bias.push_back({{"name", b.name}, {"min", lo}, {"max", hi}});
    }
    ckpt_info["aux_free_bias"] = bias;
  }
  ParamCounts n = count_params(c);

  if (a.has("json")) {
    json out;
    out["config"] = model_config_to_json(c);
    out["total_params"] = n.total;
    out["active_params"] = n.active;
    out["mtp_params"] = n.mtp;
    out["mtp_params_with_shared"] = n.mtp + n.embedding + n.lm_head;
    out["mtp_active_params"] = n.mtp_active;
    out["embedding_params"] = n.embedding;
    out["lm_head_params"] = n.lm_head;
    json by = json::object();
    for (auto& [name, count] : n.by_component) by[name] = count;
    out["by_component"] = by;
    if (!ckpt_info.is_null()) out["checkpoint"] = ckpt_info;
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("model: %s\n", path.c_str());
  std::printf("  layers %lld (%lld dense, %lld MoE) + %lld MTP, hidden %lld, heads %lld, vocab %lld\n",
              (long long)c.num_hidden_layers, (long long)c.first_k_dense_replace,
              (long long)(c.num_hidden_layers - c.first_k_dense_replace),
              (long long)c.num_nextn_predict_layers, (long long)c.hidden_size,
              (long long)c.num_attention_heads, (long long)c.vocab_size);
  std::printf("  MLA: q_lora %lld, kv_lora %lld, qk nope %lld + rope %lld, v %lld\n",
              (long long)c.q_lora_rank, (long long)c.kv_lora_rank, (long long)c.qk_nope_head_dim,
              (long long)c.qk_rope_head_dim, (long long)c.v_head_dim);
  if (c.n_routed_experts > 0)
    std::printf("  MoE: %lld routed (top-%lld, %s, %s) + %lld shared, expert width %lld\n",
                (long long)c.n_routed_experts, (long long)c.num_experts_per_tok,
                topk_method_name(c.topk_method),
                c.scoring_func == ScoreFunc::sigmoid ? "sigmoid" : "softmax",
                (long long)c.n_shared_experts, (long long)c.moe_intermediate_size);
  std::printf("\nparameters (main model; MTP on its own line):\n");
  for (auto& [name, count] : n.by_component)
    std::printf("  %-16s %16lld  %8s\n", name.c_str(), (long long)count, human(count).c_str());
  std::printf("  %-16s %16lld  %8s\n", "total", (long long)n.total, human(n.total).c_str());
  std::printf("  %-16s %16lld  %8s  (per token, input embedding excluded)\n", "active",
              (long long)n.active, human(n.active).c_str());
  if (c.num_nextn_predict_layers > 0) {
    std::printf("  %-16s %16lld  %8s  (without the shared embedding/head; %s with them)\n", "mtp",
                (long long)n.mtp, human(n.mtp).c_str(),
                human(n.mtp + n.embedding + n.lm_head).c_str());
  }
  if (!ckpt_info.is_null()) {
    std::printf("\ncheckpoint: step %lld (%lld applied updates, %.3gM tokens seen)\n",
                (long long)ckpt_info["step"].get<int64_t>(), (long long)ckpt_info["adam_step"].get<int64_t>(),
                ckpt_info["tokens_seen"].get<double>() / 1e6);
    for (const json& l : ckpt_info["expert_load"])
      std::printf("  layer %2d: load %s  max/mean %.2f  IS %.3f  entropy %.3f  dropped %lld\n", l["layer"].get<int>(),
                  l["load"].dump().c_str(), l["max_mean"].get<double>(), l["is"].get<double>(),
                  l["entropy"].get<double>(), (long long)l["dropped"].get<int64_t>());
  }
  return 0;
}

}  // namespace um::cli
