// Masked row softmax (decoding attention): for each of `rows` rows of length n (row stride n),
// softmax over columns [lo, hi] in place (max-subtracted, computed in acc_t<T>, the exp of
// ops/vmath.h), every other column zeroed: the masked keys. Forward only (inference).
#pragma once

#include <cstdint>

#include "core/ctx.h"

namespace um {

template <class T>
void masked_softmax_rows(T* S, int64_t rows, int64_t n, int64_t lo, int64_t hi, const Ctx& ctx);

}  // namespace um
