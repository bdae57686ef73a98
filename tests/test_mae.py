"""Masked-autoencoder pretraining (xecjax.mae, xecjax.models.mae) and fine-tuning from its
encoder (xecjax.finetune).

By hand: the masking (valid sensors only, the exact ratio, validation masks keyed by the
event), the loss (masked sensors only, per face and channel, time where measured), the
decoders' way back from face cells to sensors. End to end: configs/mae.py:smoke on toy files
stripped to npho, relative_time, run and event (unlabelled); the encoder-only loading of its
checkpoint into a regressor and its refusals; a fine-tuning run frozen for one epoch, then
resumed (without reloading the MAE) and unfrozen.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import uproot
from flax import nnx
from run_config import isolated_config

from xecjax import finetune, geometry
from xecjax import mae as mae_objective
from xecjax.checkpoint import Checkpointer, load_for_inference, read_meta
from xecjax.config import load_config
from xecjax.models import build_model, make_apply
from xecjax.models.mae import assembly, cells_to_sensors, face_cells
from xecjax.normalise import Normaliser
from xecjax.steps import init_state
from xecjax.train import toy_data_files, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
MAE = f"{ROOT / 'configs' / 'mae.py'}:smoke"
REGRESSOR = f"{ROOT / 'configs' / 'convnext.py'}:smoke"
N = geometry.N_SENSORS


def mae_settings(**over) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict(
        {"loss": "l1", "beta": 1.0, "npho_weight": "none", "npho_weight_floor": 0.1}
    )
    m.update(over)
    return m


# ----------------------------------------------------------------------------------------------
# Masking, loss, decoders by hand.
# ----------------------------------------------------------------------------------------------
def test_masking_touches_only_valid_sensors_and_reaches_the_ratio():
    rng = np.random.default_rng(0)
    b = 6
    x = rng.uniform(0.0, 1.0, (b, N, 2)).astype(np.float32)
    dead = rng.random((b, N)) < rng.uniform(0.0, 0.5, (b, 1))  # 0-50 % dead per event
    x[dead] = -1.0
    x[5] = -1.0  # an event without a valid sensor (a padding row looks like this)
    valid = mae_objective.valid_sensors(jnp.asarray(x), -1.0)
    np.testing.assert_array_equal(valid, ~dead & (np.arange(b) < 5)[:, None])
    keys = jax.random.split(jax.random.PRNGKey(1), b)
    for ratio in (0.05, 0.5, 0.65, 0.9):
        mask = np.asarray(mae_objective.random_mask(keys, valid, ratio))
        assert not (mask & ~np.asarray(valid)).any()  # never a dead sensor
        n_valid = np.asarray(valid).sum(1)
        np.testing.assert_array_equal(mask.sum(1), np.round(ratio * n_valid))
    # another key, another draw; the masked input carries the sentinels exactly there
    other = np.asarray(mae_objective.random_mask(jax.random.split(keys[0], b), valid, 0.65))
    assert (other != mask).any()
    xin = np.asarray(mae_objective.apply_mask(jnp.asarray(x), jnp.asarray(other), -1.0, -2.0))
    np.testing.assert_array_equal(xin[other], np.broadcast_to([-1.0, -2.0], xin[other].shape))
    np.testing.assert_array_equal(xin[~other], x[~other])


def test_validation_masks_follow_the_event_not_the_batch():
    x = jnp.zeros((4, N, 2))
    valid = mae_objective.valid_sensors(x, -1.0)
    run, event = jnp.asarray([0, 0, 1, 1]), jnp.asarray([3, 4, 3, 4])
    mask = mae_objective.random_mask(mae_objective.event_keys(run, event), valid, 0.65)
    perm = jnp.asarray([2, 0, 3, 1])
    again = mae_objective.random_mask(
        mae_objective.event_keys(run[perm], event[perm]), valid[perm], 0.65
    )
    np.testing.assert_array_equal(again, mask[perm])
    assert len({tuple(np.flatnonzero(m)[:20]) for m in np.asarray(mask)}) == 4


def test_loss_counts_masked_sensors_only_per_face_and_channel():
    rng = np.random.default_rng(2)
    b = 3
    target = rng.uniform(0.0, 1.0, (b, N, 2)).astype(np.float32)
    target[:, ::7, 1] = -1.0  # time not measured (below the npho threshold)
    pred = rng.uniform(0.0, 1.0, (b, N, 2)).astype(np.float32)
    mask = rng.random((b, N)) < 0.3
    for settings in (mae_settings(), mae_settings(npho_weight="npho", loss="smooth_l1", beta=0.3)):

        def total(p, t, m=mask, s=settings):
            sums = mae_objective.masked_sums(
                jnp.asarray(p), jnp.asarray(t), jnp.asarray(m), s, -1.0
            )
            losses = mae_objective.face_losses(sums["num"], sums["den"])
            return float(mae_objective.total_loss(losses, (1.0, 0.5))), np.asarray(losses)

        want, losses = total(pred, target)
        # unmasked sensors: any prediction and any target change nothing (not even NaN / Inf)
        p2, t2 = pred.copy(), target.copy()
        p2[~mask] = rng.normal(0, 100, p2[~mask].shape)
        t2[~mask] = rng.normal(0, 100, t2[~mask].shape)
        p2[~mask & (np.arange(N) % 2 == 0)] = np.nan
        t2[~mask & (np.arange(N) % 3 == 0)] = np.inf
        assert total(p2, t2)[0] == want
        # a masked sensor whose time is the sentinel: its predicted time counts nowhere
        no_time = np.flatnonzero(mask[0] & (target[0, :, 1] == -1.0))[0]
        p3 = pred.copy()
        p3[0, no_time, 1] += 5.0
        assert total(p3, target)[0] == want
        p3[0, no_time, 0] += 5.0  # its npho does
        assert total(p3, target)[0] != want
        # by hand: per face and channel the weighted mean of the masked values
        face = geometry.FACE_OF
        err = np.abs(pred - target)
        if settings.loss == "smooth_l1":
            err = np.where(err < 0.3, 0.5 * err**2 / 0.3, err - 0.15)
        w = np.ones((b, N))
        if settings.npho_weight == "npho":
            w = np.maximum(target[..., 0], 0) + 0.1
        for c in range(2):
            scored = mask & (target[..., 1] != -1.0) if c == 1 else mask
            for f in range(len(geometry.FACE_NAMES)):
                sel = scored & (face == f)[None]
                hand = (w * err[..., c])[sel].sum() / w[sel].sum()
                np.testing.assert_allclose(losses[c, f], hand, rtol=2e-5)
        np.testing.assert_allclose(want, losses[0].sum() + 0.5 * losses[1].sum(), rtol=1e-6)


@pytest.mark.parametrize("outer_mode", ["finegrid", "split"])
def test_decoder_cells_map_back_to_every_sensor(outer_mode):
    """Cells holding their sensor's value come back as the sensor array: every sensor is
    covered, an outer PMT is the mean of its fine-grid cells (finegrid) and the coarse PMTs
    under the centre patch the mean of their two cells (split)."""
    x = np.random.default_rng(3).normal(size=(2, N, 2)).astype(np.float32)
    cells = face_cells(outer_mode)
    names = [n for n in ("inner", "us", "ds", "outer", "outer_coarse", "outer_center", "top",
                         "bottom") if n in cells]  # fmt: skip
    flat = np.concatenate([x[:, cells[n].ravel()] for n in names], axis=1)
    got = cells_to_sensors(jnp.asarray(flat), outer_mode)
    np.testing.assert_allclose(got, x, rtol=1e-6)
    # a value in one fine cell of an outer coarse PMT counts 1/15
    _, multi, weight, _ = assembly(outer_mode)
    assert weight.sum(1) == pytest.approx(1.0)
    if outer_mode == "finegrid":
        assert sorted(set((weight > 0).sum(1))) == [6, 15]
        assert len(multi) == 216 + 18  # the outer PMTs: coarse and centre-patch ones
    else:
        assert len(multi) == 12  # the coarse PMTs under the centre patch
    if outer_mode == "finegrid":
        return  # the model itself: below for "split"; "finegrid" trains in mae_run
    # the model itself: [B, 4760, 2] float32
    config = load_config(MAE)
    config.model.outer_mode = outer_mode
    params, apply_fn = make_apply(build_model(config.model, rngs=nnx.Rngs(0)))
    out = jax.jit(apply_fn, static_argnums=2)(params, jnp.asarray(x), False, None)
    assert out.shape == (2, N, 2) and out.dtype == jnp.float32 and np.isfinite(out).all()


# ----------------------------------------------------------------------------------------------
# The MAE run on unlabelled files, and fine-tuning from it.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("mae")


@pytest.fixture(scope="module")
def mae_run(base):
    """configs/mae.py:smoke (2 epochs) on the smoke toy events with every branch but npho,
    relative_time, run and event removed: no truth at all."""
    config = isolated_config(MAE, base)
    (labelled,) = toy_data_files(config.data)  # the events of the fine-tuning runs below
    bare = base / "unlabelled" / "toy.root"
    bare.parent.mkdir()
    keep = ("run", "event", "npho", "relative_time")
    with uproot.open(labelled) as f:
        arrays = f["tree"].arrays(keep, library="np")
    with uproot.recreate(bare) as f:
        f.mktree("tree", {k: (v.dtype, v.shape[1:]) for k, v in arrays.items()})
        f["tree"].extend(arrays)
    config.data.path = str(bare.parent)
    config.train.epochs = 2
    return train_and_evaluate(config, base / "mae")


def test_mae_smoke_trains_on_unlabelled_files_and_logs_its_metrics(base, mae_run):
    work = base / "mae"
    with uproot.open(next((base / "unlabelled").glob("*.root"))) as f:
        assert set(f["tree"].keys()) == {"run", "event", "npho", "relative_time"}
    assert mae_run["status"] == "FINISHED" and mae_run["epochs_done"] == 2
    assert mae_run["baselines"] == {} and mae_run["val_resolution_deg"] is None
    _, meta = read_meta(work, "last")
    history = meta["history"]
    train = [h["train_loss"] for h in history]
    assert np.isfinite(train).all() and train[-1] < train[0], train
    for row in history:
        assert row["val_actual_mask_ratio"] == pytest.approx(0.65, abs=0.005)
        assert row["val_loss"] == row["val_total_loss"]
        npho = sum(row[f"val_loss_npho_{f}"] for f in geometry.FACE_NAMES)
        time = sum(row[f"val_loss_time_{f}"] for f in geometry.FACE_NAMES)
        assert row["val_loss_npho"] == pytest.approx(npho) and npho > 0
        assert row["val_total_loss"] == pytest.approx(npho + time)
    best = read_meta(work, "best")[1]["best"]
    assert set(best) == {"epoch", "val_total_loss", "val_loss"}
    assert best["val_total_loss"] == min(h["val_total_loss"] for h in history)
    summary = json.loads((work / "summary.json").read_text())
    assert summary["final"]["val_total_loss"] == history[-1]["val_total_loss"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{base / 'mlruns.db'}")
    exp = client.get_experiment_by_name("gamma_angle")
    (run,) = client.search_runs([exp.experiment_id], "tags.mlflow.runName = 'mae'")
    assert run.info.status == "FINISHED" and run.data.params["objective"] == "mae"
    names = ("train_loss", "val_total_loss", "val_loss_npho", "val_loss_time",
             "val_loss_npho_inner", "val_loss_time_bottom", "val_actual_mask_ratio")  # fmt: skip
    for name in names:
        assert len(client.get_metric_history(run.info.run_id, name)) == 2, name


def test_mae_resume_continues_exactly(base, mae_run):
    """1 epoch + resume=auto for 1 more gives the parameters and EMA of 2 epochs in one go
    (the training masks are drawn from the step's key)."""
    config = isolated_config(MAE, base)
    config.data.path = str(base / "unlabelled")
    config.train.epochs, config.train.stop_after_epoch = 2, 1
    train_and_evaluate(config, base / "mae_resumed")
    config.resume, config.train.stop_after_epoch = "auto", 0
    train_and_evaluate(config, base / "mae_resumed")
    for ema in (False, True):
        want = load_for_inference(base / "mae", "last", ema=ema)[2]
        got = load_for_inference(base / "mae_resumed", "last", ema=ema)[2]
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    hist = [read_meta(base / w, "last")[1]["history"] for w in ("mae", "mae_resumed")]
    assert [h["val_total_loss"] for h in hist[1]] == pytest.approx(
        [h["val_total_loss"] for h in hist[0]], rel=1e-5
    )


def encoder_of(params) -> dict:
    return {k: np.asarray(v) for k, v in finetune.encoder_leaves(params).items()}


def test_encoder_loading_copies_exactly_the_encoder(base, mae_run):
    config = isolated_config(REGRESSOR, base)
    fresh, _ = make_apply(build_model(config.model, rngs=nnx.Rngs(7)))
    loaded, info = finetune.load_encoder(fresh, base / "mae", Normaliser())
    _, _, mae_params, _ = load_for_inference(base / "mae", "best", ema=True)
    want = encoder_of(mae_params)
    got = encoder_of(loaded)
    assert info["leaves"] == len(want) == len(got) > 0
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert {n.split("/")[0] for n in got} == {"backbone", "hex_encoder", "pos_embed", "fusion"}
    # the rest (the head) untouched
    flat = dict(jax.tree_util.tree_flatten_with_path(fresh)[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(loaded)[0]:
        if not finetune.is_encoder(finetune.leaf_name(path)):
            np.testing.assert_array_equal(leaf, flat[path])


def test_a_vertex_input_regressor_takes_the_encoder_and_keeps_its_vertex_token(base, mae_run):
    """model.vertex_input: one token more than the MAE (the last): pos_embed gets the MAE's
    rows for the face tokens, its vertex row and the vertex embedding stay as initialised."""
    config = isolated_config(REGRESSOR, base)
    config.model.vertex_input = True
    fresh, _ = make_apply(build_model(config.model, rngs=nnx.Rngs(7)))
    loaded, _ = finetune.load_encoder(fresh, base / "mae", Normaliser())
    _, _, mae_params, _ = load_for_inference(base / "mae", "best", ema=True)
    want, got, init = encoder_of(mae_params), encoder_of(loaded), encoder_of(fresh)
    assert got["pos_embed"].shape[0] == want["pos_embed"].shape[0] + 1
    np.testing.assert_array_equal(got["pos_embed"][:-1], want["pos_embed"])
    np.testing.assert_array_equal(got["pos_embed"][-1], init["pos_embed"][-1])
    for name in want:
        if name != "pos_embed":
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(loaded["vertex_embed"]["fc1"]["kernel"][...],
                                  fresh["vertex_embed"]["fc1"]["kernel"][...])  # fmt: skip


def fake_checkpoint(work: Path, model_over: dict, norm: Normaliser) -> Path:
    """A `best` checkpoint of an MAE with changed model options, untrained (for refusals)."""
    config = isolated_config(MAE, work)
    config.model.update(model_over)
    params, _ = make_apply(build_model(config.model, rngs=nnx.Rngs(0)))
    state = init_state(params, optax.adam(1e-3), 0)
    ckpt = Checkpointer(work, async_save=False)
    ckpt.save("best", state, {"config": config.to_dict(), "normaliser": norm.to_dict()})
    ckpt.close()
    return work


@pytest.mark.parametrize(
    "over, norm, message",
    [
        # another d_model (cnn_dims[-1] * 2 x 2 = d_model): the first encoder array that differs
        (
            {"d_model": 64, "cnn_dims": (4, 16)},
            Normaliser(),
            r"encoder parameter backbone/down_biases/0 has shape \(16,\) float32 in the "
            r"checkpoint but \(8,\) float32 in this model",
        ),
        ({"num_layers": 2}, Normaliser(), r"in the checkpoint but not in this model: \['fusion/1/"),
        ({}, Normaliser(npho_scale=500.0), r"norm.npho_scale = 500.0 \(here 1000.0\)"),
    ],
)
def test_encoder_loading_refuses_a_mismatched_checkpoint(tmp_path, over, norm, message):
    where = fake_checkpoint(tmp_path / "other", over, norm)
    config = isolated_config(REGRESSOR, tmp_path)
    params, _ = make_apply(build_model(config.model, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=message) as err:
        finetune.load_encoder(params, where, Normaliser())
    assert str(where / "checkpoints" / "best") in str(err.value)  # names the checkpoint


def test_fine_tuning_freezes_the_encoder_then_resumes_without_reloading(base, mae_run, monkeypatch):
    """init_from + init_freeze_epochs=1: after the frozen epoch the encoder (parameters and
    EMA) is still exactly the MAE's best EMA encoder while the head learned; the run resumed
    for epoch 2 never calls the loader again, and its encoder moves."""
    config = isolated_config(REGRESSOR, base)
    config.init_from = str(base / "mae")
    config.init_freeze_epochs = 1
    config.train.epochs = 2
    config.train.stop_after_epoch = 1
    work = base / "finetune"
    train_and_evaluate(config, work)
    _, meta = read_meta(work, "last")
    assert meta["config"]["init_from"] == str(base / "mae") and meta["position"]["epoch"] == 1
    _, _, mae_params, _ = load_for_inference(base / "mae", "best", ema=True)
    want = encoder_of(mae_params)
    after = {}
    for ema in (False, True):
        _, _, params, _ = load_for_inference(work, "last", ema=ema)
        got = encoder_of(params)
        for name, value in want.items():
            if ema:  # the EMA of a constant: decay * a + (1 - decay) * a, to rounding
                np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
            else:  # zero updates: the very same values
                np.testing.assert_array_equal(got[name], value, err_msg=name)
        after[ema] = params
    fresh, _ = make_apply(build_model(config.model, rngs=nnx.Rngs(config.train.seed)))
    head = lambda p: np.asarray(p["head"]["fc2"]["kernel"][...])  # noqa: E731
    assert np.abs(head(after[False]) - head(fresh)).max() > 1e-4  # the head trained

    def no_reload(*args, **kwargs):
        raise AssertionError("a resumed run must not load the pretrained encoder again")

    monkeypatch.setattr(finetune, "load_encoder", no_reload)
    config.resume, config.train.stop_after_epoch = "auto", 0
    summary = train_and_evaluate(config, work)
    assert summary["epochs_done"] == 2 and np.isfinite(summary["val_resolution_deg"])
    _, _, params, _ = load_for_inference(work, "last", ema=False)
    got = encoder_of(params)
    assert max(np.abs(got[n] - want[n]).max() for n in want) > 1e-5  # unfrozen: it moves


def test_config_refusals(tmp_path):
    config = isolated_config(REGRESSOR, tmp_path)
    config.init_freeze_epochs = 1
    with pytest.raises(ValueError, match="init_freeze_epochs > 0 needs config.init_from"):
        train_and_evaluate(config, tmp_path / "a")
    config = isolated_config(MAE, tmp_path)
    config.init_from, config.data.reweight = str(tmp_path), "theta"
    with pytest.raises(ValueError, match="unset data.reweight, init_from"):
        train_and_evaluate(config, tmp_path / "b")
    config = isolated_config(MAE, tmp_path)
    config.objective = "regression"
    with pytest.raises(ValueError, match="train it with config.objective = 'mae'"):
        train_and_evaluate(config, tmp_path / "c")
    config = isolated_config(MAE, tmp_path)
    config.mae.mask_ratio = 1.0
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        train_and_evaluate(config, tmp_path / "c")
