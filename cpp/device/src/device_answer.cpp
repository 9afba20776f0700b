// cpp/device/src/device_answer.cpp: one request with early exits (see device_answer.h).
#include "device_answer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "device_reply.h"
#include "edgerun/crc32.h"
#include "edgerun/wire.h"

namespace edgerun_device {
namespace {

using json = nlohmann::json;

constexpr double kRttEwmaAlpha = 0.2;   // edgerun/device.py RTT_EWMA_ALPHA
constexpr double kSuspectBackoffS = 1;  // edgerun/device.py SUSPECT_BACKOFF_S
constexpr double kExitReserveMs = 0.5;  // edgerun/device.py EXIT_RESERVE_MS (at most a tenth of the deadline)
constexpr const char* kServerErrorReason = "server error";  // edgerun/device.py SERVER_ERROR
constexpr double kHedgeBothS = 2;  // edgerun/device.py HEDGE_BOTH_S
constexpr double kRttStaleS = 1;   // edgerun/device.py RTT_STALE_S

double ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

// An exit head's answer (edgerun/device.py _local); t_front: when the front half ended, if the
// device then waited for a reply.
json local(const DeviceBundle& b, const Step& step, int i, const std::string& reason, Clock::time_point t0,
           const Clock::time_point* t_front, size_t bytes_sent) {
  const Array& h = step.heads[size_t(i)];
  json data = json::array();
  for (float v : h.data) data.push_back(v);
  const Clock::time_point now = Clock::now();
  json timings = {{"device", ms(t0, now)}, {"total", ms(t0, now)}};
  if (t_front != nullptr) timings = {{"device", ms(t0, *t_front)}, {"waited", ms(*t_front, now)}, {"total", ms(t0, now)}};
  return json{{"answered_by", "exit:" + std::to_string(i)}, {"reason", reason}, {"request_id", 0}, {"worker", ""},
              {"outputs", {{b.outputs[0].name, {{"dtype", "float32"}, {"shape", h.shape}, {"data", std::move(data)}}}}},
              {"timings_ms", timings}, {"bytes_sent", bytes_sent}, {"bytes_received", 0},
              {"front_compute_fraction", step.compute_fraction}};
}

// Why the deepest exit must answer now instead of the server ("" = ask the server). *stale: the reason is a
// predicted round trip learnt over kRttStaleS ago: answer now, and send the request too, to learn it again.
// A request kept local teaches nothing: one stall (a server frozen for seconds, whose late replies then
// came) would keep every later request local for good while the server answered in 1 ms again.
std::string why_local(const ServerLink& link, double left_ms, bool* stale) {
  *stale = false;
  if (!link.down.empty()) return "server unreachable: " + link.down;
  if (link.mqtt == nullptr) return "server unreachable: no broker";
  if (!link.mqtt->up()) return "server unreachable: " + link.mqtt->down_reason();
  const Clock::time_point now = Clock::now();
  if (now < link.suspect_until)
    return "server unreachable: " + link.suspect_why + "; retrying in " +
           fmt("%.1f", std::chrono::duration<double>(link.suspect_until - now).count()) + " s";
  if (link.rtt_ms >= 0 && link.rtt_ms > left_ms) {
    *stale = std::chrono::duration<double>(now - link.rtt_at).count() >= kRttStaleS;
    return "deadline: predicted round trip " + fmt("%.1f", link.rtt_ms) + " ms > " + fmt("%.1f", std::max(left_ms, 0.0)) +
           " ms left";
  }
  return "";
}

// The frame under another request id: the id's 8 bytes (little-endian, offset 8) and the checksum redone.
std::vector<uint8_t> with_request_id(const std::vector<uint8_t>& frame, uint64_t id) {
  std::vector<uint8_t> f(frame);
  for (int i = 0; i < 8; ++i) f[8 + size_t(i)] = uint8_t(id >> (8 * i));
  const uint32_t crc = edgerun::crc32(f.data(), f.size() - edgerun::wire::kCrcSize);
  for (int i = 0; i < 4; ++i) f[f.size() - 4 + size_t(i)] = uint8_t(crc >> (8 * i));
  return f;
}

// Sends the frame once more, under a new id (*copy) awaited with `id`; an error when it could not be sent (the
// original is still awaited).
Err send_copy(ServerLink& link, const std::vector<uint8_t>& frame, uint64_t id, uint32_t expiry_s,
              const std::function<uint64_t()>& next_id, uint64_t* copy) {
  *copy = next_id();
  return link.mqtt->publish_request(link.req_topic, with_request_id(frame, *copy), link.resp_topic, *copy, expiry_s,
                                    id);
}

}  // namespace

void observe_rtt(ServerLink& link, double rtt) {
  std::lock_guard<std::mutex> g(link.state);
  const Clock::time_point now = Clock::now();
  const bool fresh = link.rtt_ms >= 0 && std::chrono::duration<double>(now - link.rtt_at).count() < kRttStaleS;
  link.rtt_ms = fresh ? (1 - kRttEwmaAlpha) * link.rtt_ms + kRttEwmaAlpha * rtt : rtt;  // else the old one is history
  link.rtt_at = now;
  link.suspect_until = Clock::time_point{};
}

Err await_reply(ServerLink& link, const std::vector<uint8_t>& frame, uint64_t id, Clock::time_point t_sent,
                Clock::time_point until, uint32_t expiry_s, const std::function<uint64_t()>& next_id,
                std::vector<uint8_t>* payload, Awaited* out) {
  *out = Awaited{};
  std::map<uint64_t, Clock::time_point> sent = {{id, t_sent}};  // each copy's id -> when it went out
  uint64_t hedge_id = 0;
  auto copy = [&](uint64_t* copy_id) {
    const Clock::time_point t = Clock::now();
    Err c = send_copy(link, frame, id, expiry_s, next_id, copy_id);
    if (c.ok()) ++out->copies, sent[*copy_id] = t;
    return c;
  };
  auto hedge = [&] {
    if (copy(&hedge_id).ok()) ++link.hedged;
    else hedge_id = 0;
  };
  // keep: the request stays awaited (for a hedge or a copy after `stopping`) unless the wait ends in an error
  auto wait = [&](Clock::time_point by) {
    return link.mqtt->wait_reply(id, by, payload, &out->t_recv, &out->got, &out->replied, /*keep=*/true,
                                 &out->refused);
  };
  Err e;
  if (link.hedge_ms > 0) {
    bool both;
    {
      std::lock_guard<std::mutex> g(link.state);
      both = Clock::now() < link.hedge_both_until;
    }
    if (both) hedge();
    const Clock::time_point at = t_sent + std::chrono::microseconds(int64_t(link.hedge_ms * 1000.0));
    if (out->copies == 1 && at < until && (e = wait(at)).ok() && !out->got) hedge();
  }
  if (e.ok() && !out->got) e = wait(until);
  const bool copy_won = e.ok() && out->got && out->replied == hedge_id && hedge_id != 0;
  // A stopping worker (a rolling restart) did not run it: the copy goes to the group's next worker, or, with none
  // subscribed any more, ends at its PUBACK (docs/TOPICS.md, "A stopping server")
  while (e.ok() && out->got && out->resent < kResendsMax && Clock::now() < until && is_stopping(link.hash16, *payload)) {
    link.mqtt->rearm(id);  // before the copy goes out: its reply may come at once
    uint64_t copy_id = 0;
    out->got = false;
    if (!(e = copy(&copy_id)).ok()) break;
    ++out->resent, ++link.resent;
    e = wait(until);
  }
  link.mqtt->finish(id);  // a no-op where a wait that ended in an error ended it already
  if (copy_won) {
    // The original's worker may be frozen. A shared subscription hands messages out in turn, so with one frozen
    // worker of two every original of this device met it: send both copies at once for a while.
    std::lock_guard<std::mutex> g(link.state);
    link.hedge_both_until = Clock::now() + std::chrono::milliseconds(int64_t(kHedgeBothS * 1000));
  }
  if (out->got) out->t_sent = sent[out->replied];
  return e;
}

Err answer_with_exits(const DeviceBundle& b, Exits& exits, Front& front, ServerLink& link,
                      const std::map<std::string, Array>& inputs, int64_t batch, double deadline_ms,
                      std::function<uint64_t()> next_id, json* out) {
  const Clock::time_point t0 = Clock::now();
  const Clock::time_point until = t0 + std::chrono::microseconds(int64_t(deadline_ms * 1000.0));
  Step step;
  std::unique_lock<std::mutex> compute(link.compute);  // the segments and the frame take turns
  Err e = exits.run(inputs, batch, &step);
  if (!e.ok()) return e;
  if (step.exited >= 0) {
    *out = local(b, step, step.exited, step.reason, t0, nullptr, 0);
    return Err::Ok();
  }
  const Clock::time_point t1 = Clock::now();
  std::string why;
  bool probe = false;
  {
    std::lock_guard<std::mutex> g(link.state);
    why = why_local(link, deadline_ms - ms(t0, t1), &probe);
  }
  if (!why.empty() && !probe) {
    *out = local(b, step, step.deepest(), why, t0, nullptr, 0);
    return Err::Ok();
  }
  std::vector<uint8_t> frame, payload;
  const uint64_t request_id = next_id();
  if (!(e = front.set_cut(exits.cut(step, inputs))).ok() || !(e = front.encode(request_id, &frame)).ok()) return e;
  compute.unlock();  // the wait overlaps other requests
  const Clock::time_point t2 = Clock::now();
  const uint32_t expiry_s = uint32_t(std::ceil(deadline_ms / 1000.0));
  e = link.mqtt->publish_request(link.req_topic, frame, link.resp_topic, request_id, expiry_s);
  std::unique_lock<std::mutex> state(link.state, std::defer_lock);
  if (probe && e.ok()) {  // not waited for: its late reply is learnt (MqttLink::on_late_reply)
    bool got = false;
    Clock::time_point t_recv;
    e = link.mqtt->wait_reply(request_id, t2, &payload, &t_recv, &got);  // stops awaiting it
    *out = local(b, step, step.deepest(), why + " (sent anyway, to measure the round trip again)", t0, nullptr,
                 frame.size());
    (*out)["hedged"] = false;
    return Err::Ok();
  }
  if (!e.ok() && e.message.find(kOverPacketLimit) != std::string::npos) {  // the link is fine: not suspect
    *out = local(b, step, step.deepest(), "server unreachable: " + e.message, t0, &t1, 0);
    return Err::Ok();
  }
  if (!e.ok()) {
    state.lock();
    link.suspect_why = "publish failed (" + e.message + ")";
    link.suspect_until = Clock::now() + std::chrono::milliseconds(int64_t(kSuspectBackoffS * 1000));
    *out = local(b, step, step.deepest(), "server unreachable: " + link.suspect_why, t0, &t1, 0);
    return Err::Ok();
  }
  // The wait ends a little before the deadline, so that the exit's answer (computed already) is handed over by
  // it, as edgerun/device.py reply_wait_s does.
  const double reserve_ms = std::min(kExitReserveMs, 0.1 * deadline_ms);
  Awaited aw;
  e = await_reply(link, frame, request_id, t2, until - std::chrono::microseconds(int64_t(reserve_ms * 1000.0)),
                  expiry_s, next_id, &payload, &aw);
  const size_t sent = frame.size() * size_t(aw.copies);
  if (!e.ok()) {  // the broker is gone: later requests answer here until it reconnects (device_mqtt.h)
    // or it refused the request / had no subscriber for it: later ones answer here for a while, as after a miss
    if (aw.refused) {
      state.lock();
      link.suspect_why = e.message;
      link.suspect_until = Clock::now() + std::chrono::milliseconds(int64_t(kSuspectBackoffS * 1000));
      state.unlock();
    }
    *out = local(b, step, step.deepest(), "server unreachable: " + e.message, t0, &t1, sent);
  } else if (!aw.got) {
    state.lock();
    const std::string msg = "no reply from a server for bundle " + b.topic_id + " (" + b.model_id + ") within " +
                            fmt("%g", deadline_ms) + " ms" + (aw.copies - aw.resent > 1 ? " (sent twice)" : "") +
                            (aw.resent > 0 ? " (" + resent_note(aw.resent) + ")" : "");
    link.suspect_why = "no reply to the last request within " + fmt("%g", deadline_ms) + " ms";
    link.suspect_until = Clock::now() + std::chrono::milliseconds(int64_t(kSuspectBackoffS * 1000));
    *out = local(b, step, step.deepest(), "deadline: " + msg, t0, &t1, sent);
  } else {
    const double rtt = ms(aw.t_sent, aw.t_recv);
    observe_rtt(link, rtt);  // a reply came: the server is up (its answer may still be an error)
    Reply reply;
    if (!(e = check_reply(b, payload, aw.replied, batch, &reply, aw.resent)).ok()) {
      // The server's ERROR frame, or a reply that is not the model's answer (a back half that fails on some
      // inputs, a worker of another bundle version on these topics): the device has an answer of its own, as
      // edgerun/device.py answers with reason "server error: ..." (a control loop got an error instead).
      *out = local(b, step, step.deepest(), std::string(kServerErrorReason) + ": " + e.message, t0, &t1, sent);
      (*out)["bytes_received"] = payload.size();
    } else {
      const Clock::time_point t3 = Clock::now();
      const std::string why = "server replied" + (aw.resent > 0 ? " (" + resent_note(aw.resent) + ")" : std::string());
      *out = json{{"answered_by", "server"}, {"reason", why}, {"request_id", reply.request_id},
                  {"worker", reply.worker}, {"outputs", reply.outputs},
                  {"timings_ms", {{"front", ms(t0, t1)}, {"encode", ms(t1, t2)}, {"round_trip", rtt},
                                  {"server", reply.server_ms}, {"network", std::max(rtt - reply.server_ms, 0.0)},
                                  {"decode", ms(aw.t_recv, t3)}, {"total", ms(t0, t3)}}},
                  {"bytes_sent", sent}, {"bytes_received", payload.size()},
                  {"front_compute_fraction", step.compute_fraction}};
    }
  }
  (*out)["hedged"] = aw.copies - aw.resent > 1;
  (*out)["resent"] = aw.resent;
  return Err::Ok();
}

}  // namespace edgerun_device
