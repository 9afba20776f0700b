// cpp/device/src/device_answer.h: one request on a bundle with early exits, decided as
// edgerun/device.py Device.infer decides it: the first confident exit answers on the device; else
// the cut goes to the server, unless the broker is unreachable, a reply was lost lately (1 s of
// local answers), or the predicted round trip (EWMA of measured ones) does not fit what is left of
// the deadline: then, and when no reply comes by the deadline, the deepest exit answers.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "device_exits.h"
#include "device_front.h"
#include "device_mqtt.h"

namespace edgerun_device {

// The server side as the requests of one device see it. Requests from several threads: their
// segments / front half and frame take turns (`compute`), their waits overlap; `state` guards the
// round-trip estimate and the suspicion.
struct ServerLink {
  std::mutex        compute, state;
  MqttLink*         mqtt = nullptr;  // nullptr: no broker (offline)
  std::string       down;            // set: the broker is unreachable for good, why (else mqtt->up() says)
  std::string       req_topic, resp_topic;
  double            rtt_ms = -1;     // EWMA of round trips (publish -> reply, late replies' too), < 0 before the first
  Clock::time_point rtt_at{};        // when rtt_ms last learnt a round trip
  Clock::time_point suspect_until{};
  std::string       suspect_why;
  double            hedge_ms = 0;          // > 0: no reply this long after a request, it goes once more
  Clock::time_point hedge_both_until{};    // (state) after a hedged copy won: both copies at once until then
  std::atomic<uint64_t> hedged{0};         // requests sent a second time
  std::atomic<uint64_t> resent{0};         // copies sent because a worker answered `stopping`
  const uint8_t*    hash16 = nullptr;      // the bundle's (a `stopping` ERROR frame must be for it)
};

// A request a stopping worker refused goes again at most this often (edgerun/device.py RESENDS_MAX).
constexpr int kResendsMax = 2;

// Learns one round trip (ms): a reply in time, or a late one (MqttLink::on_late_reply: the server is up, only
// slower than that deadline). An estimate older than 1 s is replaced, not averaged; the suspicion ends.
void observe_rtt(ServerLink& link, double ms);

// What came of a request's wait (await_reply).
struct Awaited {
  bool              got = false;  // a reply came by the deadline (in `payload`)
  uint64_t          replied = 0;  // the id it answered: the request's, or its hedged copy's
  int               copies = 1;   // how many times the frame went out (hedged copies, copies after `stopping`)
  int               resent = 0;   // copies sent because a worker answered `stopping` (it did not run it)
  bool              refused = false;  // the broker refused it, or had no subscriber for it (its PUBACK)
  Clock::time_point t_sent{}, t_recv{};  // when the copy that was answered went out, when its reply came
};

// Waits for the reply to request `id` (its frame published at t_sent) until `until`. With link.hedge_ms
// it sends the frame once more, under a new id, when no reply came hedge_ms after t_sent (and at once
// for 2 s after a copy won: see edgerun/device.py Device.infer); the first reply wins. A reply that is
// `stopping` (that worker did not run it) sends it again at once, under a new id awaited in the same wait, at
// most kResendsMax times while `until` leaves time (docs/TOPICS.md, "A stopping server"). Errors: the
// broker lost (kExitBroker), or it refused a copy or had no subscriber for it (kExitBroker / kExitDeadline).
Err await_reply(ServerLink& link, const std::vector<uint8_t>& frame, uint64_t id, Clock::time_point t_sent,
                Clock::time_point until, uint32_t expiry_s, const std::function<uint64_t()>& next_id,
                std::vector<uint8_t>* payload, Awaited* out);

// Answers one request: *out gets answered_by ("server" | "exit:<i>"), reason, request_id (0 when
// answered before sending), worker, outputs, timings_ms, bytes_sent, bytes_received,
// front_compute_fraction. A predicted round trip over the deadline answers at once; when that prediction
// is over 1 s old the request is sent as well, not waited for: its late reply measures the round trip
// afresh (edgerun/device.py RTT_STALE_S). A server's ERROR frame or a malformed reply is answered by the
// deepest exit too, reason "server error: ..." (without exits they are errors). Errors: bad input.
Err answer_with_exits(const DeviceBundle& b, Exits& exits, Front& front, ServerLink& link,
                      const std::map<std::string, Array>& inputs, int64_t batch, double deadline_ms,
                      std::function<uint64_t()> next_id, nlohmann::json* out);

}  // namespace edgerun_device
