// cpp/device/tests/device_misuse.cpp: edgerun_device_misuse, a program that uses the C++ device library
// (edgerun/device.h) the wrong ways a robot programmer might, one case a run, and prints what happened
// as one JSON line: {"case", "outcome": "ok" | "error", "code", "what", ...}. Built only on request
// (tests/integration/test_cpp_device_misuse.py); under EDGERUN_CPP_SANITIZE a read past a buffer or a
// leak ends it with a sanitizer report instead.
//
//   edgerun_device_misuse CASE BUNDLE X.npy [BROKER_URL]
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <stdexcept>
#include <thread>

#include <mosquitto.h>
#include <nlohmann/json.hpp>

#include "edgerun/device.h"

using json = nlohmann::json;
namespace ed = edgerun::device;

namespace {

int open_fds() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d) != nullptr) ++n;
    closedir(d);
  }
  return n - 3;  // ".", ".." and the directory's own fd
}

// A TCP port that takes connections (the kernel completes them from the listen backlog) and never
// says a word: an MQTT client waits there for a CONNACK that does not come.
int silent_port(int* fd) {
  *fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (bind(*fd, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(*fd, 64) != 0 ||
      getsockname(*fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    return -1;
  return ntohs(a.sin_port);
}

ed::Options quick() {
  ed::Options o;
  o.connect_timeout_ms = 300;
  return o;
}

using Case = std::function<json(const std::string& bundle, const ed::Tensor& x, const std::string& broker)>;

json infer_offline(const std::string& bundle, const ed::Tensors& in, double deadline_ms = 0) {
  ed::Device dev(bundle, "", quick());
  ed::Result r = dev.infer(in, deadline_ms);
  return json{{"answered_by", r.answered_by}};
}

const std::map<std::string, Case>& cases() {
  static const std::map<std::string, Case> all = {
      // A shape that its data does not fill (the two are separate vectors): the engine read past the data.
      {"short_data", [](const std::string& b, const ed::Tensor& x, const std::string&) {
         ed::Tensor t = x;
         t.data.resize(t.data.size() / 2);
         ed::Device dev(b, "", quick());
         dev.check({{dev.input_names()[0], t}});
         return json{{"checked", true}};
       }},
      {"short_data_frame", [](const std::string& b, const ed::Tensor& x, const std::string&) {
         ed::Tensor t = x;
         t.data.resize(1);
         ed::Device dev(b, "", quick());
         dev.request_frame({{dev.input_names()[0], t}}, 1);
         return json{{"framed", true}};
       }},
      {"long_data", [](const std::string& b, const ed::Tensor& x, const std::string&) {
         ed::Tensor t = x;
         t.data.insert(t.data.end(), x.data.begin(), x.data.end());  // two samples' values, a shape of one
         ed::Device dev(b, "", quick());
         dev.request_frame({{dev.input_names()[0], t}}, 1);
         return json{{"framed", true}};
       }},
      {"negative_batch", [](const std::string& b, const ed::Tensor& x, const std::string&) {
         ed::Tensor t = x;
         t.shape[0] = -3;
         t.data.clear();
         ed::Device dev(b, "", quick());
         dev.request_frame({{dev.input_names()[0], t}}, 1);
         return json{{"framed", true}};
       }},
      {"huge_batch", [](const std::string& b, const ed::Tensor& x, const std::string&) {
         ed::Tensor t = x;
         t.shape[0] = int64_t(1) << 40;
         ed::Device dev(b, "", quick());
         dev.request_frame({{dev.input_names()[0], t}}, 1);
         return json{{"framed", true}};
       }},
      {"int_dtype", [](const std::string& b, const ed::Tensor& x, const std::string&) {
         ed::Tensor t = x;
         t.dtype = "int64";
         t.ints.assign(t.data.begin(), t.data.end());
         t.data.clear();
         ed::Device dev(b, "", quick());
         dev.request_frame({{dev.input_names()[0], t}}, 1);
         return json{{"framed", true}};
       }},
      // A deadline computed as "the next tick - now" is negative once the loop is late: it waited the
      // default 5 s instead.
      {"deadline_negative", [](const std::string& b, const ed::Tensor& x, const std::string&) {
         ed::Device dev(b, "", quick());
         return infer_offline(b, {{dev.input_names()[0], x}}, -1);
       }},
      {"deadline_nan", [](const std::string& b, const ed::Tensor& x, const std::string&) {
         ed::Device dev(b, "", quick());
         return infer_offline(b, {{dev.input_names()[0], x}}, std::nan(""));
       }},
      {"deadline_huge", [](const std::string& b, const ed::Tensor& x, const std::string&) {
         ed::Device dev(b, "", quick());
         return infer_offline(b, {{dev.input_names()[0], x}}, 1e300);
       }},
      // connect() retried until the broker answers, as a node started before its broker would: each
      // failed try kept its libmosquitto client and socket.
      {"connect_retry", [](const std::string& b, const ed::Tensor&, const std::string& broker) {
         int lfd = -1;
         const int port = silent_port(&lfd);
         ed::Device dev(b, "", quick());
         const int before = open_fds();
         int failed = 0;
         std::string last;
         for (int i = 0; i < 5; ++i) {
           try {
             dev.connect("mqtt://127.0.0.1:" + std::to_string(port));
           } catch (const ed::BrokerError& e) {
             ++failed, last = e.what();
           }
         }
         const int after = open_fds();
         json out = {{"failed", failed}, {"fds_before", before}, {"fds_after", after}, {"last", last}};
         if (!broker.empty()) {
           dev.connect(broker);
           out["reachable"] = dev.server_reachable();
         }
         close(lfd);
         return out;
       }},
      // A node shut down while its timer thread waits in infer for a reply (no server answers here): the
      // device went away under the waiting thread.
      {"destroy_during_infer", [](const std::string& b, const ed::Tensor& x, const std::string& broker) {
         std::string got = "no answer";
         std::thread t;
         {
           ed::Device dev(b, broker, quick());
           const ed::Tensors in = {{dev.input_names()[0], x}};
           t = std::thread([&dev, &got, in] {
             try {
               dev.infer(in, 20000);
               got = "answered";
             } catch (const ed::Error& e) {
               got = std::to_string(e.code()) + ": " + e.what();
             }
           });
           std::this_thread::sleep_for(std::chrono::milliseconds(300));
         }  // ~Device while the thread waits
         t.join();
         return json{{"infer", got}};
       }},
      // The device's retained presence meets no subscriber: its PUBACK is 0x10. Kept as an early refusal under
      // its mid, it was told to the request sent under that mid once libmosquitto's 16-bit mids wrapped
      // (~65,535 publishes: half an hour of a 30 Hz loop): "no server took it" with a server subscribed.
      {"presence_mid_wrap", [](const std::string& b, const ed::Tensor& x, const std::string& broker) {
         ed::Device dev(b, broker, quick());
         const ed::Tensors in = {{dev.input_names()[0], x}};
         int no_server = 0;
         for (int i = 0; i < 65533; ++i) {  // nothing subscribes to the request topic: each ends at its PUBACK
           try {
             dev.infer(in, 2000);
           } catch (const ed::Error& e) {
             no_server += std::string(e.what()).find("no server took") != std::string::npos;
           }
         }
         // A subscriber that takes every request and never answers: from now on each waits out its deadline.
         const std::string host = broker.substr(broker.find("//") + 2, broker.rfind(':') - broker.find("//") - 2);
         const int port = std::stoi(broker.substr(broker.rfind(':') + 1));
         mosquitto* sub = mosquitto_new("edgerun-misuse-silent", true, nullptr);
         bool subscribed = false;
         mosquitto_subscribe_callback_set(sub, [](mosquitto*, void* flag, int, int, const int*) {
           *static_cast<bool*>(flag) = true;
         });
         mosquitto_user_data_set(sub, &subscribed);
         if (mosquitto_connect(sub, host.c_str(), port, 30) != MOSQ_ERR_SUCCESS ||
             mosquitto_subscribe(sub, nullptr, "edgerun/v1/+/+/req/#", 1) != MOSQ_ERR_SUCCESS)
           throw std::runtime_error("the silent subscriber could not connect to " + broker);
         while (!subscribed) mosquitto_loop(sub, 100, 1);
         mosquitto_loop_start(sub);
         json after = json::array();
         for (int i = 0; i < 4; ++i) {  // the mids come round to the presence's among these
           try {
             dev.infer(in, 200);
             after.push_back("answered");
           } catch (const ed::Error& e) {
             after.push_back(std::to_string(e.code()) + ": " + e.what());
           }
         }
         mosquitto_disconnect(sub);
         mosquitto_loop_stop(sub, false);
         mosquitto_destroy(sub);
         return json{{"no_server", no_server}, {"after", after}};
       }},
      {"connect_twice", [](const std::string& b, const ed::Tensor&, const std::string& broker) {
         ed::Device dev(b, broker, quick());
         dev.connect(broker);
         return json{{"connected", true}};
       }},
  };
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5 || !cases().count(argv[1])) {
    std::fprintf(stderr, "usage: %s CASE BUNDLE X.npy [BROKER_URL]; cases:", argv[0]);
    for (const auto& kv : cases()) std::fprintf(stderr, " %s", kv.first.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  json out = {{"case", argv[1]}};
  try {
    const ed::Tensor x = ed::load_npy(argv[3]);
    out.update(cases().at(argv[1])(argv[2], x, argc == 5 ? argv[4] : ""));
    out["outcome"] = "ok";
  } catch (const ed::Error& e) {
    out["outcome"] = "error";
    out["code"] = e.code();
    out["what"] = e.what();
  } catch (const std::exception& e) {  // not one of the library's errors: a bug
    out["outcome"] = "exception";
    out["what"] = e.what();
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
