// Step-time breakdown by phase (for `ultramoe bench`). A PhaseTimer charges the wall time of its
// scope to one phase, exclusively: a nested timer pauses its parent, so the phases add up to the
// timed total. Inside an MTP module every phase is charged to `mtp`. With no Profiler in the Ctx
// a timer does nothing.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>

namespace um {

enum class Phase : uint8_t {
  attention,      // MLA projections, RoPE, attention
  router,         // router GEMM, scores, top-k, gates, balance statistics
  dispatch,       // permutation, permute/combine of token rows
  experts,        // routed-expert grouped GEMMs and their SwiGLU
  shared,         // shared experts and dense FFN layers
  norms,          // RMSNorms, residual adds, embedding
  head,           // LM head + cross-entropy (main)
  mtp,            // everything inside the MTP modules
  optimizer,      // gradient norm, clipping, AdamW, aux-free biases
  communication,  // waiting in collectives (dispatch, gradient reductions, statistics)
  other,
  count
};
const char* phase_name(Phase p);

class Profiler {
 public:
  using clock = std::chrono::steady_clock;
  // Starts a measurement: zero totals, time charged from now on.
  void start() {
    seconds_.fill(0);
    current = Phase::other;
    mtp_depth = 0;
    since = clock::now();
  }
  void stop() { charge(clock::now()); }
  double seconds(Phase p) const { return seconds_[size_t(p)]; }
  double total() const {
    double s = 0;
    for (double x : seconds_) s += x;
    return s;
  }

  // A device runs ahead of the host: with a sync hook (set for CUDA), every phase boundary first
  // waits for the device, so each phase is charged its device time (at the cost of throughput:
  // time phases in a separate run).
  void (*sync_fn)(void*) = nullptr;
  void* sync_arg = nullptr;
  clock::time_point now() const {
    if (sync_fn) sync_fn(sync_arg);
    return clock::now();
  }

  // used by PhaseTimer
  Phase current = Phase::other;
  clock::time_point since = clock::now();
  int mtp_depth = 0;
  void charge(clock::time_point now) {
    seconds_[size_t(mtp_depth > 0 ? Phase::mtp : current)] += std::chrono::duration<double>(now - since).count();
    since = now;
  }

 private:
  std::array<double, size_t(Phase::count)> seconds_{};
};

class PhaseTimer {
 public:
  PhaseTimer(Profiler* p, Phase phase) : p_(p) {
    if (!p_) return;
    p_->charge(p_->now());
    parent_ = p_->current;
    p_->current = phase;
    if (phase == Phase::mtp) ++p_->mtp_depth;
    mtp_ = phase == Phase::mtp;
  }
  ~PhaseTimer() {
    if (!p_) return;
    p_->charge(p_->now());
    p_->current = parent_;
    if (mtp_) --p_->mtp_depth;
  }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

 private:
  Profiler* p_;
  Phase parent_ = Phase::other;
  bool mtp_ = false;
};

}  // namespace um
