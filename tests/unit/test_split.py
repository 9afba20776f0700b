"""For every valid cut of both zoo models, back(front(x)) equals the whole model.

Both halves and the whole run on onnxruntime; the tolerance is the one
`edgerun verify` uses (SPLIT_VS_WHOLE_*), relative to the output scale.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgerun.exporters.split import split
from edgerun.verify import SPLIT_VS_WHOLE_ATOL, SPLIT_VS_WHOLE_RTOL


def _sess(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _check_every_cut(traced, x: np.ndarray) -> int:
    whole = _sess(traced.model)
    in_name = traced.model.graph.input[0].name
    ref = whole.run(None, {in_name: x})[0]
    limit = SPLIT_VS_WHOLE_ATOL + SPLIT_VS_WHOLE_RTOL * float(np.abs(ref).max())
    for cut in traced.cuts:
        front, back = split(traced.model, cut)
        assert [o.name for o in front.graph.output] == list(cut.tensors)
        assert [i.name for i in back.graph.input] == list(cut.tensors)
        mid = _sess(front).run(None, {in_name: x})
        b = _sess(back)
        out = b.run(None, {i.name: m for i, m in zip(b.get_inputs(), mid)})[0]
        err = float(np.abs(out - ref).max())
        assert err <= limit, f"cut {cut.label}: |split - whole| = {err} > {limit}"
    return len(traced.cuts)


def test_every_digits_cut_matches_whole(digits_traced):
    from edgerun.exporters import zoo

    x, _ = zoo.load("digits-cnn").eval_data(limit=16)
    assert _check_every_cut(digits_traced, x) >= 8


@pytest.mark.slow
def test_every_efficientnet_cut_matches_whole(effnet_traced):
    from edgerun.exporters import zoo

    x, _ = zoo.load("efficientnet-lite0").eval_data(limit=2)
    n = _check_every_cut(effnet_traced, x)
    assert n >= 16  # at least one cut per MBConv block
