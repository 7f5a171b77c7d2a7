#include "core/ctx.h"

#include <omp.h>

namespace um {

Ctx Ctx::cpu(Workspace* ws) {
  Ctx c;
  c.device = Device::cpu;
  c.n_threads = omp_get_max_threads();
  c.workspace = ws;
  return c;
}

}  // namespace um
