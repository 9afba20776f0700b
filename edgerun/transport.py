"""MQTT 5 topics and a thin paho-mqtt client wrapper shared by the server and the device.

The topic layout is a contract (docs/TOPICS.md)::

    edgerun/v1/<model>/<topic_id>/req/<device>             device -> server (QoS 1)
    $share/<group>/edgerun/v1/<model>/<topic_id>/req/+     what server workers subscribe to
    edgerun/v1/<model>/<topic_id>/resp/<device>            server -> device (QoS 1)
    edgerun/v1/<model>/<topic_id>/presence/<role>/<id>     retained JSON, last will "offline"

``topic_id`` is the hex of the first 16 bytes of the bundle's sha256, so a device
and a server only meet when they hold the very same bundle.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgerun.broker_url import broker_credentials, broker_tls, parse_broker_url, redact_broker_url
from edgerun.errors import ConfigError, FrameError, TransportError
from edgerun.refusals import NO_MATCHING_SUBSCRIBERS, NO_SUBSCRIBER, Refusals  # noqa: F401 - re-exported

log = logging.getLogger("edgerun.transport")

PREFIX = "edgerun/v1"
QOS = 1
# Unsent QoS 1 messages one client holds. paho queues every publish while the broker is away
# (unbounded by default) and sends the backlog on reconnect: a device that went on asking during
# a 15 s outage grew by ~600 MB and the server then computed every stale request.
MAX_QUEUED_MESSAGES = 256
_SEGMENT_OK = re.compile(r"^[A-Za-z0-9._:@=-]{1,128}$")
_TOPIC_ID = re.compile(r"^[0-9a-f]{32}$")
_ROLES = ("server", "device")


# ---------------------------------------------------------------- topics --
def model_segment(model_id: str) -> str:
    """The topic segment for a model id: characters MQTT gives a meaning to become '_'.

    Both sides derive it from the bundle's ``model_id`` the same way, so it only has
    to be deterministic (``zoo:digits-cnn`` stays ``zoo:digits-cnn``; ``a/b`` becomes ``a_b``).
    """
    seg = re.sub(r"[^A-Za-z0-9._:@=-]", "_", str(model_id))[:128]
    if not seg:
        raise ConfigError("the bundle's model id is empty: re-export the bundle with a model name")
    return seg


def check_segment(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe single topic segment, else raise ConfigError.

    A device or worker id lands inside a topic; '/', '+', '#' or '$' there would
    route messages to other devices, so they are refused instead of escaped.
    """
    if not isinstance(value, str) or not _SEGMENT_OK.match(value):
        raise ConfigError(
            f"{kind} {value!r} cannot be used in an MQTT topic: use 1-128 characters "
            "from letters, digits and . _ : @ = -"
        )
    return value


def _check_topic_id(topic_id: str) -> str:
    if not isinstance(topic_id, str) or not _TOPIC_ID.match(topic_id):
        raise ConfigError(f"topic id {topic_id!r} must be 32 lowercase hex characters (bundle.topic_id)")
    return topic_id


def base_topic(model_id: str, topic_id: str) -> str:
    """``edgerun/v1/<model>/<topic_id>``."""
    return f"{PREFIX}/{model_segment(model_id)}/{_check_topic_id(topic_id)}"


def request_topic(model_id: str, topic_id: str, device_id: str) -> str:
    """Topic a device publishes its requests on."""
    return f"{base_topic(model_id, topic_id)}/req/{check_segment('device id', device_id)}"


def response_topic(model_id: str, topic_id: str, device_id: str) -> str:
    """Topic a device receives its replies on (sent as the MQTT 5 Response Topic)."""
    return f"{base_topic(model_id, topic_id)}/resp/{check_segment('device id', device_id)}"


def shared_request_filter(model_id: str, topic_id: str, group: str) -> str:
    """Shared subscription the server workers of one group split the requests through."""
    return f"$share/{check_segment('server group', group)}/{base_topic(model_id, topic_id)}/req/+"


def pinned_request_topic(model_id: str, topic_id: str, worker_id: str, device_id: str) -> str:
    """Topic a device sends a pinned session's requests on: only that worker reads it (split LLM)."""
    return (f"{base_topic(model_id, topic_id)}/pin/{check_segment('worker id', worker_id)}/"
            f"{check_segment('device id', device_id)}")


def pinned_request_filter(model_id: str, topic_id: str, worker_id: str) -> str:
    """What one worker subscribes to for the sessions pinned to it."""
    return f"{base_topic(model_id, topic_id)}/pin/{check_segment('worker id', worker_id)}/+"


def presence_filter(model_id: str, topic_id: str, role: str) -> str:
    """Every presence message of one role (a device watching its pinned worker)."""
    if role not in _ROLES:
        raise ConfigError(f"presence role {role!r} must be one of {_ROLES}")
    return f"{base_topic(model_id, topic_id)}/presence/{role}/+"


def presence_topic(model_id: str, topic_id: str, role: str, ident: str) -> str:
    """Retained presence topic of one server worker or device."""
    if role not in _ROLES:
        raise ConfigError(f"presence role {role!r} must be one of {_ROLES}")
    return f"{base_topic(model_id, topic_id)}/presence/{role}/{check_segment(role + ' id', ident)}"


def parse_request_topic(topic: str) -> tuple[str, str, str]:
    """Split a request topic into ``(model, topic_id, device)``.

    Raises:
        ConfigError: ``topic`` is not a request topic of this layout.
    """
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != PREFIX or parts[4] != "req":
        raise ConfigError(f"{topic!r} is not an edgerun request topic ({PREFIX}/<model>/<topic_id>/req/<device>)")
    return parts[2], _check_topic_id(parts[3]), check_segment("device id", parts[5])


def default_id(prefix: str) -> str:
    """A readable unique id: ``<prefix>-<host>-<pid>-<4 hex>``.

    The random part: two workers in host-network containers are both PID 1 on the same host, and
    two MQTT clients with one client id kick each other off the broker about every second.
    """
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    return f"{prefix}-{host}-{os.getpid()}-{secrets.token_hex(2)}"


def client_id(ident: str) -> str:
    """The MQTT client id of a device or worker named ``ident``: ``edgerun-<ident>-<4 hex>``.

    A broker lets one connection hold a client id: two processes with one (a robot that names each of its
    Devices after itself) took the session from each other in turn, and every other request failed.
    """
    return f"edgerun-{ident}-{secrets.token_hex(2)}"


def publish_topic_problem(topic: Any) -> str:
    """Why ``topic`` cannot be published to ("" if it can): MQTT forbids wildcards and NUL in a topic
    name, and an empty one. A request's Response Topic is whatever its sender wrote."""
    if not isinstance(topic, str) or not topic:
        return "is empty or not text"
    if "+" in topic or "#" in topic:
        return "holds a wildcard (+ or #)"
    if "\0" in topic:
        return "holds a NUL character"
    if len(topic.encode("utf-8", "surrogatepass")) > 65535:
        return "is longer than MQTT allows (65535 bytes)"
    return ""


# ----------------------------------------------------- correlation data --
def correlation_bytes(request_id: int) -> bytes:
    """Correlation Data of a request: its id as 8 bytes little-endian."""
    return struct.pack("<Q", request_id & 0xFFFFFFFFFFFFFFFF)


def correlation_id(data: bytes | None) -> int | None:
    """The request id inside Correlation Data, or None if it is absent or not 8 bytes."""
    if data is None or len(data) != 8:
        return None
    return int(struct.unpack("<Q", bytes(data))[0])


def publish_packet_bytes(topic: str, payload_bytes: int, props: Properties | None, qos: int = QOS) -> int:
    """Bytes of the MQTT 5 PUBLISH packet that carries ``payload_bytes`` on ``topic``: the whole packet,
    fixed header included, as a broker's Maximum Packet Size counts it (MQTT 5.0, 3.1.2.11.4)."""
    rest = 2 + len(topic.encode("utf-8")) + (2 if qos > 0 else 0) + (len(props.pack()) if props is not None else 1)
    rest += payload_bytes
    varint = 1 + (rest >= 128) + (rest >= 16384) + (rest >= 2097152)
    return 1 + varint + rest


def presence_payload(role: str, ident: str, status: str, **extra: Any) -> bytes:
    """JSON body of a presence message (``status`` is "online" or "offline")."""
    body = {"status": status, "role": role, "id": ident, "pid": os.getpid(), "time": time.time()}
    body.update(extra)
    return json.dumps(body, sort_keys=True).encode()


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
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.reconnect_delay_set(min_delay=1, max_delay=16)  # paho doubles the delay up to max
        if user is not None:
            c.username_pw_set(user, password)
        self.tls = broker_tls(broker_url)
        if self.tls is not None:
            c.tls_set_context(_tls_context(self.tls, self.url, self._handshake_failed))
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
        hint = "start one with `mosquitto -p PORT` (or edgerun.broker.Mosquitto) or pass the right --broker"
        if self.tls is None:
            hint += " (a broker that listens with TLS takes mqtts://host:port?ca=CA.pem)"
        elif self.tls.cert is None:
            hint += " (a broker that requires client certificates takes &cert=CLIENT.pem&key=CLIENT.key)"
        try:
            self._client.connect(self.host, self.port, keepalive=self._keepalive, clean_start=True)
        except ssl.SSLError as exc:
            raise TransportError(_tls_problem(exc, self.url, self.host)) from None
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
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
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
        """Publish ``final`` (retained, e.g. presence "offline"), disconnect, stop the loop."""
        if self._closed:
            return
        self._closed = True
        if final is not None and self.connected:
            try:
                info = self.publish(final[0], final[1], retain=True)
                self._ignore(info.mid)
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as exc:
                log.debug("final publish failed: %s", exc)
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._release()

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
            self._ignore(client.publish(self._announced[0], self._announced[1], qos=QOS, retain=True).mid)
        self._ever_connected = True
        self._reconnect_error = ""
        self._connected.set()
        self._settled.set()

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if not self._ever_connected:  # e.g. plain MQTT to a TLS listener, or TLS without the required client cert
            self._settled.set()  # connect() raises: it never had the broker, there is nothing to reconnect
            log.debug("the broker at %s closed the connection before its CONNACK (%s)", self.url, reason_code)
        elif not self._closed:
            log.warning("lost the broker at %s (%s); reconnecting with backoff", self.url, reason_code)

    def _handshake_failed(self, exc: ssl.SSLError) -> None:
        """A TLS handshake failed (any thread): after a first connect it is one of paho's silent retries."""
        if not self._ever_connected or self._closed:
            return  # connect() raises it
        why = _tls_problem(exc, self.url, self.host)
        if why != self._reconnect_error:
            log.warning("cannot reconnect to the broker at %s: %s", self.url, why)
        self._reconnect_error = why

    def _handle_publish(self, client, userdata, mid, reason_code, properties) -> None:
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


def _tls_context(tls, url: str, on_handshake_error: Callable[[ssl.SSLError], None] | None = None) -> ssl.SSLContext:
    """A client context that checks the broker's certificate and host name (the CA of ``tls.ca``, else the
    system's trust store) and presents ``tls.cert`` when given; ``on_handshake_error`` sees every failed
    handshake, also those of paho's reconnects in its own thread.

    Raises:
        ConfigError: a file is not a PEM certificate / key, the key is encrypted or does not match the
            certificate.
    """
    try:
        ctx = ssl.create_default_context(cafile=tls.ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"broker URL {url}: ca={tls.ca} is not a PEM CA certificate ({exc})") from None
    if tls.cert is not None:
        try:  # without a password callback OpenSSL asks for a pass phrase on the terminal, and waits
            ctx.load_cert_chain(tls.cert, tls.key, password=_no_password)
        except _EncryptedKey:
            raise ConfigError(f"broker URL {url}: key={tls.key} is encrypted (it needs a pass phrase, which a URL "
                              f"does not carry): decrypt it once, openssl pkey -in {tls.key} -out CLIENT.key, keep "
                              "that file private, and give key=CLIENT.key") from None
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise ConfigError(f"broker URL {url}: key={tls.key} is not the private key of cert={tls.cert}: "
                                  "give the key made with that certificate") from None
            raise ConfigError(f"broker URL {url}: cert={tls.cert} / key={tls.key} are not a PEM client certificate "
                              f"and its private key ({exc})") from None
        except OSError as exc:
            raise ConfigError(f"broker URL {url}: cert={tls.cert} / key={tls.key} cannot be read ({exc})") from None
    if on_handshake_error is not None:
        class _Socket(ssl.SSLSocket):
            def do_handshake(self, *args, **kwargs):
                try:
                    return super().do_handshake(*args, **kwargs)
                except ssl.SSLError as exc:
                    on_handshake_error(exc)
                    raise

        ctx.sslsocket_class = _Socket
    return ctx


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey


# X509_V_ERR_* codes that are not "the CA is unknown": telling the user to give the CA would mislead
_HOST_MISMATCH = (62, 64)      # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
_NOT_VALID_NOW = (9, 10, 13, 14)  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED, bad notBefore / notAfter fields


def _tls_problem(exc: ssl.SSLError, url: str, host: str) -> str:
    """What went wrong in a TLS handshake with the broker at ``url``, and what to do about it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message
        if exc.verify_code in _HOST_MISMATCH:
            return (f"TLS: the certificate of the MQTT broker at {url} is not for {host!r} ({why}): connect by a "
                    f"name the certificate holds (its subjectAltName), or give the broker a certificate for {host}")
        if exc.verify_code in _NOT_VALID_NOW:
            return (f"TLS: the MQTT broker at {url} presented a certificate that is not valid now ({why}): renew "
                    "the broker's certificate (or its CA's), or, if it should be valid, check this machine's clock "
                    "(`date`)")
        return (f"TLS: the MQTT broker at {url} presented a certificate this client does not trust ({why}): give "
                "the CA that signed it in the URL, mqtts://host:port?ca=/path/ca.pem")
    return (f"TLS handshake with the MQTT broker at {url} failed ({exc.reason or exc}): does the broker listen "
            "with TLS on that port (else use mqtt://), and does it require a client certificate "
            "(&cert=CLIENT.pem&key=CLIENT.key)?")


def _set_nodelay(client, userdata, sock) -> None:
    # paho leaves Nagle on: a small PUBLISH then waits for the peer's delayed ACK (~40 ms per hop).
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (e.g. a websocket wrapper)
        pass


_SET_EVENT = threading.Event()
_SET_EVENT.set()
