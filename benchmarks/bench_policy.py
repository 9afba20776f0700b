"""Closed loop on gymnasium's Pendulum-v1: expert vs whole policy vs split vs early exits per budget.

Exports ``zoo:pendulum-policy`` cut at ``l4`` with ``--exits auto`` (action-consistency exits),
then runs N fixed-seed episodes (``env.reset(seed=SEED0 + i)``, 200 steps) with each controller,
in process and without a broker:

* the scripted expert;
* the whole policy (onnxruntime on ``whole.onnx``);
* the split policy as deployed: front half on the native engine (onnxruntime when the bundle
  has none), back half on onnxruntime;
* the device with exits under each named budget (``edgerun.exits.ExitController``): a state
  answered locally takes the confident exit's action, otherwise the cut tensor goes to the
  back half (what the server would do).

Reports average return (higher is better; the expert reaches about -150), the share of steps
answered locally and the average front compute (fraction of the front half, heads included).

    python benchmarks/bench_policy.py [--episodes 20] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

SEED0 = 50_000          # episode seeds: disjoint from the policy's training/calibration/eval data
CUT = "l4"


def run_episodes(act: Callable[[np.ndarray], tuple[float, bool, float]], episodes: int) -> dict:
    """Average return of ``act`` (obs -> (torque, answered locally, front compute)) on Pendulum-v1."""
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    returns, local, compute = [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=SEED0 + ep)
        total, done = 0.0, False
        while not done:
            u, here, frac = act(np.asarray(obs, np.float32).reshape(1, 3))
            obs, r, term, trunc, _ = env.step(np.array([u], np.float32))
            total += float(r)
            local.append(here)
            compute.append(frac)
            done = term or trunc
        returns.append(total)
    env.close()
    return {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
            "return_min": float(np.min(returns)), "local_fraction": float(np.mean(local)),
            "avg_front_compute_fraction": float(np.mean(compute)), "episodes": episodes}


def controllers(b) -> dict[str, Callable]:
    """Name -> controller for every row of the table (bundle ``b`` with exits)."""
    import onnxruntime as ort

    from edgerun.engine import make_engine
    from edgerun.exits import ExitController
    from edgerun.exporters.zoo.pendulum_policy import expert_action

    def sess(name: str):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        return ort.InferenceSession(str(b.file(name)), opts, providers=["CPUExecutionProvider"])

    whole, back = sess("whole.onnx"), sess("back.onnx")
    native = bool(b.manifest["native"]["ok"])
    front = (make_engine("native", erg_path=b.file("front.erg"), max_batch=1) if native
             else make_engine("ort", onnx_path=b.file("front.onnx")))
    exit_engine = "native" if all(p.get("erg") for p in b.manifest["exits"]["points"]) else "ort"

    def on_back(cut: dict) -> float:
        return float(back.run(None, {i.name: cut[i.name] for i in back.get_inputs()})[0][0, 0])

    ctl: dict[str, Callable] = {
        "expert": lambda o: (float(expert_action(o)[0]), False, 0.0),
        "whole (onnxruntime)": lambda o: (float(whole.run(None, {"obs": o})[0][0, 0]), False, 1.0),
        f"split ({'native' if native else 'ort'} front + ort back)": lambda o: (on_back(front.run({"obs": o})), False, 1.0),
    }
    for name in ["off", *b.manifest["exits"]["budgets"]]:
        c = ExitController(b, engine=exit_engine, budget=name, max_batch=1)

        def act(o, c=c):
            s = c.run({"obs": o})
            if s.exited is not None:
                return float(s.heads[s.exited][0, 0]), True, s.compute_fraction
            return on_back(s.cut), False, s.compute_fraction

        ctl[f"exits, budget {name} ({exit_engine})"] = act
    return ctl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    from edgerun.exporters.pipeline import ExportConfig, export
    from edgerun.report import table

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    b = export("zoo:pendulum-policy", ExportConfig(cut=CUT, exits="auto"),
               Path(tempfile.mkdtemp(prefix="bench-policy-")) / "bundle")
    export_s = time.perf_counter() - t0
    rep = json.loads(b.file("report.json").read_text())
    rows = {}
    for name, act in controllers(b).items():
        t = time.perf_counter()
        rows[name] = run_episodes(act, args.episodes)
        rows[name]["seconds"] = round(time.perf_counter() - t, 2)
    text = (f"zoo:pendulum-policy cut={b.cut_label}, exits at {rep['exits']['points']} "
            f"(criterion {rep['exits']['criterion']}), {args.episodes} Pendulum-v1 episodes, seeds {SEED0}..\n"
            f"held-out action MAE vs expert: whole {rep['metric_whole_fp32']:.4f}, split {rep['metric_split']:.4f}\n\n")
    text += (table(["controller", "return (mean)", "return (std)", "answered locally", "avg front compute"],
                [[k, f"{r['return_mean']:.1f}", f"{r['return_std']:.1f}", f"{r['local_fraction']:.3f}",
                  f"{r['avg_front_compute_fraction']:.3f}"] for k, r in rows.items()]) + "\n")
    print(text)
    (args.out / "policy.txt").write_text(text)
    summary = {"model": "zoo:pendulum-policy", "cut": b.cut_label, "episodes": args.episodes, "seed0": SEED0,
               "export_seconds": round(export_s, 1), "rows": rows,
               "thresholds": {k: v["thresholds"] for k, v in b.manifest["exits"]["budgets"].items()},
               "exits_report": rep["exits"], "action_mae_whole": rep["metric_whole_fp32"],
               "action_mae_split": rep["metric_split"]}
    path = args.out / "policy.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path} and {args.out / 'policy.txt'}")


if __name__ == "__main__":
    main()
