// The planner's step simulator (design.md 5): for a model x hardware x workload x layout, the time of
// one optimizer step (compute, exposed communication, pipeline bubble, optimizer), the memory of
// the fullest device and the resulting MFU (design.md 7) and tokens/s. It is an analytic model of a
// Megatron-style engine (1F1B pipeline, sequence-parallel TP, all-to-all EP, ZeRO-1), not an
// event simulator: no per-device jitter, routing is balanced up to Workload::moe_imbalance.
#pragma once

#include <cstdint>
#include <string>

#include "core/json_reader.h"
#include "plan/hardware.h"
#include "plan/layout.h"
#include "plan/plan_model.h"

namespace um::plan {

// Seconds per optimizer step, from the pipeline's slowest device.
struct TimeBreakdown {
  double compute = 0;       // forward + backward of every micro-batch
  double recompute = 0;     // forward work redone in backward
  double tp_exposed = 0;    // TP all-gather / reduce-scatter (not overlapped)
  double ep_exposed = 0;    // EP all-to-all left after overlap
  double ep_total = 0;      // EP all-to-all before overlap
  double pp_exposed = 0;    // pipeline send/recv on the critical path
  double bubble = 0;        // pipeline fill and drain
  double dp_exposed = 0;    // gradient reduce / parameter gather left after overlap
  double dp_total = 0;
  double optimizer = 0;     // the AdamW update
  double step() const {
    return compute + recompute + tp_exposed + ep_exposed + pp_exposed + bubble + dp_exposed + optimizer;
  }
};

// Bytes on the fullest device.
struct MemoryBreakdown {
  double weights = 0;      // parameters at compute precision
  double grads = 0;        // gradient buffer
  double optimizer = 0;    // master weights and Adam moments (sharded with ZeRO-1)
  double activations = 0;  // saved for backward, all micro-batch chunks in flight
  double buffers = 0;      // all-to-all buffers, logits, the working layer of full recompute
  double reserved = 0;     // runtime, communicators, fragmentation (from the hardware file)
  double total() const { return weights + grads + optimizer + activations + buffers + reserved; }
};

struct Prediction {
  Layout layout;
  Dispatch dispatch = Dispatch::flat;
  TimeBreakdown time;
  MemoryBreakdown memory;
  int memory_stage = 0;      // pipeline stage of the fullest device
  int bottleneck_stage = 0;  // pipeline stage that paces the pipeline
  int64_t micro_batches = 0;
  double bubble_fraction = 0;
  double step_time_s = 0;
  double tokens_per_s = 0;
  double model_flops_per_token = 0;
  double mfu = 0;
  double memory_capacity = 0;
  bool fits = false;
};

// Evaluates a layout that passed check_layout. With l.dispatch unset, the faster all-to-all.
Prediction evaluate(const PlanModel& m, const Hardware& hw, const Workload& w, const Layout& l);

json prediction_to_json(const Prediction& p);

}  // namespace um::plan
