"""pendulum-policy: the expert, the imitation policy, and action-consistency exits on it."""

from __future__ import annotations

import numpy as np
import pytest

from edgerun.errors import ConfigError

pp = pytest.importorskip("edgerun.exporters.zoo.pendulum_policy")

# Named tolerances.
IMITATION_MAE = 0.12        # N·m; the expert's torque std on held-out states is ~1.1 N·m
DYNAMICS_ATOL = 1e-5        # our numpy step vs gymnasium's Pendulum-v1 (float32 inside gymnasium)
CALIB_SLACK = 1e-6          # the calibration rule holds exactly on the calibration split
TEST_SLACK = 3.0            # on unseen states the mean deviation may exceed the calibrated bound a bit
MIN_LOCAL_SHARE = 0.05      # the cheapest budget answers at least this share of states locally


@pytest.fixture(scope="module")
def policy():
    from edgerun.exporters import zoo

    return zoo.load("zoo:pendulum-policy")


@pytest.fixture(scope="module")
def bundle(policy, tmp_path_factory):
    from edgerun.exporters.pipeline import ExportConfig, export

    return export("zoo:pendulum-policy", ExportConfig(cut="l4", exits="auto"),
                  tmp_path_factory.mktemp("bundles") / "pendulum")


def test_expert_torque_is_bounded_and_stabilizes_upright():
    obs = pp.observe(np.linspace(-np.pi, np.pi, 101), np.linspace(-8, 8, 101))
    u = pp.expert_action(obs)
    assert np.all(np.abs(u) <= pp.MAX_TORQUE)
    # Tilted right of upright (θ > 0), at rest: push back (negative torque).
    assert pp.expert_action(pp.observe(np.array([0.2]), np.array([0.0])))[0] < 0


def test_numpy_dynamics_match_gymnasium():
    gym = pytest.importorskip("gymnasium")
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=3)
    th, w = float(np.arctan2(obs[1], obs[0])), float(obs[2])
    rng = np.random.default_rng(0)
    for _ in range(50):
        u = float(rng.uniform(-3, 3))
        obs, reward, *_ = env.step(np.array([u], np.float32))
        th, w, r = pp.pendulum_step(th, w, u)
        np.testing.assert_allclose(obs, pp.observe(np.array(th), np.array(w)), atol=DYNAMICS_ATOL)
        assert reward == pytest.approx(r, abs=DYNAMICS_ATOL)
    env.close()


def test_collect_is_deterministic_and_rejects_bad_sizes():
    a, ya = pp.collect(2, seed=5, steps=20)
    b, yb = pp.collect(2, seed=5, steps=20)
    assert a.shape == (40, 3) and ya.shape == (40, 1) and ya.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError):
        pp.collect(0, seed=0)


def test_policy_imitates_the_expert_on_held_out_states(policy):
    x, y = policy.eval_data()
    assert policy.metric == "action_mae" and x.shape[1:] == (3,) and y.shape == (len(x), 1)
    assert pp.action_mae(policy.module, x, y) < IMITATION_MAE
    # Calibration states come from other seeds than the evaluation states.
    cal = policy.calib_data(256)
    assert cal.shape == (256, 3)
    assert not set(map(tuple, cal.round(6))) & set(map(tuple, x.round(6)))


def test_bundle_has_consistency_exits_and_a_regression_report(bundle):
    import json

    entry = bundle.manifest["exits"]
    assert entry["criterion"] == "consistency"
    assert len(entry["points"]) == 3 and entry["points"][-1]["label"] == "l4"
    rep = json.loads(bundle.file("report.json").read_text())
    assert rep["metric"] == "action_mae" and "action_mae_vs_whole" in rep
    assert rep["metric_split"] == pytest.approx(rep["metric_whole_fp32"], abs=1e-4)
    assert rep["exits"]["metric"] == "action_mae"


def _local_answers(bundle, x: np.ndarray, budget: str) -> tuple[np.ndarray, np.ndarray]:
    """(answered locally? (N,), the action given (N,)) running the device's controller per state."""
    from edgerun.exits import ExitController

    ctl = ExitController(bundle, engine="ort", budget=budget)
    local, act = np.zeros(len(x), bool), np.zeros(len(x), np.float32)
    for i in range(len(x)):
        step = ctl.run({"obs": x[i: i + 1]})
        local[i] = step.exited is not None
        act[i] = step.heads[-1][0, 0]
    return local, act


def _calibration_states(policy) -> np.ndarray:
    # The split exporters.exits.build_exits makes: the held-out CALIB_SHARE of the training inputs.
    from edgerun.exporters import exits as ex

    x_all = np.ascontiguousarray(policy.calib_data(ex.MAX_TRAIN), dtype=np.float32)
    perm = np.random.default_rng(0).permutation(len(x_all))
    return x_all[perm[: max(1, int(len(x_all) * ex.CALIB_SHARE))]]


@pytest.mark.parametrize("budget", ["fast", "balanced"])
def test_local_answers_stay_within_the_calibrated_tolerance(policy, bundle, budget):
    import onnx

    from edgerun.exporters.exits import run_points

    cfg = bundle.manifest["exits"]["budgets"][budget]
    whole_model = onnx.load(bundle.file("whole.onnx"))
    for x, slack in ((_calibration_states(policy), CALIB_SLACK), (policy.eval_data()[0], TEST_SLACK)):
        whole = run_points(whole_model, [], x)["logits"][:, 0]
        local, act = _local_answers(bundle, x, budget)
        assert local.mean() >= MIN_LOCAL_SHARE if budget == "fast" else local.any()
        # The calibration rule: mean |answer - whole| / std(whole) over ALL states <= max_loss
        # (server answers deviate by 0).
        dev = np.where(local, np.abs(act - whole), 0.0).mean() / float(whole.std())
        assert dev <= cfg["max_loss"] * (1 + slack) + 1e-9, (budget, dev, cfg["max_loss"])
