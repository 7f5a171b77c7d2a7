// Failpoints for crash and failure tests. ULTRAMOE_FAILPOINT=NAME[:N][@RANK] arms the failpoint
// NAME: its N-th hit (default 1) in this process — on MPI rank RANK only, if given — acts:
// failpoint_kill raises SIGKILL (a crash with no cleanup), failpoint_throw throws um::Error.
// Unset in normal use; the check is one getenv per call at places that are not hot.
#pragma once

namespace um {

void failpoint_kill(const char* name);
void failpoint_throw(const char* name);

}  // namespace um
