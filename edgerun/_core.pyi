"""Type stub for the compiled device runtime (cpp/bindings/module.cpp)."""

from typing import Any

import numpy as np

class CoreError(RuntimeError):
    """args = (code: int, message: str); mapped by edgerun.errors.from_core_error."""

# ==== wire: begin ====
WIRE_VERSION: int

def encode_frame(
    kind: int, request_id: int, seq: int, bundle_hash: bytes, meta: bytes, tensors: list[np.ndarray]
) -> bytes:
    """Encode a wire frame v1 with the C++ encoder. meta: compact JSON object bytes or b"".
    Tensors: C-contiguous little-endian float32/float16/int8/uint8/int32/int64, <= 8-D, <= 16 of them."""

def decode_frame(buf: bytes, max_bytes: int, expect_hash: bytes | None = None) -> dict[str, Any]:
    """Validate and decode a frame with the C++ decoder. Keys: version, kind, flags, request_id, seq,
    bundle_hash (bytes), meta (bytes), tensors (list of numpy copies). Raises CoreError (frame group 0x03xx)."""

def crc32(data: bytes, crc: int = 0) -> int:
    """CRC-32 as the wire format computes it (equals zlib.crc32)."""

def wire_code_name(code: int) -> str:
    """Short name of a frame status code ("bad_checksum", ...); "internal" for others."""
# ==== wire: end ====

# ==== codec: begin ====
CODEC_TSQ: int
TSQ_VERSION: int

def tsq_encode(x: np.ndarray, params: bytes) -> bytes:
    """Encode a float32 activation with the tsq codec; params = TSQParams.to_bytes()."""

def tsq_decode(payload: bytes, shape: list[int], params: bytes) -> np.ndarray:
    """Decode a tsq payload (validated) into a float32 array of ``shape``."""
# ==== codec: end ====

# ==== exits: begin ====
def exit_scores(criterion: str, x: np.ndarray, prev: np.ndarray | None = None) -> np.ndarray:
    """One score per row of x (batch, n): "max_prob", "entropy" (nats) or "consistency" (RMS to prev)."""

def exit_all_pass(criterion: str, x: np.ndarray, prev: np.ndarray | None, threshold: float) -> tuple[bool, float]:
    """(every row passes the threshold, the worst row's score)."""

def exit_passes(criterion: str, score: float, threshold: float) -> bool:
    """>= threshold for max_prob, <= for entropy and consistency."""
# ==== exits: end ====

# ==== engine: begin ====
ERG_VERSION: int

def qgemm_path() -> str:
    """Which int8 GEMM micro-kernel runs here ("amx", "avx512-vnni", "avx-vnni", "avx2", "neon"
    or "portable"; EDGERUN_NO_AMX=1 / EDGERUN_NO_AVX512=1 / EDGERUN_NO_VNNI=1 /
    EDGERUN_FORCE_PORTABLE=1 in the environment force the later ones). All give
    bit-identical outputs."""
    ...

def gemm_path() -> str:
    """'avx512', 'avx2-fma' or 'portable': the fp32 GEMM micro-kernel chosen at run time
    (EDGERUN_NO_AVX512=1 / EDGERUN_FORCE_PORTABLE=1 in the environment force the others)."""

def pool_shares_taken_back() -> int:
    """Region shares the calling threads ran themselves because no worker had started them
    (a worker still waking, or off the core behind another busy process), since start."""
    ...

class Engine:
    """Native fp32 engine over a .erg file; allocates nothing per run."""

    def __init__(self, path: str, max_batch: int = 8, threads: int = 1) -> None: ...
    def run(self, inputs: list[np.ndarray], batch: int) -> list[np.ndarray]: ...
    @property
    def inputs(self) -> list[dict[str, Any]]: ...
    @property
    def outputs(self) -> list[dict[str, Any]]: ...
    @property
    def arena_bytes(self) -> int: ...
    @property
    def naive_bytes(self) -> int: ...
    @property
    def scratch_bytes(self) -> int: ...
    @property
    def weight_bytes(self) -> int: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def num_nodes(self) -> int: ...
# ==== engine: end ====
