#!/usr/bin/env bash
# Builds (and with --run, runs) the fp32 vs fp16 kernel micro-benchmark, outside the package build.
#   bash benchmarks/fp16_kernels/build.sh [--run [ROUNDS [OUT.json]]]
# -O3 as the engine (CMakeLists.txt): at -O2 the fp32 depthwise kernels ran 1.3-1.9x slower here.
# Needs g++ >= 12 (AVX512-FP16 intrinsics); running it needs a CPU with AVX512-FP16 (Sapphire Rapids).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${BUILD_DIR:-/tmp/edgerun-fp16-bench}"
mkdir -p "$out"
# -Wno-(maybe-)uninitialized: GCC 12's AVX-512 headers build masked ops and casts on
# self-initialised "undefined" vectors, which -Wall reports at every inlined use.
g++ -O3 -std=c++17 -Wall -Wextra -Wno-uninitialized -Wno-maybe-uninitialized -o "$out/dw_fp16_bench" "$here/dw_fp16_bench.cpp"
echo "built $out/dw_fp16_bench"
if [[ "${1:-}" == "--run" ]]; then
  shift
  "$out/dw_fp16_bench" "$@"
fi
