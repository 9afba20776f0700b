// cpp/device/fuzz/fuzz_inputs.h: what the device fuzzer's parts share (device_fuzz.cpp: the mutation loops
// and the input builders; device_fuzz_known.cpp: the inputs found so far, each with the error it must give).
#pragma once

#include <cstdint>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "device_bundle.h"

namespace edgerun_fuzz {

using json = nlohmann::json;

extern std::mt19937_64 rng;  // seeded from the command line: a run is reproducible
extern long failures;        // bugs found
extern long accepted;        // inputs that passed every check (how deep the run went)

uint64_t rnd(uint64_t n);  // uniform in [0, n)
// Reports a bug (counted; the input printed on one line).
void bug(const std::string& what, const std::string& input);

// Runs f; an exception escaping it is a bug (a robot process would die on it).
template <typename F>
bool guarded(const char* area, const std::string& input, F f) {
  try {
    f();
    return true;
  } catch (const std::exception& e) {
    bug(std::string(area) + ": exception escaped: " + e.what(), input);
  } catch (...) {
    bug(std::string(area) + ": unknown exception escaped", input);
  }
  return false;
}

// Valid inputs to mutate (device_fuzz.cpp).
edgerun_device::DeviceBundle reply_bundle();  // the bundle the reply checks run against
std::vector<uint8_t> make_frame(const edgerun_device::DeviceBundle& b, uint8_t kind, uint64_t id,
                                const std::string& meta, int64_t batch);  // a REPLY / ERROR frame
void write_file(const std::string& path, const std::string& bytes);
json base_manifest(const std::string& front_bytes, const std::string& exit_bytes, bool exits, bool tsq);
std::string sealed(json m);  // the manifest text with its bundle_hash redone
std::string npy_file(const std::string& header_dict, const std::string& data, int major);

// The inputs the fuzzer found (and their neighbours), each checked for the error it must give
// (device_fuzz_known.cpp).
void known(const std::string& work);

}  // namespace edgerun_fuzz
