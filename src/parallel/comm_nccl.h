// NCCL implementation of Comm for GPU buffers (built with -DULTRAMOE_CUDA=ON). The NCCL
// communicator is bootstrapped over an MPI (or Local) Comm: rank 0 creates the unique id and
// broadcasts it. Collectives are enqueued on the communicator's CUDA stream; the blocking forms
// synchronise the stream, the non-blocking ones return a Request that does. Buffers are device
// pointers. Not exercised on CPU-only machines.
#pragma once

#include <memory>

#include "parallel/comm.h"

namespace um {

// bootstrap: a CPU group with the same ranks; device: the CUDA device of this rank.
std::unique_ptr<Comm> make_nccl_comm(Comm& bootstrap, int device);

}  // namespace um
