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

``--two-input``: the same task seen through a camera, a policy with TWO inputs (``image``: a 24x24 picture
of the pendulum; ``joints``: the angular velocity), ``benchmarks/models/pendulum_vision.py``, exported as a
user's model file with ``--data`` (its calibration/evaluation states) at the end of its vision trunk, the
joints passing through the cut and read by every exit head. Besides the episodes it measures, on 3200
held-out states of rollouts no other step saw (seeds from TEST_SEED), each budget's action MAE vs the whole
model and vs the expert, and the share answered locally; "alone" is the device with no server (every step
answered by its deepest exit, as when the server is unreachable).

    python benchmarks/bench_policy.py [--episodes 20] [--out benchmarks/results]
    python benchmarks/bench_policy.py --two-input [--episodes 20] [--out benchmarks/results]
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
TWO_INPUT_CUT = "vision"  # the vision trunk's end: the joints pass through it
TEST_SEED = 30_000      # held-out test rollouts of --two-input: disjoint from training, --data and episodes
TEST_ROLLOUTS = 16      # x 200 states


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


def controllers(b, feeds: Callable[[np.ndarray], dict] | None = None) -> dict[str, Callable]:
    """Name -> controller for every row of the table (bundle ``b`` with exits)."""
    import onnxruntime as ort

    from edgerun.engine import make_engine
    from edgerun.exits import ExitController
    from edgerun.feeds import with_passthrough
    from edgerun.exporters.zoo.pendulum_policy import expert_action

    feeds = feeds or (lambda o: {"obs": o})

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
    front_names = [i["name"] for i in b.manifest["inputs"] if i["name"] not in b.passthrough]

    def front_feeds(o):
        f = feeds(o)
        return {k: f[k] for k in front_names}

    def on_back(cut: dict) -> float:
        return float(back.run(None, {i.name: cut[i.name] for i in back.get_inputs()})[0][0, 0])

    ctl: dict[str, Callable] = {
        "expert": lambda o: (float(expert_action(o)[0]), False, 0.0),
        "whole (onnxruntime)": lambda o: (float(whole.run(None, feeds(o))[0][0, 0]), False, 1.0),
        f"split ({'native' if native else 'ort'} front + ort back)":
            lambda o: (on_back(with_passthrough(front.run(front_feeds(o)), feeds(o), b.passthrough)), False, 1.0),
    }
    for name in ["off", *b.manifest["exits"]["budgets"]]:
        c = ExitController(b, engine=exit_engine, budget=name, max_batch=1)

        def act(o, c=c):
            s = c.run(feeds(o))
            if s.exited is not None:
                return float(s.heads[s.exited][0, 0]), True, s.compute_fraction
            return on_back(s.cut), False, s.compute_fraction

        ctl[f"exits, budget {name} ({exit_engine})"] = act
    alone = ExitController(b, engine=exit_engine, budget="off", max_batch=1)

    def act_alone(o):  # no server: the deepest exit answers every step
        s = alone.run(feeds(o))
        return float(s.heads[-1][0, 0]), True, s.compute_fraction

    ctl[f"alone: deepest exit, no server ({exit_engine})"] = act_alone
    return ctl


MODEL_FILE = Path(__file__).parent / "models" / "pendulum_vision.py"


def held_out(b, feeds: Callable[[np.ndarray], dict], exit_engine: str) -> dict:
    """Per budget on TEST_ROLLOUTS held-out rollouts: action MAE vs the whole model and vs the expert, share of
    states answered locally, average front compute. A state no exit answers gets the server's answer (the
    whole model's: the split equals it); "alone" answers every state from the deepest exit."""
    import onnxruntime as ort

    from edgerun.exits import ExitController
    from edgerun.exporters.zoo.pendulum_policy import collect

    obs, expert = collect(TEST_ROLLOUTS, TEST_SEED)
    x = feeds(obs)
    whole = ort.InferenceSession(str(b.file("whole.onnx")), providers=["CPUExecutionProvider"]).run(None, x)[0]
    out = {"n_states": int(len(obs)), "test_seed": TEST_SEED,
           "whole": {"mae_vs_expert": float(np.abs(whole - expert).mean())}}
    for name in ["off", *b.manifest["exits"]["budgets"], "alone"]:
        c = ExitController(b, engine=exit_engine, budget="off" if name == "alone" else name, max_batch=1)
        act, local, compute = whole.copy(), np.zeros(len(obs), bool), np.zeros(len(obs))
        for i in range(len(obs)):
            s = c.run({k: v[i: i + 1] for k, v in x.items()})
            at = len(s.heads) - 1 if name == "alone" else s.exited
            if at is not None:
                act[i], local[i] = s.heads[at][0], True
            compute[i] = s.compute_fraction
        dev = np.abs(act - whole)
        out[name] = {"mae_vs_whole": float(dev.mean()), "within_0.1_of_whole": float(np.mean(dev <= 0.1)),
                     "mae_vs_expert": float(np.abs(act - expert).mean()), "local_fraction": float(local.mean()),
                     "avg_front_compute_fraction": float(compute.mean())}
    return out


def two_input(args) -> None:
    """--two-input: the camera-and-joints policy (see the module docstring)."""
    import importlib.util

    from edgerun.exporters.pipeline import ExportConfig, export
    from edgerun.report import table

    spec = importlib.util.spec_from_file_location("pendulum_vision", MODEL_FILE)
    pv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-policy-2in-"))
    pv.save_data(str(tmp / "samples.npz"))
    t0 = time.perf_counter()
    b = export(f"{MODEL_FILE}:make", ExportConfig(cut=TWO_INPUT_CUT, exits="auto", data=tmp / "samples.npz"),
               tmp / "bundle")
    export_s = time.perf_counter() - t0
    rep = json.loads(b.file("report.json").read_text())
    exit_engine = "native" if all(p.get("erg") for p in b.manifest["exits"]["points"]) else "ort"

    def feeds(o: np.ndarray) -> dict:
        return dict(zip(("image", "joints"), pv.inputs(o)))

    test = held_out(b, feeds, exit_engine)
    rows = {}
    for name, act in controllers(b, feeds).items():
        t = time.perf_counter()
        rows[name] = run_episodes(act, args.episodes)
        rows[name]["seconds"] = round(time.perf_counter() - t, 2)
    budgets = [k for k in test if k not in ("n_states", "test_seed", "whole")]
    text = (f"{MODEL_FILE.name} (inputs image 1x24x24 + joints; joints pass through the cut) cut={b.cut_label}, "
            f"exits at {rep['exits']['points']} (criterion {rep['exits']['criterion']}, heads read {b.passthrough})\n"
            f"held-out: {test['n_states']} states of rollouts seeded {TEST_SEED}..; whole model MAE vs expert "
            f"{test['whole']['mae_vs_expert']:.4f}\n\n")
    text += table(["budget", "MAE vs whole", "within 0.1 of whole", "MAE vs expert", "answered locally",
                   "avg front compute"],
                  [[k, f"{test[k]['mae_vs_whole']:.4f}", f"{test[k]['within_0.1_of_whole']:.3f}",
                    f"{test[k]['mae_vs_expert']:.4f}", f"{test[k]['local_fraction']:.3f}",
                    f"{test[k]['avg_front_compute_fraction']:.3f}"] for k in budgets]) + "\n\n"
    text += (f"{args.episodes} Pendulum-v1 episodes, seeds {SEED0}..\n"
             + table(["controller", "return (mean)", "return (std)", "answered locally", "avg front compute"],
                     [[k, f"{r['return_mean']:.1f}", f"{r['return_std']:.1f}", f"{r['local_fraction']:.3f}",
                       f"{r['avg_front_compute_fraction']:.3f}"] for k, r in rows.items()]) + "\n")
    print(text)
    (args.out / "policy_two_input.txt").write_text(text)
    summary = {"model": f"benchmarks/models/{MODEL_FILE.name}", "cut": b.cut_label, "episodes": args.episodes,
               "seed0": SEED0, "export_seconds": round(export_s, 1), "held_out": test, "rows": rows,
               "thresholds": {k: v["thresholds"] for k, v in b.manifest["exits"]["budgets"].items()},
               "exits_report": rep["exits"]}
    path = args.out / "policy_two_input.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path} and {args.out / 'policy_two_input.txt'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--two-input", action="store_true",
                    help="the camera + joints policy (benchmarks/models/pendulum_vision.py) instead of the zoo's")
    args = ap.parse_args()
    if args.two_input:
        args.out.mkdir(parents=True, exist_ok=True)
        return two_input(args)

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
