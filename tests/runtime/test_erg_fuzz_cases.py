""".erg files a fuzzer under AddressSanitizer made the engine read or write out of bounds with
(tests/golden/erg_fuzz, built by hand to the format): each must now be refused when it loads,
with one EdgerunError, before any kernel runs.

- concat_batch_axis*: a Concat along axis 0 with a fixed first dim: a negative / too large copy;
- dims_overflow*: dims whose product wrapped past 2^63: a 4-element weight stood for 2^64 + 4;
- broadcast_batch3: [N] + [2] -> [2] was valid at batch 1 and 2 (the batches checked), not at 3;
- gemm_scalar_out: a Gemm output of rank 0: its last dim was read at index 2^32 - 1;
- conv_dilation_overflow, pool_index_overflow: strides, dilations or pads near 2^62 overflowed the
  size checks and the index arithmetic;
- pool_huge_kernel_hang: a pooling kernel of 2^43 looped 2^43 times per output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgerun.engine import NativeEngine
from edgerun.errors import EdgerunError

pytestmark = pytest.mark.runtime

CASES = sorted((Path(__file__).resolve().parents[1] / "golden" / "erg_fuzz").glob("*.erg"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_a_fuzzed_graph_is_refused_at_load(path):
    assert len(CASES) == 9
    with pytest.raises(EdgerunError):
        eng = NativeEngine(path, max_batch=4, threads=1)
        shapes = [(3, *s[1:]) if s and s[0] == -1 else tuple(s) or (1,) for s in eng.input_shapes]
        eng.run({n: np.ones(s, np.float32) for n, s in zip(eng.input_names, shapes)})  # not reached
