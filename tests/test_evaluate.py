"""Evaluation: metrics on constructed residuals, profiles, outputs, saliency, a full run (CPU)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import uproot

from xecjax import evaluate, metrics
from xecjax.geometry import N_SENSORS
from xecjax.rootio import TreeWriter

ROOT = Path(__file__).resolve().parents[1]


def equator(d_phi, d_theta=None):
    """(pred, true) on theta = 90 deg, where the opening angle of a pure d_phi is |d_phi|."""
    d_phi = np.asarray(d_phi, float)
    true = np.stack([np.full_like(d_phi, 90.0), np.zeros_like(d_phi)], 1)
    pred = true + np.stack([np.zeros_like(d_phi) if d_theta is None else d_theta, d_phi], 1)
    return pred, true


def test_metrics_on_hand_computed_residuals():
    pred, true = equator([1.0, 2.0, 3.0, 4.0, 5.0])
    m = metrics.evaluation_metrics(pred, true)
    assert m["phi_bias"] == pytest.approx(3.0)
    assert m["phi_rms"] == pytest.approx(np.sqrt(2.0))  # std of 1..5
    assert m["phi_skew"] == pytest.approx(0.0, abs=1e-9)
    assert m["theta_bias"] == m["theta_rms"] == 0.0
    # np.quantile (linear) of 1..5: 50th 3, 68th 1 + 0.68 * 4, 90th 1 + 0.9 * 4
    assert m["psi_50"] == pytest.approx(3.0, abs=1e-6)
    assert m["psi_68"] == pytest.approx(3.72, abs=1e-6)
    assert m["psi_90"] == pytest.approx(4.6, abs=1e-6)
    assert m["val_resolution_deg"] == m["psi_68"]

    # d_theta 1, 1, 1, -3: mean 0, std sqrt(3), skew (3 - 27) / 4 / 3^1.5
    d_theta = np.array([1.0, 1.0, 1.0, -3.0])
    pred, true = equator(np.zeros(4), d_theta)
    m = metrics.evaluation_metrics(pred, true)
    assert (m["theta_bias"], m["theta_rms"]) == pytest.approx((0.0, np.sqrt(3.0)))
    assert m["theta_skew"] == pytest.approx(-6.0 / 3.0**1.5)


def test_phi_residual_wraps_around():
    true = np.array([[90.0, 179.0], [90.0, -179.5]])
    pred = np.array([[90.0, -179.0], [90.0, 179.5]])
    m = metrics.evaluation_metrics(pred, true)
    assert m["phi_bias"] == pytest.approx(0.5)  # +2 and -1, not -358 and +359
    assert m["phi_rms"] == pytest.approx(1.5)
    assert m["psi_90"] < 2.0 + 1e-6


def test_perfect_predictor_has_zero_resolution():
    rng = np.random.default_rng(1)
    true = np.stack([rng.uniform(70, 110, 500), rng.uniform(-60, 60, 500)], 1)
    m = metrics.evaluation_metrics(true.copy(), true)
    for k in ("theta_bias", "theta_rms", "phi_bias", "phi_rms", "psi_50", "psi_68", "psi_90"):
        assert abs(m[k]) < 1e-4, k
    prof = metrics.profiles_of(true.copy(), true)
    assert np.nanmax(np.abs(prof["theta"]["psi68"])) < 1e-4


def test_profile_bins_events_correctly():
    edges = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    per_bin = 101
    var = np.concatenate([np.full(per_bin, 5.0), np.full(per_bin, 20.0), [40.0, -1.0, 41.0]])
    # bin 0: d_theta spread width 1 -> width68 0.68; bin 1 (left edge 20 inclusive): width 2
    spread = np.linspace(-1, 1, per_bin)
    d_theta = np.concatenate([spread, 2 * spread, [0.0, 50.0, 50.0]])
    pred, true = equator(np.zeros(len(var)), d_theta)
    prof = metrics.resolution_profile(var, pred, true, edges)
    np.testing.assert_array_equal(prof["n"], [per_bin, 0, per_bin, 1])  # 40 is in the last bin
    np.testing.assert_allclose(prof["centers"], [5, 15, 25, 35])
    np.testing.assert_allclose(prof["theta_width68"][[0, 2, 3]], [0.68, 1.36, 0.0], atol=1e-9)
    assert np.isnan(prof["theta_width68"][1]) and np.isnan(prof["psi68"][1])
    np.testing.assert_allclose(prof["psi68"][0], np.percentile(np.abs(spread), 68), atol=1e-6)
    np.testing.assert_allclose(prof["theta_bias"][[0, 2]], 0.0, atol=1e-9)


def test_val_tree_branches_and_dtypes(tmp_path):
    n = 7
    rng = np.random.default_rng(0)
    true = rng.uniform(80, 100, (n, 2))
    cols = evaluate.val_tree_columns(
        true + 1.0, true, np.arange(n), np.arange(n) + 100, np.full(n, 0.0528),
        rng.normal(size=(n, 3)), np.zeros((n, 3)),
    )  # fmt: skip
    path = tmp_path / "validation_results_x.root"
    with TreeWriter(path, "val_tree") as w:
        w.extend(cols)
    t = uproot.open(path)["val_tree"]
    expected = ["run_id", "event_id", "pred_theta", "pred_phi", "true_theta", "true_phi",
                "opening_angle", "energy_truth", "x_truth", "y_truth", "z_truth", "x_vtx",
                "y_vtx", "z_vtx"]  # fmt: skip
    assert t.keys() == expected
    arrays = t.arrays(library="np")
    for k in expected:
        want = np.int32 if k in ("run_id", "event_id") else np.float32
        assert arrays[k].dtype == want, k
    np.testing.assert_array_equal(arrays["event_id"], np.arange(n) + 100)
    assert (arrays["opening_angle"] > 0).all() and (arrays["opening_angle"] < 2).all()


def test_csv_columns(tmp_path):
    path = tmp_path / "predictions_x.csv"
    with evaluate.csv_writer(path) as w:
        w.writerow([90.0, 1.0, 90.5, 1.5, 0, 3])
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["true_theta", "true_phi", "pred_theta", "pred_phi", "run", "event"]
    assert rows[1] == ["90.0", "1.0", "90.5", "1.5", "0", "3"]


def test_worst_events_keeps_the_largest():
    w = evaluate.WorstEvents(3)
    x = np.zeros((4, N_SENSORS, 2), np.float32)
    ang = np.zeros((4, 2))
    for batch, psi in enumerate(([1.0, 5.0, 2.0, 0.5], [4.0, 0.1, 6.0, 3.0])):
        w.offer(np.array(psi), x, ang, ang, np.zeros(4, int), np.arange(4) + 10 * batch)
    assert [e["psi"] for e in w.events()] == [6.0, 5.0, 4.0]
    assert [e["event"] for e in w.events()] == [12, 1, 10]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A smoke run trained for one epoch on point-vertex toy data, then evaluated."""
    from run_config import isolated_config

    from xecjax.train import train_and_evaluate

    base = tmp_path_factory.mktemp("evaluate")
    config = isolated_config(f"{ROOT / 'configs' / 'convnext.py'}:smoke", base)
    config.data.toy_events = 96
    config.train.epochs = 1
    workdir = base / "run"
    train_and_evaluate(config, workdir)
    summary = evaluate.evaluate_run(workdir, n_saliency=64, n_worst=2, batch_size=16)
    return {"workdir": workdir, "out": workdir / "evaluation_best", "summary": summary,
            "mlflow_uri": config.tracking.mlflow_uri}  # fmt: skip


FILES = ["summary.json", "summary.md", "resolution_profile.pdf", "scatter.pdf",
         "saliency_profile.pdf", "saliency.npz", "worst_events.pdf", "predictions_run.csv",
         "validation_results_run.root"]  # fmt: skip


def test_evaluation_of_a_trained_run_writes_everything(evaluated):
    out, s = evaluated["out"], evaluated["summary"]
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind
    n = s["data"]["n_events"]
    assert s["data"]["split"] == "test" and n == round(0.2 * 96)  # the run's test split
    assert len((out / "predictions_run.csv").read_text().splitlines()) == n + 1
    tree = uproot.open(out / "validation_results_run.root")["val_tree"]
    assert tree.num_entries == n
    events = tree["event_id"].array(library="np")
    assert events.min() >= 96 - n  # single toy file: test = its last events
    assert json.loads((out / "summary.json").read_text())["val_resolution_deg"] > 0
    assert set(s["metrics"]) == {"model", *evaluate.BASELINES, evaluate.TRUTH_POINT}
    # toy data have a point vertex at the target centre: the truth-point floor is ~0
    assert s["metrics"][evaluate.TRUTH_POINT]["psi_68"] < 0.01
    assert s["metrics"]["baseline_fit"]["psi_68"] < 1.0  # point-vertex toy data
    md = (out / "summary.md").read_text()
    assert "| baseline_fit |" in md
    assert md.splitlines()[0] == "# Evaluation of run on the test split"
    assert "the run’s test split (held out from training and from choosing `best`)" in md
    assert (evaluated["workdir"] / "summary.json").exists()  # training's summary is kept


@pytest.fixture
def without_test_part(monkeypatch):
    """read_meta of a run recorded before the test split existed (its split has no "test")."""
    from xecjax import checkpoint

    real = checkpoint.read_meta

    def old_meta(*args, **kw):
        step, meta = real(*args, **kw)
        meta["split"].pop("test")
        return step, meta

    monkeypatch.setattr(checkpoint, "read_meta", old_meta)


def test_an_unrecorded_split_is_refused_before_writing_anything(
    evaluated, without_test_part, tmp_path, capsys
):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"test split is not recorded in .*run.*--split val"):
        evaluate.evaluate_run(evaluated["workdir"], out_dir=out, log_mlflow=False)
    assert not out.exists()
    args = ["--workdir", str(evaluated["workdir"]), "--out", str(out), "--no-mlflow"]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert "test split is not recorded" in err and "--data FILES" in err
    assert not out.exists()
    # the validation part is still recorded: --split val evaluates it and says so
    s = evaluate.evaluate_run(evaluated["workdir"], out_dir=out, log_mlflow=False, split="val",
                              max_events=8, batch_size=16, n_saliency=4, n_worst=1,
                              with_baseline=False)  # fmt: skip
    assert s["data"]["split"] == "val" and s["data"]["n_events"] == 8
    assert (out / "summary.md").read_text().startswith("# Evaluation of run on the val split")


def test_given_files_warn_on_training_and_validation_overlap(evaluated):
    from xecjax.checkpoint import read_meta

    _, meta = read_meta(evaluated["workdir"], "best")
    (path,) = {s["path"] for s in meta["split"]["test"]}  # smoke: one file, event ranges
    with pytest.warns(UserWarning) as record:
        sources = evaluate.evaluation_sources(meta, path)
    messages = " ".join(str(w.message) for w in record)
    assert "training files" in messages and "validation (chose `best`) files" in messages
    assert [(s.start, s.stop) for s in sources] == [(0, 96)]
    with pytest.raises(ValueError, match=r"split must be one of test\|val, got .train."):
        evaluate.evaluation_sources(meta, None, "train")


def test_artifacts_are_logged_to_the_runs_mlflow_entry(evaluated):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=evaluated["mlflow_uri"])
    exp = client.get_experiment_by_name("gamma_angle")
    (run,) = client.search_runs([exp.experiment_id])
    assert set(FILES) <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "eval/psi_68" in client.get_run(run.info.run_id).data.metrics


def test_saliency_has_the_input_shape_and_sees_the_light(evaluated):
    sal = np.load(evaluated["out"] / "saliency.npz")
    assert sal["mean_abs"].shape == (2, N_SENSORS, 2)
    assert int(sal["n_events"]) == evaluated["summary"]["data"]["n_events"]
    assert sal["grad"].shape == (2, *sal["x"].shape) == (2, N_SENSORS, 2)
    assert np.isfinite(sal["grad"]).all()
    # Both outputs depend on the npho of the lit region of the example event. (Not on every
    # lit sensor: the smoke model's bilinear resize of the 46 x 21 inner map to 2 x 2 samples
    # only part of it.)
    lit = sal["x"][:, 0] > 0.5 * sal["x"][:, 0].max()
    assert lit.sum() >= 5
    assert (np.abs(sal["grad"][:, lit, 0]).sum(-1) > 0).all()
    assert (sal["mean_abs"][:, :, 0].sum(-1) > 0).all()


def test_no_events_writes_nothing(evaluated, tmp_path):
    """Evaluating an empty file raises, and leaves neither an empty ROOT file nor a header-only
    CSV behind (the writers' temporary files are removed, not renamed)."""
    empty = tmp_path / "empty.root"
    empty.touch()  # a 0-byte file: the loader skips it with a warning
    out = tmp_path / "out"
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no events to evaluate"):
        evaluate.evaluate_run(evaluated["workdir"], data=str(empty), out_dir=out, log_mlflow=False)
    assert not [p.name for p in out.iterdir()]
