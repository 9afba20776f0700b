// cpp/device/src/device_mqtt.h: the C++ device's MQTT 5 link (libmosquitto), doing what
// edgerun/transport.py and edgerun/device.py do for a request (docs/TOPICS.md): clean start, keep
// alive 10 s, TCP_NODELAY, a retained presence with an "offline" last will, the response topic
// subscribed (SUBACK awaited) before any request, requests at QoS 1 with Response Topic,
// Correlation Data (the request id, 8 bytes little-endian) and Message Expiry, replies matched by
// Correlation Data only. Until start_background() the caller's thread drives the network loop while
// it waits; after, libmosquitto's thread does, reconnecting when the broker goes away and comes back
// (each reconnection re-subscribes and publishes the presence again).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "device_common.h"
#include "device_url.h"

struct mosquitto;
struct mosquitto_message;
typedef struct mqtt5__property mosquitto_property;

namespace edgerun_device {

// In the message of a request publish_request() refused because it is over the broker's Maximum Packet
// Size: nothing was sent and the link is fine (the request is too big, not the server unreachable).
constexpr const char* kOverPacketLimit = "over the maximum packet size of";
// The start of the message of a request the broker dropped for want of a subscriber (PUBACK reason 0x10: no
// `edgerun serve` for this bundle), as edgerun/device_checks.py refusal_text says it.
constexpr const char* kNoServerTook = "no server took request ";

using Clock = std::chrono::steady_clock;

class MqttLink {
 public:
  MqttLink() = default;
  ~MqttLink();
  MqttLink(const MqttLink&) = delete;
  MqttLink& operator=(const MqttLink&) = delete;

  // Connects (MQTT 5, clean start; TLS for an mqtts:// URL, see device_tls.h) with `will` as the
  // retained last will on `presence_topic`, waits for the CONNACK (timeout_ms), publishes `online`
  // there retained. kExitBroker when it cannot, saying why (a TLS problem: which, and what to do).
  Err connect(const BrokerUrl& url, const std::string& client_id, const std::string& presence_topic,
              const std::string& online, const std::string& will, int timeout_ms);
  // Subscribes at QoS 1 and waits for the SUBACK.
  Err subscribe(const std::string& topic, int timeout_ms);
  // One request, QoS 1; expiry_s = the deadline rounded up to whole seconds. A hedged copy (`twin`: the
  // id of the request it copies, still awaited) shares its twin's wait: the first reply to either wins.
  Err publish_request(const std::string& topic, const std::vector<uint8_t>& frame,
                      const std::string& response_topic, uint64_t request_id, uint32_t expiry_s,
                      uint64_t twin = 0);
  // Waits until the reply whose Correlation Data is request_id (or a hedged copy's id) comes (true; its
  // payload in *reply, when it came in *t_recv, which id in *replied) or `until` passes (false, no
  // error). Then the request is no longer awaited (as finish() ends it), unless `keep` and no error (a hedge,
  // or a copy after a `stopping` reply, may go next; finish() ends it). kExitBroker when the broker is lost
  // or refused the request in its PUBACK, kExitDeadline when nothing subscribes to its topic (both said at
  // once; then *was_refused is true).
  Err wait_reply(uint64_t request_id, Clock::time_point until, std::vector<uint8_t>* reply,
                 Clock::time_point* t_recv, bool* got, uint64_t* replied = nullptr, bool keep = false,
                 bool* was_refused = nullptr);
  // The request (kept by wait_reply) is no longer awaited: the copy that lost the race has its reply dropped
  // quietly; a request that got no reply is remembered (the last 1024), so that its late reply, dropped and
  // counted, reports its round trip to on_late_reply.
  void finish(uint64_t request_id);
  // The reply wait_reply(keep) got was `stopping` (that worker did not run the request): the request is
  // awaited again, for a copy sent next (publish_request with twin = request_id) or a hedged copy still out;
  // a repeat of the refused reply is dropped, and a PUBACK without a subscriber for the copy says the server
  // stopped.
  void rearm(uint64_t request_id);
  // Hands the connection to a background thread (mosquitto_loop_start) that reconnects with backoff
  // and re-subscribes `resp_topic` and republishes `online` on each reconnection. Called after
  // connect() + subscribe(), or after a failed connect() (then `why` says why it is down until the
  // first connection).
  Err start_background(const std::string& resp_topic, const std::string& online, const std::string& why);
  // Connected and subscribed.
  bool up() const;
  std::string down_reason() const;
  // Clears the retained presence (an empty retained message, as the Python device's clean close),
  // then disconnects.
  void close();
  // After a failed connect() (not started in the background): close(), and the libmosquitto client and
  // its sockets go. A caller retrying connect() until its broker answers kept three fds a try.
  void reset();

  uint64_t dropped_replies() const { std::lock_guard<std::mutex> g(mu_); return dropped_; }
  // Called with the round trip (publish -> reply, ms) of each reply that came after its request stopped
  // being awaited (edgerun/device.py Device._late_reply): the server is up, only slower than that
  // deadline. Runs on the network thread, no lock of this link held. Set before start_background().
  void on_late_reply(std::function<void(double)> fn) { late_cb_ = std::move(fn); }

 private:
  Err loop_until(const bool* flag, Clock::time_point until, const char* what);
  // Why the connection failed before its CONNACK: `detail` (libmosquitto's), the TLS problem, a hint.
  Err connect_failed(const BrokerUrl& url, const std::string& detail);
  static void on_disconnect(struct mosquitto*, void* self, int rc, const mosquitto_property*);
  static void on_log(struct mosquitto*, void* self, int level, const char* text);
  static void on_connect(struct mosquitto*, void* self, int rc, int flags, const mosquitto_property*);
  static void on_subscribe(struct mosquitto*, void* self, int mid, int n, const int* qos,
                           const mosquitto_property*);
  static void on_publish(struct mosquitto*, void* self, int mid, int reason, const mosquitto_property*);
  void        refuse(uint64_t id, const std::string& reason);  // under mu_: the awaited request ends with it
  void        finish_locked(uint64_t request_id);  // under mu_: see finish()
  static void on_message(struct mosquitto*, void* self, const struct mosquitto_message* msg,
                         const mosquitto_property* props);

  struct mosquitto*    mosq_ = nullptr;
  std::string          url_text_, presence_topic_;
  std::string          last_error_;  // libmosquitto's last error log line (OpenSSL's reason)
  bool                 connected_ = false, connack_ = false;
  int                  connack_rc_ = 0;
  uint32_t             max_packet_ = 0;  // the broker's Maximum Packet Size from its last CONNACK (0: none)
  int                  sub_mid_ = -1, pub_mid_ = -1;
  bool                 suback_ = false, suback_ok_ = false, puback_ = false;
  struct Pending {  // a request sent, its reply awaited (several at once: one per calling thread)
    bool                  got = false;
    std::vector<uint8_t>  reply;
    Clock::time_point     t_recv{};
    uint64_t              replied = 0;  // the id whose reply came (the request's or its hedged copy's)
    std::vector<uint64_t> copies;       // hedged copies' ids, and copies sent after a `stopping` reply
    std::vector<uint64_t> stopped;      // ids answered `stopping` (rearm): a repeat of their reply is dropped
    bool                  after_stopping = false;  // a worker answered `stopping` (rearm)
    std::map<uint64_t, Clock::time_point> sent;  // when each id (the request's, its copies') went out
    std::string           refused;  // the broker's reason when it refused one of them in its PUBACK
    Exit                  refused_code = kExitBroker;  // kExitDeadline: no subscriber (no server for the bundle)
    std::string           topic;    // where it was published (named when nothing subscribes to it)
  };
  std::map<uint64_t, Pending> pending_;
  std::map<uint64_t, uint64_t> twin_of_;  // a hedged copy's id -> the request it copies (while awaited)
  // Publishes whose PUBACK is awaited: libmosquitto's mid -> request id. A PUBACK can come before
  // mosquitto_publish_v5 returns: a refusal without its request yet is kept (a few) in early_refused_.
  std::map<int, uint64_t>      mid_req_;
  std::map<int, std::string>   early_refused_;
  std::set<int>                presence_mids_;  // presence publishes awaiting their PUBACK: never a refusal
  std::set<uint64_t>           losers_;   // ids whose twin was answered first: their reply drops quietly
  std::map<uint64_t, Clock::time_point> late_;  // ids no longer awaited without a reply -> when they went out
  std::function<void(double)>  late_cb_;
  uint64_t             dropped_ = 0;
  // Background mode: callbacks run on libmosquitto's thread; the fields above are under mu_.
  mutable std::mutex      mu_;
  std::condition_variable cv_;
  bool                    threaded_ = false, ready_ = false;
  bool                    closed_ = false;  // close() began: nothing more is sent or awaited
  std::string             resp_topic_, online_, down_why_;
};

}  // namespace edgerun_device
