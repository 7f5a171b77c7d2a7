// Heap allocations made by the process so far (operator new calls), for checking that the
// steady-state training step does not allocate. The ultramoe binary counts them (it replaces
// operator new); elsewhere this returns -1 (not counted).
#pragma once

#include <cstdint>

namespace um {

int64_t allocation_count();

}  // namespace um
