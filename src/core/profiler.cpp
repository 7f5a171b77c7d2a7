#include "core/profiler.h"

namespace um {

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::attention: return "attention";
    case Phase::router: return "router";
    case Phase::dispatch: return "dispatch/permute";
    case Phase::experts: return "expert GEMMs";
    case Phase::shared: return "shared experts + dense FFN";
    case Phase::norms: return "norms + elementwise";
    case Phase::head: return "LM head + loss";
    case Phase::mtp: return "MTP";
    case Phase::optimizer: return "optimizer";
    case Phase::communication: return "communication";
    case Phase::other: return "other";
    case Phase::count: break;
  }
  return "?";
}

}  // namespace um
