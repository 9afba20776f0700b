"""int8 weights for a split LLM's halves, through onnxruntime's own weight-only quantizer.

``MatMulNBitsQuantizer`` (8 bits, blocks of 32 along the input dim, symmetric) turns every MatMul
of a half (the back half's tied head included) into ``MatMulNBits``; ``accuracy_level`` 4 lets onnxruntime run them on int8
arithmetic (activations quantized per block on the fly). The token embedding is not touched
here (that quantizer only offers 4 bits for Gather): ``quantize_embedding`` stores it in 8 bits. The loss is measured at export on held-out text, against
the fp32 halves, by teacher forcing (``llm_codec.evaluate``' measures): an int8 front through the
fp32 back half, an int8 back half after the front half as deployed.

onnxruntime's dynamic quantization (``quantize_dynamic``, per-tensor 8-bit activations) was measured
too and not kept: mid-network Llama hidden states hold values up to ~24,000 next to a median of ~2,
and it keeps 73.8 % top-1 agreement (perplexity 26.34 -> 32.39). 4-bit weights (blocks of 32) keep
77.1 % (29.69).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from edgerun import llm
from edgerun.errors import ExportError
from edgerun.exporters import llm_codec

BITS, BLOCK, ACCURACY_LEVEL = 8, 32, 4
METHOD = (f"onnxruntime MatMulNBitsQuantizer: {BITS}-bit weights in blocks of {BLOCK}, symmetric, accuracy_level "
          f"{ACCURACY_LEVEL} (int8 arithmetic)")


def quantize(src: Path, dst: Path, side: str = "front") -> None:
    """Write ``src`` (an fp32 half) with int8 MatMul weights to ``dst``."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    qlog = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level, qlog.level = qlog.level, logging.ERROR
    try:
        cfg = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, bits=BITS,
                                           accuracy_level=ACCURACY_LEVEL, op_types_to_quantize=("MatMul",))
        q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=BITS, block_size=BLOCK, is_symmetric=True,
                                 accuracy_level=ACCURACY_LEVEL, algo_config=cfg, op_types_to_quantize=("MatMul",))
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)
    except Exception as exc:  # onnxruntime's quantizer raises many types
        raise ExportError(f"onnxruntime could not quantize the LLM's {side} half to int8: {exc}") from exc
    finally:
        qlog.level = level


def measure(fp32: llm.Half, int8: llm.Half, back: llm.Half, chunks: list[list[int]]) -> dict[str, Any]:
    """Top-1 agreement of the int8 front with the fp32 front (same back half) and both perplexities."""
    return _measure((fp32, back), (int8, back), chunks)


def measure_back(front: llm.Half, fp32: llm.Half, int8: llm.Half, chunks: list[list[int]]) -> dict[str, Any]:
    """Top-1 agreement of the int8 back half with the fp32 one (after the same front half) and both
    perplexities."""
    return _measure((front, fp32), (front, int8), chunks)


def _measure(ref: tuple[llm.Half, llm.Half], low: tuple[llm.Half, llm.Half], chunks: list[list[int]]) -> dict[str, Any]:
    agree, n, nll32, nll8 = 0, 0, [], []
    for c in chunks:
        h = llm_codec._hidden(ref[0], c)
        t32, v32 = llm_codec._score(llm_codec._logits(ref[1], h), c)
        h8 = h if low[0] is ref[0] else llm_codec._hidden(low[0], c)
        t8, v8 = llm_codec._score(llm_codec._logits(low[1], h8), c)
        agree += int((t32 == t8).sum())
        n += len(c)
        nll32.append(v32)
        nll8.append(v8)
    return {"method": METHOD, "agreement": agree / n, "ppl_fp32": math.exp(float(np.mean(nll32))),
            "ppl_int8": math.exp(float(np.mean(nll8))), "positions": n,
            "text": "pydoc_data.topics (stdlib), the held-out half"}


EMBED_BLOCK = 32
EMBED_METHOD = (f"onnxruntime GatherBlockQuantized: int8 rows in blocks of {EMBED_BLOCK}, symmetric, one fp32 scale "
                "per block (SmolLM2's GGUF stores this table as Q8_0, the same scheme: the re-encoding is exact)")


def quantize_embedding(path: Path, vocab: int, hidden: int) -> dict[str, Any]:
    """Store the token embedding of the ONNX front half at ``path`` in 8 bits, in place.

    The ``Gather`` of the [vocab, hidden] fp32 table becomes onnxruntime's ``GatherBlockQuantized``
    (com.microsoft) on an 8-bit table with one fp32 scale per block of ``EMBED_BLOCK`` values
    (``max |x| / 127``, symmetric: stored as uint8 with zero point 128, the form the op takes): a
    little over a quarter of the bytes, and only the looked-up rows are dequantized.
    Returns the bytes before and after and the largest change of any table value (0 where the
    table was Q8_0 to begin with, as SmolLM2's is).

    Raises:
        ExportError: the front half has no such Gather (not an edgerun LLM front half).
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    node = next((n for n in m.graph.node if n.op_type == "Gather" and n.input[0] in inits
                 and list(inits[n.input[0]].dims) == [vocab, hidden]
                 and inits[n.input[0]].data_type == onnx.TensorProto.FLOAT), None)
    readers = 0 if node is None else sum(list(n.input).count(node.input[0]) for n in m.graph.node)
    if node is None or readers != 1 or hidden % EMBED_BLOCK or any(a.name == "axis" and a.i != 0 for a in node.attribute):
        raise ExportError(f"the LLM's front half has no Gather of a [{vocab}, {hidden}] fp32 embedding read by it alone "
                          "(a tied head would read it too) to quantize; "
                          "re-export it with this edgerun (or pass --embedding fp32)")
    table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    blocks = table.reshape(vocab, hidden // EMBED_BLOCK, EMBED_BLOCK)
    scale = (np.abs(blocks).max(-1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(blocks / safe[..., None]), -127, 127).astype(np.int8)
    err = float(np.abs(q.astype(np.float32) * scale[..., None] - blocks).max())
    name = node.input[0]
    m.graph.initializer.remove(inits[name])
    # the op takes uint8 data with zero points (its int8 input is refused): q + 128, zero point 128
    data = (q.astype(np.int16) + 128).astype(np.uint8).reshape(vocab, hidden)
    zero = np.full(scale.shape, 128, np.uint8)
    m.graph.initializer.extend([numpy_helper.from_array(data, name + "_q"), numpy_helper.from_array(scale, name + "_scale"),
                                numpy_helper.from_array(zero, name + "_zero")])
    new = helper.make_node("GatherBlockQuantized", [name + "_q", node.input[1], name + "_scale", name + "_zero"],
                           list(node.output),
                           name=(node.name or "embedding") + "_int8", domain="com.microsoft", bits=8,
                           block_size=EMBED_BLOCK, gather_axis=0, quantize_axis=1)
    at = list(m.graph.node).index(node)
    m.graph.node.remove(node)
    m.graph.node.insert(at, new)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(m, str(path))
    return {"precision": "int8", "method": EMBED_METHOD, "bytes_fp32": int(table.nbytes),
            "bytes": int(data.nbytes + scale.nbytes + zero.nbytes), "max_abs_change": err}
