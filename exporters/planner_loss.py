"""What a lossy plan costs, measured on calibration data: metric loss and codec bytes.

The planner asks only for the candidates it might choose (see ``planner.plan``):
each measurement runs the front half as the device would (native engine at the
candidate's precision), the crossing tensor through the codec (C++ encoder, the server's
decoder), and the fp32 back half on onnxruntime, against the fp32 whole model. The codec
is chosen by the exporter's rule (``stages.choose_codec`` on the cut's fp32 calibration
activations); the planner's calibration inputs are the first ``calib_n`` of the exporter's
(32 of 64 by default), so the exporter's choice can differ by a budget step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgerun.exporters.evaluate import EVAL_BATCH, is_regression


def _ort(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2  # the exporter's evaluation sessions' count (evaluate.session)
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _run(sess, feeds_fn, n: int) -> list[np.ndarray]:
    chunks = [sess.run(None, feeds_fn(i, min(i + EVAL_BATCH, n))) for i in range(0, n, EVAL_BATCH)]
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def front_precisions(front: onnx.ModelProto, precision: str) -> dict[str, str] | None:
    """Per-layer precisions of a uniform mode (int4 keeps depthwise layers at int8, as the exporter does)."""
    if precision == "fp32":
        return None
    from edgerun.exporters.erg import weight_layers

    return {lay["name"]: ("int8" if precision == "int4" and lay["depthwise"] else precision)
            for lay in weight_layers(front)}


class LossMeter:
    """Measures candidates of one traced model on one calibration batch."""

    def __init__(self, traced: Any, calib_x: np.ndarray) -> None:
        self.traced = traced
        self.x = np.ascontiguousarray(calib_x, dtype=np.float32)
        self.in_name = traced.model.graph.input[0].name
        whole = _ort(traced.model)
        self.ref = _run(whole, lambda a, b: {self.in_name: self.x[a:b]}, len(self.x))[0]
        self.regression = is_regression(traced.source, self.ref.shape)
        self._acts: dict[int, dict[str, np.ndarray]] = {}
        self._codec_entry: dict[int, dict] = {}
        self._codec_bytes: dict[int, float] = {}

    def _split(self, cut_index: int):
        from edgerun.exporters.split import split

        return split(self.traced.model, self.traced.cuts[cut_index])

    def _fp32_acts(self, cut_index: int, front: onnx.ModelProto) -> dict[str, np.ndarray]:
        if cut_index not in self._acts:
            sess = _ort(front)
            outs = _run(sess, lambda a, b: {self.in_name: self.x[a:b]}, len(self.x))
            self._acts[cut_index] = {o.name: v for o, v in zip(sess.get_outputs(), outs)}
        return self._acts[cut_index]

    def _front_acts(self, cut_index: int, front: onnx.ModelProto, precision: str) -> dict[str, np.ndarray]:
        if precision == "fp32":
            return {k: v.copy() for k, v in self._fp32_acts(cut_index, front).items()}
        from edgerun.engine import make_engine
        from edgerun.exporters.erg import write_erg

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "front.erg"
            write_erg(front, path, precisions=front_precisions(front, precision))
            eng = make_engine("native", erg_path=path, threads=1, max_batch=EVAL_BATCH)
            chunks = [eng.run({self.in_name: self.x[i : i + EVAL_BATCH]}) for i in range(0, len(self.x), EVAL_BATCH)]
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def codec_entry(self, cut_index: int) -> dict:
        """The tsq entry the exporter's automatic choice makes at this cut (on these calibration inputs)."""
        if cut_index not in self._codec_entry:
            from edgerun.exporters.stages import choose_codec

            front, back = self._split(cut_index)
            self._codec_entry[cut_index] = choose_codec(self._fp32_acts(cut_index, front), _ort(back))
        return self._codec_entry[cut_index]

    def _codec(self, cut_index: int, acts: dict[str, np.ndarray]) -> tuple[dict, float]:
        """Round-trip ``acts`` through the cut's tsq entry; mean bytes per sample."""
        from edgerun.exporters.stages import codec_roundtrip, roundtrip_batch

        return roundtrip_batch(codec_roundtrip(self.codec_entry(cut_index)), acts)

    def codec_bytes(self, cut_index: int) -> float:
        """Mean tsq bytes per request at this cut on the fp32 calibration activations."""
        if cut_index not in self._codec_bytes:
            front, _ = self._split(cut_index)
            self._codec_bytes[cut_index] = self._codec(cut_index, self._fp32_acts(cut_index, front))[1]
        return self._codec_bytes[cut_index]

    def measure(self, cut_index: int, precision: str, codec: str) -> tuple[float, float | None]:
        """(metric loss, codec bytes per request or None) of one candidate.

        Loss is ``stages.split_loss`` against the fp32 whole model: top-1 disagreement or, when
        larger, the flip rate that the candidate's logit changes predict on unseen inputs
        (classifiers); the mean absolute action error relative to the actions' spread (policies).
        """
        from edgerun.exporters.stages import split_loss
        from edgerun.profiles import WHOLE

        if cut_index == WHOLE:  # all on the device at a lower precision: the whole model quantized
            outs = self._front_acts(cut_index, self.traced.model, precision)
            return split_loss(self.ref, outs[self.traced.model.graph.output[0].name], self.regression), None
        front, back = self._split(cut_index)
        acts = self._front_acts(cut_index, front, precision)
        nbytes = None
        if codec != "none":
            acts, nbytes = self._codec(cut_index, acts)
        sess = _ort(back)
        out = _run(sess, lambda a, b: {i.name: acts[i.name][a:b] for i in sess.get_inputs()}, len(self.x))[0]
        return split_loss(self.ref, out, self.regression), nbytes
