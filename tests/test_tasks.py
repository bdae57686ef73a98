"""Tasks beside the angle (xecjax.tasks): losses and metrics by hand, the toy's targets
re-derived, learned loss balancing, the heads in both model families, and a multi-task run
end to end (configs/multitask.py:smoke)."""

import csv
import json
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import onnxruntime as ort
import optax
import pytest
import uproot
from flax import nnx
from run_config import isolated_config
from tool_loader import load_tool

from xecjax import geometry, tasks
from xecjax.config import load_config
from xecjax.models import build_model, make_apply
from xecjax.simulate import write_toy_files

ROOT = Path(__file__).resolve().parents[1]
MT = f"{ROOT / 'configs' / 'multitask.py'}:smoke"
C_CM_PER_NS = 29.9792458


def test_task_losses_by_hand():
    pred = jnp.asarray([[1.0], [3.0], [0.5]])
    true = jnp.asarray([[0.0], [1.0], [1.0]])
    scale = jnp.asarray([2.0])
    r = np.array([0.5, 1.0, -0.25])  # (pred - true) / scale
    got = {k: np.asarray(tasks.per_sample_task_loss(pred, true, scale, k, beta=0.6))
           for k in ("l1", "mse", "smooth_l1", "relative_l1")}  # fmt: skip
    np.testing.assert_allclose(got["l1"], np.abs(r), rtol=1e-6)
    np.testing.assert_allclose(got["mse"], r**2, rtol=1e-6)
    smooth = np.where(np.abs(r) < 0.6, 0.5 * r**2 / 0.6, np.abs(r) - 0.3)
    np.testing.assert_allclose(got["smooth_l1"], smooth, rtol=1e-6)
    # relative: (pred - true) / |true| (a zero target counts as 1e-12)
    np.testing.assert_allclose(got["relative_l1"], [1e12, 2.0, 0.5], rtol=1e-6)
    # a [B, 3] target: the mean over its components
    p3, t3 = jnp.asarray([[1.0, 2.0, 3.0]]), jnp.zeros((1, 3))
    s3 = jnp.asarray([1.0, 2.0, 3.0])
    np.testing.assert_allclose(tasks.per_sample_task_loss(p3, t3, s3, "l1"), [1.0], rtol=1e-6)


def test_gaussian_and_beta_nll_by_hand():
    pred, true = jnp.asarray([[2.0]]), jnp.asarray([[0.0]])
    scale = jnp.asarray([2.0])  # r = 1
    log_sigma = jnp.log(jnp.asarray([[4.0]]))  # sigma 4 cm = 2 scales: s = log 2
    s = np.log(2.0)
    want = 0.5 * np.exp(-2 * s) + s
    got = tasks.per_sample_task_loss(pred, true, scale, "gaussian_nll", log_sigma=log_sigma)
    np.testing.assert_allclose(got, [want], rtol=1e-6)
    got = tasks.per_sample_task_loss(pred, true, scale, "beta_nll", 0.5, log_sigma)
    np.testing.assert_allclose(got, [want * 2.0], rtol=1e-6)  # sigma^(2 beta) = 2 scales
    # the weight has no gradient: d/d log_sigma is that of the NLL times the weight
    grad = jax.grad(lambda ls: tasks.per_sample_task_loss(pred, true, scale, "beta_nll", 0.5,
                                                          ls).sum())(log_sigma)  # fmt: skip
    np.testing.assert_allclose(grad, [[(-np.exp(-2 * s) + 1) * 2.0]], rtol=1e-5)
    # calibration metrics: predicted sigma equal to the residuals' spread -> ratio 1
    rng = np.random.default_rng(0)
    t = rng.normal(size=(20000, 1))
    m = tasks.metrics("energy", t * 0.3, np.zeros((20000, 1)), np.full((20000, 1), np.log(0.3)))
    assert m["energy_pred_std_mean"] == pytest.approx(0.3)
    assert m["energy_calibration_ratio"] == pytest.approx(1.0, abs=0.02)


def test_task_metrics_by_hand():
    e_pred, e_true = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 4.0])
    m = tasks.metrics("energy", e_pred, e_true)
    assert m["energy_bias"] == pytest.approx(np.mean([-0.5, 0, 1, 0]))
    assert m["energy_res_68pct"] == pytest.approx(np.percentile([0.5, 0, 1, 0], 68))
    p = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
    t = np.zeros((3, 3))
    m = tasks.metrics("uvw", p, t)
    assert m["uvw_u_bias"] == pytest.approx(4 / 3) and m["uvw_v_bias"] == pytest.approx(4 / 3)
    assert m["uvw_w_res_68pct"] == 0
    assert m["uvw_dist_68pct"] == pytest.approx(np.percentile([0.0, 5.0, 1.0], 68))
    assert set(m) == {f"uvw_{a}_{k}" for a in "uvw" for k in ("bias", "res_68pct")} | {
        "uvw_dist_68pct"
    }


def test_task_profile_by_hand():
    true = np.arange(20, dtype=np.float64)[:, None]
    pred = true + np.where(true < 10, 1.0, -3.0)  # residual +1 in the low half, -3 above
    prof = tasks.profile("timing", pred, true, bins=2)
    np.testing.assert_array_equal(prof["n"], [10, 10])
    np.testing.assert_allclose(prof["res68"], [1.0, 3.0])
    np.testing.assert_allclose(prof["bias"], [1.0, -3.0])
    np.testing.assert_allclose(prof["centers"], [4.75, 14.25])
    t3 = np.stack([np.zeros(20), np.zeros(20), np.arange(20.0)], 1)
    p3 = t3 + np.array([3.0, 4.0, 0.0])  # distance 5 everywhere, no w bias
    prof = tasks.profile("uvw", p3, t3, bins=4)
    np.testing.assert_allclose(prof["res68"], 5.0)
    np.testing.assert_allclose(prof["bias"], 0.0, atol=1e-12)
    assert prof["variable"] == "true w (cm)"


def test_toy_targets_rederived(tmp_path):
    """energyTruth in the asked range with the light yield proportional to it; timeTruth the
    emission jitter plus the flight from the vertex to the first interaction at c; uvwTruth
    the first interaction in local coordinates."""
    from xecjax.simulate import SimConfig, simulate

    d = simulate(0, 300, SimConfig(energy_mev=(40.0, 56.0), vertex="point"))
    e = d["energyTruth"] * 1e3
    assert 40 <= e.min() and e.max() <= 56 and e.std() > 3
    # the same events (keyed per event) at a 50 MeV line: same showers, light scaled by E / 50
    line = simulate(0, 300, SimConfig(energy_mev=50.0, vertex="point"))
    np.testing.assert_array_equal(line["xyzTruth"], d["xyzTruth"])
    ratio = [np.where(x["npho"] < 1e9, x["npho"], 0).sum(1) for x in (d, line)]
    np.testing.assert_allclose(ratio[0] / ratio[1], e / 50.0, rtol=0.03)
    flight = np.linalg.norm(d["xyzTruth"] - d["xyzVTX"], axis=1) / C_CM_PER_NS
    jitter = d["timeTruth"] - flight
    assert abs(jitter.mean()) < 0.2 and 0.85 < jitter.std() < 1.15  # time_jitter_ns = 1
    np.testing.assert_allclose(geometry.xyz_to_uvw(d["xyzTruth"]), d["uvwTruth"], atol=1e-3)


def test_auto_balance_learns_the_weights_of_two_tasks():
    """Two regression tasks on shared features, noise sigma 1 and 0.1: the learned
    log-variances reach log sigma^2 (weights 1 / sigma^2), which manual weights do not do."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, 4)).astype(np.float32)
    w_true = rng.normal(size=(4, 2)).astype(np.float32)
    y = x @ w_true + rng.normal(size=(2048, 2)).astype(np.float32) * np.array([1.0, 0.1])
    config = ml_collections.ConfigDict({"tasks": tasks.task_config(), "model": {}})
    config.tasks.energy.enabled, config.tasks.energy.loss = True, "mse"
    config.tasks.loss_balance = "auto"
    tasks.configure_model(config)
    config.model.task_norm.energy.scale = [1.0]  # the synthetic target's own scale
    loss_fn = tasks.make_loss(config)
    params = {"w": jnp.zeros((4, 2)), "log_var": jnp.zeros(2)}
    opt = optax.adam(0.05)
    state = opt.init(params)

    def total(p):
        pred = jnp.asarray(x) @ p["w"]
        angle = (pred[:, 0] - y[:, 0]) ** 2  # stands for the angle's per-sample loss
        out = {"energy": pred[:, 1:], "log_var": p["log_var"]}
        return loss_fn(angle, out, {"energy": jnp.asarray(y[:, 1])}).mean()

    @jax.jit
    def step(p, s):
        updates, s = opt.update(jax.grad(total)(p), s)
        return optax.apply_updates(p, updates), s

    for _ in range(1500):
        params, state = step(params, state)
    np.testing.assert_allclose(np.exp(params["log_var"]), [1.0, 0.01], rtol=0.2)


@pytest.mark.parametrize("config_file", ["multitask.py", "graph.py"])
def test_heads_give_every_task_in_physical_units(config_file):
    config = load_config(f"{ROOT / 'configs' / config_file}:smoke")
    for name in tasks.NAMES:
        config.tasks[name].enabled = True
    tasks.configure_model(config)
    params, apply_fn = make_apply(build_model(config.model, rngs=nnx.Rngs(0)))
    x = jnp.zeros((3, 4760, 2))
    angles = apply_fn(params, x, False, None)
    again, out = apply_fn(params, x, False, None, tasks=True)
    np.testing.assert_array_equal(angles, again)  # the angle output is unchanged
    assert {k: v.shape for k, v in out.items()} == {
        "energy": (3, 1),
        "timing": (3, 1),
        "uvw": (3, 3),
        "log_var": (4,),
    }
    # a zero-bias head starts near the offsets (small random kernels): physical units
    assert abs(float(out["energy"].mean()) - 0.05) < 0.05
    # angle-only model configs of before (no model.tasks) build the same angle model
    old = ml_collections.ConfigDict(json.loads(json.dumps(config.model.to_dict())))
    del old["tasks"], old["task_norm"]
    p_old, apply_old = make_apply(build_model(old, rngs=nnx.Rngs(0)))
    assert apply_old(p_old, x, False, None, tasks=True)[1] == {}
    assert not any("tasks" in jax.tree_util.keystr(k) for k, _ in
                   jax.tree_util.tree_flatten_with_path(p_old)[0])  # fmt: skip


@pytest.fixture(scope="module")
def mt(tmp_path_factory):
    """configs/multitask.py:smoke trained (2 epochs), evaluated on val and exported."""
    from xecjax.evaluate import evaluate_run
    from xecjax.export import export_run
    from xecjax.train import train_and_evaluate

    base = tmp_path_factory.mktemp("multitask")
    config = isolated_config(MT, base)
    work = base / "mt"
    train_and_evaluate(config, work)
    summary = evaluate_run(work, split="val", log_mlflow=False, n_saliency=16, n_worst=1)
    model = export_run(work, base / "mt.onnx", verbose=False)
    real = write_toy_files(base / "real", 40, seed=4, real_data=True)[0]
    return {"base": base, "config": config, "work": work, "summary": summary, "model": model,
            "real": real}  # fmt: skip


def _inputs(model, real) -> np.ndarray:
    """The normalised input of the real-data file, by the normaliser in the model."""
    from xecjax.export import normaliser_of, read_metadata

    norm = normaliser_of(read_metadata(model))
    branches = uproot.open(real)["tree"].arrays(list(norm.branches), library="np")
    return np.asarray(norm(*(branches[b] for b in norm.branches)), np.float32)


def test_a_gaussian_nll_head_predicts_sigma_and_trains(tmp_path):
    """tasks.energy.loss = gaussian_nll: the head gives energy and its log sigma; one smoke
    epoch logs energy_pred_std_mean and energy_calibration_ratio."""
    from xecjax.checkpoint import read_meta
    from xecjax.train import train_and_evaluate

    config = isolated_config(MT, tmp_path)
    config.tasks.energy.loss = "gaussian_nll"
    config.tasks.timing.enabled = config.tasks.uvw.enabled = False
    config.train.epochs = 1
    train_and_evaluate(config, tmp_path / "run")
    meta = read_meta(tmp_path / "run", "last")[1]
    assert meta["config"]["model"]["task_sigma"] == ["energy"]
    row = meta["history"][-1]
    assert row["energy_pred_std_mean"] > 0 and np.isfinite(row["energy_calibration_ratio"])
    # the predicted sigma in val_tree and the predictions CSV (GeV, as the energy)
    from xecjax.evaluate import evaluate_run

    summary = evaluate_run(tmp_path / "run", split="val", log_mlflow=False, n_saliency=0,
                           n_worst=0, with_baseline=False, max_events=40)  # fmt: skip
    out = tmp_path / "run" / "evaluation_best"
    tree = uproot.open(out / "validation_results_run.root")["val_tree"].arrays(library="np")
    rows = list(csv.DictReader((out / "predictions_run.csv").open()))
    assert list(rows[0])[6:] == ["pred_energy", "true_energy", "sigma_energy"]
    sigma = np.array([float(r["sigma_energy"]) for r in rows])
    np.testing.assert_allclose(sigma, tree["sigma_energy"], rtol=1e-4, atol=1e-5)
    assert (sigma > 0).all()
    std_mean = summary["tasks"]["energy"]["energy_pred_std_mean"]
    assert std_mean == pytest.approx(sigma.mean(), rel=1e-3)
    config.model.output = "point"
    config.tasks.uvw.enabled, config.tasks.uvw.loss = True, "beta_nll"
    with pytest.raises(ValueError, match="point model's uvw is its conversion point"):
        tasks.configure_model(config)


def test_a_point_model_s_uvw_task_is_its_conversion_point():
    config = load_config(MT)
    config.model.output = "point"
    config.tasks.uvw.enabled = True
    tasks.configure_model(config)
    params, apply_fn = make_apply(build_model(config.model, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (2, 4760, 2))
    out, heads = apply_fn(params, x, False, None, tasks=True)
    np.testing.assert_array_equal(heads["uvw"], out[:, -3:])
    names = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert not any("uvw_head" in n for n in names) and any("energy_head" in n for n in names)


def test_multitask_smoke_trains_all_tasks_and_logs_the_reference_names(mt):
    from mlflow.tracking import MlflowClient

    from xecjax.checkpoint import read_meta

    config, work = mt["config"], mt["work"]
    meta = read_meta(work, "last")[1]
    assert meta["config"]["model"]["tasks"] == ["energy", "timing", "uvw"]
    names = ["energy_bias", "energy_res_68pct", "timing_bias", "timing_res_68pct", "uvw_dist_68pct"]
    names += [f"uvw_{a}_{k}" for a in "uvw" for k in ("bias", "res_68pct")]
    last = meta["history"][-1]
    for n in names:
        assert np.isfinite(last[n]), n
    # the heads learn: energy resolution below the spread of the 40-56 MeV targets (4.6 MeV)
    assert last["energy_res_68pct"] < 0.004
    assert last["uvw_w_res_68pct"] < 3.4
    client = MlflowClient(tracking_uri=config.tracking.mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gamma_angle").experiment_id])
    for n in names:
        assert len(client.get_metric_history(run.info.run_id, n)) == config.train.epochs, n


def test_multitask_evaluation_writes_every_task(mt):
    summary = mt["summary"]
    assert np.isfinite(summary["metrics"]["model"]["psi_68"])  # the angle as for any run
    # the uvw head's point seen from each event's vertex: the vertex-aware angle
    assert np.isfinite(summary["metrics"]["model_from_vertex"]["psi_68"])
    # with the conventional estimates of energy and position beside them
    assert set(summary["tasks"]) == {
        "energy", "timing", "uvw", "baseline_energy", "baseline_uvw", "baseline_timing"
    }  # fmt: skip
    # the earliest-light fit: well below the 1 ns emission-time spread of the toy
    assert 0 < summary["tasks"]["baseline_timing"]["timing_res_68pct"] < 0.5  # ns
    # the depth-corrected photon sum: below the spread of the 40-56 MeV energies (5.4 MeV)
    assert 0 < summary["tasks"]["baseline_energy"]["energy_res_68pct"] < 0.0054  # GeV
    out = mt["work"] / "evaluation_best"
    tree = uproot.open(out / "validation_results_mt.root")["val_tree"].arrays(library="np")
    rows = list(csv.DictReader((out / "predictions_mt.csv").open()))
    assert len(rows) == len(tree["pred_theta"])
    for part in ("energy", "timing", "u", "v", "w"):
        assert f"pred_{part}" in tree and f"true_{part}" in tree, part
        for kind in ("pred", "true"):  # the same values in the predictions CSV
            got = np.array([float(r[f"{kind}_{part}"]) for r in rows])
            np.testing.assert_allclose(got, tree[f"{kind}_{part}"], rtol=1e-4, atol=1e-5)
    # the branches give the summary's numbers (the metric by hand on the written values)
    res = np.abs(tree["pred_energy"].astype(np.float64) - tree["true_energy"])
    assert summary["tasks"]["energy"]["energy_res_68pct"] == pytest.approx(
        np.percentile(res, 68), rel=1e-4
    )
    assert "Task energy (GeV), model" in (out / "summary.md").read_text()
    assert (out / "task_profiles.pdf").stat().st_size > 1000
    # saliency per task component: d output / d input on the saliency events, per face
    sal = summary["task_saliency_per_face"]
    assert set(sal) == {f"{k}/{c}" for k in ("energy", "timing", "u", "v", "w")
                        for c in ("npho", "time")}  # fmt: skip
    assert sal["energy/npho"]["inner"] > 0
    arrays = np.load(out / "saliency.npz")
    assert arrays["task_mean_abs"].shape == (5, 4760, 2)
    assert list(arrays["task_labels"]) == ["energy", "timing", "u", "v", "w"]


def test_multitask_onnx_outputs_and_real_data_inference(mt):
    """`output` (batch, 2) as always plus one output per task (each parity-checked in the
    export); infer_real writes every output present."""
    session = ort.InferenceSession(str(mt["model"]), providers=["CPUExecutionProvider"])
    got = {o.name: o.shape for o in session.get_outputs()}
    assert got == {"output": ["batch_size", 2], "output_energy": ["batch_size", 1],
                   "output_timing": ["batch_size", 1], "output_uvw": ["batch_size", 3]}  # fmt: skip
    infer = load_tool("infer_real")
    out = mt["base"] / "inf.root"
    assert infer.main(["--onnx", str(mt["model"]), "--input", str(mt["real"]),
                       "--output", str(out)]) == 0  # fmt: skip
    inf = uproot.open(out)["val_tree"].arrays(library="np")
    energy, uvw = session.run(
        ["output_energy", "output_uvw"], {"input": _inputs(mt["model"], mt["real"])}
    )
    np.testing.assert_allclose(inf["pred_energy"], energy[:, 0], rtol=1e-5)
    np.testing.assert_allclose(np.stack([inf[f"pred_{a}"] for a in "uvw"], 1), uvw, rtol=1e-5)


def test_multitask_cpp_consumer_prints_every_output(mt, tmp_path):
    from test_export import _onnxruntime_root

    sdk = f"-DONNXRUNTIME_ROOT={_onnxruntime_root()}"
    build = tmp_path / "build"
    subprocess.run(
        ["cmake", "-S", ROOT / "macro", "-B", build, sdk], check=True, capture_output=True
    )
    subprocess.run(["cmake", "--build", build], check=True, capture_output=True)
    x = _inputs(mt["model"], mt["real"])
    x.astype("<f4").tofile(tmp_path / "events.bin")
    res = subprocess.run([build / "xec_onnx_infer", mt["model"], tmp_path / "events.bin"],
                         check=True, capture_output=True, text=True)  # fmt: skip
    header = "# index theta_deg phi_deg energy_GeV timing_ns u_cm v_cm w_cm"
    assert res.stdout.splitlines()[0] == header
    got = np.loadtxt(res.stdout.splitlines(), comments="#")
    session = ort.InferenceSession(str(mt["model"]), providers=["CPUExecutionProvider"])
    want = np.concatenate(session.run(None, {"input": x}), axis=1)  # output order of the model
    np.testing.assert_allclose(got[:, 1:], want, rtol=1e-5, atol=1e-5)
