// cpp/device/src/device_reply.cpp: reply checks (see device_reply.h).
#include "device_reply.h"

#include <cmath>
#include <cstring>

#include "edgerun/wire.h"

namespace edgerun_device {
namespace {

using json = nlohmann::json;
namespace wire = edgerun::wire;

const char* dtype_name(uint8_t code) {
  switch (code) {
    case 1: return "float32";
    case 2: return "float16";
    case 3: return "int8";
    case 4: return "uint8";
    case 5: return "int32";
    case 6: return "int64";
    default: return "?";
  }
}

template <typename T>
json values(const uint8_t* p, size_t n) {
  json arr = json::array();
  for (size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, p + i * sizeof(T), sizeof(T));
    arr.push_back(v);  // float: printed as the shortest text that reads back to the same float32
  }
  return arr;
}

Err bad_reply(const std::string& why) { return fail(kExitBadReply, "malformed reply: " + why); }

}  // namespace

std::string front_codec_name(const DeviceBundle& b, const std::string& codec_flag) {
  return (b.codec_id == "tsq" && codec_flag != "none") ? "tsq" : "none";
}

bool is_stopping(const uint8_t* hash16, const std::vector<uint8_t>& buf) {
  // Only an ERROR frame is decoded here (its kind is the header's byte 6): a reply is decoded once, later.
  if (hash16 == nullptr || buf.size() <= 6 || buf[6] != uint8_t(wire::Kind::kError)) return false;
  auto r = wire::decode(buf.data(), buf.size(), kMaxReplyBytes);
  if (!r.ok() || !wire::check_bundle(r.value(), hash16).ok()) return false;
  const wire::DecodedFrame& f = r.value();
  if (f.header.kind != uint8_t(wire::Kind::kError) || f.meta_len == 0) return false;
  const json meta = json::parse(f.meta, f.meta + f.meta_len, nullptr, false);
  return meta.is_object() && meta.value("code", json()) == json("stopping");
}

std::string resent_note(int resent) { return "resent " + std::to_string(resent) + "x: a worker was stopping"; }

Err check_reply(const DeviceBundle& b, const std::vector<uint8_t>& buf, uint64_t request_id, int64_t batch,
                Reply* out, int resent) {
  auto r = wire::decode(buf.data(), buf.size(), kMaxReplyBytes);
  if (!r.ok())
    return bad_reply(std::string(wire::code_name(r.status().code())) + ": " + r.status().message());
  const wire::DecodedFrame& f = r.value();
  if (!wire::check_bundle(f, b.hash16).ok())
    return bad_reply("it is for another bundle than " + b.topic_id);
  // The wire checked the meta is a JSON object; one nlohmann still cannot read (a number past double,
  // 1e400, which Python reads as inf) is refused, not taken as {} (server_us 0, code "unknown").
  json meta = json::object();
  if (f.meta_len > 0) meta = json::parse(f.meta, f.meta + f.meta_len, nullptr, false);
  if (!meta.is_object()) return bad_reply("its meta is not a JSON object this device can read");
  if (f.header.kind == uint8_t(wire::Kind::kError)) {
    // The server's words, whatever their JSON type: a number or a list here must not throw.
    const json c = meta.value("code", json("unknown")), m = meta.value("message", json(""));
    const std::string code = c.is_string() ? c.get<std::string>() : c.dump(), msg = m.is_string() ? m.get<std::string>() : m.dump();
    std::string hint;
    if (code == "wrong_bundle" || code == "bad_hash") hint = "; the server runs another bundle than " + b.topic_id;
    if (code == "bad_tensors") hint = "; device and server disagree on bundle " + b.topic_id;
    if (code == "stopping" && resent > 0)  // the copies ran out, or the deadline left no time for another
      hint = " (this device sent it " + std::to_string(resent + 1) + " times: each copy met a stopping worker)";
    return fail(kExitServerError, "the server refused the request (" + code + "): " + msg + hint);
  }
  if (f.header.kind != uint8_t(wire::Kind::kReply) || f.header.request_id != request_id)
    return bad_reply("the answer to request " + std::to_string(request_id) + " is a frame of kind " +
                     std::to_string(f.header.kind) + " for request " + std::to_string(f.header.request_id));
  if (f.n_tensors != b.outputs.size())
    return bad_reply("it carries " + std::to_string(f.n_tensors) + " tensors, the model has " +
                     std::to_string(b.outputs.size()) + " outputs");
  json outputs = json::object();
  for (size_t i = 0; i < b.outputs.size(); ++i) {
    const wire::TensorView& t = f.tensors[i];
    const Spec& s = b.outputs[i];
    bool ok = t.codec == uint8_t(wire::Codec::kRaw) && s.dtype == dtype_name(t.dtype) && t.ndim == s.shape.size() &&
              t.ndim > 0 && int64_t(t.dims[0]) == batch;
    json shape = json::array();
    for (size_t d = 0; d < t.ndim; ++d) {
      ok = ok && (s.shape[d] < 0 || s.shape[d] == int64_t(t.dims[d]));
      shape.push_back(t.dims[d]);
    }
    if (!ok)
      return bad_reply("its '" + s.name + "' is " + dtype_name(t.dtype) + " " + shape.dump() + "; the model gives " +
                       s.dtype + " with batch " + std::to_string(batch) +
                       ": the responder is not an `edgerun serve` for this bundle");
    const size_t n = t.payload_len / wire::dtype_size(t.dtype);
    json data;
    switch (t.dtype) {
      case 1: data = values<float>(t.payload, n); break;
      case 3: data = values<int8_t>(t.payload, n); break;
      case 4: data = values<uint8_t>(t.payload, n); break;
      case 5: data = values<int32_t>(t.payload, n); break;
      case 6: data = values<int64_t>(t.payload, n); break;
      default: return bad_reply("output '" + s.name + "' is float16, which this device does not print");
    }
    outputs[s.name] = {{"dtype", s.dtype}, {"shape", shape}, {"data", std::move(data)}};
  }
  const json us = meta.value("server_us", json(0));
  if (!us.is_number() || !(us.get<double>() >= 0) || !std::isfinite(us.get<double>()))
    return bad_reply("its server_us is " + us.dump() + ", not a number of microseconds >= 0");
  out->request_id = request_id;
  out->worker = meta.value("worker", json("")).is_string() ? meta.value("worker", std::string()) : "";
  out->server_ms = us.get<double>() / 1000.0;
  out->outputs = std::move(outputs);
  return Err::Ok();
}

}  // namespace edgerun_device
