#include "parallel/groups.h"

#include "core/error.h"

namespace um {

ParallelLayout::ParallelLayout(Comm& w, int ep_size, int ranks_per_node) : world(&w) {
  const int W = w.size(), r = w.rank();
  UM_CHECK(ep_size >= 1 && W % ep_size == 0, "parallel", "parallel.ep=", ep_size,
           " must divide the number of ranks, ", W);
  ep = w.split(r / ep_size, r);
  edp = w.split(r % ep_size, r);
  const int rpn = ranks_per_node;
  if (rpn > 0 && ep_size > rpn) {  // the EP group spans ep/rpn whole nodes
    UM_CHECK(ep_size % rpn == 0 && W % rpn == 0, "parallel", "parallel.ep=", ep_size,
             " spans nodes of parallel.ranks_per_node=", rpn, " ranks and must be a multiple of it");
    const int q = ep->rank();
    ep_intra = ep->split(q / rpn, q);
    ep_inter = ep->split(q % rpn, q);
  }
}

}  // namespace um
