#include "core/alloc_count.h"

namespace um {

// Replaced by the strong definition of tools/ultramoe/alloc_counter.cpp in the CLI binary.
__attribute__((weak)) int64_t allocation_count() { return -1; }

}  // namespace um
