// cpp/device/src/device_npy.h: reads a .npy file (numpy's format, versions 1-3) holding float32,
// C order, batch first: what the C++ device takes as a model input.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "device_common.h"

namespace edgerun_device {

struct Array {
  std::vector<int64_t> shape;
  std::vector<float>   data;
};

// kExitUsage with what to do: not a .npy file, another dtype than little-endian float32
// (convert with x.astype(np.float32)), Fortran order, a scalar, or fewer bytes than the shape says.
Err read_npy(const std::string& path, Array* out);

}  // namespace edgerun_device
