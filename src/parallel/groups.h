// The process groups of a distributed step (DESIGN 4): W data-parallel ranks; EP groups of
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
  // world: the job's group; ep: the EP group size (must divide world->size()).
  ParallelLayout(Comm& world, int ep_size);
  StepGroups groups() const { return {world, ep.get(), edp.get()}; }
};

}  // namespace um
