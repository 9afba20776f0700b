"""What crosses the cut: the tensors the device sends, through the bundle's activation codec.

The device calls :func:`pack` (C++ encoder), the server :func:`unpack` (the C++ decoder,
``codec.decode_native``, ~7x faster than the numpy reference ``codec.decode``, which is used
when the compiled core is not built). Frames are self-describing: a coded tensor carries its
codec id and params, so the server needs nothing but the frame; the bundle hash in the frame
ties both to one export.

A coded tensor is small on the wire and large once decoded (a row of zeros costs 2.5 bytes
for its whole length), so the server checks the *declared* shapes against its bundle and
bounds the decoded bytes with :func:`decoded_bytes` before anything is decoded.
"""

from __future__ import annotations

import math

import numpy as np

from edgerun import wire
from edgerun.errors import BundleError, FrameError


class Packer:
    """Encodes the cut tensors as the bundle says (``manifest["codec"]``)."""

    def __init__(self, codec_entry: dict) -> None:
        self.codec_id = codec_entry.get("id", "none")
        self.params: dict[str, bytes] = {}
        if self.codec_id == "tsq":
            self.params = {name: bytes.fromhex(h) for name, h in codec_entry["params"].items()}
        elif self.codec_id != "none":
            raise BundleError(f"bundle uses codec {self.codec_id!r}, which this edgerun does not know; upgrade it")

    def pack(self, tensors: dict[str, np.ndarray]) -> list[np.ndarray | wire.CodedTensor]:
        """Tensors in cut order, coded when the bundle has a codec.

        Raises:
            FrameError: code ``non_finite`` when a tensor holds NaN/Inf (never sent).
        """
        if self.codec_id == "none":
            return [np.ascontiguousarray(x) for x in tensors.values()]
        from edgerun import codec

        out: list[np.ndarray | wire.CodedTensor] = []
        for name, x in tensors.items():
            x = np.ascontiguousarray(x, dtype=np.float32)
            payload = codec.encode_native(x, self.params[name])
            out.append(wire.CodedTensor(wire.CODEC_TSQ, 1, tuple(x.shape), self.params[name], payload))
        return out


def decoded_bytes(tensors: list[np.ndarray | wire.CodedTensor]) -> int:
    """Bytes the tensors take once decoded, from their declared shapes (nothing is decoded)."""
    total = 0
    for t in tensors:
        if isinstance(t, wire.CodedTensor):
            total += math.prod(t.shape) * wire.DTYPES[t.dtype].itemsize
        else:
            total += t.nbytes
    return total


def decoder():
    """The server's tsq decoder: the C++ one, or the numpy reference (same checks and values)
    when the compiled core is not built."""
    from edgerun import codec

    return codec.decode_native if wire.has_core() else codec.decode


def unpack(tensors: list[np.ndarray | wire.CodedTensor]) -> list[np.ndarray]:
    """Decode coded tensors (server side); raw arrays pass through.

    Check the declared shapes and :func:`decoded_bytes` first: this allocates them.

    Raises:
        FrameError: the codec params or payload are malformed.
    """
    out, decode = [], decoder()
    for i, t in enumerate(tensors):
        if not isinstance(t, wire.CodedTensor):
            out.append(t)
            continue
        from edgerun import codec

        if t.codec != wire.CODEC_TSQ:
            raise FrameError(f"tensor {i}: codec {t.codec} is not supported here", "unsupported_codec")
        try:
            params = codec.TSQParams.from_bytes(t.params)
        except Exception as exc:  # a bad params blob is the sender's fault
            raise FrameError(f"tensor {i}: tsq params are malformed ({exc})", "malformed") from None
        out.append(decode(t.payload, t.shape, params))
    return out
