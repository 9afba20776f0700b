"""The split LLM bundle: SmolLM2-135M-Instruct's halves on onnxruntime decode like the whole model.

The server relies on two properties tested here: a step resent after its cache was cut back gives
the same answer (a resend or a duplicate QoS 1 delivery), and a prefill of many positions gives the
same next token as feeding them one by one (a replay rebuilds the cache in one call).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from edgerun import llm
from edgerun.bundle import Bundle
from edgerun.errors import BundleError, ConfigError


@pytest.fixture(scope="module")
def halves(llm_bundle):
    return llm.Half(llm_bundle, "front", 2), llm.Half(llm_bundle, "back", 2)


def _prefill(halves, ids):
    front, back = halves
    fc, bc = front.new_cache(), back.new_cache()
    h = front.step(np.array([ids], np.int64), fc)
    return back.step(h, bc), h, fc, bc


def test_the_export_checked_greedy_decoding_of_the_split_against_the_whole_model(llm_bundle):
    report = json.loads(llm_bundle.file(llm.REPORT).read_text())
    assert report["check"]["greedy_tokens_equal_whole"] is True
    assert all(p["same_as_whole"] and p["tokens"] > 0 for p in report["check"]["prompts"])
    assert report["bytes_per_token_up"] == 576 * 4
    assert llm_bundle.spec.cut == 15 and llm_bundle.spec.layers == 30 and llm_bundle.spec.max_context == 1024


def test_the_device_keeps_the_token_embedding_in_8_bits_an_exact_copy_of_the_gguf_table(llm_bundle, halves):
    import onnx

    from edgerun.exporters import llm_model as lm

    report = json.loads(llm_bundle.file(llm.REPORT).read_text())
    e = report["front_precision"]["embedding"]
    assert e["precision"] == "int8" and e["max_abs_change"] == 0.0  # the GGUF stores it as Q8_0: same blocks
    assert e["bytes"] < 0.3 * e["bytes_fp32"] == 0.3 * 49152 * 576 * 4
    m = onnx.load(str(llm_bundle.file(llm.FRONT)))
    assert [n.op_type for n in m.graph.node].count("GatherBlockQuantized") == 1
    assert not any(list(t.dims) == [49152, 576] and t.data_type == onnx.TensorProto.FLOAT for t in m.graph.initializer)
    # the rows the device looks up are the fp32 model's rows, bit for bit (the first layer's input)
    _, weights, _ = lm.read_gguf(lm.gguf_path())
    ids = np.array([[0, 1, 576, 4093, 49151]], np.int64)
    emb = onnx.helper.make_model(onnx.helper.make_graph(
        [n for n in m.graph.node if n.op_type == "GatherBlockQuantized"], "e",
        [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 5])],
        [onnx.helper.make_tensor_value_info(next(n for n in m.graph.node if n.op_type == "GatherBlockQuantized").output[0],
                                            onnx.TensorProto.FLOAT, None)],
        [t for t in m.graph.initializer if t.name.endswith(("_q", "_scale", "_zero"))]), opset_imports=m.opset_import)
    import onnxruntime as ort
    rows = ort.InferenceSession(emb.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    assert np.array_equal(rows, weights["token_embd.weight"][ids])
    with pytest.raises(ConfigError, match="token ids must be in 0..49151"):  # the op gives zero rows for them
        halves[0].step(np.array([[1, 49152]], np.int64), halves[0].new_cache())


def test_the_model_answers_a_factual_question(llm_bundle, halves):
    tok = llm.Tokenizer(llm_bundle)
    ids = tok.chat("What is the capital of France?")
    front, back = halves
    fc, bc, out = front.new_cache(), back.new_cache(), []
    x = np.array([ids], np.int64)
    for _ in range(12):
        t = int(back.step(front.step(x, fc), bc).argmax())
        if t == llm_bundle.spec.eos:
            break
        out.append(t)
        x = np.array([[t]], np.int64)
    assert "Paris" in tok.decode(out)


@pytest.mark.parametrize("text, ids", [
    # ids from transformers' GGUF tokenizer for the same file (which adds a BOS the GGUF does not ask for)
    ("<|im_start|>user\nWhat is 2+2?<|im_end|>\n", [1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198]),
    ("Prices: 12345 and 3.14 -- ünïcödé 日本", [64, 12855, 42, 216, 33, 34, 35, 36, 37, 284, 216, 35, 30, 33, 36,
                                              3009, 5549, 137, 94, 25972, 83, 7466, 84, 2756, 17097, 241, 115, 40993]),
    ("def f(x):\n    return x**2  # ok", [1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216, 907, 10907]),
])
def test_the_tokenizer_built_from_the_gguf_matches_the_reference_ids(llm_bundle, text, ids):
    tok = llm.Tokenizer(llm_bundle)
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")


def test_a_step_resent_after_cutting_the_cache_back_gives_the_same_logits(halves):
    front, back = halves
    logits, h, fc, bc = _prefill(halves, [1, 4093, 198, 1780, 314])
    h2 = front.step(np.array([[260]], np.int64), fc)
    first = back.step(h2, bc)
    bc.truncate(5)
    again = back.step(h2, bc)
    assert bc.length == 6 and np.array_equal(first, again)


def test_a_prefill_in_one_call_gives_the_next_token_of_feeding_positions_one_by_one(halves):
    front, back = halves
    ids = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47]
    whole, _, _, _ = _prefill(halves, ids)
    fc, bc = front.new_cache(), back.new_cache()
    for i in ids:
        one = back.step(front.step(np.array([[i]], np.int64), fc), bc)
    assert int(one.argmax()) == int(whole.argmax())
    np.testing.assert_allclose(one, whole, atol=2e-3 * float(np.abs(whole).max()))


def test_an_llm_bundle_is_not_a_model_bundle_and_says_what_it_is(llm_bundle):
    with pytest.raises(BundleError, match="split-LLM bundle|edgerun-llm"):
        Bundle.load(llm_bundle.path)
    assert llm.is_llm_bundle(llm_bundle.path)


def test_an_edited_tokenizer_is_refused_naming_the_file(llm_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(llm_bundle.path, copy, ignore=shutil.ignore_patterns("*.onnx"))
    for name in (llm.FRONT, llm.BACK):  # 650 MB: hard links, not copies (a symlink out of a bundle is refused)
        os.link(llm_bundle.path / name, copy / name)
    llm.LlmBundle.load(copy)
    tj = copy / llm.TOKENIZER
    tj.write_text(tj.read_text().replace('"Paris"', '"Pariss"', 1))
    with pytest.raises(BundleError, match="tokenizer.json"):
        llm.LlmBundle.load(copy)


@pytest.mark.parametrize("cut", [0, 30, -1])
def test_export_refuses_a_cut_outside_the_layers(tmp_path, cut):
    from edgerun.exporters.llm_export import export_llm

    with pytest.raises(ConfigError, match=r"--cut must be a layer count in 1\.\.29"):
        export_llm(tmp_path / "out", cut=cut)
    assert not (tmp_path / "out").exists()


def test_export_refuses_to_replace_a_model_bundle(digits_bundle):
    from edgerun.exporters.llm_export import export_llm

    with pytest.raises(ConfigError, match="holds a model bundle"):
        export_llm(digits_bundle.path)


def test_the_codec_choice_keeps_its_rule_on_calibration_text_and_reports_held_out_text(llm_tsq):
    _, entry = llm_tsq
    cal, ev = entry["chosen"]["calib"], entry["chosen"]["eval"]
    base = entry["calib"][0]
    assert cal["agreement"] >= 0.99 and cal["ppl"] <= base["ppl"] * 1.01
    assert cal["ratio"] > 2.0  # what it buys: the uncoded rows of the grid (ratio 1) are never chosen
    assert 0 < ev["agreement"] <= 1 and ev["ppl"] > 1 and entry["positions"] == {"calib": 96, "eval": 96}
    assert len(entry["calib"]) == len(entry["eval"]) == 1 + 9  # uncoded + the 3 x 3 grid


def test_a_replay_coded_in_one_frame_decodes_to_the_values_coded_step_by_step(llm_tsq, halves):
    """Rows are coded alone, so a worker rebuilding a session from a replay sees what the first one saw."""
    from edgerun import codec

    b, _ = llm_tsq
    p = codec.TSQParams.from_bytes(bytes.fromhex(b.codec["params"]["hidden"]))
    front, _ = halves
    h = front.step(np.array([[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47]], np.int64), front.new_cache())
    whole = codec.decode_native(codec.encode_native(h, p), h.shape, p)
    steps = np.concatenate([codec.decode_native(codec.encode_native(np.ascontiguousarray(h[:, i:i + 1]), p),
                                                (1, 1, 576), p) for i in range(h.shape[1])], axis=1)
    assert np.array_equal(whole, steps)
    assert np.abs(whole - h).max() > 0  # lossy: the test would pass trivially on raw values


class _Swapped:
    """``bundle`` with one of its files replaced by ``path`` (a half quantized outside the bundle)."""

    def __init__(self, bundle, name, path):
        self.spec, self._bundle, self._name, self._path = bundle.spec, bundle, name, path

    def file(self, name):
        return self._path if name == self._name else self._bundle.file(name)


def test_an_int8_front_runs_matmuls_on_8_bit_weights_and_reports_its_loss_on_text(llm_bundle, halves, tmp_path):
    import onnx

    from edgerun.exporters import llm_codec, llm_quant

    out = tmp_path / "front.int8.onnx"
    llm_quant.quantize(llm_bundle.file(llm.FRONT), out)
    ops = [n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 15 * 7  # q, k, v, o, gate, up, down of each of the 15 layers
    assert out.stat().st_size < 0.6 * llm_bundle.file(llm.FRONT).stat().st_size

    int8 = llm.Half(_Swapped(llm_bundle, llm.FRONT, out), "front", 2)
    chunks = llm_codec.corpus_chunks(llm.Tokenizer(llm_bundle), 1, 48)
    m = llm_quant.measure(halves[0], int8, halves[1], chunks.eval)
    assert m["positions"] == 48 and m["ppl_fp32"] > 1 and m["ppl_int8"] > 1
    assert m["agreement"] > 0.8  # lossy: 97.7 % on 512 positions (dynamic quantization's 73.8 % would fail)


def test_an_int8_back_half_quantizes_the_tied_head_too_and_reports_its_loss_on_text(llm_bundle, halves, tmp_path):
    import onnx

    from edgerun.exporters import llm_codec, llm_quant

    out = tmp_path / "back.int8.onnx"
    llm_quant.quantize(llm_bundle.file(llm.BACK), out, "back")
    ops = [n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 15 * 7 + 1 and "MatMul" in ops  # + the head; attention stays fp32
    assert out.stat().st_size < 0.35 * llm_bundle.file(llm.BACK).stat().st_size  # the head's 108 MiB too

    int8 = llm.Half(_Swapped(llm_bundle, llm.BACK, out), "back", 2)
    chunks = llm_codec.corpus_chunks(llm.Tokenizer(llm_bundle), 1, 48)
    m = llm_quant.measure_back(halves[0], halves[1], int8, chunks.eval)
    assert m["positions"] == 48 and m["ppl_fp32"] > 1 and m["ppl_int8"] > 1
    assert m["agreement"] > 0.8  # lossy: 97.1 % on 512 positions
    # close logits, not the same top-1: this prompt's first token is a near-tie ("The" 25.33 vs "L" 25.24 at
    # fp32) that the int8 back half flips
    ids = llm.Tokenizer(llm_bundle).chat("What is the capital of France?")
    h = halves[0].step(np.array([ids], np.int64), halves[0].new_cache())
    ref, low = halves[1].step(h, halves[1].new_cache()), int8.step(h, int8.new_cache())
    assert 0 < np.linalg.norm(low - ref) < 0.05 * np.linalg.norm(ref)


def test_export_refuses_an_unknown_back_precision(tmp_path):
    from edgerun.exporters.llm_export import export_llm

    with pytest.raises(ConfigError, match="--back-precision must be fp32 or int8"):
        export_llm(tmp_path / "x", back_precision="fp16")
