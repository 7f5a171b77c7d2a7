#include "parallel/groups.h"

#include "core/error.h"

namespace um {

ParallelLayout::ParallelLayout(Comm& w, int ep_size) : world(&w) {
  const int W = w.size(), r = w.rank();
  UM_CHECK(ep_size >= 1 && W % ep_size == 0, "parallel", "parallel.ep=", ep_size,
           " must divide the number of ranks, ", W);
  ep = w.split(r / ep_size, r);
  edp = w.split(r % ep_size, r);
}

}  // namespace um
