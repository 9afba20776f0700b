// cpp/device/src/device.cpp: edgerun::Device (include/edgerun/device.h) over the device's parts:
// the bundle (device_bundle.h), the front half and its frame (device_front.h), early exits
// (device_exits.h, device_answer.h), the MQTT link (device_mqtt.h) and the reply checks (device_reply.h).
#include "edgerun/device.h"

#include <unistd.h>

#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdio>
#include <atomic>
#include <mutex>
#include <random>

#include <nlohmann/json.hpp>

#include "device_answer.h"
#include "device_bundle.h"
#include "device_exits.h"
#include "device_front.h"
#include "device_mqtt.h"
#include "device_npy.h"
#include "device_reply.h"

namespace edgerun {
namespace device {

using namespace edgerun_device;
using json = nlohmann::json;

namespace {

constexpr double kMaxDeadlineMs = 86400000.0;  // one day, as edgerun/device_checks.py

[[noreturn]] void raise(const Err& e) {
  switch (e.code) {
    case kExitUsage: throw ConfigError(e.message);
    case kExitBundle: throw BundleError(e.message);
    case kExitBroker: throw BrokerError(e.message);
    case kExitDeadline: throw DeadlineError(e.message);
    case kExitServerError: throw ServerError(e.message);
    case kExitBadReply: throw ReplyError(e.message);
    default: throw Error(kExitInternal, e.message);
  }
}
void must(const Err& e) {
  if (!e.ok()) raise(e);
}

bool segment_ok(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || std::string("._:@=-").find(c) != std::string::npos))
      return false;
  return true;
}

// edgerun.transport.model_segment: each character outside [A-Za-z0-9._:@=-] becomes '_' (a
// UTF-8 sequence is one character), at most 128.
std::string model_segment(const std::string& id) {
  std::string out;
  for (unsigned char c : id) {
    if ((c & 0xC0) == 0x80) continue;  // continuation byte of a character already replaced
    out += (c < 0x80 && segment_ok(std::string(1, char(c)))) ? char(c) : '_';
  }
  return out.substr(0, 128);
}

std::string default_device_id() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  std::string h;
  for (char c : std::string(host))
    h += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-') ? c : '-';
  h = h.substr(0, 40);
  if (h.empty()) h = "host";
  char rnd[8];
  std::snprintf(rnd, sizeof(rnd), "%04x", unsigned(std::random_device{}() & 0xFFFF));
  return "device-" + h + "-" + std::to_string(getpid()) + "-" + rnd;
}

double ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

// The answer as device_answer.cpp / device_reply.cpp give it (JSON) -> Result.
Result to_result(const json& j, int64_t batch) {
  Result r;
  r.answered_by = j.value("answered_by", "server");
  r.reason = j.value("reason", "server replied");
  r.request_id = j.value("request_id", uint64_t(0));
  r.worker = j.value("worker", "");
  r.batch = batch;
  for (const auto& kv : j["timings_ms"].items()) r.timings_ms[kv.key()] = kv.value().get<double>();
  r.bytes_sent = j.value("bytes_sent", size_t(0));
  r.bytes_received = j.value("bytes_received", size_t(0));
  r.front_compute_fraction = j.value("front_compute_fraction", 1.0);
  r.hedged = j.value("hedged", false);
  r.resent = j.value("resent", 0);
  for (const auto& kv : j["outputs"].items()) {
    Tensor t;
    t.dtype = kv.value()["dtype"].get<std::string>();
    t.shape = kv.value()["shape"].get<std::vector<int64_t>>();
    if (t.dtype == "float32") t.data = kv.value()["data"].get<std::vector<float>>();
    else t.ints = kv.value()["data"].get<std::vector<int64_t>>();
    r.outputs[kv.key()] = std::move(t);
  }
  return r;
}

// The inputs as the device's parts take them. Only `data` is read: an input with another dtype (its
// values in `ints`) would be sent as the empty or stale float values beside them.
std::map<std::string, Array> to_arrays(const Tensors& in) {
  std::map<std::string, Array> out;
  for (const auto& kv : in) {
    if (kv.second.dtype != "float32")
      throw ConfigError("input '" + kv.first + "' has dtype " + kv.second.dtype + ": the C++ device takes float32 "
                        "inputs; convert the values to float and give them in Tensor::data (dtype float32)");
    out[kv.first] = Array{kv.second.shape, kv.second.data};
  }
  return out;
}

}  // namespace

Tensor load_npy(const std::string& path) {
  Array a;
  must(read_npy(path, &a));
  Tensor t;
  t.shape = std::move(a.shape);
  t.data = std::move(a.data);
  return t;
}

struct Device::Impl {
  Options      opt;
  DeviceBundle b;
  Exits        exits;
  Front        front;
  BrokerUrl    url;
  MqttLink     link;
  ServerLink   server;  // the link as the requests with exits see it
  bool         connected_once = false;
  std::string  device_id;
  std::atomic<uint64_t> next_id{0};
  std::mutex   mu;  // connect / request_frame; infer's turns are server.compute (device_answer.h)
  // infer calls under way: ~Device (a node shut down while its timer thread waits for a reply) ends their
  // waits and lets them return before anything is destroyed (it freed the link under them: a double free).
  std::mutex              life_mu;
  std::condition_variable life_cv;
  int                     in_flight = 0;
  bool                    closing = false;

  // One infer call under way (in_flight).
  class Call {
   public:
    explicit Call(Impl& d) : d_(d) {
      std::lock_guard<std::mutex> g(d_.life_mu);
      if (d_.closing) throw BrokerError("infer on a device being destroyed: nothing was sent");
      ++d_.in_flight;
    }
    ~Call() {
      std::lock_guard<std::mutex> g(d_.life_mu);
      --d_.in_flight;
      d_.life_cv.notify_all();
    }
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;

   private:
    Impl& d_;
  };

  std::string presence_body(const char* status) const {
    double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    return json{{"status", status}, {"role", "device"}, {"id", device_id}, {"pid", getpid()}, {"time", now},
                {"bundle", b.hash}, {"engine", "native"}}.dump();
  }

  // One request without exits: front half, frame, publish, wait, check (the server answers or it is an error).
  Result ask_server(const std::map<std::string, Array>& inputs, int64_t batch, double deadline_ms) {
    if (server.mqtt == nullptr)
      throw BrokerError("this device has no broker (connect() first); nothing was sent");
    if (!link.up()) {  // the reason from a lost connection says "reconnecting in the background" already
      const std::string why = link.down_reason();
      throw BrokerError(why + "; nothing was sent" + (why.find("in the background") == std::string::npos
                                                          ? " (the device reconnects in the background)" : ""));
    }
    const Clock::time_point t0 = Clock::now();
    const Clock::time_point until = t0 + std::chrono::microseconds(int64_t(deadline_ms * 1000.0));
    std::unique_lock<std::mutex> compute(server.compute);  // front half and frame take turns
    must(front.run(inputs, batch));
    const Clock::time_point t1 = Clock::now();
    const uint64_t id = next_id++;
    std::vector<uint8_t> frame, payload;
    must(front.encode(id, &frame));
    compute.unlock();  // the wait overlaps other requests'
    const Clock::time_point t2 = Clock::now();
    const uint32_t expiry_s = uint32_t(std::ceil(deadline_ms / 1000.0));
    must(link.publish_request(server.req_topic, frame, server.resp_topic, id, expiry_s));
    Awaited aw;
    must(await_reply(server, frame, id, t2, until, expiry_s, [this] { return next_id++; }, &payload, &aw));
    if (!aw.got) {
      char dl[32], rt[32];
      std::snprintf(dl, sizeof(dl), "%g", deadline_ms);
      double rtt;
      {
        std::lock_guard<std::mutex> g(server.state);
        rtt = server.rtt_ms;
      }
      std::snprintf(rt, sizeof(rt), "%.1f", rtt);
      const std::string msg = "no reply within " + std::string(dl) + " ms" +
                              (aw.copies - aw.resent > 1 ? " (sent twice)" : "") +
                              (aw.resent > 0 ? " (" + resent_note(aw.resent) + ")" : "") +
                              " from a server for bundle " + b.topic_id + " (model " + b.model_id + ") at " + url.text;
      if (rtt > 0.5 * deadline_ms)  // edgerun/device.py: the late replies say the server is up, only slower
        throw DeadlineError(msg + "; round trips to the server have taken ~" + rt + " ms: give a longer deadline "
                                  "(--deadline-ms)");
      throw DeadlineError(msg + ": is `edgerun serve BUNDLE --broker " + url.text +
                          "` running on this bundle? (or give a longer --deadline-ms)");
    }
    observe_rtt(server, ms(aw.t_sent, aw.t_recv));  // a reply came (its answer may still be an error)
    Reply reply;
    must(check_reply(b, payload, aw.replied, batch, &reply, aw.resent));
    const Clock::time_point t3 = Clock::now();
    const double rtt = ms(aw.t_sent, aw.t_recv), srv = reply.server_ms;
    const std::string why = "server replied" + (aw.resent > 0 ? " (" + resent_note(aw.resent) + ")" : std::string());
    json j = {{"answered_by", "server"}, {"reason", why}, {"request_id", reply.request_id},
              {"worker", reply.worker}, {"outputs", reply.outputs},
              {"timings_ms", {{"front", ms(t0, t1)}, {"encode", ms(t1, t2)}, {"round_trip", rtt}, {"server", srv},
                              {"network", std::max(rtt - srv, 0.0)}, {"decode", ms(aw.t_recv, t3)},
                              {"total", ms(t0, t3)}}},
              {"bytes_sent", frame.size() * size_t(aw.copies)}, {"bytes_received", payload.size()},
              {"hedged", aw.copies - aw.resent > 1}, {"resent", aw.resent}};
    return to_result(j, batch);
  }
};

Device::Device(const std::string& bundle_dir, const std::string& broker_url, const Options& options)
    : impl_(new Impl) {
  Impl& d = *impl_;
  d.opt = options;
  const Options& o = d.opt;
  if (!(o.deadline_ms > 0 && o.deadline_ms <= kMaxDeadlineMs))
    throw ConfigError("deadline_ms must be a number of ms > 0, at most 86400000");
  if (o.threads < 1 || o.threads > 256) throw ConfigError("threads must be in 1..256");
  if (o.connect_timeout_ms < 1) throw ConfigError("connect_timeout_ms must be a number of ms > 0 (default 5000)");
  if (o.max_batch < 1 || o.max_batch > 4096) throw ConfigError("max_batch must be in 1..4096");
  if (!(o.hedge_ms >= 0 && o.hedge_ms <= kMaxDeadlineMs))
    throw ConfigError("hedge_ms must be a number of ms > 0 (0 = never resend)");
  d.server.hedge_ms = o.hedge_ms;
  if (!o.device_id.empty() && !segment_ok(o.device_id))
    throw ConfigError("device id " + o.device_id + " cannot be used in an MQTT topic: use 1-128 characters "
                      "from letters, digits and . _ : @ = -");
  if (!o.codec.empty() && o.codec != "none" && o.codec != "tsq")
    throw ConfigError("codec " + o.codec + ": leave it out for the bundle's codec, or none for raw float32");
  must(load_bundle(bundle_dir, &d.b));
  d.server.hash16 = d.b.hash16;  // a `stopping` reply must be for this bundle
  if (!d.b.has_exits && !o.budget.empty())
    throw ConfigError("--budget " + o.budget + " needs a bundle with early exits; " + d.b.dir +
                      " has none (re-export with `edgerun export ... --exits auto`)");
  if (d.b.has_exits) must(d.exits.load(d.b, o.budget, int32_t(o.max_batch), int32_t(o.threads)));
  must(d.front.load(d.b, int32_t(o.max_batch), int32_t(o.threads), o.codec, !d.b.has_exits));
  // Request ids start at a random 62-bit value (docs/TOPICS.md): a restarted device does not take a
  // late reply meant for its previous run.
  std::mt19937_64 rng(std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32));
  d.next_id = o.first_request_id != 0 ? o.first_request_id : (rng() >> 2) + 1;
  d.device_id = o.device_id.empty() ? default_device_id() : o.device_id;
  if (!broker_url.empty()) connect(broker_url);
}

Device::~Device() {
  {
    std::lock_guard<std::mutex> g(impl_->life_mu);
    impl_->closing = true;
  }
  impl_->link.close();  // a call awaiting its reply ends now (BrokerError, or with exits the deepest exit's answer)
  std::unique_lock<std::mutex> lk(impl_->life_mu);
  impl_->life_cv.wait(lk, [this] { return impl_->in_flight == 0; });
}

void Device::connect(const std::string& broker_url) {
  Impl& d = *impl_;
  std::lock_guard<std::mutex> g(d.mu);
  if (d.connected_once) throw ConfigError("this device is connected already");
  must(parse_broker_url(broker_url, &d.url));
  const std::string base = "edgerun/v1/" + model_segment(d.b.model_id) + "/" + d.b.topic_id;
  d.server.req_topic = base + "/req/" + d.device_id;
  d.server.resp_topic = base + "/resp/" + d.device_id;
  const std::string presence = base + "/presence/device/" + d.device_id, online = d.presence_body("online");
  const int t = d.opt.connect_timeout_ms;
  Err e = d.link.connect(d.url, "edgerun-" + d.device_id, presence, online, d.presence_body("offline"), t);
  if (e.ok()) e = d.link.subscribe(d.server.resp_topic, t);
  // Without exits a broker that cannot be reached is an error; with exits they answer meanwhile.
  if (!e.ok() && !(d.b.has_exits && e.code == kExitBroker)) {
    d.link.reset();  // nothing of the failed try stays open (connect() may be called again)
    raise(e);
  }
  d.connected_once = true;
  d.server.mqtt = &d.link;
  d.link.on_late_reply([&s = d.server](double rtt_ms) { observe_rtt(s, rtt_ms); });
  must(d.link.start_background(d.server.resp_topic, online, e.message));
}

Result Device::infer(const Tensors& inputs, double deadline_ms) {
  Impl& d = *impl_;
  const Impl::Call call(d);
  // 0 (the default argument) is the options' deadline. A negative one is refused, as edgerun.Device does: a
  // deadline computed as "next tick - now" is negative once the loop runs late, and it waited the default 5 s.
  if (deadline_ms < 0 || std::isnan(deadline_ms)) {
    char v[32];
    std::snprintf(v, sizeof(v), "%g", deadline_ms);
    throw ConfigError("deadline_ms " + std::string(v) + " is not a number of ms > 0: give one "
                      "(0: the device's default, Options::deadline_ms); a loop that runs late must skip the tick "
                      "or give it a deadline of its own");
  }
  if (deadline_ms == 0) deadline_ms = d.opt.deadline_ms;
  if (!(deadline_ms <= kMaxDeadlineMs))
    throw ConfigError("deadline_ms must be a number of ms > 0, at most 86400000");
  const std::map<std::string, Array> arrays = to_arrays(inputs);
  int64_t batch = 0;
  must(d.front.check_inputs(arrays, &batch));
  if (!d.b.has_exits) return d.ask_server(arrays, batch, deadline_ms);
  json out;
  must(answer_with_exits(d.b, d.exits, d.front, d.server, arrays, batch, deadline_ms, [&d] { return d.next_id++; },
                         &out));
  return to_result(out, batch);
}

int64_t Device::check(const Tensors& inputs) const {
  int64_t batch = 0;
  must(impl_->front.check_inputs(to_arrays(inputs), &batch));
  return batch;
}

std::vector<uint8_t> Device::request_frame(const Tensors& inputs, uint64_t request_id) {
  Impl& d = *impl_;
  std::lock_guard<std::mutex> g(d.server.compute);
  const std::map<std::string, Array> arrays = to_arrays(inputs);
  int64_t batch = 0;
  must(d.front.check_inputs(arrays, &batch));
  if (d.b.has_exits) {  // every segment, to the cut
    edgerun_device::Step step;
    must(d.exits.run(arrays, batch, &step, false));
    must(d.front.set_cut(d.exits.cut(step, arrays)));
  } else {
    must(d.front.run(arrays, batch));
  }
  std::vector<uint8_t> frame;
  must(d.front.encode(request_id, &frame));
  return frame;
}

std::vector<std::string> Device::input_names() const {
  std::vector<std::string> names;
  for (const Spec& s : impl_->b.inputs) names.push_back(s.name);
  return names;
}
bool Device::has_exits() const { return impl_->b.has_exits; }
std::string Device::budget() const { return impl_->b.has_exits ? impl_->exits.budget() : ""; }
std::string Device::codec() const { return front_codec_name(impl_->b, impl_->opt.codec); }
bool Device::server_reachable() const { return impl_->server.mqtt != nullptr && impl_->link.up(); }
std::string Device::unreachable_reason() const {
  if (impl_->server.mqtt == nullptr) return "no broker";
  return impl_->link.up() ? "" : impl_->link.down_reason();
}
uint64_t Device::dropped_replies() const { return impl_->link.dropped_replies(); }
uint64_t Device::hedged() const { return impl_->server.hedged.load(); }
uint64_t Device::resent() const { return impl_->server.resent.load(); }

}  // namespace device
}  // namespace edgerun
