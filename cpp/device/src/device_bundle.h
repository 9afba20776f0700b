// cpp/device/src/device_bundle.h: what the C++ device reads from a bundle directory (docs/BUNDLE.md):
// the manifest, checked as edgerun/bundle.py checks it (format, version, its own hash), and the
// front half's file, checked against its sha256.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "device_common.h"

namespace edgerun_device {

// A tensor of the manifest ("inputs", "outputs", "split.tensors"); shape[i] == -1: the batch dim.
struct Spec {
  std::string          name;
  std::vector<int64_t> shape;
  std::string          dtype;  // numpy's name: "float32", "int64", ...
};

struct DeviceBundle {
  std::string       dir;
  std::string       model_id;
  std::string       hash;            // the bundle hash, 64 hex characters
  std::string       topic_id;        // its first 16 bytes as 32 hex characters (the MQTT topics)
  uint8_t           hash16[16] = {}; // the same 16 bytes, raw (every wire frame)
  std::vector<Spec> inputs, outputs, cut;
  std::string       codec_id = "none";                       // "none" or "tsq"
  std::map<std::string, std::vector<uint8_t>> codec_params;  // cut tensor -> tsq params record
  bool              has_exits = false;                       // manifest "exits" has points
  nlohmann::json    exits = nlohmann::json::object();        // the manifest's exits entry (device_exits.h)
  nlohmann::json    files = nlohmann::json::object();        // file name -> {"bytes", "sha256"}
  std::string       front_path;      // front.erg
};

// Loads and checks the bundle in `dir`. Refuses (kExitBundle, with what to do) a missing directory
// or manifest, an archive (extract it first), another format, an unknown version, an edited manifest,
// a front half the native engine cannot run, a missing or altered front.erg, an unknown codec.
Err load_bundle(const std::string& dir, DeviceBundle* out);

// sha256 of bytes / of a file, as lowercase hex ("" when the file cannot be read).
std::string sha256_hex(const void* data, size_t n);
std::string sha256_file(const std::string& path);

}  // namespace edgerun_device
