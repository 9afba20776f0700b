"""The MQTT 5 topic layout, ids and message properties that a server and a device share (no client here:
``transport.MqttClient`` sends them). The layout is a contract (docs/TOPICS.md)::

    edgerun/v1/<model>/<topic_id>/req/<device>             device -> server (QoS 1)
    $share/<group>/edgerun/v1/<model>/<topic_id>/req/+     what server workers subscribe to
    edgerun/v1/<model>/<topic_id>/resp/<device>            server -> device (QoS 1)
    edgerun/v1/<model>/<topic_id>/presence/<role>/<id>     retained JSON, last will "offline"

``topic_id`` is the hex of the first 16 bytes of the bundle's sha256, so a device
and a server only meet when they hold the very same bundle.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import struct
import time
from typing import Any

from paho.mqtt.properties import Properties

from edgerun.errors import ConfigError

PREFIX = "edgerun/v1"
QOS = 1
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
