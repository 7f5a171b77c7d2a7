// metrics.jsonl (design.md 8): one JSON object per line, `"kind": "train"` per step and
// `"kind": "eval"` per evaluation. Non-finite numbers are written as null. On --resume the file
// is first cut back to the lines of steps <= the checkpoint's. Expert-load summaries per MoE
// layer (design.md 1.5, 1.6): tokens per expert, max/mean load, device imbalance IS over
// contiguous expert blocks, dropped pairs, router entropy, balance B_l.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "core/json_reader.h"
#include "train/run_config.h"
#include "train/step.h"

namespace um {

class MetricsLog {
 public:
  // keep_through_step >= 0: keep only lines whose step is <= it (rewritten atomically); a fresh
  // run (0) starts an empty file.
  MetricsLog(const std::string& path, int64_t keep_through_step);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void write(const json& line);  // appends and flushes

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
};

// Device imbalance score (design.md 1.5): loads summed over `devices` contiguous expert blocks,
// (max - min) / tokens.
double imbalance_score(const std::vector<int64_t>& load, int64_t devices, int64_t tokens);

// The default number of simulated devices for IS: parallel.ep when > 1, else the largest of
// 8, 4, 2, 1 that divides the expert count.
int64_t default_imbalance_devices(const RunConfig& rc);

json moe_layer_summary(const MoeStats& s, int layer, double balance, int64_t devices, int64_t k);

json train_metrics_line(const StepOutcome& o, double tokens_per_s, double mfu,
                        const std::vector<int>& moe_layers, int64_t devices);

}  // namespace um
