// cpp/examples/device_main.cpp: edgerun_device, a C++-only device program (no Python on the device).
// It does what edgerun/device.py does: the front half on the native engine, the crossing tensors in
// a REQUEST frame to `edgerun serve` over MQTT 5 (TLS for mqtts://), the reply checked and printed
// as JSON (outputs + per-stage timings); a bundle with early exits answers from its exit heads when
// one is confident, the broker is unreachable or the deadline is near (device_answer.h). Usage, output and exit codes: README.md,
// "C++ device". Build: cmake -DEDGERUN_EXAMPLES=ON (needs libmosquitto-dev, nlohmann-json3-dev,
// libssl-dev).
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "device_answer.h"
#include "device_bundle.h"
#include "device_exits.h"
#include "device_front.h"
#include "device_mqtt.h"
#include "device_npy.h"
#include "device_reply.h"

using namespace edgerun_device;
using json = nlohmann::json;

namespace {

constexpr double kMaxDeadlineMs = 86400000.0;  // one day, as edgerun/device_checks.py
constexpr int    kConnectTimeoutMs = 5000;

const char* kUsage =
    "usage: edgerun_device BUNDLE_DIR --broker URL --input [NAME=]FILE.npy ...\n"
    "         [--deadline-ms 5000] [--repeat 1] [--warmup 0] [--threads 1] [--max-batch 8]\n"
    "         [--device-id ID] [--codec none] [--request-id N] [--dump-frame FILE] [--budget NAME|off]\n"
    "Runs the bundle's front half here, the back half on `edgerun serve`, prints the outputs as JSON.\n"
    "URL: mqtt://[USER:PASSWORD@]HOST[:1883], or with TLS\n"
    "     mqtts://[USER:PASSWORD@]HOST[:8883][?ca=CA.pem][&cert=CLIENT.pem&key=CLIENT.key]\n"
    "exit codes: 0 ok, 1 internal, 2 usage/input, 3 bundle, 4 broker, 5 deadline (no reply),\n"
    "            6 the server answered with an error, 7 malformed reply\n";

struct Args {
  std::string bundle, broker, device_id, codec, dump_frame, budget;
  std::vector<std::string> inputs;
  double deadline_ms = 5000;
  long repeat = 1, warmup = 0, threads = 1, max_batch = 8;
  bool have_request_id = false;
  uint64_t request_id = 0;
};

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

Err parse_args(int argc, char** argv, Args* a) {
  auto need = [&](int& i) -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
  auto number = [](const char* s, double* v) { char* e = nullptr; *v = std::strtod(s, &e); return e && *e == 0 && e != s; };
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    if (f == "-h" || f == "--help") { std::fputs(kUsage, stdout); std::exit(0); }
    if (f.rfind("--", 0) != 0) {
      if (!a->bundle.empty()) return fail(kExitUsage, "one bundle directory only (got " + a->bundle + " and " + f + ")");
      a->bundle = f;
      continue;
    }
    const char* v = need(i);
    if (v == nullptr) return fail(kExitUsage, f + " needs a value");
    double x = 0;
    if (f == "--broker") a->broker = v;
    else if (f == "--input") a->inputs.push_back(v);
    else if (f == "--device-id") a->device_id = v;
    else if (f == "--codec") a->codec = v;
    else if (f == "--dump-frame") a->dump_frame = v;
    else if (f == "--budget") a->budget = v;
    else if (f == "--deadline-ms") {
      if (!number(v, &x) || !(x > 0 && x <= kMaxDeadlineMs))
        return fail(kExitUsage, "--deadline-ms " + std::string(v) + " must be a number of ms > 0, at most 86400000");
      a->deadline_ms = x;
    } else if (f == "--request-id") {
      char* e = nullptr;
      a->request_id = std::strtoull(v, &e, 10);
      if (!e || *e || e == v) return fail(kExitUsage, "--request-id must be an unsigned 64-bit integer");
      a->have_request_id = true;
    } else if (f == "--repeat" || f == "--warmup" || f == "--threads" || f == "--max-batch") {
      long lo = (f == "--warmup") ? 0 : 1, hi = (f == "--threads") ? 256 : (f == "--max-batch" ? 4096 : 1000000);
      if (!number(v, &x) || x != std::floor(x) || x < lo || x > hi)
        return fail(kExitUsage, f + " " + v + " must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
      (f == "--repeat" ? a->repeat : f == "--warmup" ? a->warmup : f == "--threads" ? a->threads : a->max_batch) = long(x);
    } else {
      return fail(kExitUsage, "unknown option " + f + "\n" + kUsage);
    }
  }
  if (a->bundle.empty()) return fail(kExitUsage, std::string("give the bundle directory\n") + kUsage);
  if (a->inputs.empty()) return fail(kExitUsage, "give the input: --input FILE.npy (several inputs: --input NAME=FILE.npy each)");
  if (a->broker.empty() && a->dump_frame.empty()) return fail(kExitUsage, "give the broker: --broker mqtt://HOST:PORT (or mqtts://HOST:PORT?ca=CA.pem for TLS)");
  if (!a->device_id.empty() && !segment_ok(a->device_id))
    return fail(kExitUsage, "--device-id " + a->device_id + " cannot be used in an MQTT topic: use 1-128 characters "
                            "from letters, digits and . _ : @ = -");
  if (!a->codec.empty() && a->codec != "none" && a->codec != "tsq")
    return fail(kExitUsage, "--codec " + a->codec + ": leave it out for the bundle's codec, or none for raw float32");
  return Err::Ok();
}

Err read_inputs(const Args& a, const DeviceBundle& b, std::map<std::string, Array>* out) {
  for (const std::string& item : a.inputs) {
    size_t eq = item.find('=');
    std::string name, path = item;
    if (eq != std::string::npos) { name = item.substr(0, eq); path = item.substr(eq + 1); }
    else if (b.inputs.size() == 1) name = b.inputs[0].name;
    else {
      std::string names;
      for (const Spec& s : b.inputs) names += (names.empty() ? "" : ", ") + s.name;
      return fail(kExitUsage, "this bundle takes " + std::to_string(b.inputs.size()) + " inputs (" + names +
                              "): give each as --input NAME=FILE.npy");
    }
    if (out->count(name)) return fail(kExitUsage, "input '" + name + "' given twice");
    Array arr;
    Err e = read_npy(path, &arr);
    if (!e.ok()) return e;
    (*out)[name] = std::move(arr);
  }
  for (const auto& kv : *out) {
    bool known = false;
    for (const Spec& s : b.inputs) known = known || s.name == kv.first;
    if (!known) return fail(kExitUsage, "the bundle has no input named '" + kv.first + "'");
  }
  return Err::Ok();
}

double ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

json summary(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  auto pct = [&](double q) { return v[std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5))]; };
  return json{{"mean", sum / double(v.size())}, {"p50", pct(0.5)}, {"p90", pct(0.9)}, {"p99", pct(0.99)},
              {"min", v.front()}, {"max", v.back()}};
}

// Per-request results of a run: the last request's reply and timings, each timed request's stages.
struct Run {
  Reply                reply;
  std::vector<double>  total, front, encode, rtt, server;
  std::vector<uint8_t> payload;  // the last reply frame
  size_t               bytes_sent = 0;
};

// --warmup + --repeat requests, one after another: front half, frame, publish, wait, check.
Err request_loop(const Args& a, const DeviceBundle& b, const BrokerUrl& url, const std::string& req_topic,
                 const std::string& resp_topic, Front& front, MqttLink& link,
                 const std::map<std::string, Array>& inputs, int64_t batch, uint64_t next_id, Run* run) {
  const uint32_t expiry_s = uint32_t(std::ceil(a.deadline_ms / 1000.0));  // stale requests die in the broker
  std::vector<uint8_t> frame;
  Err e;
  for (long i = 0; i < a.warmup + a.repeat; ++i) {
    const Clock::time_point t0 = Clock::now();
    const Clock::time_point until = t0 + std::chrono::microseconds(int64_t(a.deadline_ms * 1000.0));
    if (!(e = front.run(inputs, batch)).ok()) return e;
    const Clock::time_point t1 = Clock::now();
    const uint64_t id = next_id++;
    if (!(e = front.encode(id, &frame)).ok()) return e;
    const Clock::time_point t2 = Clock::now();
    if (!(e = link.publish_request(req_topic, frame, resp_topic, id, expiry_s)).ok()) return e;
    Clock::time_point t_recv;
    bool got = false;
    if (!(e = link.wait_reply(id, until, &run->payload, &t_recv, &got)).ok()) return e;
    if (!got) {
      char dl[32];
      std::snprintf(dl, sizeof(dl), "%g", a.deadline_ms);
      return fail(kExitDeadline, "no reply within " + std::string(dl) + " ms from a server for bundle " + b.topic_id +
                                 " (model " + b.model_id + ") at " + url.text + ": is `edgerun serve BUNDLE --broker " +
                                 url.text + "` running on this bundle? (or give a longer --deadline-ms)");
    }
    if (!(e = check_reply(b, run->payload, id, batch, &run->reply)).ok()) return e;
    const Clock::time_point t3 = Clock::now();
    run->bytes_sent = frame.size();
    if (i < a.warmup) continue;
    const double rtt = ms(t2, t_recv), server = run->reply.server_ms;
    run->front.push_back(ms(t0, t1));
    run->encode.push_back(ms(t1, t2));
    run->rtt.push_back(rtt);
    run->server.push_back(server);
    run->total.push_back(ms(t0, t3));
    run->reply.timings = {{"front", ms(t0, t1)}, {"encode", ms(t1, t2)}, {"round_trip", rtt}, {"server", server},
                          {"network", std::max(rtt - server, 0.0)}, {"decode", ms(t_recv, t3)}, {"total", ms(t0, t3)}};
  }
  return Err::Ok();
}

// --warmup + --repeat requests on a bundle with exits; prints the last answer (and a summary).
Err run_with_exits(const Args& a, const DeviceBundle& b, Exits& exits, Front& front, ServerLink& server,
                   const std::map<std::string, Array>& inputs, int64_t batch, uint64_t next_id) {
  json out;
  std::vector<double> total;
  std::map<std::string, long> answered;
  for (long i = 0; i < a.warmup + a.repeat; ++i) {
    Err e = answer_with_exits(b, exits, front, server, inputs, batch, a.deadline_ms, next_id++, &out);
    if (!e.ok()) return e;
    if (i < a.warmup) continue;
    total.push_back(out["timings_ms"]["total"].get<double>());
    ++answered[out["answered_by"].get<std::string>()];
  }
  out["batch"] = batch;
  out["budget"] = exits.budget();
  out["codec"] = front_codec_name(b, a.codec);
  out["dropped_replies"] = server.mqtt->dropped_replies();
  if (a.repeat > 1)
    out["repeat"] = {{"n", a.repeat}, {"warmup", a.warmup}, {"total_ms", summary(total)}, {"answered_by", answered},
                     {"each_total_ms", total}};
  std::printf("%s\n", out.dump().c_str());
  return Err::Ok();
}

int finish(const Err& e) {
  std::fprintf(stderr, "edgerun_device: error: %s\n", e.message.c_str());
  return e.code;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  Err e = parse_args(argc, argv, &a);
  if (!e.ok()) return finish(e);
  DeviceBundle b;
  if (!(e = load_bundle(a.bundle, &b)).ok()) return finish(e);
  if (!b.has_exits && !a.budget.empty())
    return finish(fail(kExitUsage, "--budget " + a.budget + " needs a bundle with early exits; " + b.dir +
                                   " has none (re-export with `edgerun export ... --exits auto`)"));
  Exits exits;
  if (b.has_exits && !(e = exits.load(b, a.budget, int32_t(a.max_batch), int32_t(a.threads))).ok()) return finish(e);
  std::map<std::string, Array> inputs;
  if (!(e = read_inputs(a, b, &inputs)).ok()) return finish(e);
  Front front;
  if (!(e = front.load(b, int32_t(a.max_batch), int32_t(a.threads), a.codec, !b.has_exits)).ok()) return finish(e);
  int64_t batch = 0;
  if (!(e = front.check_inputs(inputs, &batch)).ok()) return finish(e);

  // Request ids start at a random 62-bit value (docs/TOPICS.md): a restarted device does not take a
  // late reply meant for its previous run.
  std::mt19937_64 rng(std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32));
  uint64_t next_id = a.have_request_id ? a.request_id : (rng() >> 2) + 1;
  std::vector<uint8_t> frame;
  if (!a.dump_frame.empty()) {  // offline: bundle, input, front half and frame, no broker
    if (b.has_exits) {  // every segment, to the cut
      Step step;
      if (!(e = exits.run(inputs, batch, &step, false)).ok() || !(e = front.set_cut(exits.cut(step, inputs))).ok())
        return finish(e);
    } else if (!(e = front.run(inputs, batch)).ok()) {
      return finish(e);
    }
    if (!(e = front.encode(next_id, &frame)).ok()) return finish(e);
    std::ofstream f(a.dump_frame, std::ios::binary);
    f.write(reinterpret_cast<const char*>(frame.data()), std::streamsize(frame.size()));
    if (!f) return finish(fail(kExitUsage, "cannot write " + a.dump_frame));
    std::printf("%s\n", json{{"dumped", a.dump_frame}, {"bytes", frame.size()}, {"request_id", next_id}}.dump().c_str());
    return 0;
  }

  BrokerUrl url;
  if (!(e = parse_broker_url(a.broker, &url)).ok()) return finish(e);
  const std::string device_id = a.device_id.empty() ? default_device_id() : a.device_id;
  const std::string base = "edgerun/v1/" + model_segment(b.model_id) + "/" + b.topic_id;
  const std::string req_topic = base + "/req/" + device_id, resp_topic = base + "/resp/" + device_id;
  const std::string presence = base + "/presence/device/" + device_id;
  auto presence_body = [&](const char* status) {
    double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    return json{{"status", status}, {"role", "device"}, {"id", device_id}, {"pid", getpid()}, {"time", now},
                {"bundle", b.hash}, {"engine", "native"}}.dump();
  };
  MqttLink link;
  if (!(e = link.connect(url, "edgerun-" + device_id, presence, presence_body("online"), presence_body("offline"),
                         kConnectTimeoutMs)).ok() ||
      !(e = link.subscribe(resp_topic, kConnectTimeoutMs)).ok()) {
    if (!(b.has_exits && e.code == kExitBroker)) return finish(e);
    // Exits answer here meanwhile (this run does not reconnect).
    std::fprintf(stderr, "edgerun_device: warning: %s; answering from the bundle's exits\n", e.message.c_str());
  }
  if (b.has_exits) {
    ServerLink server;
    server.mqtt = &link;
    server.down = e.ok() ? "" : e.message;
    server.req_topic = req_topic;
    server.resp_topic = resp_topic;
    e = run_with_exits(a, b, exits, front, server, inputs, batch, next_id);
    link.close();
    return e.ok() ? 0 : finish(e);
  }

  Run run;
  e = request_loop(a, b, url, req_topic, resp_topic, front, link, inputs, batch, next_id, &run);
  link.close();
  if (!e.ok()) return finish(e);
  json out = {{"answered_by", "server"}, {"request_id", run.reply.request_id}, {"worker", run.reply.worker},
              {"batch", batch}, {"outputs", run.reply.outputs}, {"timings_ms", run.reply.timings},
              {"bytes_sent", run.bytes_sent}, {"bytes_received", run.payload.size()},
              {"codec", front_codec_name(b, a.codec)}, {"dropped_replies", link.dropped_replies()}};
  if (a.repeat > 1)
    out["repeat"] = {{"n", a.repeat}, {"warmup", a.warmup}, {"total_ms", summary(run.total)},
                     {"front_ms", summary(run.front)}, {"encode_ms", summary(run.encode)},
                     {"round_trip_ms", summary(run.rtt)}, {"server_ms", summary(run.server)},
                     {"each_total_ms", run.total}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
