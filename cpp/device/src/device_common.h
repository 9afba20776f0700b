// cpp/device/src/device_common.h: what the C++-only device program's parts share: its exit codes
// and an error value (the program reports an error and exits; the core's Status stays inside).
#pragma once

#include <string>

namespace edgerun_device {

// ============================================================================
// Exit codes (documented in README.md, "C++ device"; never renumber)
// ============================================================================
enum Exit : int {
  kExitOk          = 0,
  kExitInternal    = 1,  // a bug in edgerun
  kExitUsage       = 2,  // bad arguments or input files (.npy)
  kExitBundle      = 3,  // a bundle this program cannot run (missing, altered, no native front, ...)
  kExitBroker      = 4,  // the broker cannot be reached, or was lost
  kExitDeadline    = 5,  // no reply within --deadline-ms (no server for this bundle?)
  kExitServerError = 6,  // the server answered with an ERROR frame
  kExitBadReply    = 7,  // the reply is not a valid answer for this bundle
};

// An error as a value: the exit code it ends the program with and a message saying what to do.
struct Err {
  Exit        code = kExitOk;
  std::string message;
  bool ok() const { return code == kExitOk; }
  static Err Ok() { return Err{}; }
};

inline Err fail(Exit code, std::string message) { return Err{code, std::move(message)}; }

}  // namespace edgerun_device
