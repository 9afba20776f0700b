"""A thin paho-mqtt MQTT 5 client shared by the server and the device: connects synchronously, reconnects by
itself, renews its subscriptions and presence, and tells its owner which publishes the broker refused.

The topic layout and the ids it carries live in ``edgerun.topics`` (docs/TOPICS.md), TLS in
``edgerun.tls_client``, the PUBACK bookkeeping in ``edgerun.refusals``; their names are re-exported here, where
the rest of edgerun has always found them (``transport.request_topic``, ``transport.Refusals``, ...).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgerun.broker_url import broker_credentials, broker_tls, parse_broker_url, redact_broker_url
from edgerun.errors import FrameError, TransportError
from edgerun.refusals import NO_MATCHING_SUBSCRIBERS, NO_SUBSCRIBER, Refusals
from edgerun.tls_client import tls_context, tls_problem
from edgerun.topics import (PREFIX, QOS, base_topic, check_segment, client_id, correlation_bytes,
                            correlation_id, default_id, model_segment, parse_request_topic, pinned_request_filter,
                            pinned_request_topic, presence_filter, presence_payload, presence_topic,
                            publish_packet_bytes, publish_topic_problem, request_topic, response_topic,
                            shared_request_filter)

# The names other modules read as transport.X: the client here, the topic layout and ids (edgerun/topics.py),
# the PUBACK bookkeeping (edgerun/refusals.py) and the TLS helpers, re-exported since the split.
__all__ = ["MAX_QUEUED_MESSAGES", "MqttClient", "NO_MATCHING_SUBSCRIBERS", "NO_SUBSCRIBER", "PREFIX", "QOS",
           "Refusals", "base_topic", "broker_credentials", "broker_tls", "check_segment", "client_id",
           "correlation_bytes", "correlation_id", "default_id", "model_segment", "parse_broker_url",
           "parse_request_topic", "pinned_request_filter", "pinned_request_topic", "presence_filter",
           "presence_payload", "presence_topic", "publish_packet_bytes", "publish_topic_problem",
           "redact_broker_url", "request_topic", "response_topic", "shared_request_filter", "tls_context",
           "tls_problem"]

log = logging.getLogger("edgerun.transport")

# Unsent QoS 1 messages one client holds. paho queues every publish while the broker is away
# (unbounded by default) and sends the backlog on reconnect: a device that went on asking during
# a 15 s outage grew by ~600 MB and the server then computed every stale request.
MAX_QUEUED_MESSAGES = 256


# ---------------------------------------------------------------- client --
MessageHandler = Callable[[mqtt.MQTTMessage], None]


class MqttClient:
    """A paho MQTT 5 client that connects synchronously and reconnects by itself.

    paho runs the network loop in its own thread; ``on_message`` is called there and
    must not block for long. Subscriptions are remembered and renewed on every
    (re)connect, so a broker restart does not silently cut the traffic.

    Args:
        broker_url: ``mqtt://host:port``.
        client_id: MQTT client id (unique per process).
        on_message: called for every received message.
        will: ``(topic, payload)`` published retained by the broker if we vanish.
        keepalive_s: MQTT keep alive; a dead peer is noticed after ~1.5x this.
        on_connect: called (network thread) on every accepted connection, the first and each
            reconnect, before the subscriptions are renewed.
        refusals: told of every PUBACK: which watched publishes the broker refused (and why).
    """

    def __init__(
        self,
        broker_url: str,
        client_id: str,
        *,
        on_message: MessageHandler | None = None,
        will: tuple[str, bytes] | None = None,
        keepalive_s: int = 10,
        max_queued: int = MAX_QUEUED_MESSAGES,
        on_connect: Callable[[], None] | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        self.url = redact_broker_url(broker_url)  # for messages: no password in logs
        self.host, self.port = parse_broker_url(broker_url)
        user, password = broker_credentials(broker_url)
        self._refused = ""  # the broker's reason when it refused the connection
        self._announced: tuple[str, bytes] | None = None  # presence to publish again after a reconnect
        self.client_id = client_id
        self._on_message = on_message
        self._on_connect = on_connect
        self._subs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._settled = threading.Event()  # set on the first CONNACK or on a close before any (connect waits)
        self._ever_connected = False
        self._reconnect_error = ""  # why paho's reconnects fail their TLS handshake ('' if they do not)
        self._acks: dict[int, threading.Event] = {}
        # mids of the subscriptions renewed after a reconnect: nobody waits for their SUBACK. Filed in _acks as
        # "arrived early", one entry per subscription and reconnect stayed for good (2 subscriptions, 3 broker
        # restarts: 6), and once paho's 16-bit mid came round, a later subscribe() of that mid returned before
        # its own SUBACK.
        self._renewals: set[int] = set()
        self._keepalive = keepalive_s
        self._closed = False
        self.max_packet_bytes = 0  # the broker's Maximum Packet Size from its last CONNACK (0: none given)
        self.refusals = refusals  # told of each PUBACK (the owner watches the publishes it cares for)
        self._refusal_logged: set[str] = set()
        # our QoS 1 publishes the broker has not acknowledged yet: close() waits for them all, not only its
        # final one (a server's answers published while it closed went unsent)
        self._out = threading.Condition()
        self._unacked = 0
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.reconnect_delay_set(min_delay=1, max_delay=16)  # paho doubles the delay up to max
        if user is not None:
            c.username_pw_set(user, password)
        self.tls = broker_tls(broker_url)
        if self.tls is not None:
            c.tls_set_context(tls_context(self.tls, self.url, self._handshake_failed))
        self._max_queued = int(max_queued)
        c.max_queued_messages_set(self._max_queued)  # 0 = no limit (servers: a reply is never dropped)
        if will is not None:
            c.will_set(will[0], will[1], qos=QOS, retain=True)
        c.on_socket_open = _set_nodelay
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_subscribe = self._handle_subscribe
        c.on_publish = self._handle_publish
        c.on_message = self._handle_message
        self._client = c

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def reconnect_error(self) -> str:
        """Why reconnecting to a TLS broker fails (its certificate is not trusted, ...), else ''.

        paho retries a failed reconnect forever without a word; this says what the user can fix.
        """
        return self._reconnect_error

    @property
    def refused(self) -> str:
        """The broker's reason when it refused the connection (bad credentials), else ''."""
        return self._refused

    def connect(self, timeout_s: float = 5.0) -> None:
        """Connect and start the network loop; wait for the broker's CONNACK.

        Raises:
            TransportError: the broker cannot be reached or refused us.
        """
        hint = "is it running? (`edgerun broker` starts one and prints its URL) or pass the right --broker"
        if self.tls is None:
            hint += " (a broker that listens with TLS takes mqtts://host:port?ca=CA.pem)"
        elif self.tls.cert is None:
            hint += " (a broker that requires client certificates takes &cert=CLIENT.pem&key=CLIENT.key)"
        try:
            self._client.connect(self.host, self.port, keepalive=self._keepalive, clean_start=True)
        except ssl.SSLError as exc:
            raise TransportError(tls_problem(exc, self.url, self.host)) from None
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot reach the MQTT broker at {self.url} ({exc}): {hint}") from None
        self._client.loop_start()
        self._settled.wait(timeout_s)
        if not self._connected.is_set():
            closed_by_broker = self._settled.is_set()  # before close(): our own disconnect settles it too
            self.close()
            if self._refused:
                raise TransportError(f"the MQTT broker at {self.url} refused the connection ({self._refused}): "
                                     "check the user and password in the broker URL "
                                     f"({'mqtts' if self.tls is not None else 'mqtt'}://USER:PASSWORD@host:port)")
            if closed_by_broker:  # closed at once: no 5 s wait for a CONNACK
                why = ("does it listen with TLS? then use mqtts://host:port?ca=CA.pem" if self.tls is None else
                       "does it require a client certificate? then add &cert=CLIENT.pem&key=CLIENT.key to the URL"
                       if self.tls.cert is None else "its log says why (a client certificate of another CA?)")
                raise TransportError(f"the MQTT broker at {self.url} closed the connection before accepting it: {why}")
            raise TransportError(f"the MQTT broker at {self.url} did not accept the connection within {timeout_s:g} s: {hint}")

    def subscribe(self, topic_filter: str, timeout_s: float = 5.0) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK (so no message published after returns is missed).

        Raises:
            TransportError: no SUBACK in time.
        """
        with self._lock:
            self._subs[topic_filter] = QOS
        done = threading.Event()
        rc, mid = self._client.subscribe(topic_filter, qos=QOS)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"cannot subscribe to {topic_filter!r} on {self.url}: {mqtt.error_string(rc)}")
        with self._lock:
            # The SUBACK can arrive before we get here: _handle_subscribe then left a set event.
            early = self._acks.pop(mid, None)
            if early is None:
                self._acks[mid] = done
        if early is None and not done.wait(timeout_s):
            with self._lock:
                self._acks.pop(mid, None)
            raise TransportError(f"the broker at {self.url} did not confirm the subscription to {topic_filter!r}")

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop reading ``topic_filter`` (not renewed after a reconnect); the UNSUBACK is not awaited."""
        with self._lock:
            self._subs.pop(topic_filter, None)
        self._client.unsubscribe(topic_filter)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        retain: bool = False,
        qos: int = QOS,
        expiry_s: int | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Publish one message (QoS 1 by default), with MQTT 5 request/response properties.

        ``expiry_s``: the broker drops the message if it cannot deliver it within that many seconds
        (a request whose deadline has passed is not worth computing).

        Raises:
            TransportError: this client already holds ``MAX_QUEUED_MESSAGES`` unsent messages.
            FrameError(code="too_large"): the packet would be over the broker's Maximum Packet Size (its
                CONNACK said so); it is not sent. Sent anyway, the broker would drop the connection, and
                paho would send it again after each reconnect.
        """
        props = None
        if response_topic is not None or correlation is not None or expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
            if expiry_s is not None:
                props.MessageExpiryInterval = max(1, int(expiry_s))
        limit = self.max_packet_bytes
        if limit and (size := publish_packet_bytes(topic, len(payload), props, qos)) > limit:
            raise FrameError(f"the message is {size} bytes as an MQTT packet, over the maximum packet size of "
                             f"{limit} bytes of the broker at {self.url}: raise the broker's "
                             "limit (mosquitto: max_packet_size) or send less in one message", "too_large")
        self._sending(qos)
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self._sending(qos, -1)
            raise TransportError(f"the broker at {self.url} has not yet acknowledged the last {self._max_queued} "
                                 "messages (unreachable, or sent to faster than it takes them); this one was not "
                                 "sent")
        return info

    def announce(self, topic: str, payload: bytes) -> None:
        """Publish ``payload`` retained on ``topic`` now and again after every reconnect.

        For presence "online": after the broker dropped us (keepalive, a restart without persistence)
        our last will left "offline" retained, or nothing, while we went on serving.
        """
        self._announced = (topic, payload)
        self._ignore(self.publish(topic, payload, retain=True).mid)

    def close(self, final: tuple[str, bytes] | None = None, timeout_s: float = 2.0) -> None:
        """Publish ``final`` (retained, e.g. presence "offline"), wait up to ``timeout_s`` until the broker has
        acknowledged every QoS 1 message of ours, disconnect, stop the loop."""
        if self._closed:
            return
        self._closed = True
        if final is not None and self.connected:
            try:
                self._ignore(self.publish(final[0], final[1], retain=True).mid)
            except (RuntimeError, ValueError, TransportError) as exc:
                log.debug("final publish failed: %s", exc)
        if self.connected:  # what was published after ``final`` (a server's answers to late requests) too
            with self._out:
                self._out.wait_for(lambda: self._unacked <= 0 or not self.connected, timeout_s)
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._release()

    def _sending(self, qos: int, n: int = 1) -> None:
        """Count ``n`` more (or fewer) of our publishes awaiting the broker's acknowledgement (QoS 1 only)."""
        if qos > 0:
            with self._out:
                self._unacked += n

    def _ignore(self, mid: int) -> None:
        """Nobody reads the PUBACK of our publish ``mid`` (presence): see ``Refusals.ignore``."""
        if self.refusals is not None:
            self.refusals.ignore(mid)

    def _release(self) -> None:
        """After the network thread ended: give back what only the cyclic garbage collector freed.

        paho's loop_stop() leaves open the socket pair loop_start() made to wake its thread, and paho's
        callbacks (our methods) keep this object and its owner (a Device: its engine, its pending futures)
        in a reference cycle: a process that opened and closed 60 Devices held 40 more sockets and their
        engines until a full collection (tests/integration/test_soak_state.py)."""
        self._on_message = self._on_connect = self.refusals = None
        reset = getattr(self._client, "_reset_sockets", None)  # paho 2.x: closes the pair, not the broker's
        if reset is not None and getattr(self._client, "_thread", None) is None:  # not from paho's own thread
            reset(sockpair_only=True)

    # -- paho callbacks (network thread) -------------------------------------
    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            log.warning("broker %s refused the connection: %s", self.url, reason_code)
            self._settled.set()
            return
        self.max_packet_bytes = int(getattr(properties, "MaximumPacketSize", 0) or 0)
        if self._on_connect is not None:
            self._on_connect()
        with self._lock:
            subs = list(self._subs)
            self._renewals.clear()  # SUBACKs a dropped connection never brought
        for topic_filter in subs:  # renew after a reconnect (clean_start drops them)
            rc, mid = client.subscribe(topic_filter, qos=QOS)
            if rc == mqtt.MQTT_ERR_SUCCESS:  # its SUBACK comes on this thread, after this callback returns
                with self._lock:
                    self._renewals.add(mid)
        if subs:
            log.info("reconnected to %s, subscriptions renewed", self.url)
        if self._announced is not None:  # set only after the first connect: this is a reconnect
            self._sending(QOS)
            self._ignore(client.publish(self._announced[0], self._announced[1], qos=QOS, retain=True).mid)
        self._ever_connected = True
        self._reconnect_error = ""
        self._connected.set()
        self._settled.set()

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        with self._out:  # close() waits for acknowledgements no more
            self._out.notify_all()
        if not self._ever_connected:  # e.g. plain MQTT to a TLS listener, or TLS without the required client cert
            self._settled.set()  # connect() raises: it never had the broker, there is nothing to reconnect
            log.debug("the broker at %s closed the connection before its CONNACK (%s)", self.url, reason_code)
        elif not self._closed:
            log.warning("lost the broker at %s (%s); reconnecting with backoff", self.url, reason_code)

    def _handshake_failed(self, exc: ssl.SSLError) -> None:
        """A TLS handshake failed (any thread): after a first connect it is one of paho's silent retries."""
        if not self._ever_connected or self._closed:
            return  # connect() raises it
        why = tls_problem(exc, self.url, self.host)
        if why != self._reconnect_error:
            log.warning("cannot reconnect to the broker at %s: %s", self.url, why)
        self._reconnect_error = why

    def _handle_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._out:
            self._unacked = max(0, self._unacked - 1)
            self._out.notify_all()
        refused = reason_code is not None and reason_code.is_failure
        if refused and str(reason_code) not in self._refusal_logged:  # once per reason: a server's replies too
            self._refusal_logged.add(str(reason_code))
            log.warning("the broker at %s refused a message of ours (%s)", self.url, reason_code)
        if self.refusals is not None:
            # 0x10 is a success code, but the broker dropped the message: nothing subscribes to its topic (no
            # `edgerun serve` for this bundle). Its owner learns so now, not at its deadline.
            if refused or getattr(reason_code, "value", 0) == NO_MATCHING_SUBSCRIBERS:
                self.refusals.refused(mid, str(reason_code))
            else:
                self.refusals.acked(mid)

    def _handle_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                log.error("broker %s refused a subscription: %s", self.url, rc)
        with self._lock:
            if mid in self._renewals:  # a renewal after a reconnect: nobody waits for it
                self._renewals.discard(mid)
                return
            ev = self._acks.pop(mid, None)
            if ev is None:  # SUBACK arrived before subscribe() registered its event
                self._acks[mid] = _SET_EVENT
        if ev is not None:
            ev.set()

    def _handle_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        if self._on_message is None:
            return
        try:
            self._on_message(msg)
        except Exception:  # never let a handler bug kill paho's network thread
            log.exception("message handler failed on %s", msg.topic)


def _set_nodelay(client, userdata, sock) -> None:
    # paho leaves Nagle on: a small PUBLISH then waits for the peer's delayed ACK (~40 ms per hop).
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (e.g. a websocket wrapper)
        pass


_SET_EVENT = threading.Event()
_SET_EVENT.set()
