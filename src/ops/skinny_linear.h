// A linear layer for few rows — decoding, where each sequence contributes one row — that reads
// the weight matrix once:
//   y (N, n_out) = x (N, n_in) W^T     W: (n_out, n_in), row stride ldw  (nn.Linear layout)
// x has row stride ldx, y row stride ldy (column slices of wider buffers work). y is written.
// Why not GEMM: a BLAS GEMM packs W into panels on every call, an extra pass over W (read and
// write) that costs more than the product itself when N is a handful of rows; decoding is
// bandwidth-bound on W. Here the outputs are cut into blocks shared out over the threads; each row
// of W is read once and dotted with up to 8 x rows at a time (accumulators in registers, the x
// rows in L1). Measured on one Zen 4 core (f32, thread CPU time): 2.5-3x faster than sgemm at
// N = 1, about even at N = 16 (docs/inference.md). Every output element is computed by one thread in a fixed
// order, so results do not depend on the thread count. Forward only (inference has no backward);
// reference: tests/ops/test_skinny_linear.cpp.
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

template <class T>
void skinny_linear_forward(T* y, int64_t ldy, const T* x, int64_t ldx, const T* W, int64_t ldw, int64_t N,
                      int64_t n_in, int64_t n_out, const Ctx& ctx);

}  // namespace um
