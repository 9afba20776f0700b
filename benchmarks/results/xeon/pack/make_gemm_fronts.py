"""MatMul + Add graphs (a Linear on [batch, M, K]) as .erg files, M x K x N swept (ab_builds.py fronts).

    python benchmarks/results/xeon/pack/make_gemm_fronts.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgerun.exporters.erg import write_erg

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for M in (8, 17, 32, 50, 64, 100, 197):
    for K, N in ((384, 1536), (1536, 384), (192, 768)):
        W = numpy_helper.from_array((rng.standard_normal((K, N)) * 0.05).astype(np.float32), "W")
        B = numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "B")
        g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["t"]), helper.make_node("Add", ["t", "B"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", M, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", M, N])], [W, B])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        write_erg(m, out / f"g_m{M:03d}_k{K}_n{N}.erg")
