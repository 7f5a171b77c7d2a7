// Pipeline schedules (design.md 4): the order in which one pipeline rank runs the forward and
// backward passes of its model chunks over the micro-batches of a step.
//   1F1B (vpp = 1): stage s runs min(m, pp - s - 1) warm-up forwards, then alternates one
//     forward and one backward, then drains the backwards (Narayanan et al. 2021, PipeDream-Flush).
//   Interleaved 1F1B (vpp > 1): each rank holds vpp chunks; chunk c of rank s is virtual stage
//     c*pp + s. Virtual micro-batch k of a rank is micro-batch (k / (pp*vpp))*pp + k % pp of chunk
//     (k / pp) % vpp (forwards) or vpp - 1 - (k / pp) % vpp (backwards); warm-up
//     min(m*vpp, 2 (pp - s - 1) + (vpp - 1) pp); needs m divisible by pp (Megatron-Core's
//     schedules.py, forward_backward_pipelining_with_interleaving).
// A schedule is only an order: who talks to whom follows from the virtual stages (forward inputs
// from virtual stage v-1, gradients from v+1). With non-blocking sends and receives waited for
// just before use, every rank following its schedule completes (tested by simulation).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace um {

struct PipeAction {
  bool forward = true;
  int chunk = 0;   // model chunk on this rank (0..vpp-1)
  int micro = 0;   // micro-batch (0..m-1)
  std::string str() const;  // "F0.3" / "B1.0" (chunk.micro)
};

// The actions of pipeline rank `stage` (0..pp-1) for m micro-batches; an error when the layout
// cannot be scheduled (vpp > 1 with m not divisible by pp, pp or vpp < 1).
std::vector<PipeAction> pipeline_schedule(int pp, int vpp, int64_t m, int stage);

// Virtual stage of chunk c on rank s, and the rank and chunk of virtual stage v.
inline int virtual_stage(int pp, int chunk, int stage) { return chunk * pp + stage; }
inline int rank_of_virtual(int pp, int v) { return v % pp; }
inline int chunk_of_virtual(int pp, int v) { return v / pp; }

// The most micro-batch chunks whose activations a rank holds at once under its schedule (a
// forward adds one, the matching backward frees it).
int64_t schedule_peak_in_flight(const std::vector<PipeAction>& actions);

// Runs every rank's schedule against the dependencies (a forward of virtual stage v needs v-1's
// output, a backward needs v+1's gradient; the last virtual stage turns its forward around) with
// forward cost f and backward cost b per chunk, communication free. Returns the makespan, or -1
// if the ranks deadlock. The bubble is 1 - busy / (pp * makespan).
struct ScheduleSimulation {
  double makespan = -1;
  double bubble_fraction = 0;
};
ScheduleSimulation simulate_schedule(int pp, int vpp, int64_t m, double f, double b);

}  // namespace um
