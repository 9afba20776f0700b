"""A real tool index: all-MiniLM-L6-v2 exported to ONNX, a robot's tool catalog, labelled queries.

Built once per module (~20 s: the encoder's export). Guards: the ONNX encoder equals the torch
model; the index is sealed like a bundle (a changed byte, a missing file and a model bundle in
its place are refused with what to do); the device keeps the right tool and sends only what it
keeps; the CLI builds and selects.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgerun.bundle import FORMAT_NAME, TOOLS_FORMAT_NAME, Bundle, write_manifest
from edgerun.errors import BundleError, ConfigError
from edgerun.exporters import tool_encoder, tools
from edgerun.exporters.pipeline import check_out_dir
from edgerun.exporters.tools_data import Query
from edgerun.tools import Rule, ToolIndex, ToolSelector

GOLDEN_BUNDLE = Path(__file__).parents[1] / "golden" / "bundle_v1"


def tool(name, description, **params):
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": {k: {"type": "string", "description": v}
                                                            for k, v in params.items()}}}


CATALOG = [
    tool("move_arm", "Move the robot arm's gripper to a position in metres.", x="x", y="y", z="height"),
    tool("open_gripper", "Open the gripper to release the held object."),
    tool("close_gripper", "Close the gripper to grasp an object.", force="grip force in newtons"),
    tool("capture_image", "Take a photo with the robot's camera.", camera="front or wrist camera"),
    tool("battery_status", "Report the battery charge and the time left before recharging."),
    tool("navigate_to", "Drive the robot base to a named room or a map location.", place="room name"),
    tool("get_weather", "Current weather and forecast for a city.", city="city name"),
    tool("send_email", "Send an email message to a recipient.", to="address", body="text"),
    tool("set_timer", "Start a countdown timer.", minutes="duration"),
    tool("translate_text", "Translate text into another language.", text="text", target="language"),
]
QUERIES = [
    Query("Pick up the cup: close your hand around it", frozenset({"close_gripper"})),
    Query("Let go of the box", frozenset({"open_gripper"})),
    Query("Take a picture of the table with the wrist camera", frozenset({"capture_image"})),
    Query("How much charge is left in your battery?", frozenset({"battery_status"})),
    Query("Go to the kitchen", frozenset({"navigate_to"})),
    Query("Will it rain in Berlin tomorrow?", frozenset({"get_weather"})),
    Query("Email Anna that the delivery arrived", frozenset({"send_email"})),
    Query("Remind me in ten minutes with a timer", frozenset({"set_timer"})),
    Query("How do you say good morning in Spanish?", frozenset({"translate_text"})),
    Query("Raise the arm 20 centimetres", frozenset({"move_arm"})),
    Query("Drive to the lab and take a photo there", frozenset({"navigate_to", "capture_image"})),
    Query("What is the capital of France?", frozenset()),
]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools") / "robot"
    report = tools.build_index(CATALOG, out, queries=QUERIES, target_recall=0.9, index_id="robot")
    return out, report


def test_the_report_carries_the_calibration(index_dir):
    _, report = index_dir
    assert report["calibrated"] and report["catalog_size"] == len(CATALOG)
    assert report["embedding_bytes_int8"] < report["embedding_bytes_fp32"] / 3
    for split in ("calib", "held_out", "held_out_fp32_embeddings"):
        assert 0 <= report[split]["recall"] <= 1 and report[split]["mean_kept"] >= 0
    assert ToolIndex.load(index_dir[0]).rule == Rule.from_json(report["rule"])


def test_the_onnx_encoder_equals_the_torch_model(index_dir):
    import torch

    idx = ToolIndex.load(index_dir[0])
    sel = ToolSelector(idx)
    texts = ["Pick up the cup", "a longer sentence, padded in a batch with a short one " * 3]
    enc = sel.encoder.tok.encode_batch(texts)
    width = max(len(e.ids) for e in enc)
    ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in enc])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in enc])
    with torch.no_grad():
        want = tool_encoder.load_minilm()(ids, mask).numpy()
    got = sel.encoder(texts)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # A query alone (no padding) embeds as it does inside a padded batch.
    np.testing.assert_allclose(sel.encoder(texts[:1])[0], got[0], atol=2e-6)


def test_the_device_keeps_the_needed_tool_and_sends_only_what_it_keeps(index_dir):
    sel = ToolSelector(ToolIndex.load(index_dir[0]), rule=Rule(floor=-1.0, margin=1.0, k_max=2))
    s = sel.select("Please grab the bottle and hold it tight")
    assert "close_gripper" in s.names and len(s.names) == 2
    assert s.scores == sorted(s.scores, reverse=True)
    sent = [t["function"]["name"] for t in s.request["tools"]]
    assert sent == s.names and s.request["messages"][0]["content"] == s.query
    assert s.request_bytes < s.catalog_request_bytes
    every = len(json.dumps({"messages": [{"role": "user", "content": s.query}],
                            "tools": [{"type": "function", "function": t} for t in CATALOG]},
                           separators=(",", ":"), ensure_ascii=False).encode())
    assert s.catalog_request_bytes == every  # the same query, with every tool
    weather = sel.select("Is it sunny in Madrid right now?")
    assert weather.names[0] == "get_weather"


def test_a_query_must_be_text(index_dir):
    sel = ToolSelector(ToolIndex.load(index_dir[0]))
    with pytest.raises(ConfigError, match="non-empty string"):
        sel.select("   ")


def test_a_changed_or_missing_file_is_refused(index_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(index_dir[0], copy)
    emb = copy / "tool_emb.npz"
    data = bytearray(emb.read_bytes())
    data[-30] ^= 0xFF
    emb.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="tool_emb.npz does not match its sha256"):
        ToolIndex.load(copy)
    emb.unlink()
    with pytest.raises(BundleError, match="incomplete: tool_emb.npz is missing"):
        ToolIndex.load(copy)


def test_a_model_bundle_and_a_tool_index_are_told_apart(index_dir):
    with pytest.raises(BundleError, match="is a model bundle .* not a tool index"):
        ToolIndex.load(GOLDEN_BUNDLE)
    with pytest.raises(BundleError, match="is a tool index .* not a model bundle"):
        Bundle.load(index_dir[0])


def test_a_rebuild_replaces_the_index_and_other_directories_are_kept(index_dir, tmp_path):
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "todo.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a bundle"):
        tools.build_index(CATALOG[:3], keep)
    assert (keep / "todo.txt").read_text() == "mine"



def test_a_rebuild_over_an_index_keeps_the_user_s_files(index_dir, tmp_path):
    """`tools build --out` over an index replaced it whole, with whatever the user had put into it."""
    from edgerun.exporters.out_dir import foreign_files

    assert foreign_files(index_dir[0], TOOLS_FORMAT_NAME) == []  # what a build writes is all its own
    copy = tmp_path / "robot"
    shutil.copytree(index_dir[0], copy)
    (copy / "my_tools.json").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds my_tools\.json, which is not part of the tool index there"):
        tools.build_index(CATALOG[:3], copy)
    assert (copy / "my_tools.json").read_text() == "mine" and ToolIndex.load(copy).hash == ToolIndex.load(
        index_dir[0]).hash

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgerun", "tools", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_select_prints_the_kept_tools_and_the_request(index_dir):
    r = run_cli("select", str(index_dir[0]), "Drive to the garage", "--k-max", "3", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tools"][0] == "navigate_to" and len(out["tools"]) <= 3
    assert out["request_bytes"] < out["catalog_request_bytes"]
    missing = run_cli("select", str(index_dir[0].parent / "nope"), "hi")
    assert missing.returncode == 2 and "edgerun tools build" in missing.stderr


def test_cli_build_writes_an_index_and_refuses_a_bad_catalog(tmp_path):
    cat = tmp_path / "cat.json"
    cat.write_text(json.dumps(CATALOG[:4]))
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "grab it", "tools": ["close_gripper"]}\n{"query": "drop it", "tools": ["nope"]}\n')
    r = run_cli("build", str(cat), "--out", str(tmp_path / "idx"), "--queries", str(queries))
    assert r.returncode == 2 and "names tools not in the catalog: ['nope']" in r.stderr
    r = run_cli("build", str(cat), "--out", str(tmp_path / "idx"))
    assert r.returncode == 0, r.stderr
    assert "4 tools" in r.stdout and "not calibrated" in r.stdout
    assert ToolIndex.load(tmp_path / "idx").names == [t["name"] for t in CATALOG[:4]]
    cat.write_text('[{"name": "a"}, {"name": "a"}]')
    r = run_cli("build", str(cat), "--out", str(tmp_path / "idx2"))
    assert r.returncode == 2 and "two tools are named 'a'" in r.stderr


def test_an_archived_index_loads_and_selects(index_dir, tmp_path):
    import tarfile

    archive = tmp_path / "robot.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(index_dir[0], arcname="robot")
    idx = ToolIndex.load(archive)
    assert idx.hash == ToolIndex.load(index_dir[0]).hash
    assert ToolSelector(idx).select("Go to the kitchen").names[0] == "navigate_to"


def resealed(index_dir, tmp_path, change):
    """A copy of the index with ``change(dir, manifest_body)`` applied and the seal made again (as a
    tool that rewrites files and manifests would): the hashes pass, the content must be checked."""
    d = tmp_path / "resealed"
    shutil.copytree(index_dir, d)
    m = json.loads((d / "manifest.json").read_text())
    body = {k: v for k, v in m.items() if k not in ("format", "format_version", "bundle_hash")}
    body["files"] = {n: {"role": e["role"]} for n, e in m["files"].items()}
    change(d, body)
    write_manifest(d, body, TOOLS_FORMAT_NAME)
    return d


@pytest.mark.parametrize("damage, match", [
    (lambda d, m: np.save(open(d / "tool_emb.npz", "wb"), np.zeros((3, 3))), "not a tool embedding file"),
    (lambda d, m: (d / "tool_emb.npz").write_bytes((d / "tool_emb.npz").read_bytes()[:-100]),
     "not a tool embedding file"),
    (lambda d, m: np.savez(d / "tool_emb.npz", emb=np.zeros((len(CATALOG), 384), np.int8),
                           scale=np.full(len(CATALOG), 3e38, np.float32)), "too large for a unit-length"),
    (lambda d, m: m["rule"].update(k_max=0), "rule .* is malformed"),
    (lambda d, m: m["rule"].update(k_max="5"), "rule .* is malformed"),
    (lambda d, m: m["encoder"].update(max_tokens=1000), "max_tokens 1000"),
    (lambda d, m: (d / "tools.json").write_text("[" * 100000 + "]" * 100000), "not readable JSON"),
])
def test_resealed_damage_is_refused_with_what_to_do(index_dir, tmp_path, damage, match):
    d = resealed(index_dir[0], tmp_path, damage)
    with pytest.raises(BundleError, match=match) as e:
        ToolIndex.load(d)
    assert "rebuild" in str(e.value)


def test_an_encoder_that_fails_at_query_time_says_rebuild(index_dir, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["ids"], ["out"])], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
                          [helper.make_tensor_value_info("out", TensorProto.INT64, [None, None])])
    d = resealed(index_dir[0], tmp_path, lambda d, m: onnx.save(helper.make_model(g), d / "encoder.onnx"))
    with pytest.raises(BundleError, match="sentence encoder failed .* rebuild"):
        ToolSelector(ToolIndex.load(d)).select("Go to the kitchen")


def test_messages_about_a_tool_index_speak_of_a_tool_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="is not a tool index: no manifest.json; build one with `edgerun tools build`"):
        ToolIndex.load(tmp_path / "empty")


def test_a_query_that_is_not_utf8_is_refused(index_dir):
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        ToolSelector(ToolIndex.load(index_dir[0])).select("weather \udcff")


def test_out_dirs_holding_the_other_kind_are_kept(index_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(GOLDEN_BUNDLE, model)
    with pytest.raises(ConfigError, match="holds a model bundle"):
        tools.build_index(CATALOG[:3], model)
    assert Bundle.load(model).model_id  # untouched
    with pytest.raises(ConfigError, match="holds a tool index"):
        check_out_dir(index_dir[0], FORMAT_NAME)  # `edgerun export --out <tool index>`


@pytest.mark.parametrize("kw, match", [(dict(threads=0), "--threads"), (dict(threads=100000), "--threads"),
                                       (dict(target_recall=float("nan")), "target recall")])
def test_bad_build_options_are_refused_before_any_work(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        tools.build_index(CATALOG, tmp_path / "idx", **kw)
    assert not (tmp_path / "idx").exists()
