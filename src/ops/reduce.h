// Deterministic column reductions for parameter gradients: acc[d] += sum_n f(n)[d].
// Rows are cut into fixed blocks of kRowBlock; each block is summed into its own partial row
// (blocks run in parallel), then the partials are added in block order. The result is the same
// for any thread count, which keeps runs reproducible when the core count changes.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/ctx.h"

namespace um {

constexpr int64_t kRowBlock = 64;

// add_row(n, acc) must add row n's contribution into acc[0..D).
template <class T, class AddRow>
void column_reduce(T* out, int64_t N, int64_t D, const Ctx& ctx, AddRow add_row) {
  int64_t n_blocks = (N + kRowBlock - 1) / kRowBlock;
  if (n_blocks == 0) return;
  if (n_blocks == 1) {
    for (int64_t n = 0; n < N; ++n) add_row(n, out);
    return;
  }
  T* partial = ctx.scratch<T>(static_cast<size_t>(n_blocks * D));
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(N * D))
  for (int64_t b = 0; b < n_blocks; ++b) {
    T* acc = partial + b * D;
    std::fill(acc, acc + D, T(0));
    int64_t end = std::min(N, (b + 1) * kRowBlock);
    for (int64_t n = b * kRowBlock; n < end; ++n) add_row(n, acc);
  }
#pragma omp parallel for schedule(static) num_threads(ctx.threads_for(n_blocks * D))
  for (int64_t d = 0; d < D; ++d) {
    T s = 0;
    for (int64_t b = 0; b < n_blocks; ++b) s += partial[b * D + d];
    out[d] += s;
  }
}

}  // namespace um
