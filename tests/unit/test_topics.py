"""The MQTT topic layout (docs/TOPICS.md) is a contract: these tests pin it."""

from __future__ import annotations

import json

import pytest

from edgerun import transport as t
from edgerun.errors import ConfigError

TID = "0123456789abcdef0123456789abcdef"


def test_topic_layout_matches_the_contract():
    assert t.request_topic("digits-cnn", TID, "dev1") == f"edgerun/v1/digits-cnn/{TID}/req/dev1"
    assert t.response_topic("digits-cnn", TID, "dev1") == f"edgerun/v1/digits-cnn/{TID}/resp/dev1"
    assert t.shared_request_filter("digits-cnn", TID, "g") == f"$share/g/edgerun/v1/digits-cnn/{TID}/req/+"
    assert t.presence_topic("digits-cnn", TID, "server", "w1") == f"edgerun/v1/digits-cnn/{TID}/presence/server/w1"
    assert t.presence_topic("digits-cnn", TID, "device", "d") == f"edgerun/v1/digits-cnn/{TID}/presence/device/d"


def test_request_topic_round_trips():
    topic = t.request_topic("zoo:digits-cnn", TID, "robot-7")
    assert t.parse_request_topic(topic) == ("zoo:digits-cnn", TID, "robot-7")


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "x+y", "", "$sys", "sp ace", "x" * 129])
def test_ids_with_mqtt_wildcards_are_refused(bad):
    with pytest.raises(ConfigError, match="cannot be used in an MQTT topic"):
        t.request_topic("m", TID, bad)
    with pytest.raises(ConfigError):
        t.shared_request_filter("m", TID, bad)


def test_model_id_is_sanitised_deterministically():
    assert t.model_segment("zoo:digits-cnn") == "zoo:digits-cnn"
    assert t.model_segment("a/b+c#d") == "a_b_c_d"
    with pytest.raises(ConfigError):
        t.model_segment("")


@pytest.mark.parametrize("bad", ["", "ABCDEF0123456789abcdef0123456789", "0123", TID + "00", "zz" * 16])
def test_topic_id_must_be_32_lower_hex(bad):
    with pytest.raises(ConfigError, match="32 lowercase hex"):
        t.request_topic("m", bad, "d")


@pytest.mark.parametrize("bad", ["edgerun/v1/m/x/req/d", f"edgerun/v1/m/{TID}/resp/d", "other/v1/m/t/req/d", "a/b"])
def test_parse_request_topic_rejects_other_topics(bad):
    with pytest.raises(ConfigError):
        t.parse_request_topic(bad)


def test_presence_role_is_checked():
    with pytest.raises(ConfigError, match="role"):
        t.presence_topic("m", TID, "broker", "x")


@pytest.mark.parametrize("rid", [0, 1, 2**32 + 5, 2**64 - 1])
def test_correlation_data_is_8_bytes_little_endian(rid):
    data = t.correlation_bytes(rid)
    assert len(data) == 8 and int.from_bytes(data, "little") == rid
    assert t.correlation_id(data) == rid


@pytest.mark.parametrize("bad", [None, b"", b"\x01" * 7, b"\x01" * 9])
def test_bad_correlation_data_gives_none(bad):
    assert t.correlation_id(bad) is None


def test_presence_payload_is_json_with_status():
    body = json.loads(t.presence_payload("server", "w1", "online", bundle="ab"))
    assert body["status"] == "online" and body["role"] == "server" and body["id"] == "w1" and body["bundle"] == "ab"


def test_default_id_is_a_valid_segment():
    assert t.check_segment("id", t.default_id("server")).startswith("server-")
