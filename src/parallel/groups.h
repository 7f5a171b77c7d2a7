// The process groups of a distributed step (design.md 4): W data-parallel ranks; EP groups of
// parallel.ep consecutive ranks, each rank holding E/ep experts; and the "expert data parallel"
// groups of ranks that hold the same experts. All null: one process.
#pragma once

#include <memory>

#include "parallel/comm.h"

namespace um {

struct StepGroups {
  Comm* world = nullptr;  // every rank; dense gradients are summed over it
  Comm* ep = nullptr;     // this rank's EP group (ranks [g*ep, (g+1)*ep))
  Comm* edp = nullptr;    // ranks holding the same experts (rank % ep equal); expert grads sum here
  int world_size() const { return world ? world->size() : 1; }
  int world_rank() const { return world ? world->rank() : 0; }
  int ep_size() const { return ep ? ep->size() : 1; }
  int ep_rank() const { return ep ? ep->rank() : 0; }
};

// Owns the split communicators of a layout.
struct ParallelLayout {
  Comm* world = nullptr;
  std::unique_ptr<Comm> ep, edp;
  // Hierarchical dispatch when an EP group spans several nodes (ranks_per_node consecutive ranks
  // per node): this rank's EP peers on its node, and those with its local index on other nodes.
  std::unique_ptr<Comm> ep_intra, ep_inter;
  // world: the job's group; ep_size must divide its size. ranks_per_node 0: one node.
  ParallelLayout(Comm& world, int ep_size, int ranks_per_node = 0);
  StepGroups groups() const { return {world, ep.get(), edp.get()}; }
  bool hierarchical() const { return ep_inter != nullptr; }
};

}  // namespace um
