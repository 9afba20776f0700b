// cpp/device/src/device_mqtt.cpp: the C++ device's MQTT 5 link (see device_mqtt.h).
#include "device_mqtt.h"

#include "device_tls.h"

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace edgerun_device {
namespace {

constexpr int kKeepAliveS = 10;      // docs/TOPICS.md "Connection": a vanished peer's will fires after ~15 s
constexpr int kLoopSliceMs = 100;    // longest single network-loop wait (the deadline is checked between)
constexpr size_t kLosersKept = 1024;  // edgerun/device.py HEDGE_LOSERS_KEPT
constexpr size_t kLateKept = 1024;    // edgerun/device.py LATE_IDS_KEPT
constexpr size_t kEarlyRefusalsKept = 64;  // edgerun/transport.py Refusals.EARLY_KEPT

std::once_flag g_lib_once;

std::string mosq_error(int rc) {
  if (rc == MOSQ_ERR_ERRNO) return std::strerror(errno);
  return mosquitto_strerror(rc);
}

std::string seconds(int ms) {  // "0.3", "5": a timeout under 1 s was said as "0 s"
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", ms / 1000.0);
  return buf;
}

}  // namespace

MqttLink::~MqttLink() {
  if (mosq_ != nullptr) mosquitto_destroy(mosq_);
}

void MqttLink::on_connect(struct mosquitto* mosq, void* self, int rc, int, const mosquitto_property* props) {
  auto* l = static_cast<MqttLink*>(self);
  std::lock_guard<std::mutex> g(l->mu_);
  l->max_packet_ = 0;
  mosquitto_property_read_int32(props, MQTT_PROP_MAXIMUM_PACKET_SIZE, &l->max_packet_, false);
  l->connack_ = true;
  l->connack_rc_ = rc;
  l->connected_ = rc == 0;
  if (!l->threaded_) return;
  if (rc != 0) {
    l->down_why_ = "the broker at " + l->url_text_ + " refused the connection (" + mosquitto_reason_string(rc) + ")";
    return;
  }
  // A reconnection (clean start): subscribe again (ready at the SUBACK), presence online again.
  l->suback_ = false;
  mosquitto_subscribe_v5(mosq, &l->sub_mid_, l->resp_topic_.c_str(), 1, 0, nullptr);
  int mid = 0;
  if (mosquitto_publish_v5(mosq, &mid, l->presence_topic_.c_str(), int(l->online_.size()), l->online_.data(), 1, true,
                           nullptr) == MOSQ_ERR_SUCCESS)
    l->presence_mids_.insert(mid);  // its PUBACK comes on this thread, after this callback returns
}

void MqttLink::on_disconnect(struct mosquitto*, void* self, int rc, const mosquitto_property*) {
  auto* l = static_cast<MqttLink*>(self);
  std::lock_guard<std::mutex> g(l->mu_);
  l->connected_ = false;
  l->ready_ = false;
  l->down_why_ = "lost the broker at " + l->url_text_ + " (" + mosq_error(rc) + "); reconnecting in the background";
  l->cv_.notify_all();
}

void MqttLink::on_subscribe(struct mosquitto*, void* self, int mid, int n, const int* qos,
                            const mosquitto_property*) {
  auto* l = static_cast<MqttLink*>(self);
  std::lock_guard<std::mutex> g(l->mu_);
  if (mid != l->sub_mid_) return;
  l->suback_ = true;
  l->suback_ok_ = n == 1 && qos[0] < 128;  // >= 0x80: the broker refused the subscription
  l->ready_ = l->connected_ && l->suback_ok_;
  if (!l->suback_ok_) l->down_why_ = "the broker at " + l->url_text_ + " refused the subscription to " + l->resp_topic_;
  l->cv_.notify_all();
}

void MqttLink::on_publish(struct mosquitto*, void* self, int mid, int reason, const mosquitto_property*) {
  auto* l = static_cast<MqttLink*>(self);
  std::lock_guard<std::mutex> g(l->mu_);
  if (mid == l->pub_mid_) l->puback_ = true;
  // A presence is retained and read by whoever subscribes later: a PUBACK 0x10 for it (nobody subscribed now)
  // is no refusal. Kept as an early one, it was told to the request that got its mid once the 16-bit mids
  // wrapped (~65,535 publishes later): "no server took it" with the server up.
  if (mid == l->pub_mid_ || l->presence_mids_.erase(mid) > 0) {
    l->cv_.notify_all();
    return;
  }
  auto m = l->mid_req_.find(mid);
  const bool known = m != l->mid_req_.end();
  const uint64_t id = known ? m->second : 0;
  if (known) l->mid_req_.erase(m);
  // >= 0x80: an MQTT 5 failure (not authorized by the ACL, payload or quota limits). 0x10 is a success code, but
  // the broker dropped the request: nothing subscribes to its topic, so no reply will come; said now, not at the
  // deadline.
  if (reason >= 0x80 || reason == MQTT_RC_NO_MATCHING_SUBSCRIBERS) {
    if (known) {
      l->refuse(id, mosquitto_reason_string(reason));
    } else {
      if (l->early_refused_.size() >= kEarlyRefusalsKept) l->early_refused_.erase(l->early_refused_.begin());
      l->early_refused_[mid] = mosquitto_reason_string(reason);
    }
  }
  l->cv_.notify_all();
}

void MqttLink::refuse(uint64_t id, const std::string& reason) {
  auto tw = twin_of_.find(id);
  auto p = pending_.find(tw != twin_of_.end() ? tw->second : id);
  if (p == pending_.end() || !p->second.refused.empty()) return;
  Pending& w = p->second;
  if (reason == mosquitto_reason_string(MQTT_RC_NO_MATCHING_SUBSCRIBERS)) {
    const std::string& topic = w.topic;  // edgerun/v1/<model>/<bundle topic id>/req/<device>
    const size_t m = topic.find('/', topic.find('/') + 1) + 1, h = topic.find('/', m) + 1, r = topic.find('/', h);
    w.refused_code = kExitDeadline;  // "no server for this bundle", as when no reply comes in time
    if (w.after_stopping) {  // edgerun/device_checks.py refusal_text(stopped=True): that server went away
      w.refused = kNoServerTook + std::to_string(id) + ": the server that had it answered `stopping` (shut down or "
                  "restarting), and nothing subscribes to " + topic + " on the broker at " + url_text_ + " any more (" +
                  reason + "); send it again once `edgerun serve` for this bundle (" + topic.substr(h, r - h) + ", " +
                  topic.substr(m, h - 1 - m) + ") is back, or run two workers in one --group so that one answers "
                  "while the other restarts";
      return;
    }
    w.refused = kNoServerTook + std::to_string(id) + ": nothing subscribes to " + topic + " on the broker at " +
                url_text_ + " (" + reason + "); start `edgerun serve` for this very bundle (" + topic.substr(h, r - h) +
                ", " + topic.substr(m, h - 1 - m) + ") on that broker: a server of another export listens on other "
                "topics";
    return;
  }
  w.refused = "the broker at " + url_text_ + " refused request " + std::to_string(id) + " (" + reason + ")" +
              (reason == "Not authorized" ? ": its ACL does not let this device publish on the request topic: allow "
                                            "the device's MQTT user to write edgerun/v1/# (mosquitto: acl_file)"
                                          : ": the broker's log says why");
}

void MqttLink::on_message(struct mosquitto*, void* self, const struct mosquitto_message* msg,
                          const mosquitto_property* props) {
  auto* l = static_cast<MqttLink*>(self);
  const Clock::time_point now = Clock::now();
  void* corr = nullptr;
  uint16_t len = 0;
  uint64_t id = 0;
  bool have = mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &corr, &len, false) != nullptr;
  if (have && len == 8) {
    const auto* b = static_cast<const uint8_t*>(corr);
    for (int i = 7; i >= 0; --i) id = (id << 8) | b[i];
  }
  std::free(corr);
  double late_ms = -1;
  {
    std::lock_guard<std::mutex> g(l->mu_);
    // Only the awaited id (or its hedged copy's) is answered; an unknown, repeated or late reply is dropped
    // and counted (a late one's round trip reported); the reply to a copy whose twin was answered first is
    // dropped quietly.
    const auto twin = have && len == 8 ? l->twin_of_.find(id) : l->twin_of_.end();
    auto it = !(have && len == 8) ? l->pending_.end() : l->pending_.find(twin == l->twin_of_.end() ? id : twin->second);
    if (it != l->pending_.end() && it->second.got) {  // both copies answered: the first one won
      l->dropped_ += it->second.replied == id;           // the same reply twice counts
      return;
    }
    const auto stopped = it != l->pending_.end() ? std::find(it->second.stopped.begin(), it->second.stopped.end(), id)
                                                 : std::vector<uint64_t>::iterator{};
    if (it != l->pending_.end() && stopped != it->second.stopped.end()) {  // the `stopping` reply again
      ++l->dropped_;
      return;
    }
    if (it != l->pending_.end()) {
      const auto* p = static_cast<const uint8_t*>(msg->payload);
      it->second.reply.assign(p, p + msg->payloadlen);
      it->second.t_recv = now;
      it->second.replied = id;
      it->second.got = true;
      l->cv_.notify_all();
      return;
    }
    if (have && len == 8 && l->losers_.erase(id) == 1) return;
    ++l->dropped_;
    const auto late = have && len == 8 ? l->late_.find(id) : l->late_.end();
    if (late == l->late_.end() || !l->late_cb_) return;
    late_ms = std::chrono::duration<double, std::milli>(now - late->second).count();
    l->late_.erase(late);
  }
  l->late_cb_(late_ms);  // outside the lock: it takes the device's own (device_answer.h ServerLink::state)
}

Err MqttLink::loop_until(const bool* flag, Clock::time_point until, const char* what) {
  if (threaded_) {
    std::unique_lock<std::mutex> lk(mu_);
    if (!cv_.wait_until(lk, until, [&] { return *flag || !connected_; }) || !*flag)
      return fail(kExitBroker, std::string("the broker at ") + url_text_ + " did not answer " + what);
    return Err::Ok();
  }
  while (!*flag) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
    if (left <= 0) return fail(kExitBroker, std::string("the broker at ") + url_text_ + " did not answer " + what);
    int rc = mosquitto_loop(mosq_, int(std::min<long long>(left, kLoopSliceMs)), 1);
    if (rc != MOSQ_ERR_SUCCESS)
      return fail(kExitBroker, "lost the broker at " + url_text_ + " (" + mosq_error(rc) + ") while waiting for " +
                               what + "; nothing more was sent");
  }
  return Err::Ok();
}

void MqttLink::on_log(struct mosquitto*, void* self, int level, const char* text) {
  if (level == MOSQ_LOG_ERR && text != nullptr) static_cast<MqttLink*>(self)->last_error_ = text;
}

Err MqttLink::connect_failed(const BrokerUrl& url, const std::string& detail) {
  std::string why = detail;
  if (!last_error_.empty() && last_error_ != detail) why += (why.empty() ? "" : "; ") + last_error_;
  if (url.tls) return fail(kExitBroker, tls_problem(url, why) + "; nothing was sent");
  return fail(kExitBroker, "the MQTT broker at " + url.text + " closed the connection before accepting it (" + why +
                           "): does it listen with TLS? then use mqtts://host:port?ca=CA.pem; nothing was sent");
}

Err MqttLink::connect(const BrokerUrl& url, const std::string& client_id, const std::string& presence_topic,
                      const std::string& online, const std::string& will, int timeout_ms) {
  std::call_once(g_lib_once, [] { mosquitto_lib_init(); });
  reset();  // connect() again after a failed try (a node started before its broker)
  url_text_ = url.text;
  presence_topic_ = presence_topic;
  mosq_ = mosquitto_new(client_id.c_str(), /*clean_start=*/true, this);
  if (mosq_ == nullptr) return fail(kExitInternal, "mosquitto_new failed (out of memory?)");
  mosquitto_int_option(mosq_, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
  mosquitto_int_option(mosq_, MOSQ_OPT_TCP_NODELAY, 1);  // without it each QoS 1 exchange waits ~40 ms
  mosquitto_connect_v5_callback_set(mosq_, &MqttLink::on_connect);
  mosquitto_subscribe_v5_callback_set(mosq_, &MqttLink::on_subscribe);
  mosquitto_publish_v5_callback_set(mosq_, &MqttLink::on_publish);
  mosquitto_message_v5_callback_set(mosq_, &MqttLink::on_message);
  mosquitto_log_callback_set(mosq_, &MqttLink::on_log);
  mosquitto_disconnect_v5_callback_set(mosq_, &MqttLink::on_disconnect);
  Err e;
  if (url.tls && (!(e = check_tls_files(url)).ok() || !(e = set_tls(mosq_, url)).ok())) return e;
  if (url.has_user)
    mosquitto_username_pw_set(mosq_, url.user.c_str(), url.password.empty() ? nullptr : url.password.c_str());
  mosquitto_will_set_v5(mosq_, presence_topic.c_str(), int(will.size()), will.data(), 1, true, nullptr);
  int rc = mosquitto_connect_bind_v5(mosq_, url.host.c_str(), url.port, kKeepAliveS, nullptr, nullptr);
  // A TLS or protocol failure (an alert from the broker can come while connecting) is explained by
  // connect_failed; not reaching the host at all is said as such.
  const bool unreachable = rc == MOSQ_ERR_EAI || (rc == MOSQ_ERR_ERRNO && (errno == ECONNREFUSED || errno == ENETUNREACH ||
                                                                           errno == EHOSTUNREACH || errno == ETIMEDOUT));
  if (rc != MOSQ_ERR_SUCCESS && !unreachable) return connect_failed(url, rc == MOSQ_ERR_TLS ? "" : mosq_error(rc));
  if (rc != MOSQ_ERR_SUCCESS)
    return fail(kExitBroker, "cannot reach the MQTT broker at " + url.text + " (" + mosq_error(rc) +
                             "): is it running? (`edgerun broker` starts one); nothing was sent");
  const Clock::time_point until = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!connack_) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
    if (left <= 0)
      return fail(kExitBroker, "the MQTT broker at " + url.text + " did not accept the connection within " +
                               seconds(timeout_ms) + " s: is it an MQTT broker" +
                               (url.tls ? "" : " (a broker that listens with TLS takes mqtts://host:port?ca=CA.pem)") +
                               "? nothing was sent");
    rc = mosquitto_loop(mosq_, int(std::min<long long>(left, kLoopSliceMs)), 1);
    if (rc != MOSQ_ERR_SUCCESS) return connect_failed(url, mosq_error(rc));
  }
  if (!connected_)
    return fail(kExitBroker, "the MQTT broker at " + url.text + " refused the connection (" +
                             mosquitto_reason_string(connack_rc_) + "): check the user and password in the broker "
                             "URL (" + (url.tls ? "mqtts" : "mqtt") + "://USER:PASSWORD@host:port); nothing was sent");
  int mid = 0;  // its PUBACK comes in a later mosquitto_loop call here, after the mid is known
  if (mosquitto_publish_v5(mosq_, &mid, presence_topic.c_str(), int(online.size()), online.data(), 1, true, nullptr) ==
      MOSQ_ERR_SUCCESS) {
    std::lock_guard<std::mutex> g(mu_);
    presence_mids_.insert(mid);
  }
  return Err::Ok();
}

Err MqttLink::subscribe(const std::string& topic, int timeout_ms) {
  suback_ = false;
  int rc = mosquitto_subscribe_v5(mosq_, &sub_mid_, topic.c_str(), 1, 0, nullptr);
  if (rc != MOSQ_ERR_SUCCESS)
    return fail(kExitBroker, "cannot subscribe to " + topic + " at " + url_text_ + " (" + mosq_error(rc) + ")");
  Err e = loop_until(&suback_, Clock::now() + std::chrono::milliseconds(timeout_ms), "the subscription (SUBACK)");
  if (e.ok() && !suback_ok_)
    return fail(kExitBroker, "the broker at " + url_text_ + " refused the subscription to " + topic +
                             " (its ACL?)");
  return e;
}

Err MqttLink::publish_request(const std::string& topic, const std::vector<uint8_t>& frame,
                              const std::string& response_topic, uint64_t request_id, uint32_t expiry_s,
                              uint64_t twin) {
  uint8_t corr[8];
  for (int i = 0; i < 8; ++i) corr[i] = uint8_t(request_id >> (8 * i));
  mosquitto_property* props = nullptr;
  mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC, response_topic.c_str());
  mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, corr, 8);
  mosquitto_property_add_int32(&props, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL, expiry_s);
  {
    std::lock_guard<std::mutex> g(mu_);
    if (closed_) return fail(kExitBroker, "the device was closed; nothing was sent");
    if (threaded_ && !ready_) return fail(kExitBroker, down_why_);
    auto t = twin != 0 ? pending_.find(twin) : pending_.end();
    if (twin != 0 && t == pending_.end()) return fail(kExitInternal, "a hedge of a request not awaited");
    if (twin != 0) t->second.copies.push_back(request_id), twin_of_[request_id] = twin;
    else t = pending_.emplace(request_id, Pending{}).first, t->second.topic = topic;
    t->second.sent[request_id] = Clock::now();
  }
  int mid = 0;
  int rc = mosquitto_publish_v5(mosq_, &mid, topic.c_str(), int(frame.size()), frame.data(), 1, false, props);
  mosquitto_property_free_all(&props);
  if (rc == MOSQ_ERR_SUCCESS) {  // its PUBACK is awaited (it may have come already: early_refused_)
    std::lock_guard<std::mutex> g(mu_);
    auto er = early_refused_.find(mid);
    if (er != early_refused_.end()) refuse(request_id, er->second), early_refused_.erase(er), cv_.notify_all();
    else mid_req_[mid] = request_id;
  }
  if (rc != MOSQ_ERR_SUCCESS) {
    std::lock_guard<std::mutex> g(mu_);
    if (twin != 0) {
      Pending& w = pending_[twin];
      twin_of_.erase(request_id), w.copies.pop_back(), w.sent.erase(request_id);
    } else {
      pending_.erase(request_id);
    }
    if (rc == MOSQ_ERR_OVERSIZE_PACKET || rc == MOSQ_ERR_PAYLOAD_SIZE)  // libmosquitto checks the CONNACK's limit
      return fail(kExitBroker, "request " + std::to_string(request_id) + " not sent: its frame is " +
                                   std::to_string(frame.size()) + " bytes, " + kOverPacketLimit + " " +
                                   (max_packet_ ? std::to_string(max_packet_) + " bytes" : std::string("MQTT")) +
                                   " of the broker at " + url_text_ + ": raise the broker's limit (mosquitto: "
                                   "max_packet_size) or send less in one request (a bundle exported with --codec "
                                   "tsq, a later cut, fewer samples)");
    return fail(kExitBroker, "cannot publish the request to the broker at " + url_text_ + " (" + mosq_error(rc) + ")");
  }
  return Err::Ok();
}

Err MqttLink::wait_reply(uint64_t request_id, Clock::time_point until, std::vector<uint8_t>* reply,
                         Clock::time_point* t_recv, bool* got, uint64_t* replied, bool keep, bool* was_refused) {
  *got = false;
  std::unique_lock<std::mutex> lk(mu_);
  auto it = pending_.find(request_id);  // stays valid while other requests come and go
  if (it == pending_.end()) return fail(kExitInternal, "wait_reply for a request not sent");
  const bool& got_ = it->second.got;
  Err e = Err::Ok();
  const std::string& refused = it->second.refused;
  if (threaded_) {
    cv_.wait_until(lk, until, [&] { return got_ || !connected_ || !refused.empty() || closed_; });
    if (!got_ && !refused.empty())
      e = fail(it->second.refused_code, refused);
    else if (!got_ && !connected_)
      e = fail(kExitBroker, "lost the broker at " + url_text_ + " while waiting for the reply to request " +
                            std::to_string(request_id) + "; reconnecting in the background");
  }
  if (!got_ && closed_)  // ~Device: it waits for this call to return
    e = fail(kExitBroker, "the device was closed while request " + std::to_string(request_id) + " awaited its reply");
  if (!threaded_) lk.unlock();  // the callbacks run in mosquitto_loop, on this thread
  while (!threaded_ && !got_ && refused.empty() && e.ok()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
    if (left < 0) break;
    int rc = mosquitto_loop(mosq_, int(std::min<long long>(left, kLoopSliceMs)), 1);
    if (rc != MOSQ_ERR_SUCCESS) {
      e = fail(kExitBroker, "lost the broker at " + url_text_ + " (" + mosq_error(rc) +
                            ") while waiting for the reply to request " + std::to_string(request_id));
      break;
    }
  }
  if (!lk.owns_lock()) lk.lock();
  if (!threaded_ && !got_ && !refused.empty() && e.ok()) e = fail(it->second.refused_code, refused);
  if (was_refused != nullptr) *was_refused = !got_ && !refused.empty();
  if (got_) {
    reply->swap(it->second.reply);
    *t_recv = it->second.t_recv;
    *got = true;
    if (replied != nullptr) *replied = it->second.replied;
  }
  if (keep && e.ok()) return e;  // still awaited: a hedged copy, or a copy after `stopping`, may go next
  finish_locked(request_id);
  return e;
}

void MqttLink::finish(uint64_t request_id) {
  std::lock_guard<std::mutex> g(mu_);
  finish_locked(request_id);
}

void MqttLink::rearm(uint64_t request_id) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = pending_.find(request_id);
  if (it == pending_.end() || !it->second.got) return;
  Pending& w = it->second;
  w.stopped.push_back(w.replied);
  w.got = false, w.replied = 0, w.after_stopping = true;
  w.reply.clear();
}

void MqttLink::finish_locked(uint64_t request_id) {
  auto it = pending_.find(request_id);
  if (it == pending_.end()) return;
  const bool got_ = it->second.got;
  std::vector<uint64_t> ids = it->second.copies;
  ids.push_back(request_id);
  for (auto m = mid_req_.begin(); m != mid_req_.end();)  // PUBACKs that came before their mid was filed
    m = std::find(ids.begin(), ids.end(), m->second) != ids.end() ? mid_req_.erase(m) : std::next(m);
  const std::vector<uint64_t>& stopped = it->second.stopped;  // answered already (`stopping`): nothing more comes
  for (uint64_t id : ids) {
    twin_of_.erase(id);
    if (std::find(stopped.begin(), stopped.end(), id) != stopped.end()) continue;
    if (!got_) {  // no reply at all: a late one is dropped and counted, its round trip reported
      if (late_.size() >= kLateKept) late_.erase(late_.begin());  // a dead server never answers: oldest out
      late_[id] = it->second.sent[id];
      continue;
    }
    if (id == it->second.replied) continue;
    if (losers_.size() >= kLosersKept) losers_.erase(losers_.begin());  // a dead worker never answers: oldest out
    losers_.insert(id);
  }
  pending_.erase(it);
}

Err MqttLink::start_background(const std::string& resp_topic, const std::string& online, const std::string& why) {
  {
    std::lock_guard<std::mutex> g(mu_);
    resp_topic_ = resp_topic;
    online_ = online;
    down_why_ = why;
    ready_ = connected_ && suback_ && suback_ok_;
    threaded_ = true;
  }
  mosquitto_reconnect_delay_set(mosq_, 1, 4, true);
  int rc = mosquitto_loop_start(mosq_);
  if (rc != MOSQ_ERR_SUCCESS) return fail(kExitInternal, "mosquitto_loop_start failed (" + mosq_error(rc) + ")");
  return Err::Ok();
}

bool MqttLink::up() const {
  std::lock_guard<std::mutex> g(mu_);
  return threaded_ ? ready_ : connected_;
}

std::string MqttLink::down_reason() const {
  std::lock_guard<std::mutex> g(mu_);
  return down_why_;
}

void MqttLink::reset() {
  if (threaded_) return;  // the background thread owns the client: close() first
  if (mosq_ != nullptr) {
    close();
    mosquitto_destroy(mosq_);
    mosq_ = nullptr;
  }
  connected_ = connack_ = closed_ = false;
  connack_rc_ = 0;
  max_packet_ = 0;
  last_error_.clear();
}

void MqttLink::close() {
  if (mosq_ == nullptr) return;
  {  // requests awaiting their reply on other threads end now (~Device waits for them), none goes out after
    std::lock_guard<std::mutex> g(mu_);
    closed_ = true;
    cv_.notify_all();
  }
  if (threaded_) {
    bool was_up;
    {
      std::lock_guard<std::mutex> g(mu_);
      was_up = connected_;
      puback_ = false;
    }
    if (was_up && mosquitto_publish_v5(mosq_, &pub_mid_, presence_topic_.c_str(), 0, nullptr, 1, true, nullptr) ==
                      MOSQ_ERR_SUCCESS)
      loop_until(&puback_, Clock::now() + std::chrono::milliseconds(1000), "the presence clear");
    mosquitto_disconnect_v5(mosq_, 0, nullptr);
    mosquitto_loop_stop(mosq_, /*force=*/!was_up);  // not connected: it may be waiting to reconnect
    std::lock_guard<std::mutex> g(mu_);
    threaded_ = false;
    connected_ = false;
    return;
  }
  if (!connected_) return;
  // An empty retained message clears this device's presence (each run has a new id: an "offline"
  // left retained would stay on the broker for good). Wait briefly for its PUBACK.
  puback_ = false;
  if (mosquitto_publish_v5(mosq_, &pub_mid_, presence_topic_.c_str(), 0, nullptr, 1, true, nullptr) ==
      MOSQ_ERR_SUCCESS)
    loop_until(&puback_, Clock::now() + std::chrono::milliseconds(1000), "the presence clear");
  mosquitto_disconnect_v5(mosq_, 0, nullptr);
  connected_ = false;
}

}  // namespace edgerun_device
