// cpp/device/src/device_front.h: the device's half of a request: the front half on the native engine
// (front.erg, mmapped by edgerun::Engine) and the REQUEST frame of what crosses the cut, built as
// edgerun/device.py builds it (raw float32, or the bundle's tsq codec; meta empty; seq 0).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "device_bundle.h"
#include "device_npy.h"
#include "edgerun/codec.h"
#include "edgerun/engine.h"

namespace edgerun_device {

class Front {
 public:
  // Loads front.erg for batches of up to max_batch (larger ones run in slices, as the Python device
  // does) and checks that it takes the bundle's inputs and gives its cut. kExitBundle otherwise.
  // codec: "" = the bundle's; "none" = raw float32 even for a bundle with a codec.
  // with_engine false: no front.erg (a bundle with exits runs its segments, device_exits.h, and
  // hands the cut to set_cut).
  Err load(const DeviceBundle& b, int32_t max_batch, int32_t threads, const std::string& codec,
           bool with_engine = true);

  // The cut tensors by name (every one of the bundle's cut), for encode(); checked finite.
  Err set_cut(const std::map<std::string, const Array*>& by_name);

  // Checks the inputs (by model input name) against the bundle: shapes, one batch size, finite
  // values. kExitUsage with what to do.
  Err check_inputs(const std::map<std::string, Array>& inputs, int64_t* batch) const;

  // Runs the front half on the inputs and fills cut_ (one array per cut tensor, in cut order).
  Err run(const std::map<std::string, Array>& inputs, int64_t batch);

  // Encodes the cut of the last run() as a REQUEST frame into *frame.
  Err encode(uint64_t request_id, std::vector<uint8_t>* frame);

 private:
  Err load_engine(int32_t max_batch, int32_t threads);
  Err load_codec(const std::string& codec);

  const DeviceBundle*                    b_ = nullptr;
  std::unique_ptr<edgerun::Engine>       engine_;
  std::vector<std::string>               engine_inputs_;  // model input name per engine input
  std::vector<int>                       cut_source_;     // per cut tensor: engine output index, or -1 - model input
  bool                                   tsq_ = false;
  std::vector<edgerun::codec::TsqParams> params_;         // per cut tensor (tsq)
  std::vector<Array>                     cut_;
  std::vector<std::vector<uint8_t>>      coded_;          // tsq payloads, kept across requests
};

}  // namespace edgerun_device
