#include "train/metrics.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

namespace um {

MetricsLog::MetricsLog(const std::string& path, int64_t keep_through_step) : path_(path) {
  if (keep_through_step > 0 && std::filesystem::exists(path)) {
    std::ifstream in(path);
    const std::string tmp = path + ".tmp";
    {
      std::ofstream outf(tmp, std::ios::trunc);
      std::string line;
      while (std::getline(in, line)) {
        json j = json::parse(line, nullptr, false);
        if (j.is_discarded()) continue;  // a torn last line from a crash
        if (j.value("step", int64_t{0}) <= keep_through_step) outf << line << "\n";
      }
      UM_CHECK(outf.good(), "metrics", "cannot rewrite ", tmp);
    }
    std::filesystem::rename(tmp, path);
    f_ = std::fopen(path.c_str(), "a");
  } else {
    f_ = std::fopen(path.c_str(), "w");
  }
  UM_CHECK(f_ != nullptr, "metrics", "cannot open ", path, " for writing");
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

void MetricsLog::write(const json& line) {
  const std::string s = line.dump() + "\n";
  UM_CHECK(std::fwrite(s.data(), 1, s.size(), f_) == s.size() && std::fflush(f_) == 0, "metrics",
           "writing ", path_, " failed (disk full?)");
}

double imbalance_score(const std::vector<int64_t>& load, int64_t devices, int64_t tokens) {
  if (devices <= 0 || load.empty() || tokens <= 0) return 0;
  const int64_t per = static_cast<int64_t>(load.size()) / devices;
  int64_t mx = 0, mn = INT64_MAX;
  for (int64_t d = 0; d < devices; ++d) {
    int64_t s = 0;
    for (int64_t e = d * per; e < (d + 1) * per; ++e) s += load[e];
    mx = std::max(mx, s);
    mn = std::min(mn, s);
  }
  return double(mx - mn) / double(tokens);
}

int64_t default_imbalance_devices(const RunConfig& rc) {
  const int64_t E = rc.model.n_routed_experts;
  if (rc.parallel.ep > 1) return rc.parallel.ep;
  for (int64_t d : {8, 4, 2})
    if (E % d == 0) return d;
  return 1;
}

json moe_layer_summary(const MoeStats& s, int layer, double balance, int64_t devices, int64_t k) {
  double total = 0, mx = 0;
  for (int64_t l : s.load) total += double(l), mx = std::max(mx, double(l));
  const double mean = s.load.empty() ? 0 : total / double(s.load.size());
  return {{"layer", layer},
          {"load", s.load},
          {"max_mean", mean > 0 ? mx / mean : 0.0},
          {"is", imbalance_score(s.load, devices, s.tokens)},
          {"dropped", s.dropped},
          {"drop_rate", s.tokens > 0 ? double(s.dropped) / double(s.tokens * k) : 0.0},
          {"entropy", s.tokens > 0 ? s.entropy_sum / double(s.tokens) : 0.0},
          {"balance", balance}};
}

json train_metrics_line(const StepOutcome& o, double tokens_per_s, double mfu,
                        const std::vector<int>& moe_layers, int64_t devices) {
  auto num = [&](double v) { return o.skipped && !std::isfinite(v) ? json() : json(v); };
  json moe = json::array();
  double max_mean = 0, is = 0;
  for (size_t l = 0; l < o.moe.size(); ++l) {
    int64_t pairs = 0;  // every token selects K experts: the loads sum to tokens x K
    for (int64_t x : o.moe[l].load) pairs += x;
    const int64_t k = o.moe[l].tokens > 0 ? pairs / o.moe[l].tokens : 1;
    json s = moe_layer_summary(o.moe[l], moe_layers[l], o.balance.size() > l ? o.balance[l] : 0.0, devices, k);
    max_mean += s["max_mean"].get<double>() / double(o.moe.size());
    is += s["is"].get<double>() / double(o.moe.size());
    moe.push_back(std::move(s));
  }
  return {{"kind", "train"}, {"step", o.step}, {"loss", num(o.loss)}, {"loss_total", num(o.loss_total)},
          {"loss_mtp", num(o.loss_mtp)}, {"loss_bal", num(o.loss_bal)}, {"loss_z", num(o.loss_z)},
          {"mtp_ce", o.mtp_ce}, {"lr", o.lr}, {"grad_norm", num(o.grad_norm)}, {"clipped", o.clipped},
          {"tokens_per_s", tokens_per_s}, {"mfu", mfu}, {"skipped", o.skipped},
          {"load_max_mean", max_mean}, {"is", is}, {"moe", moe}};
}

}  // namespace um
