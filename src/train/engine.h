// The training engine of one rank: the parallel layout of a run config (design.md 4), the
// parameter table of this rank's experts, the optimizer shard, the device the rank computes
// on, the flat buffers and the model. `ultramoe train` and `ultramoe bench` build the same
// Engine. T is the compute type: float on the CPU; float or bf16 (the default) on CUDA.
#pragma once

#include <memory>
#include <string>

#include "model/model.h"
#include "ops/device_context.h"
#include "parallel/groups.h"
#include "train/optimizer.h"
#include "train/pipeline.h"
#include "train/run_config.h"

namespace um {

// Where and in what precision a run computes (CLI: --device, --dtype).
struct Placement {
  Device device = Device::cpu;
  DType dtype = DType::f32;  // compute type; bf16 only on CUDA
  std::string describe() const;
};
// From the CLI's strings ("cpu"/"cuda", "f32"/"bf16"/""): the dtype defaults to bf16 on CUDA,
// f32 on the CPU; any other combination is one clear error.
Placement parse_placement(const std::string& device, const std::string& dtype);

// The peak FLOP/s MFU is measured against: the CPU's FP32 FMA peak, or a GPU's (bf16) peak
// from a hardware file (0 when none was given: MFU is not reported). `describe` says which.
struct Peak {
  double flops = 0;
  std::string describe;
};
Peak run_peak(const Placement& pl, const std::string& hardware_file, int n_threads, int W);

template <class T>
struct Engine {
  RunConfig rc;
  Comm* world;
  int W, rank, ep;     // the job's ranks, this rank, the EP group size
  int pp, pp_rank;     // pipeline stages, this rank's stage (design.md 4)
  int Wd, dp_rank;     // data-parallel ranks (W / pp) and this rank's index among them
  ParallelLayout layout;
  PipelineLayout pipeline;
  StepGroups groups;   // null groups in one process
  MoeComms comms;
  ParamTable table;
  Optimizer optim;
  std::unique_ptr<DeviceContext> device;
  Workspace ws;        // op scratch, on the device
  Ctx ctx;             // the Ctx every op of the run uses
  ParamStore<T> ps;
  std::unique_ptr<Model<T>> model;

  Engine(const RunConfig& rc, Comm& world, Device d = Device::cpu, Profiler* prof = nullptr);

  int64_t local_sequences() const { return rc.train.batch_size / Wd; }
  // This rank's windows of a step from the step's global batch (B, T+1), canonical placement.
  void take_canonical(const int32_t* global_batch, int32_t* local) const;
};

// Collects the shared checks of a run config against a world of W ranks (W / pp per stage).
void check_layout(const RunConfig& rc, int W);
// A MoGE model whose device count (parallel.ep, or train.imbalance_devices in one process) does
// not divide n_group: one line on stderr from rank 0 (design.md 1.5: IS = 0 is not guaranteed).
void warn_moge_devices(const RunConfig& rc, int rank);

}  // namespace um
