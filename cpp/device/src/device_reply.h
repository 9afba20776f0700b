// cpp/device/src/device_reply.h: the reply to a request, checked as edgerun/device.py checks it
// (edgerun/device_checks.py check_reply): a valid frame for this bundle, a REPLY to this request
// id with one raw tensor per model output (its dtype, its shape, this batch) and server_us >= 0;
// an ERROR frame becomes the server's code and message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "device_bundle.h"

namespace edgerun_device {

constexpr size_t kMaxReplyBytes = 16u << 20;  // edgerun.wire.DEFAULT_MAX_FRAME_BYTES

struct Reply {
  uint64_t       request_id = 0;
  std::string    worker;
  double         server_ms = 0;
  nlohmann::json outputs = nlohmann::json::object();  // name -> {"dtype", "shape", "data" (flat, C order)}
  nlohmann::json timings = nlohmann::json::object();  // ms per stage, filled by the caller
};

// kExitServerError for an ERROR frame (its code and message; `resent`: copies sent after `stopping` replies,
// said with a last `stopping`), kExitBadReply for anything else that is not this request's answer.
Err check_reply(const DeviceBundle& b, const std::vector<uint8_t>& buf, uint64_t request_id, int64_t batch,
                Reply* out, int resent = 0);

// True when `buf` is an ERROR frame of the bundle (`hash16`) with code "stopping": the worker that had the request
// is stopping and did not run it, so the device sends it again (edgerun/device_checks.py is_stopping).
bool is_stopping(const uint8_t* hash16, const std::vector<uint8_t>& buf);

// "resent N x: a worker was stopping": what a reason adds about copies sent after `stopping` replies
// (edgerun/device_checks.py resent_note).
std::string resent_note(int resent);

// "tsq" or "none": what the frames of this run carry.
std::string front_codec_name(const DeviceBundle& b, const std::string& codec_flag);

}  // namespace edgerun_device
