// The training engine of one rank: the parallel layout of a run config (DESIGN 4), the
// parameter table of this rank's experts, the optimizer shard, the flat buffers and the model.
// `ultramoe train` and `ultramoe bench` build the same Engine.
#pragma once

#include <memory>

#include "model/model.h"
#include "parallel/groups.h"
#include "train/optimizer.h"
#include "train/run_config.h"

namespace um {

struct Engine {
  RunConfig rc;
  Comm* world;
  int W, rank, ep;
  ParallelLayout layout;
  StepGroups groups;   // null groups in one process
  MoeComms comms;
  ParamTable table;
  Optimizer optim;
  ParamStore<float> ps;
  std::unique_ptr<Model<float>> model;

  Engine(const RunConfig& rc, Comm& world);

  int64_t local_sequences() const { return rc.train.batch_size / W; }
  // This rank's windows of a step from the step's global batch (B, T+1), canonical placement.
  void take_canonical(const int32_t* global_batch, int32_t* local) const;
};

// Collects the shared checks of a run config against a world of W ranks.
void check_layout(const RunConfig& rc, int W);
// A MoGE model whose device count (parallel.ep, or train.imbalance_devices in one process) does
// not divide n_group: one line on stderr from rank 0 (DESIGN 1.5: IS = 0 is not guaranteed).
void warn_moge_devices(const RunConfig& rc, int rank);

}  // namespace um
