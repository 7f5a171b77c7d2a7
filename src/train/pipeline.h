// Pipeline parallelism (design.md 4, docs/pipeline.md). The model is cut into pp x vpp virtual
// stages of consecutive units (unit 0 the embedding, 1..L the main layers, L+1 the tail: final
// norm, LM head, MTP); virtual stage v runs on pipeline rank v % pp as its chunk v / pp. A rank
// follows its 1F1B or interleaved 1F1B schedule (parallel/schedule.h): a forward receives its
// input from virtual stage v-1 and sends its output to v+1, a backward receives the output's
// gradient from v+1 and sends the input's gradient to v-1, over MPI point-to-point on the
// pipeline's group (blocking receives, non-blocking sends, tag = direction and virtual stage, so
// the non-overtaking order of MPI matches micro-batches; sends leave from copies).
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "model/model.h"
#include "parallel/comm.h"
#include "parallel/schedule.h"
#include "train/run_config.h"

namespace um {

// The cut of a model into virtual stages.
struct PipelineLayout {
  int pp = 1, vpp = 1;
  std::vector<std::pair<int, int>> units;  // per virtual stage: units [begin, end)

  // From parallel.pp / vpp / pp_layers / mtp_stage. Without pp_layers the main layers are spread
  // as evenly as possible (earlier stages take the remainder: the last one holds the head);
  // mtp_stage "own" leaves the last virtual stage the tail alone. Every virtual stage holds at
  // least one unit; one clear error otherwise.
  static PipelineLayout make(const ModelConfig& c, const ParallelConfig& p);
  int n_virtual() const { return pp * vpp; }
  // What pipeline rank `stage` holds (its chunks' tensors; the tail's embedding copy).
  StageContents contents(const ModelConfig& c, int stage) const;
  // Its chunks, each with as many activation slots as the schedule keeps in flight at once.
  std::vector<ChunkSpec> chunks(int stage, int64_t micro_batches) const;
  // Main decoder layers of each virtual stage.
  std::vector<int> layers_per_virtual_stage(const ModelConfig& c) const;
};

// Reused state of a rank's pipelined micro-batches (the steady state does not allocate).
struct PipelineScratch {
  std::vector<PipeAction> schedule;
  int pp = 0, vpp = 0, stage = -1;
  int64_t micro_batches = 0;
  std::vector<std::vector<int>> slot_of;        // [chunk][micro] -> slot
  std::vector<std::vector<int>> free_slots;     // [chunk]
  // Sends leave from copies, so a rank never waits for a receiver before reusing an activation
  // slot (waiting there can deadlock the interleaved schedule once messages go rendezvous); a
  // copy is reused once its send has completed, so the pool stops growing after the first step.
  struct Outgoing {
    DeviceBuffer<std::byte> buf;
    Request req;
  };
  std::vector<Outgoing> outgoing;
};

// Runs this rank's schedule for the micro-batches of one step: `windows` holds n_micro
// micro-batches of m sequences of T+1 ids (every rank of a pipeline holds the same ones). With
// backward = false only the forwards run, micro-batch after micro-batch (evaluation).
// on_result(micro, result) is called after each forward of a chunk with what it produced (the
// tail's losses, the routing statistics of the chunk's MoE layers; zeros elsewhere).
template <class T>
void pipeline_run(Model<T>& model, ParamStore<T>& ps, const int32_t* windows, int64_t m, int64_t n_micro,
                  const StepScales& sc, bool backward, Comm& pipe, PipelineScratch& scratch, const Ctx& ctx,
                  const std::function<void(int64_t, const MicroResult&)>& on_result);

}  // namespace um
