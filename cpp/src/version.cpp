#include "edgerun/version.h"

namespace edgerun {
const char* runtime_version() { return kRuntimeVersion; }
}  // namespace edgerun
