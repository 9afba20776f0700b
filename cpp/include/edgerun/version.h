// edgerun/version.h: versions of the runtime and of the formats it reads.
#pragma once
#include <cstdint>

namespace edgerun {
constexpr const char* kRuntimeVersion = "0.1.0";
const char* runtime_version();
}  // namespace edgerun
