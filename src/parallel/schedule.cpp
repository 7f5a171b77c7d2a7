#include "parallel/schedule.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "core/error.h"

namespace um {

std::string PipeAction::str() const {
  return (forward ? "F" : "B") + std::to_string(chunk) + "." + std::to_string(micro);
}

std::vector<PipeAction> pipeline_schedule(int pp, int vpp, int64_t m, int stage) {
  UM_CHECK(pp >= 1 && vpp >= 1 && m >= 1, "pipeline", "pp, vpp and the micro-batch count must be >= 1 (pp ", pp,
           ", vpp ", vpp, ", micro-batches ", m, ")");
  UM_CHECK(stage >= 0 && stage < pp, "pipeline", "stage ", stage, " out of range for pp ", pp);
  std::vector<PipeAction> out;
  if (vpp == 1) {
    const int64_t warmup = std::min<int64_t>(m, pp - stage - 1);
    int64_t f = 0, b = 0;
    for (; f < warmup; ++f) out.push_back({true, 0, int(f)});
    for (; f < m; ++f, ++b) {
      out.push_back({true, 0, int(f)});
      out.push_back({false, 0, int(b)});
    }
    for (; b < m; ++b) out.push_back({false, 0, int(b)});
    return out;
  }
  UM_CHECK(m % pp == 0, "pipeline", "the interleaved schedule (vpp ", vpp, ") needs the micro-batches per step (",
           m, ") to be a multiple of pp (", pp, ")");
  const int64_t total = m * vpp;
  const int64_t warmup = std::min<int64_t>(total, 2LL * (pp - stage - 1) + int64_t(vpp - 1) * pp);
  auto micro_of = [&](int64_t k) { return int((k / (int64_t(pp) * vpp)) * pp + k % pp); };
  auto fwd = [&](int64_t k) { return PipeAction{true, int((k / pp) % vpp), micro_of(k)}; };
  auto bwd = [&](int64_t k) { return PipeAction{false, int(vpp - 1 - (k / pp) % vpp), micro_of(k)}; };
  int64_t f = 0, b = 0;
  for (; f < warmup; ++f) out.push_back(fwd(f));
  for (; f < total; ++f, ++b) {
    out.push_back(fwd(f));
    out.push_back(bwd(b));
  }
  for (; b < total; ++b) out.push_back(bwd(b));
  return out;
}

int64_t schedule_peak_in_flight(const std::vector<PipeAction>& actions) {
  int64_t live = 0, peak = 0;
  for (const PipeAction& a : actions) {
    live += a.forward ? 1 : -1;
    peak = std::max(peak, live);
  }
  return peak;
}

ScheduleSimulation simulate_schedule(int pp, int vpp, int64_t m, double f, double b) {
  std::vector<std::vector<PipeAction>> sched(pp);
  for (int s = 0; s < pp; ++s) sched[s] = pipeline_schedule(pp, vpp, m, s);
  const int n_virtual = pp * vpp;
  // finish time of (forward?, virtual stage, micro)
  std::map<std::tuple<bool, int, int>, double> done;
  std::vector<size_t> next(pp, 0);
  std::vector<double> clock(pp, 0.0);
  double busy = 0;
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < pp; ++s) {
      while (next[s] < sched[s].size()) {
        const PipeAction& a = sched[s][next[s]];
        const int v = virtual_stage(pp, a.chunk, s);
        double ready = 0;
        if (a.forward && v > 0) {
          auto it = done.find({true, v - 1, a.micro});
          if (it == done.end()) break;
          ready = it->second;
        }
        if (!a.forward) {
          auto it = v + 1 < n_virtual ? done.find({false, v + 1, a.micro}) : done.find({true, v, a.micro});
          if (it == done.end()) break;
          ready = it->second;
        }
        const double cost = a.forward ? f : b;
        clock[s] = std::max(clock[s], ready) + cost;
        busy += cost;
        done[{a.forward, v, a.micro}] = clock[s];
        ++next[s];
        progress = true;
      }
    }
  }
  ScheduleSimulation r;
  for (int s = 0; s < pp; ++s)
    if (next[s] < sched[s].size()) return r;  // deadlock
  r.makespan = *std::max_element(clock.begin(), clock.end());
  r.bubble_fraction = 1.0 - busy / (double(pp) * r.makespan);
  return r;
}

}  // namespace um
