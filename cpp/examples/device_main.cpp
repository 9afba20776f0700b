// cpp/examples/device_main.cpp: edgerun_device, a C++-only device program (no Python on the device):
// one run of requests on the C++ device library (edgerun/device.h), printed as JSON (outputs +
// per-stage timings, who answered and why). Usage, output and exit codes: README.md, "C++ device".
// Build: cmake -DEDGERUN_EXAMPLES=ON (needs libmosquitto-dev, nlohmann-json3-dev, libssl-dev).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <exception>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "edgerun/device.h"

using json = nlohmann::json;

namespace {

enum Exit : int { kExitOk = 0, kExitInternal = 1, kExitUsage = 2 };  // the rest: edgerun::device::Error::code()

struct Err {
  int         code = kExitOk;
  std::string message;
  bool ok() const { return code == kExitOk; }
  static Err Ok() { return Err{}; }
};
Err fail(int code, std::string message) { return Err{code, std::move(message)}; }

constexpr double kMaxDeadlineMs = 86400000.0;  // one day, as edgerun/device_checks.py
constexpr int    kConnectTimeoutMs = 5000;

const char* kUsage =
    "usage: edgerun_device BUNDLE_DIR --broker URL --input [NAME=]FILE.npy ...\n"
    "         [--deadline-ms 5000] [--repeat 1] [--warmup 0] [--threads 1] [--max-batch 8]\n"
    "         [--device-id ID] [--codec none] [--request-id N] [--dump-frame FILE] [--budget NAME|off]\n"
    "         [--hedge-ms H]  (no reply after H ms: the request goes once more, to the next worker)\n"
    "         [--concurrent N]  (N threads each send --warmup + --repeat requests on the one device)\n"
    "Runs the bundle's front half here, the back half on `edgerun serve`, prints the outputs as JSON.\n"
    "URL: mqtt://[USER:PASSWORD@]HOST[:1883], or with TLS\n"
    "     mqtts://[USER:PASSWORD@]HOST[:8883][?ca=CA.pem][&cert=CLIENT.pem&key=CLIENT.key]\n"
    "exit codes: 0 ok, 1 internal, 2 usage/input, 3 bundle, 4 broker, 5 deadline (no reply),\n"
    "            6 the server answered with an error, 7 malformed reply\n";

struct Args {
  std::string bundle, broker, device_id, codec, dump_frame, budget;
  std::vector<std::string> inputs;
  double deadline_ms = 5000, hedge_ms = 0;
  long repeat = 1, warmup = 0, threads = 1, max_batch = 8, concurrent = 1;
  bool have_request_id = false;
  uint64_t request_id = 0;
};

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
    } else if (f == "--hedge-ms") {
      if (!number(v, &x) || !(x > 0 && x <= kMaxDeadlineMs))
        return fail(kExitUsage, "--hedge-ms " + std::string(v) + " must be a number of ms > 0, below the deadline");
      a->hedge_ms = x;
    } else if (f == "--request-id") {
      char* e = nullptr;
      a->request_id = std::strtoull(v, &e, 10);
      if (!e || *e || e == v) return fail(kExitUsage, "--request-id must be an unsigned 64-bit integer");
      a->have_request_id = true;
    } else if (f == "--repeat" || f == "--warmup" || f == "--threads" || f == "--max-batch" || f == "--concurrent") {
      long lo = (f == "--warmup") ? 0 : 1, hi = (f == "--threads" || f == "--concurrent") ? 256
                                               : (f == "--max-batch" ? 4096 : 1000000);
      if (!number(v, &x) || x != std::floor(x) || x < lo || x > hi)
        return fail(kExitUsage, f + " " + v + " must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
      (f == "--repeat" ? a->repeat : f == "--warmup" ? a->warmup : f == "--threads" ? a->threads
       : f == "--max-batch" ? a->max_batch : a->concurrent) = long(x);
    } else {
      return fail(kExitUsage, "unknown option " + f + "\n" + kUsage);
    }
  }
  if (a->bundle.empty()) return fail(kExitUsage, std::string("give the bundle directory\n") + kUsage);
  if (a->inputs.empty()) return fail(kExitUsage, "give the input: --input FILE.npy (several inputs: --input NAME=FILE.npy each)");
  if (a->broker.empty() && a->dump_frame.empty()) return fail(kExitUsage, "give the broker: --broker mqtt://HOST:PORT (or mqtts://HOST:PORT?ca=CA.pem for TLS)");
  return Err::Ok();  // --device-id and --codec are checked by the library (Options), as for any caller
}

// The --input files by model input name (a bundle with one input takes FILE.npy alone).
edgerun::device::Tensors read_inputs(const Args& a, const edgerun::device::Device& dev) {
  const std::vector<std::string> names = dev.input_names();
  edgerun::device::Tensors out;
  for (const std::string& item : a.inputs) {
    size_t eq = item.find('=');
    std::string name, path = item;
    if (eq != std::string::npos) { name = item.substr(0, eq); path = item.substr(eq + 1); }
    else if (names.size() == 1) name = names[0];
    else {
      std::string all;
      for (const std::string& n : names) all += (all.empty() ? "" : ", ") + n;
      throw edgerun::device::ConfigError("this bundle takes " + std::to_string(names.size()) + " inputs (" + all +
                                 "): give each as --input NAME=FILE.npy");
    }
    if (out.count(name)) throw edgerun::device::ConfigError("input '" + name + "' given twice");
    out[name] = edgerun::device::load_npy(path);
  }
  for (const auto& kv : out)
    if (std::find(names.begin(), names.end(), kv.first) == names.end())
      throw edgerun::device::ConfigError("the bundle has no input named '" + kv.first + "'");
  return out;
}

json summary(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  auto pct = [&](double q) { return v[std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5))]; };
  return json{{"mean", sum / double(v.size())}, {"p50", pct(0.5)}, {"p90", pct(0.9)}, {"p99", pct(0.99)},
              {"min", v.front()}, {"max", v.back()}};
}

json outputs_json(const edgerun::device::Tensors& outs) {
  json j = json::object();
  for (const auto& kv : outs) {
    json data = json::array();
    if (kv.second.dtype == "float32") for (float v : kv.second.data) data.push_back(v);
    else for (int64_t v : kv.second.ints) data.push_back(v);
    j[kv.first] = {{"dtype", kv.second.dtype}, {"shape", kv.second.shape}, {"data", std::move(data)}};
  }
  return j;
}

// --warmup + --repeat requests (from each of --concurrent threads on the one device); prints the last answer
// as JSON (and a summary of the timed ones).
void run(const Args& a, edgerun::device::Device& dev, const edgerun::device::Tensors& inputs) {
  std::mutex mu;  // guards what the threads add up
  edgerun::device::Result r;
  std::map<std::string, std::vector<double>> stages;
  std::map<std::string, long> answered;
  std::set<std::string> distinct;  // the outputs of the timed answers (one input: one answer per source)
  long hedged = 0, resent = 0;
  std::exception_ptr failed;
  auto requests = [&] {
    try {
      for (long i = 0; i < a.warmup + a.repeat; ++i) {
        edgerun::device::Result ri = dev.infer(inputs, a.deadline_ms);
        std::lock_guard<std::mutex> g(mu);
        if (failed) return;
        r = std::move(ri);
        if (i < a.warmup) continue;
        for (const auto& kv : r.timings_ms) stages[kv.first].push_back(kv.second);
        ++answered[r.answered_by];
        hedged += r.hedged;
        resent += r.resent;
        if (distinct.size() < 16) distinct.insert(outputs_json(r.outputs).dump());
      }
    } catch (...) {  // the first error ends the run (the other threads stop after their request)
      std::lock_guard<std::mutex> g(mu);
      if (!failed) failed = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  for (long t = 1; t < a.concurrent; ++t) pool.emplace_back(requests);
  requests();
  for (std::thread& t : pool) t.join();
  if (failed) std::rethrow_exception(failed);
  json out = {{"answered_by", r.answered_by}, {"request_id", r.request_id}, {"worker", r.worker},
              {"batch", r.batch}, {"outputs", outputs_json(r.outputs)}, {"timings_ms", r.timings_ms},
              {"bytes_sent", r.bytes_sent}, {"bytes_received", r.bytes_received}, {"codec", dev.codec()},
              {"dropped_replies", dev.dropped_replies()}, {"hedged", r.hedged}, {"resent", r.resent}};
  if (dev.has_exits() || r.resent > 0) out["reason"] = r.reason;  // "server replied (resent 1x: ...)"
  if (dev.has_exits()) {
    out["budget"] = dev.budget();
    out["front_compute_fraction"] = r.front_compute_fraction;
  }
  const long n = a.repeat * a.concurrent;
  if (n > 1) {
    out["repeat"] = {{"n", n}, {"warmup", a.warmup}, {"concurrent", a.concurrent},
                     {"total_ms", summary(stages["total"])}, {"each_total_ms", stages["total"]}, {"hedged", hedged},
                     {"resent", resent},
                     {"distinct_outputs", distinct.size()}};
    if (dev.has_exits())
      out["repeat"]["answered_by"] = answered;
    else
      for (const char* s : {"front", "encode", "round_trip", "server"})
        out["repeat"][std::string(s) + "_ms"] = summary(stages[s]);
  }
  std::printf("%s\n", out.dump().c_str());
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
  try {
    edgerun::device::Options opt;
    opt.budget = a.budget;
    opt.threads = int(a.threads);
    opt.max_batch = int(a.max_batch);
    opt.device_id = a.device_id;
    opt.deadline_ms = a.deadline_ms;
    opt.codec = a.codec;
    opt.hedge_ms = a.hedge_ms;
    opt.first_request_id = a.have_request_id ? a.request_id : 0;
    edgerun::device::Device dev(a.bundle, "", opt);  // offline first: bad inputs are told before the broker is tried
    const edgerun::device::Tensors inputs = read_inputs(a, dev);
    dev.check(inputs);
    if (!a.dump_frame.empty()) {  // offline: bundle, input, front half and frame, no broker
      const uint64_t id = a.have_request_id ? a.request_id : (uint64_t(std::random_device{}()) << 20) + 1;
      const std::vector<uint8_t> frame = dev.request_frame(inputs, id);
      std::ofstream f(a.dump_frame, std::ios::binary);
      f.write(reinterpret_cast<const char*>(frame.data()), std::streamsize(frame.size()));
      if (!f) return finish(fail(kExitUsage, "cannot write " + a.dump_frame));
      std::printf("%s\n", json{{"dumped", a.dump_frame}, {"bytes", frame.size()}, {"request_id", id}}.dump().c_str());
      return 0;
    }
    dev.connect(a.broker);
    if (!dev.server_reachable())  // a bundle with exits answers here meanwhile
      std::fprintf(stderr, "edgerun_device: warning: %s; answering from the bundle's exits\n",
                   dev.unreachable_reason().c_str());
    run(a, dev, inputs);
    return 0;
  } catch (const edgerun::device::Error& x) {
    return finish(fail(x.code(), x.what()));
  } catch (const std::exception& x) {
    return finish(fail(kExitInternal, std::string("internal error: ") + x.what()));
  }
}
