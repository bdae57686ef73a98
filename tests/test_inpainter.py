"""The inpainter (configs/inpainter.py, xecjax.inpainter): training from an MAE run, evaluation
against the conventional estimates, ONNX export of the completion, dead-channel filling of real
data (tools/infer_real.py --inpaint); the Normaliser's inverse.

One module chain: a 1-epoch smoke MAE, a 2-epoch smoke inpainter from it (encoder frozen), its
evaluation on 24 test events, its export through tools/export_onnx.py; each step checked by
recomputing what it wrote from its inputs.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import optax
import pytest
import uproot
from flax import nnx
from run_config import isolated_config
from tool_loader import load_tool

from xecjax import deadchannels, finetune, geometry, inpaint, inpainter
from xecjax import mae as mae_objective
from xecjax.checkpoint import Checkpointer, load_for_inference, read_meta
from xecjax.evaluate import evaluate_run
from xecjax.models import build_model, make_apply
from xecjax.normalise import SCHEMES, Normaliser
from xecjax.split import Split
from xecjax.steps import init_state
from xecjax.train import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
MAE = f"{ROOT / 'configs' / 'mae.py'}:smoke"
INPAINTER = f"{ROOT / 'configs' / 'inpainter.py'}:smoke"
N = geometry.N_SENSORS
N_EVAL = 24  # test events evaluated (a full batch of 16 and a padded one)
BRANCHES = ("event_idx", "run_number", "event_number", "sensor_id", "face", "truth_npho",
            "truth_time", "pred_npho", "pred_time", "error_npho", "error_time")  # fmt: skip

export_cli = load_tool("export_onnx")
infer_real = load_tool("infer_real")


# ----------------------------------------------------------------------------------------------
# By hand: the Normaliser's inverse, score on sensor lists.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", SCHEMES)
def test_normaliser_inverse_round_trips(scheme):
    rng = np.random.default_rng(0)
    npho = rng.gamma(0.5, 300, (3, N)).astype(np.float32)  # 0 .. thousands of photons
    npho[0, :4] = [0.0, 0.5, 99.0, 2e4]
    time = rng.normal(20e-9, 5e-9, (3, N)).astype(np.float32)
    other = Normaliser(npho_scheme=scheme, npho_scale=500.0, time_shift=0.3)
    for norm in (Normaliser(npho_scheme=scheme), other):
        x = norm(npho, time)
        n, t = norm.inverse(x)
        assert n.dtype == t.dtype == np.float32 and n.shape == npho.shape
        np.testing.assert_allclose(n, npho, rtol=2e-5, atol=2e-3)
        timed = npho >= norm.npho_threshold  # elsewhere the time feature is the sentinel
        np.testing.assert_allclose(t[timed], time[timed], rtol=0, atol=1e-14)
        # the jax path: the same values (jit-able)
        nj, tj = jax.jit(norm.inverse)(jnp.asarray(x))
        assert isinstance(nj, jax.Array)
        np.testing.assert_allclose(nj, n, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(tj, t, rtol=1e-6, atol=1e-15)
        # and back: features of the inverse are the features
        np.testing.assert_allclose(norm(n, t)[timed], x[timed], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 2\]"):
        Normaliser().inverse(np.zeros((2, N)))


def test_score_sensors_equals_score_on_arrays():
    rng = np.random.default_rng(1)
    npho = rng.uniform(0, 500, (3, N)).astype(np.float32)
    time = rng.normal(0, 1e-9, (3, N)).astype(np.float32)
    mask = rng.random((3, N)) < 0.1
    pn, pt = npho + rng.normal(0, 20, npho.shape), time + rng.normal(0, 1e-9, time.shape)
    pn[0, np.flatnonzero(mask[0])[:3]] = np.nan  # unfilled
    want = inpaint.score(pn, pt, npho, time, mask)
    ev, s = np.nonzero(mask)
    got = inpaint.score_sensors(s, pn[ev, s], pt[ev, s], npho[ev, s], time[ev, s])
    assert got == want
    assert got["all"]["n_npho_unfilled"] == 3


# ----------------------------------------------------------------------------------------------
# Training from an MAE run.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("inpainter")


@pytest.fixture(scope="module")
def mae_run(base):
    config = isolated_config(MAE, base)
    config.train.epochs = 1
    config.tracking.tensorboard = False
    train_and_evaluate(config, base / "mae")
    return base / "mae"


@pytest.fixture(scope="module")
def inp_run(base, mae_run):
    config = isolated_config(INPAINTER, base)
    config.init_from = str(mae_run)
    config.inpainter.freeze_encoder = True
    config.train.epochs = 2
    config.tracking.tensorboard = False
    summary = train_and_evaluate(config, base / "inp")
    return base / "inp", summary


def leaves(params, decoders=False) -> dict:
    return {k: np.asarray(v) for k, v in finetune.encoder_leaves(params, decoders).items()}


def test_inpainter_trains_from_the_mae_with_a_frozen_encoder(mae_run, inp_run):
    work, summary = inp_run
    assert summary["status"] == "FINISHED" and summary["epochs_done"] == 2
    _, meta = read_meta(work, "last")
    assert meta["config"]["objective"] == "inpainter" and "mae" not in meta["config"]
    history = meta["history"]
    for row in history:
        assert row["val_actual_mask_ratio"] == pytest.approx(0.05, abs=0.002)
        assert np.isfinite(row["val_total_loss"]) and row["val_loss"] == row["val_total_loss"]
        assert all(f"val_loss_{c}_{f}" in row for c in ("npho", "time")
                   for f in geometry.FACE_NAMES)  # fmt: skip
    best = read_meta(work, "best")[1]["best"]
    assert best["val_total_loss"] == min(h["val_total_loss"] for h in history)
    # the encoder is the MAE's best EMA encoder, exactly, after every update; decoders moved
    _, _, mae_params, _ = load_for_inference(mae_run, "best", ema=True)
    _, _, params, _ = load_for_inference(work, "last", ema=False)
    want, got = leaves(mae_params), leaves(params)
    assert len(want) > 0 and sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    # the decoders started fresh (decoder_residual "neighbours", init_decoders False): their
    # final layers, zero at the start (the neighbour average), moved
    outs = {k: v for k, v in leaves(params, True).items()
            if k.startswith("decoder_") and "/out/" in k}  # fmt: skip
    assert len(outs) == 2 * len({k.split("/")[0] for k in outs})  # kernel and bias each
    assert max(np.abs(v).max() for v in outs.values()) > 1e-6


def test_loading_copies_encoder_and_decoders_strictly(mae_run, tmp_path):
    config = isolated_config(INPAINTER, tmp_path)
    # the neighbour-residual inpainter takes the encoder only: the MAE's decoders are refused
    residual, _ = make_apply(build_model(config.model, rngs=nnx.Rngs(7)))
    with pytest.raises(ValueError, match="decoder_residual = 'none', this model 'neighbours'"):
        finetune.load_encoder(residual, mae_run, Normaliser(), decoders=True,
                              decoder_residual="neighbours")  # fmt: skip
    loaded, _ = finetune.load_encoder(residual, mae_run, Normaliser())
    got = leaves(loaded)
    _, _, mae_params, _ = load_for_inference(mae_run, "best", ema=True)
    for name, value in leaves(mae_params).items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    # the MAE's decoders: an inpainter without the residual copies them too
    config.model.decoder_residual = "none"
    fresh, _ = make_apply(build_model(config.model, rngs=nnx.Rngs(7)))
    loaded, info = finetune.load_encoder(fresh, mae_run, Normaliser(), decoders=True,
                                         decoder_residual="none")  # fmt: skip
    want = leaves(mae_params, True)
    got = leaves(loaded, True)
    assert info["leaves"] == len(want) == len(jax.tree.leaves(fresh))  # the whole model
    assert any(k.startswith("decoder_") for k in want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    # an MAE with other decoders: refused, naming the parameter (the encoder alone loads)
    other = isolated_config(MAE, tmp_path)
    other.model.decoder_dim = 12
    p, _ = make_apply(build_model(other.model, rngs=nnx.Rngs(0)))
    ckpt = Checkpointer(tmp_path / "other", async_save=False)
    ckpt.save("best", init_state(p, optax.adam(1e-3), 0),
              {"config": other.to_dict(), "normaliser": Normaliser().to_dict()})  # fmt: skip
    ckpt.close()
    with pytest.raises(ValueError, match=r"encoder and decoder parameter decoder_\w+/\S+ has "
                                         r"shape .* in the checkpoint but"):  # fmt: skip
        finetune.load_encoder(fresh, tmp_path / "other", Normaliser(), decoders=True)
    finetune.load_encoder(fresh, tmp_path / "other", Normaliser(), decoders=False)


def test_untrained_residual_model_gives_the_feature_space_neighbour_average(tmp_path):
    config = isolated_config(INPAINTER, tmp_path)
    assert config.model.decoder_residual == "neighbours"
    params, apply_fn = make_apply(build_model(config.model, rngs=nnx.Rngs(3)))
    sn, st = config.model.sentinel_npho, config.model.sentinel_time
    rng = np.random.default_rng(5)
    x = rng.uniform(0.0, 3.0, (2, N, 2)).astype(np.float32)
    ids, nmask = geometry.face_neighbors()
    s = int(geometry.INNER_MAP[40, 20])  # an interior inner sensor: 8 neighbours
    nb = ids[s][nmask[s]]
    assert len(nb) == 8
    x[0, s] = (sn, st)  # masked
    x[0, nb[0]] = (sn, st)  # a dead neighbour: skipped
    x[0, nb[1], 1] = st  # below the npho threshold: its npho counts, its time not
    # event 1: every neighbour of s missing: the mean of the observed sensors of its face
    x[1, np.r_[s, nb]] = (sn, st)
    pred = np.asarray(jax.jit(apply_fn, static_argnums=2)(params, jnp.asarray(x), False, None))
    assert pred.dtype == np.float32 and pred.shape == (2, N, 2)
    np.testing.assert_allclose(pred[0, s], [x[0, nb[1:], 0].mean(), x[0, nb[2:], 1].mean()],
                               rtol=1e-6)  # fmt: skip
    face = (geometry.FACE_OF == geometry.FACE_OF[s]) & (x[1, :, 0] != sn)
    np.testing.assert_allclose(pred[1, s], x[1, face].mean(0), rtol=1e-5)
    # every sensor: the neighbour average of the input (observed ones included)
    want = np.zeros((2, N, 2))
    for ch in (0, 1):
        use = x[..., 0] != sn
        if ch == 1:
            use &= x[..., 1] != st
        w = use[:, ids] & nmask
        total, count = (np.where(w, x[:, ids, ch], 0.0)).sum(-1), w.sum(-1)
        want[..., ch] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    ok = ~np.isnan(want)
    np.testing.assert_allclose(pred[ok], want[ok], rtol=1e-5, atol=1e-6)
    # the model's sentinels must be the Normaliser's (checked when training starts)
    mae_objective.check_sentinels(config.model, Normaliser())
    with pytest.raises(ValueError, match="model.sentinel_npho = -1.0 but the Normaliser's"):
        mae_objective.check_sentinels(config.model, Normaliser(sentinel_npho=-2.0))


def test_config_refusals(tmp_path):
    config = isolated_config(INPAINTER, tmp_path)
    config.inpainter.freeze_encoder = True
    with pytest.raises(ValueError, match="freeze_encoder needs config.init_from"):
        train_and_evaluate(config, tmp_path / "a")
    config = isolated_config(INPAINTER, tmp_path)
    config.inpainter.mask_ratio = 0.0
    with pytest.raises(ValueError, match=r"config.inpainter.mask_ratio must be in \(0, 1\)"):
        train_and_evaluate(config, tmp_path / "b")
    config = isolated_config(INPAINTER, tmp_path)
    config.model.name = "regressor"
    with pytest.raises(ValueError, match="'inpainter' needs model.name = 'mae'"):
        train_and_evaluate(config, tmp_path / "c")


# ----------------------------------------------------------------------------------------------
# Evaluation: the sensor tree, the baselines, the plots.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluation(inp_run):
    work, _ = inp_run
    summary = evaluate_run(work, max_events=N_EVAL, log_mlflow=False)
    out = work / "evaluation_best"
    with uproot.open(out / f"inpainting_results_{work.name}.root") as f:
        tree = f[inpainter.TREE].arrays(library="np")
    return summary, tree, out


def evaluated_events(work: Path) -> dict:
    """The raw npho / relative_time, run and event of the evaluated test events, and their
    evaluation masks recomputed from scratch."""
    _, meta = read_meta(work, "best")
    rows = {k: [] for k in ("npho", "relative_time", "run", "event")}
    for src in Split.from_dict(meta["split"]).test:
        with uproot.open(src.path) as f:
            a = f["tree"].arrays(list(rows), entry_start=src.start, entry_stop=src.stop,
                                 library="np")  # fmt: skip
        for k in rows:
            rows[k].append(a[k])
    ev = {k: np.concatenate(v)[:N_EVAL] for k, v in rows.items()}
    norm = Normaliser.from_dict(meta["normaliser"])
    x = norm(ev["npho"], ev["relative_time"])
    valid = mae_objective.valid_sensors(jnp.asarray(x), norm.sentinel_npho)
    keys = mae_objective.event_keys(jnp.asarray(ev["run"], jnp.int32),
                                    jnp.asarray(ev["event"], jnp.int32))  # fmt: skip
    ev["mask"] = np.asarray(mae_objective.random_mask(keys, valid, 0.05))
    ev["x"] = x
    return ev


def test_evaluation_writes_the_masked_sensors_in_physical_units(inp_run, evaluation):
    work, _ = inp_run
    summary, tree, out = evaluation
    assert all(b in tree for b in BRANCHES)
    assert summary["data"]["n_events"] == N_EVAL and summary["data"]["split"] == "test"
    ev = evaluated_events(work)
    # exactly the masked sensors of the evaluated events: 5 % of each event's valid sensors
    mask = np.zeros((N_EVAL, N), bool)
    mask[tree["event_idx"], tree["sensor_id"]] = True
    assert len(tree["sensor_id"]) == mask.sum() == summary["n_masked_sensors"]
    np.testing.assert_array_equal(mask, ev["mask"])
    idx, s = tree["event_idx"], tree["sensor_id"]
    np.testing.assert_array_equal(tree["run_number"], ev["run"][idx])
    np.testing.assert_array_equal(tree["event_number"], ev["event"][idx])
    np.testing.assert_array_equal(tree["face"], geometry.FACE_OF[s])
    # truth in photons and ns, errors = pred - truth
    np.testing.assert_array_equal(tree["truth_npho"], ev["npho"][idx, s])
    t_true = ev["relative_time"][idx, s].astype(np.float64)
    timed = np.abs(t_true) < 9e9  # the file's 1e10 marker: no time (NaN in the tree)
    assert timed.any() and (~timed).any()
    np.testing.assert_allclose(tree["truth_time"], np.where(timed, t_true * 1e9, np.nan),
                               rtol=1e-6)  # fmt: skip
    for c in ("npho", "time"):
        d = tree[f"pred_{c}"].astype(np.float64) - tree[f"truth_{c}"]
        np.testing.assert_allclose(tree[f"error_{c}"], d, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(tree["time_scored"], (tree["truth_npho"] >= 100.0) & timed)
    # the prediction: the model on the masked input, through Normaliser.inverse
    _, norm, params, apply_fn = load_for_inference(work, "best")
    completed, pred = jax.jit(lambda x, m: inpainter.complete(apply_fn, params, x, m, norm))(
        jnp.asarray(ev["x"]), jnp.asarray(ev["mask"])
    )
    n, t = norm.inverse(np.asarray(pred)[idx, s])
    np.testing.assert_allclose(tree["pred_npho"], n, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(tree["pred_time"], t * 1e9, rtol=1e-4, atol=1e-4)
    # the completed array: the input where observed, the reconstruction where masked or dead
    completed, fill = np.asarray(completed), ev["mask"] | (ev["x"][..., 0] == -1.0)
    np.testing.assert_array_equal(completed[~fill], ev["x"][~fill])
    pred = np.asarray(pred)
    np.testing.assert_array_equal(completed[fill][:, 0], pred[fill][:, 0])
    # the time as the Normaliser gives it: the sentinel where the filled npho is below its
    # threshold, so that normalising the filled raw values reproduces the completed array
    dim = fill & (pred[..., 0] < inpainter.npho_threshold_feature(norm))
    assert dim.any() and (fill & ~dim).any()
    np.testing.assert_array_equal(completed[dim][:, 1], norm.sentinel_time)
    np.testing.assert_array_equal(completed[fill & ~dim][:, 1], pred[fill & ~dim][:, 1])
    renorm = np.asarray(norm(*norm.inverse(completed)))
    thr = inpainter.npho_threshold_feature(norm)
    clear = fill & (np.abs(pred[..., 0] - thr) > 1e-3)  # not at the threshold's rounding edge
    np.testing.assert_allclose(renorm[clear], completed[clear], rtol=1e-4, atol=1e-4)
    assert (ev["x"][..., 0] == -1.0).any()  # the toy has dead channels: filled too


def test_evaluation_compares_with_the_baselines_on_the_same_sensors(inp_run, evaluation):
    work, _ = inp_run
    summary, tree, out = evaluation
    ev = evaluated_events(work)
    npho, time, mask = ev["npho"], ev["relative_time"], ev["mask"]
    idx, s = tree["event_idx"], tree["sensor_id"]
    scores = summary["scores"]
    assert set(scores) == {"model", "neighbour_average", "solid_angle_weighted"}
    # every method is scored on the sensors that all of them filled (the model fills all)
    est = {name: inpaint.METHODS[name](npho, time, mask) for name in scores if name != "model"}
    common = [np.logical_and.reduce([inpaint.valid(e[k]) for e in est.values()]) for k in (0, 1)]
    pn, pt = np.full((N_EVAL, N), np.nan), np.full((N_EVAL, N), np.nan)
    pn[idx, s], pt[idx, s] = tree["pred_npho"], tree["pred_time"] / 1e9
    est["model"] = (pn, pt)
    counts = ("n_npho_unfilled", "n_time_unfilled", "n_npho_compared", "n_time_compared")
    for name, (est_n, est_t) in est.items():
        full = inpaint.score(est_n, est_t, npho, time, mask)
        want = inpaint.score(np.where(common[0], est_n, np.nan), np.where(common[1], est_t,
                             np.nan), npho, time, mask)  # fmt: skip
        for face in (*geometry.FACE_NAMES, "all"):
            got = scores[name][face]
            assert {k: v for k, v in got.items() if k not in counts} == pytest.approx(
                {k: v for k, v in want[face].items() if k not in counts}, rel=1e-4, nan_ok=True
            ), (name, face)
            for ch in ("npho", "time"):
                assert got[f"n_{ch}_unfilled"] == full[face][f"n_{ch}_unfilled"]
                n_common = want[face][f"n_{ch}"] - want[face][f"n_{ch}_unfilled"]
                assert got[f"n_{ch}_compared"] == n_common
    for name, prefix in (("neighbour_average", "neighbour"), ("solid_angle_weighted",
                                                             "solid_angle")):  # fmt: skip
        np.testing.assert_allclose(tree[f"{prefix}_npho"], est[name][0][idx, s], rtol=1e-4,
                                   atol=1e-2)  # fmt: skip
    assert scores["model"]["all"]["n_npho"] == len(idx)
    assert scores["model"]["all"]["n_npho_unfilled"] == 0
    # the feature-space loss: the training validation's formula, finite
    losses = summary["feature_losses"]
    assert np.isfinite(losses["total_loss"])
    assert losses["actual_mask_ratio"] == pytest.approx(0.05, abs=0.002)
    text = (out / "summary.md").read_text()
    assert "neighbour_average" in text and "solid_angle_weighted" in text and "| all |" in text
    written = json.loads((out / "summary.json").read_text())["scores"]
    for name, per in scores.items():
        for face, r in per.items():
            assert written[name][face] == pytest.approx(r, nan_ok=True)
    for name in ("inpainting_errors.pdf", "inpainting_examples.pdf"):
        assert (out / name).stat().st_size > 1000


def test_evaluation_of_the_validation_split_reproduces_val_total_loss(inp_run, tmp_path):
    """The evaluation masks are the training validation's (keyed by run and event): on the
    validation split the feature-space loss is the best epoch's val_total_loss."""
    work, _ = inp_run
    summary = inpainter.evaluate_run(work, split="val", out_dir=tmp_path, with_baseline=False,
                                     n_examples=0, log_mlflow=False)  # fmt: skip
    best = read_meta(work, "best")[1]["best"]
    assert summary["feature_losses"]["total_loss"] == pytest.approx(best["val_total_loss"],
                                                                    rel=1e-5)  # fmt: skip
    assert set(summary["scores"]) == {"model"}


# ----------------------------------------------------------------------------------------------
# ONNX export of the completion.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(inp_run):
    work, _ = inp_run
    path = work.parent / "inp.onnx"
    assert export_cli.main([str(work), "--output", str(path)]) == 0  # parity checked inside
    return path


def test_export_contract_and_completion(inp_run, exported, tmp_path):
    work, _ = inp_run
    model = onnx.load(exported)
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in (*model.graph.input, *model.graph.output)}  # fmt: skip
    assert shapes == {"input": ["batch_size", N, 2], "mask": ["batch_size", N],
                      "output": ["batch_size", N, 2]}  # fmt: skip
    assert not any(n.op_type.startswith("Scatter") for n in model.graph.node)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["objective"] == "inpainter" and meta["input_kind"] == "normalised"
    assert json.loads(meta["model_config"])["name"] == "mae"
    _, norm, params, apply_fn = load_for_inference(work, "best")
    assert Normaliser.from_dict(json.loads(meta["normaliser"])) == norm
    # observed sensors unchanged, masked and dead ones filled as JAX fills them
    ev = evaluated_events(work)
    x, mask = ev["x"][:5], ev["mask"][:5]
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    got = session.run(["output"], {"input": x, "mask": mask.astype(np.float32)})[0]
    fill = mask | (x[..., 0] == norm.sentinel_npho)
    np.testing.assert_array_equal(got[~fill], x[~fill])
    assert np.all(got[fill][:, 0] != norm.sentinel_npho)
    want = jax.jit(inpainter.completion_function(apply_fn, params, norm))(x, mask)
    np.testing.assert_allclose(got, np.asarray(want), rtol=0, atol=1e-4)
    # an inpainter has no raw-input export (refused before loading anything)
    assert export_cli.main([str(work), "--output", str(tmp_path / "r.onnx"), "--raw-input"]) == 1
    assert not (tmp_path / "r.onnx").exists()


# ----------------------------------------------------------------------------------------------
# Real data: tools/infer_real.py --inpaint.
# ----------------------------------------------------------------------------------------------
def linear_apply(params, x, train=False, rng=None):
    """An angle model: light-weighted mean sensor direction -> angles (degrees)."""
    from xecjax.geometry import POSITIONS, vec_to_angles

    w = jnp.maximum(x[..., 0], 0.0)
    return vec_to_angles(jnp.einsum("bs,sk->bk", w, jnp.asarray(POSITIONS, jnp.float32)) - 1.0)


@pytest.fixture(scope="module")
def real(base):
    from xecjax.export import export_model
    from xecjax.simulate import write_toy_files

    d = base / "real"
    (path,) = write_toy_files(d, 20, seed=5, real_data=True)
    angle = base / "angle.onnx"
    export_model(linear_apply, {}, Normaliser(), {"name": "light_centre"}, angle, check=False,
                 verbose=False)  # fmt: skip
    return path, angle


def test_infer_real_fills_dead_channels(exported, real, tmp_path, capsys):
    path, angle = real
    dead = deadchannels.read(path.parent / "dead_channels.txt")  # the toy's marker channels
    listed = {0: np.union1d(dead[0], [5, 6, 7])}  # + three alive channels of run 0
    deadchannels.write(tmp_path / "dead.txt", listed)
    common = ["--inpaint", str(exported), "--input", str(path), "--no-progress", "--batch-size",
              "7", "--chunksize", "8", "--dead-channels", str(tmp_path / "dead.txt")]  # fmt: skip
    rc = infer_real.main([*common, "--output", str(tmp_path / "inp.root")])
    assert rc == 0, capsys.readouterr().err
    rc = infer_real.main([*common, "--onnx", str(angle), "--output", str(tmp_path / "both.root")])
    assert rc == 0, capsys.readouterr().err
    with uproot.open(tmp_path / "inp.root") as f:
        assert [k.split(";")[0] for k in f.keys()] == ["inpainted"]
        got = f["inpainted"].arrays(library="np")
    with uproot.open(tmp_path / "both.root") as f:
        assert {k.split(";")[0] for k in f.keys()} == {"val_tree", "inpainted"}
        both = f["inpainted"].arrays(library="np")
        val = f["val_tree"].arrays(library="np")
    for k in got:
        np.testing.assert_array_equal(both[k], got[k], err_msg=k)
    with uproot.open(path) as f:
        src = f["tree"].arrays(["npho", "relative_time", "run", "event"], library="np")
    n_ev = len(src["run"])
    norm = Normaliser()
    x = norm(src["npho"], src["relative_time"])
    marker = ~np.isfinite(src["npho"]) | (np.abs(src["npho"]) > 9e9)
    mask = np.zeros((n_ev, N), bool)
    mask[:, listed[0]] = True
    fill = mask | marker
    # one entry per filled sensor: the toy's dead channels (marker) and the listed ones
    assert len(got["sensor_id"]) == fill.sum()
    ev = np.searchsorted(src["event"], got["event_number"])
    np.testing.assert_array_equal(src["event"][ev], got["event_number"])
    assert fill[ev, got["sensor_id"]].all()
    np.testing.assert_array_equal(got["marker"], marker[ev, got["sensor_id"]])
    np.testing.assert_array_equal(got["listed"], mask[ev, got["sensor_id"]])
    assert got["marker"].any() and (got["listed"] & ~got["marker"]).sum() == 3 * n_ev
    np.testing.assert_array_equal(got["face"], geometry.FACE_OF[got["sensor_id"]])
    # the values: the exported inpainter's output, in photons and ns
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    out = session.run(["output"], {"input": x, "mask": mask.astype(np.float32)})[0]
    n, t = norm.inverse(out[ev, got["sensor_id"]])
    np.testing.assert_allclose(got["pred_npho"], n, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(got["pred_time"], t * 1e9, rtol=1e-5, atol=1e-6)
    # the angle model saw the filled event
    filled_n = src["npho"].copy()
    filled_n[ev, got["sensor_id"]] = got["pred_npho"]
    filled_t = src["relative_time"].copy()
    filled_t[ev, got["sensor_id"]] = t
    angle_session = ort.InferenceSession(str(angle), providers=["CPUExecutionProvider"])
    want = angle_session.run(["output"], {"input": norm(filled_n, filled_t)})[0]
    np.testing.assert_allclose(np.stack([val["pred_theta"], val["pred_phi"]], 1), want, atol=1e-3)
    # a run missing from the list: an error before anything is written
    deadchannels.write(tmp_path / "other.txt", {7: [1, 2]})
    rc = infer_real.main([*common[:-1], str(tmp_path / "other.txt"), "--output",
                          str(tmp_path / "no.root")])  # fmt: skip
    assert rc == 1 and "not in the dead-channel list" in capsys.readouterr().err
    assert not (tmp_path / "no.root").exists()
