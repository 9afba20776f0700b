"""The back half's precision: fp32, fp16 or int8, through onnxruntime's own tools.

The server keeps the precision that keeps accuracy; fp16 halves its weights and
runs fast on a GPU (CUDA EP), int8 (static QDQ, per-channel weights, calibrated
on real cut activations) suits a CPU server. We use onnxruntime's converters
as they are: ``float16.convert_float_to_float16`` and ``quantization.quantize_static``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

from edgerun.errors import ConfigError, ExportError

BACK_PRECISIONS = ("fp32", "fp16", "int8")


def quantize_back(back: onnx.ModelProto, precision: str, calib: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Return the back half at ``precision``; its inputs and outputs stay float32.

    Args:
        back: the fp32 back half.
        precision: one of ``BACK_PRECISIONS``.
        calib: for int8, real cut activations keyed by the back half's input names
            (one row per sample).

    Raises:
        ConfigError: unknown precision, or int8 without calibration data.
        ExportError: onnxruntime's tool refused the graph.
    """
    if precision not in BACK_PRECISIONS:
        raise ConfigError(f"back precision {precision!r} is not one of {BACK_PRECISIONS}")
    if precision == "fp32":
        return back
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        try:
            return convert_float_to_float16(back, keep_io_types=True, disable_shape_infer=False)
        except Exception as exc:  # the converter raises plain exceptions
            raise ExportError(f"onnxruntime's fp16 converter failed on the back half: {exc}") from exc
    if not calib:
        raise ConfigError("int8 back half needs calibration activations; export a zoo model or pass calibration data")
    return _int8_static(back, calib)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantizer logs advice on the root logger; keep the CLI output ours."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _int8_static(back: onnx.ModelProto, calib: dict[str, np.ndarray]) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    n = len(next(iter(calib.values())))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= n:
                return None
            self.i += 1
            return {k: v[self.i - 1 : self.i] for k, v in calib.items()}

    with tempfile.TemporaryDirectory() as d, _quiet_root_logger():
        src, dst = Path(d) / "back.onnx", Path(d) / "back.int8.onnx"
        onnx.save(back, src)
        try:  # NaN / Inf inside the back half give numpy warnings here; the export then measures and refuses it
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                quantize_static(
                    str(src), str(dst), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                )
        except Exception as exc:
            raise ExportError(f"onnxruntime's static quantizer failed on the back half: {exc}") from exc
        return onnx.load(dst)
