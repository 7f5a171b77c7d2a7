#include "parallel/groups.h"

#include "core/error.h"

namespace um {

ParallelLayout::ParallelLayout(Comm& w, int ep_size, int ranks_per_node, int pp_size) : world(&w), pp(pp_size) {
  UM_CHECK(pp >= 1 && w.size() % pp == 0, "parallel", "parallel.pp=", pp, " must divide the number of ranks, ",
           w.size());
  if (pp > 1) {  // stages of consecutive ranks; pipelines across them by data-parallel index
    const int per_stage = w.size() / pp;
    pp_rank = w.rank() / per_stage;
    stage = w.split(pp_rank, w.rank());
    pipe = w.split(w.rank() % per_stage, pp_rank);
    const bool ends = pp_rank == 0 || pp_rank == pp - 1;
    embed = pipe->split(ends ? 0 : 1, pp_rank);
  }
  Comm& d = data();
  const int W = d.size(), r = d.rank();
  UM_CHECK(ep_size >= 1 && W % ep_size == 0, "parallel", "parallel.ep=", ep_size,
           " must divide the number of ranks", pp > 1 ? " of a pipeline stage, " : ", ", W);
  ep = d.split(r / ep_size, r);
  edp = d.split(r % ep_size, r);
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
