"""The engine's worker pool (cpp/src/parallel.cpp, edgerun/parallel.h).

Every kernel shares its work out in contiguous blocks whose results do not depend on
which thread computes them, so any thread count gives 1 thread's bits, also with more
threads than cores. Regions from several Python threads at once take turns (the run
releases the GIL), and a fork()ed child gets a pool of its own instead of waiting on
workers that do not exist there.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from edgerun.engine import NativeEngine
from edgerun.exporters.cuts import resolve_cut
from edgerun.exporters.erg import write_erg
from edgerun.exporters.split import split

pytestmark = pytest.mark.runtime

HANG_GUARD_S = 120.0  # turns a deadlock into a failure; not a speed bound


@pytest.fixture(scope="module")
def effnet_fronts(effnet_traced, tmp_path_factory):
    """EfficientNet-Lite0's front half up to blocks.5, fp32 and int8 (every kernel kind:
    stem, fused chains, depthwise, int8 GEMM in two regions, Add)."""
    front, _ = split(effnet_traced.model, resolve_cut(effnet_traced.cuts, "blocks.5"))
    d = tmp_path_factory.mktemp("par")
    fp32, int8 = d / "fp32.erg", d / "int8.erg"
    write_erg(front, fp32)
    layers = {n.name: "int8" for n in front.graph.node if n.op_type == "Conv"}
    write_erg(front, int8, precisions=layers)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    return {"fp32": fp32, "int8": int8}, x


@pytest.mark.parametrize("prec", ["fp32", "int8"])
def test_any_thread_count_gives_one_threads_bits(effnet_fronts, prec):
    paths, x = effnet_fronts
    ref = NativeEngine(paths[prec], max_batch=2, threads=1).run(x)
    for threads in (2, 3, 4, 7):  # 3+ on a 2-core machine: more participants than cores
        got = NativeEngine(paths[prec], max_batch=2, threads=threads).run(x)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{prec} threads={threads} {k}")


def test_engines_on_several_python_threads_at_once(effnet_fronts):
    """Four Python threads, two engines each at 2 threads, runs interleaved: each run equals
    its engine's single-threaded answer, and nothing deadlocks."""
    paths, x = effnet_fronts
    refs = {p: NativeEngine(paths[p], max_batch=2, threads=1).run(x) for p in paths}
    engines = {p: NativeEngine(paths[p], max_batch=2, threads=2) for p in paths}
    errors: list[str] = []

    def worker(i: int) -> None:
        p = "fp32" if i % 2 else "int8"
        eng = NativeEngine(paths[p], max_batch=2, threads=2) if i >= 2 else engines[p]
        for _ in range(4):
            out = eng.run(x)
            if any(not np.array_equal(out[k], refs[p][k]) for k in out):
                errors.append(f"thread {i} ({p}): output differs from 1 thread")

    assert _run_threads(worker, 4), "engine runs on several Python threads deadlocked"
    assert not errors, errors


def _run_threads(worker, n: int) -> bool:
    """Run ``worker(i)`` on ``n`` Python threads at once; False if one is still running after the guard."""
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(HANG_GUARD_S)
    return not any(t.is_alive() for t in ts)


def test_one_engine_shared_by_python_threads_answers_each_its_own(effnet_fronts):
    """A run holds the engine's arena without the GIL: two threads on *one* engine got each other's
    activations (wrong answers, no error; a device's callers on several threads do this). Runs are
    serialized now."""
    paths, x = effnet_fronts
    eng = NativeEngine(paths["int8"], max_batch=1, threads=1)
    refs = [eng.run(x[i : i + 1]) for i in range(2)]
    errors: list[str] = []

    def worker(i: int) -> None:
        for _ in range(6):
            out = eng.run(x[i : i + 1])
            if any(not np.array_equal(out[k], refs[i][k]) for k in out):
                errors.append(f"thread {i}: got another input's answer")

    assert _run_threads(worker, 2), "runs on one engine from two Python threads deadlocked"
    assert not errors, errors


def _in_child(fn, hang_message: str = "the child hung") -> int:
    """fn() in a fork()ed child; its return value (an exit code), or a failure if it hangs."""
    import time

    pid = os.fork()
    if pid == 0:  # child: exit without pytest's teardown
        try:
            os._exit(fn())
        except BaseException:
            os._exit(3)
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(hang_message)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not hasattr(os, "fork"), reason="Linux only")
def test_workers_off_the_core_never_hold_up_a_run(effnet_fronts, monkeypatch):
    """On one core, a worker is mostly not running when a layer starts (as behind another busy
    process on a small board): the caller runs the shares no worker has started itself. Every
    run still gives 1 thread's bits, and such shares were in fact taken back (the caller's wait
    for a late worker is set to 0 so that it happens at every late start). Before this, each
    layer waited for the worker's next time slice: 10x slower than 1 thread."""
    from edgerun import _core

    paths, x = effnet_fronts
    refs = {p: NativeEngine(paths[p], max_batch=2, threads=1).run(x) for p in paths}

    # Read by the child's fresh pool, made at the fork (or at its first threaded run).
    monkeypatch.setenv("EDGERUN_TAKEBACK_US", "0")

    def child() -> int:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # workers start here, on it
        before = _core.pool_shares_taken_back()
        for p in paths:
            for threads in (2, 3):
                out = NativeEngine(paths[p], max_batch=2, threads=threads).run(x)
                if any(not np.array_equal(out[k], refs[p][k]) for k in out):
                    return 1
        return 0 if _core.pool_shares_taken_back() > before else 2

    code = _in_child(child)
    assert code != 1, "a run on one core differs from 1 thread's bits"
    assert code == 0, f"no share was taken back on one core (child exit {code})"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_runs_on_a_pool_of_its_own(effnet_fronts):
    """The parent's workers do not exist in a fork()ed child: a child that ran its engine on
    the inherited pool would wait for them forever."""
    paths, x = effnet_fronts
    eng = NativeEngine(paths["int8"], max_batch=2, threads=2)
    ref = eng.run(x)
    code = _in_child(lambda: 0 if all(np.array_equal(v, ref[k]) for k, v in eng.run(x).items()) else 1,
                     "a fork()ed child's engine run hung on the parent's workers")
    assert code == 0, "the child's run differed from the parent's"


ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _tsan_build(tmp_path):
    import shutil
    import subprocess

    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++")
    probe = tmp_path / "probe.cpp"
    probe.write_text("int main() { return 0; }\n")
    if subprocess.run([cxx, "-fsanitize=thread", str(probe), "-o", str(tmp_path / "probe")],
                      capture_output=True).returncode != 0:
        pytest.skip("this g++ cannot link ThreadSanitizer programs")
    exe = tmp_path / "parallel_check"
    r = subprocess.run([cxx, "-std=c++17", "-O1", "-g", "-fsanitize=thread", "-pthread",
                        f"-I{ROOT / 'cpp' / 'include'}", str(ROOT / "tests" / "cross" / "parallel_check.cpp"),
                        str(ROOT / "cpp" / "src" / "parallel.cpp"), "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return exe


@pytest.mark.parametrize("spin_us,takeback_us,mode", [("0", "300", ""), ("50", "0", ""), ("50", "0", "one-core")])
def test_the_pool_has_no_data_race_under_thread_sanitizer(tmp_path, spin_us, takeback_us, mode):
    """Three caller threads, loops and team regions, workers sleeping between them (0 us
    spin: a sleep and a wake at every region); with no wait for late workers, callers also
    take back shares, on one core at nearly every region."""
    import re
    import subprocess

    exe = _tsan_build(tmp_path)
    r = subprocess.run([str(exe)] + ([mode] if mode else []), capture_output=True, text=True, timeout=HANG_GUARD_S,
                       env={**os.environ, "EDGERUN_SPIN_US": spin_us, "EDGERUN_TAKEBACK_US": takeback_us,
                            "TSAN_OPTIONS": "halt_on_error=1"})
    assert r.returncode == 0 and "ok" in r.stdout, (r.stdout + r.stderr)[-4000:]
    if mode == "one-core":
        assert int(re.search(r"(\d+) shares taken back", r.stdout).group(1)) > 0, r.stdout
