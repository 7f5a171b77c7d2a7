// The process groups of a distributed step (design.md 4): pp pipeline stages of W/pp consecutive
// ranks each (pp = 1: one stage, every rank); inside a stage, W/pp data-parallel ranks, EP groups
// of parallel.ep consecutive ranks each holding E/ep experts, and the "expert data parallel"
// groups of ranks that hold the same experts; across stages, the pipelines (one rank per stage,
// the same data-parallel index). All null: one process.
#pragma once

#include <memory>

#include "parallel/comm.h"

namespace um {

struct StepGroups {
  Comm* world = nullptr;  // the data-parallel ranks of this stage; dense gradients are summed over it
  Comm* ep = nullptr;     // this rank's EP group (ranks [g*ep, (g+1)*ep) of the stage)
  Comm* edp = nullptr;    // ranks holding the same experts (rank % ep equal); expert grads sum here
  Comm* all = nullptr;    // every rank of the job (step statistics); null: world
  Comm* pipe = nullptr;   // this rank's pipeline, ranked by stage; null: no pipeline parallelism
  Comm* embed = nullptr;  // the first and the last stage of this pipeline (the embedding's two copies)
  int world_size() const { return world ? world->size() : 1; }
  int world_rank() const { return world ? world->rank() : 0; }
  int ep_size() const { return ep ? ep->size() : 1; }
  int ep_rank() const { return ep ? ep->rank() : 0; }
  int pp_size() const { return pipe ? pipe->size() : 1; }
  int pp_rank() const { return pipe ? pipe->rank() : 0; }
  Comm* everyone() const { return all ? all : world; }
};

// Owns the split communicators of a layout.
struct ParallelLayout {
  Comm* world = nullptr;          // the job
  int pp = 1, pp_rank = 0;        // pipeline stages; this rank's stage
  std::unique_ptr<Comm> stage;    // this stage's ranks (pp > 1)
  std::unique_ptr<Comm> pipe;     // this rank's pipeline (pp > 1)
  std::unique_ptr<Comm> embed;    // stages 0 and pp-1 of the pipeline (pp > 1)
  std::unique_ptr<Comm> ep, edp;
  // Hierarchical dispatch when an EP group spans several nodes (ranks_per_node consecutive ranks
  // per node): this rank's EP peers on its node, and those with its local index on other nodes.
  std::unique_ptr<Comm> ep_intra, ep_inter;
  // world: the job's group; pp must divide its size, ep the size of a stage. ranks_per_node 0:
  // one node.
  ParallelLayout(Comm& world, int ep_size, int ranks_per_node = 0, int pp = 1);
  Comm& data() const { return stage ? *stage : *world; }  // the data-parallel ranks of the stage
  StepGroups groups() const {
    return {&data(), ep.get(), edp.get(), world, pipe.get(), embed.get()};
  }
  bool hierarchical() const { return ep_inter != nullptr; }
};

}  // namespace um
