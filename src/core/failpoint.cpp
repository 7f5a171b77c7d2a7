#include "core/failpoint.h"

#include <csignal>
#include <cstdlib>
#include <map>
#include <string>

#include "core/error.h"

namespace um {

namespace {

// True when the armed failpoint is `name` and this is the hit that should fail.
bool armed(const char* name) {
  const char* env = std::getenv("ULTRAMOE_FAILPOINT");
  if (!env) return false;
  std::string spec(env);
  int rank = -1, nth = 1;
  if (auto at = spec.find('@'); at != std::string::npos) {
    rank = std::atoi(spec.c_str() + at + 1);
    spec = spec.substr(0, at);
  }
  if (auto colon = spec.find(':'); colon != std::string::npos) {
    nth = std::atoi(spec.c_str() + colon + 1);
    spec = spec.substr(0, colon);
  }
  if (spec != name) return false;
  if (rank >= 0) {
    const char* r = std::getenv("OMPI_COMM_WORLD_RANK");
    if (!r) r = std::getenv("PMIX_RANK");
    if (!r || std::atoi(r) != rank) return false;
  }
  static std::map<std::string, int> hits;
  return ++hits[spec] == nth;
}

}  // namespace

void failpoint_kill(const char* name) {
  if (armed(name)) std::raise(SIGKILL);
}

void failpoint_throw(const char* name) {
  if (armed(name)) fail("failpoint", name, " triggered (ULTRAMOE_FAILPOINT)");
}

}  // namespace um
