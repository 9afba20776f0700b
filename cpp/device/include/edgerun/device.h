// edgerun/device.h: the C++ device as a library (target edgerun_device_client): what
// edgerun/device.py's Device does, for a C++ program such as a robot's control loop.
//
//   edgerun::device::Options opt;                       // budget, threads, max batch, device id, deadline
//   edgerun::device::Device dev("bundles/digits", "mqtt://127.0.0.1:1883", opt);   // once
//   edgerun::device::Result r = dev.infer({{"image", x}}, 20.0);                   // every tick
//   r.answered_by;  // "server" or "exit:<i>" (early exits), r.reason says why
//
// The front half runs here on the native engine; what crosses the cut goes to `edgerun serve` over
// MQTT 5 (mqtts:// for TLS). The broker connection lives in a background thread that reconnects
// after the broker goes away (1 s, backing off to 4 s) and re-subscribes: while it is down a bundle
// with early exits answers from its deepest exit, a bundle without throws BrokerError at once
// (nothing is sent); once it is back, requests reach the server again. infer may be called from
// several threads, as the Python Device's: their front-half runs take turns, their waits for the
// server overlap.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgerun {
namespace device {

// A tensor, C order, batch first. Model inputs and float outputs: float32 in `data`; an integer
// output (int8 / uint8 / int32 / int64) has its values in `ints` instead.
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float>   data;
  std::string          dtype = "float32";
  std::vector<int64_t> ints;
};
using Tensors = std::map<std::string, Tensor>;  // by the model's input / output name

// Reads a .npy file (little-endian float32, C order). Throws ConfigError saying what to do.
Tensor load_npy(const std::string& path);

struct Options {
  std::string budget;            // early exits: "" = the bundle's default, "off" = no confident exits
  int         threads = 1;       // for the front half
  int         max_batch = 8;
  std::string device_id;         // "" = device-<host>-<pid>-<random>; its MQTT topics use it
  double      deadline_ms = 5000;  // infer's default
  std::string codec;             // "" = the bundle's, "none" = raw float32 frames
  uint64_t    first_request_id = 0;  // 0 = random (docs/TOPICS.md)
  int         connect_timeout_ms = 5000;
  double      hedge_ms = 0;        // > 0: no reply this many ms after a request, it goes once more (under a
                                   // new id: the shared subscription hands it to the next worker); the first
                                   // reply wins. 0 = never (edgerun.Device's hedge_ms)
};

struct Result {
  Tensors     outputs;
  std::string answered_by;   // "server" | "exit:<i>"
  std::string reason;        // "server replied", "confident: ...", "server unreachable: ...", "deadline: ...",
                             // "server error: ..." (with exits: the server's error answered on the device)
  uint64_t    request_id = 0;  // 0: answered before anything was sent
  std::string worker;          // the server worker that answered ("" on the device)
  int64_t     batch = 0;
  std::map<std::string, double> timings_ms;  // front, encode, round_trip, server, network, decode, total
                                             // (on the device: device, waited, total)
  size_t      bytes_sent = 0, bytes_received = 0;
  double      front_compute_fraction = 1;    // bundles with exits: front compute spent
  bool        hedged = false;                // the request went out twice (Options::hedge_ms)
  int         resent = 0;                    // sent again because the worker that had it answered `stopping`
                                             // (it did not run it: a rolling restart), at most 2 times
  bool local() const { return answered_by != "server"; }
};

// Errors. code() is the edgerun_device program's exit code for it (README.md, "C++ device").
class Error : public std::runtime_error {
 public:
  Error(int code, const std::string& what) : std::runtime_error(what), code_(code) {}
  int code() const { return code_; }
 private:
  int code_;
};
#define EDGERUN_DEVICE_ERROR(Name, code_)                                  \
  struct Name : Error {                                                    \
    explicit Name(const std::string& what) : Error(code_, what) {}         \
  };
EDGERUN_DEVICE_ERROR(ConfigError, 2)    // bad options or inputs
EDGERUN_DEVICE_ERROR(BundleError, 3)    // a bundle this device cannot run
EDGERUN_DEVICE_ERROR(BrokerError, 4)    // the broker cannot be reached / was lost (no exits to answer)
EDGERUN_DEVICE_ERROR(DeadlineError, 5)  // no reply by the deadline (no exits to answer)
EDGERUN_DEVICE_ERROR(ServerError, 6)    // the server answered with an error (without exits)
EDGERUN_DEVICE_ERROR(ReplyError, 7)     // a malformed reply (without exits)
#undef EDGERUN_DEVICE_ERROR

class Device {
 public:
  // Loads the bundle (its front half, its exits) and, when broker_url is given, connects
  // (connect()). An empty broker_url: an offline device (request_frame(), then connect()).
  Device(const std::string& bundle_dir, const std::string& broker_url, const Options& options = {});
  // Clears its presence and disconnects. An infer call waiting for its reply on another thread ends
  // (BrokerError; with exits the deepest exit answers) and returns before the device is gone; a call
  // begun after the destructor began is the caller's bug (BrokerError at best).
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  // Connects to the broker (mqtt://[USER:PASSWORD@]HOST[:1883], mqtts://...?ca=CA.pem[&cert=&key=]),
  // with a retained presence and an "offline" last will (docs/TOPICS.md). Without exits a broker that
  // cannot be reached throws BrokerError, and connect() may be called again (a retry loop keeps
  // nothing open); with exits the device answers locally until it connects (and connects itself).
  // Call it before infer is called from other threads.
  void connect(const std::string& broker_url);

  // One request, batch first (every input the same batch size, at most max_batch).
  // deadline_ms 0: the options' default; below 0 (a tick already late) or NaN: ConfigError.
  Result infer(const Tensors& inputs, double deadline_ms = 0);

  // Checks the inputs (ConfigError saying what is wrong); returns the batch size.
  int64_t check(const Tensors& inputs) const;
  // The REQUEST frame infer would send for these inputs (no broker needed).
  std::vector<uint8_t> request_frame(const Tensors& inputs, uint64_t request_id);

  std::vector<std::string> input_names() const;
  bool has_exits() const;
  std::string budget() const;  // "" without exits
  std::string codec() const;   // "tsq" or "none": what the frames carry
  bool server_reachable() const;          // the broker connection is up
  std::string unreachable_reason() const;  // why not ("" when it is)
  uint64_t dropped_replies() const;       // late / unknown replies dropped
  uint64_t hedged() const;                // requests sent a second time (Options::hedge_ms)
  uint64_t resent() const;                // copies sent because a worker answered `stopping` (docs/TOPICS.md)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace device
}  // namespace edgerun
