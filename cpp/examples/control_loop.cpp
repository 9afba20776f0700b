// cpp/examples/control_loop.cpp: edgerun_control_loop, a robot's control loop on the C++ device
// library (edgerun/device.h): open the device once, then every tick one inference with a deadline;
// the answer comes from the server, or from the bundle's early exits on the device (a confident exit,
// the broker down, the deadline near). A tick with no answer by its deadline is missed, and the loop
// goes on. Prints a JSON summary at the end, as `edgerun run --rate --summary` does.
//
//   edgerun_control_loop BUNDLE --broker URL --input [NAME=]X.npy ... [--rate 50] [--ticks 200]
//                        [--deadline-ms 20] [--budget NAME|off] [--hedge-ms H] [--each] [--window 100000]
// --ticks 0: until Ctrl-C / SIGTERM. An input file with N samples: tick i sends sample i mod N.
// --window: the latency percentiles cover the last this many answers (a loop that ran for days kept every
// tick's latency and size, 16 B a tick: ~70 MB a day at 50 Hz); the mean bytes cover every answer.
// --each: one JSON line per tick (who answered, why, the outputs) before the summary.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "edgerun/device.h"

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

volatile std::sig_atomic_t g_stop = 0;

// Sample i (mod its batch) of each input, as a batch of one.
edgerun::device::Tensors sample(const edgerun::device::Tensors& all, long i) {
  edgerun::device::Tensors one;
  for (const auto& kv : all) {
    edgerun::device::Tensor t = kv.second;
    if (t.shape[0] < 1)  // a .npy of shape (0, ...) divided by zero below (SIGFPE)
      throw edgerun::device::ConfigError("input '" + kv.first + "' holds no samples (shape (0, ...)): give at "
                                         "least one, batch first");
    const size_t n = size_t(t.shape[0]), per = t.data.size() / n, at = size_t(i) % n * per;
    t.data.assign(kv.second.data.begin() + long(at), kv.second.data.begin() + long(at + per));
    t.shape[0] = 1;
    one[kv.first] = std::move(t);
  }
  return one;
}

// A number option, all of it: atof / atol took "20ms" as 20, "abc" as 0 (a deadline of 0 was the library's
// default of 5 s, --ticks 0 a loop without end).
bool number(const char* v, double lo, double hi, double* out) {
  char* end = nullptr;
  const double x = std::strtod(v, &end);
  if (end == v || *end != '\0' || !(x >= lo && x <= hi)) return false;
  *out = x;
  return true;
}

double percentile(std::vector<double> v, double q) {  // numpy's default (linear)
  std::sort(v.begin(), v.end());
  const double pos = q / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(pos), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

}  // namespace

int main(int argc, char** argv) {
  std::string bundle, broker;
  std::vector<std::string> input_args;
  double rate = 50, deadline_ms = 20;
  long ticks = 200, window = 100000;
  bool each = false;
  edgerun::device::Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    const char* v = (i + 1 < argc && f != "--each") ? argv[i + 1] : nullptr;
    if (f == "--each") { each = true; continue; }
    if (f.rfind("--", 0) != 0) { bundle = f; continue; }
    if (v == nullptr) { std::fprintf(stderr, "edgerun_control_loop: %s needs a value\n", f.c_str()); return 2; }
    ++i;
    double x = 0;
    const char* why = nullptr;
    if (f == "--broker") broker = v;
    else if (f == "--input") input_args.push_back(v);
    else if (f == "--rate") why = number(v, 1e-6, 1e6, &rate) ? nullptr : "a number of ticks a second > 0";
    else if (f == "--ticks") why = number(v, 0, 1e15, &x) && x == std::floor(x) ? (ticks = long(x), nullptr)
                                                                                : "a whole number >= 0 (0: until Ctrl-C)";
    else if (f == "--deadline-ms") why = number(v, 1e-3, 86400000, &deadline_ms) ? nullptr
                                                                                  : "a number of ms > 0, at most 86400000";
    else if (f == "--budget") opt.budget = v;
    else if (f == "--hedge-ms") why = number(v, 0, 86400000, &opt.hedge_ms) ? nullptr : "a number of ms >= 0";
    else if (f == "--window") why = number(v, 1, 1e9, &x) && x == std::floor(x) ? (window = long(x), nullptr)
                                                                               : "a whole number >= 1";
    else { std::fprintf(stderr, "edgerun_control_loop: unknown option %s\n", f.c_str()); return 2; }
    if (why != nullptr) {
      std::fprintf(stderr, "edgerun_control_loop: error: %s %s: give %s\n", f.c_str(), v, why);
      return 2;
    }
  }
  if (bundle.empty() || broker.empty() || input_args.empty()) {
    std::fprintf(stderr, "usage: edgerun_control_loop BUNDLE --broker URL --input [NAME=]X.npy [--rate 50] "
                         "[--ticks 200] [--deadline-ms 20] [--budget NAME|off] [--hedge-ms H] [--each] "
                         "[--window 100000]\n");
    return 2;
  }
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  long requests = 0, by_server = 0, on_device = 0, missed = 0, late = 0, overruns = 0, errors = 0;
  // server_errors: with exits, server errors answered on the device (edgerun/run_loop.py)
  long server_errors = 0, hedged = 0, resent = 0;
  std::vector<double> total_ms;  // the last `window` answers' latencies, a ring once full
  long answers = 0;
  double bytes_sum = 0;
  std::string last_miss, last_error;
  try {
    edgerun::device::Device dev(bundle, "", opt);  // once: loads the bundle (offline: inputs are checked first)
    edgerun::device::Tensors inputs;
    for (const std::string& a : input_args) {
      const size_t eq = a.find('=');
      if (eq == std::string::npos && dev.input_names().size() > 1)  // it went to the first input, every tick an error
        throw edgerun::device::ConfigError("this bundle takes " + std::to_string(dev.input_names().size()) +
                                           " inputs: give each as --input NAME=FILE.npy");
      const std::string name = eq == std::string::npos ? dev.input_names().at(0) : a.substr(0, eq);
      inputs[name] = edgerun::device::load_npy(eq == std::string::npos ? a : a.substr(eq + 1));
    }
    dev.check(sample(inputs, 0));  // a wrong input is refused once here, not counted as an error every tick
    dev.connect(broker);           // and reconnects in the background
    const auto period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / rate));
    Clock::time_point next = Clock::now();
    for (long tick = 0; (ticks == 0 || tick < ticks) && !g_stop; ++tick) {
      json line = {{"tick", tick}};
      ++requests;
      try {
        const edgerun::device::Result r = dev.infer(sample(inputs, tick), deadline_ms);  // every tick
        (r.local() ? on_device : by_server) += 1;
        hedged += r.hedged;
        resent += r.resent;
        if (r.local() && r.reason.rfind("server error", 0) == 0) ++server_errors, last_error = r.reason;
        late += r.timings_ms.at("total") > deadline_ms;
        if (long(total_ms.size()) < window) total_ms.push_back(r.timings_ms.at("total"));
        else total_ms[size_t(answers % window)] = r.timings_ms.at("total");
        ++answers;
        bytes_sum += double(r.bytes_sent);
        line["answered_by"] = r.answered_by;
        line["reason"] = r.reason;
        for (const auto& kv : r.outputs) line["outputs"][kv.first] = kv.second.data;
      } catch (const edgerun::device::BrokerError& e) {  // no exits: the broker is away (reconnecting)
        ++missed, last_miss = e.what(), line["missed"] = last_miss;
      } catch (const edgerun::device::DeadlineError& e) {  // no exits: no reply by the deadline
        ++missed, last_miss = e.what(), line["missed"] = last_miss;
      } catch (const edgerun::device::Error& e) {  // an error reply, a refused input: counted, the loop goes on
        ++errors, last_error = e.what(), line["error"] = last_error;
      }
      if (each) std::printf("%s\n", line.dump().c_str());
      next += period;
      if (Clock::now() > next) ++overruns, next = Clock::now();  // this tick ran past the next one's start
      else std::this_thread::sleep_until(next);
    }
  } catch (const edgerun::device::Error& e) {  // opening the device: bundle, options, broker (no exits)
    std::fprintf(stderr, "edgerun_control_loop: error: %s\n", e.what());
    return e.code();
  }
  json pct = json::object();
  for (double q : {50.0, 90.0, 99.0})
    if (!total_ms.empty()) pct["p" + std::to_string(int(q))] = percentile(total_ms, q);
  const double bytes_mean = answers > 0 ? bytes_sum / double(answers) : 0.0;
  json summary = {{"requests", requests}, {"answered_by_server", by_server}, {"answered_on_device", on_device},
                  {"missed", missed}, {"late", late}, {"overruns", overruns}, {"errors", errors},
                  {"server_errors_answered_on_device", server_errors}, {"hedged", hedged}, {"resent", resent},
                  {"rate_hz", rate}, {"deadline_ms", deadline_ms}, {"total_ms", pct},
                  {"total_ms_answers", total_ms.size()}, {"bytes_sent_mean", bytes_mean}};
  if (!last_miss.empty()) summary["last_miss"] = last_miss;
  if (!last_error.empty()) summary["last_error"] = last_error;
  if (g_stop) summary["stopped"] = true;
  std::printf("%s\n", summary.dump().c_str());
  return errors > 0 ? 1 : 0;
}
