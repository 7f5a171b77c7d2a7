// Gradient- and loss-spike detection (design.md 2). A step is a gradient spike if its grad norm
// exceeds grad_spike_factor x the median of the previous spike_window applied steps; a loss spike
// likewise on the main CE with loss_spike_factor. The first spike_window steps are not counted.
// rate = spikes / counted steps. Pangu's own definition is unpublished (it reported 1.54% ->
// 0.76% with DSSN + TinyInit), so this is ours, stated precisely.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <vector>

#include "core/json_reader.h"

namespace um {

class SpikeDetector {
 public:
  SpikeDetector(int64_t window, double grad_factor, double loss_factor)
      : window_(window), grad_factor_(grad_factor), loss_factor_(loss_factor) {}

  struct Verdict {
    bool counted = false, grad_spike = false, loss_spike = false;
  };

  // Call once per applied (not skipped) step.
  Verdict observe(double grad_norm, double loss) {
    Verdict v;
    if (static_cast<int64_t>(grads_.size()) >= window_) {
      v.counted = true;
      v.grad_spike = grad_norm > grad_factor_ * median(grads_);
      v.loss_spike = loss > loss_factor_ * median(losses_);
      ++counted_;
      grad_spikes_ += v.grad_spike;
      loss_spikes_ += v.loss_spike;
      grads_.pop_front();
      losses_.pop_front();
    }
    grads_.push_back(grad_norm);
    losses_.push_back(loss);
    return v;
  }

  int64_t counted() const { return counted_; }
  int64_t grad_spikes() const { return grad_spikes_; }
  int64_t loss_spikes() const { return loss_spikes_; }
  double grad_spike_rate() const { return counted_ ? double(grad_spikes_) / double(counted_) : 0.0; }
  double loss_spike_rate() const { return counted_ ? double(loss_spikes_) / double(counted_) : 0.0; }

  json to_json() const {
    return {{"grad_norms", std::vector<double>(grads_.begin(), grads_.end())},
            {"losses", std::vector<double>(losses_.begin(), losses_.end())},
            {"counted", counted_}, {"grad_spikes", grad_spikes_}, {"loss_spikes", loss_spikes_}};
  }
  void from_json(const json& j) {
    if (!j.is_object() || !j.contains("grad_norms")) return;
    auto g = j["grad_norms"].get<std::vector<double>>();
    auto l = j["losses"].get<std::vector<double>>();
    grads_.assign(g.begin(), g.end());
    losses_.assign(l.begin(), l.end());
    counted_ = j.value("counted", int64_t{0});
    grad_spikes_ = j.value("grad_spikes", int64_t{0});
    loss_spikes_ = j.value("loss_spikes", int64_t{0});
  }

 private:
  static double median(const std::deque<double>& d) {
    std::vector<double> v(d.begin(), d.end());
    const size_t mid = v.size() / 2;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
    double m = v[mid];
    if (v.size() % 2 == 0) m = 0.5 * (m + *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid)));
    return m;
  }
  int64_t window_;
  double grad_factor_, loss_factor_;
  std::deque<double> grads_, losses_;
  int64_t counted_ = 0, grad_spikes_ = 0, loss_spikes_ = 0;
};

}  // namespace um
