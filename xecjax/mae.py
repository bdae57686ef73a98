"""Masked-autoencoder pretraining (config.objective = "mae"): masking, loss, steps, validation.

  python -m xecjax.train --config configs/mae.py:smoke --workdir runs/mae_smoke

The model is xecjax.models.mae (model.name = "mae"): the regressor's encoder plus light face
decoders, x [B, 4760, 2] -> reconstruction [B, 4760, 2]. Per event and step:
  valid   sensors whose npho feature is not the Normaliser's sentinel_npho (dead channels and
          the padding rows of a validation batch are never masked nor scored);
  mask    exactly round(config.mae.mask_ratio * n_valid) of them, drawn uniformly (random keys,
          ranked: a stable double argsort, so ties cannot change the count); in training from
          the step's key, in validation from a key of (run, event), so each validation event
          keeps its mask across epochs, batch layouts and process counts;
  input   masked sensors set to (sentinel_npho, sentinel_time), as the Normaliser marks dead
          channels: the encoder cannot tell a masked sensor from a dead one;
  loss    on masked sensors only, per face (geometry.FACE_NAMES) and channel: the weighted
          mean of the elementwise loss (config.mae.loss: smooth_l1 with transition mae.beta,
          l1, mse; feature units), the time channel only where the true time feature is not
          sentinel_time (below the npho threshold the time is not measured). Weights
          (config.mae.npho_weight): "none" 1 per sensor; "npho" max(true npho feature, 0) +
          mae.npho_weight_floor, so that bright sensors, which carry the shower, count most
          (with the default log1p feature, 0.1 ~ 500 photons). Total (as the reference):
          sum over faces of w_npho * L_npho(face) + w_time * L_time(face)
          (mae.channel_weights); loss_npho and loss_time are the sums over faces.
Validation metrics (per epoch, val_ prefix): val_total_loss (= val_loss, which chooses
`best`), val_loss_npho, val_loss_time, val_loss_{npho,time}_{face}, val_rmse_{npho,time}
(unweighted, masked sensors, feature units) and val_actual_mask_ratio (masked / valid
sensors). The same formula as the training loss, with the per-face means taken over the whole
validation set instead of one batch.

The MAE reads only npho, time, run and event (the Loader with truth=False): unlabelled MC or
real data work.

config.objective = "inpainter" (configs/inpainter.py, xecjax.inpainter) trains the same model
family with the same masking, loss, steps and metrics, its settings in config.inpainter instead
of config.mae (`settings`): a small mask ratio, started from an MAE run (init_from), the encoder
optionally frozen.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from xecjax import geometry, tasks
from xecjax.distributed import to_global
from xecjax.steps import apply_update

OBJECTIVES = ("regression", "mae", "inpainter")
# the objectives that reconstruct sensors (model.name "mae", this module's steps and metrics)
RECONSTRUCTION = ("mae", "inpainter")
LOSSES = ("smooth_l1", "l1", "mse")
NPHO_WEIGHTS = ("none", "npho")
# the validation masks' base key (folded with each event's run and event numbers)
VAL_MASK_SEED = 0
# what the steps read of a batch (xecjax.distributed.to_global): no truth
BATCH_KEYS = ("x", "valid", "run", "event")


def objective(config: ml_collections.ConfigDict) -> str:
    """config.objective: "regression" (default; configs without the key too), "mae" or
    "inpainter"."""
    name = config.get("objective", "regression")
    if name not in OBJECTIVES:
        raise ValueError(f"config.objective must be one of {OBJECTIVES}, got {name!r}")
    if name == "regression" and config.model.get("name") == "mae":
        raise ValueError("model.name = 'mae' reconstructs sensors, it has no angle output: "
                         "train it with config.objective = 'mae' (configs/mae.py)")  # fmt: skip
    return name


def settings(config) -> ml_collections.ConfigDict:
    """The masking and loss settings of a reconstruction run: config.mae (objective "mae") or
    config.inpainter (objective "inpainter"); the same keys (configs/mae.py)."""
    name = config["objective"] if "objective" in config else "regression"
    return config["inpainter"] if name == "inpainter" else config["mae"]


def check_sentinels(model_cfg, normaliser) -> None:
    """A model with decoder_residual = "neighbours" tells observed sensors from the sentinels
    model.sentinel_npho / sentinel_time (default -1, -1): they must be the Normaliser's."""
    if model_cfg.get("decoder_residual", "none") == "none":
        return
    for ch in ("npho", "time"):
        mine, theirs = (
            float(model_cfg.get(f"sentinel_{ch}", -1.0)),
            getattr(normaliser, f"sentinel_{ch}"),
        )
        if mine != float(theirs):
            raise ValueError(f"model.decoder_residual: model.sentinel_{ch} = {mine} but the "
                             f"Normaliser's sentinel_{ch} is {theirs}: set them equal")  # fmt: skip


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuse options an MAE or inpainter run cannot honour (rather than ignoring them
    silently)."""
    name = objective(config)
    m = settings(config)
    if config.model.name != "mae":
        raise ValueError(f"config.objective = {name!r} needs model.name = 'mae', got "
                         f"{config.model.name!r}")  # fmt: skip
    sec = "inpainter" if name == "inpainter" else "mae"
    if not 0.0 < float(m.mask_ratio) < 1.0:
        raise ValueError(f"config.{sec}.mask_ratio must be in (0, 1), got {m.mask_ratio}")
    if m.loss not in LOSSES:
        raise ValueError(f"config.{sec}.loss must be one of {LOSSES}, got {m.loss!r}")
    if m.npho_weight not in NPHO_WEIGHTS:
        raise ValueError(f"config.{sec}.npho_weight must be one of {NPHO_WEIGHTS}, "
                         f"got {m.npho_weight!r}")  # fmt: skip
    if len(tuple(m.channel_weights)) != 2:
        raise ValueError(f"config.{sec}.channel_weights: (npho, time), got {m.channel_weights}")
    d = config.data
    # an inpainter starts from an MAE run and exports (xecjax.inpainter); an MAE does neither
    mae_only = name == "mae"
    bad = [k for k, on in (("data.reweight", d.reweight != "none"), ("data.fiducial", d.fiducial),
                           ("train.export_onnx", mae_only and config.train.export_onnx),
                           ("init_from", mae_only and bool(config.get("init_from", ""))))
           if on]  # fmt: skip
    bad += [f"tasks.{n}.enabled" for n in tasks.enabled(config)]
    if bad:
        raise ValueError(
            f"config.objective = {name!r} reads no truth and has no angle output: unset "
            f"{', '.join(bad)} (they need labels, or an angle model)"
        )


# ----------------------------------------------------------------------------------------------
# Masking.
# ----------------------------------------------------------------------------------------------
def valid_sensors(x: jax.Array, sentinel_npho: float) -> jax.Array:
    """[B, 4760] bool: sensors with a measured npho (feature not the sentinel)."""
    return x[..., 0] != jnp.asarray(sentinel_npho, x.dtype)


def random_mask(keys: jax.Array, valid: jax.Array, ratio: float) -> jax.Array:
    """[B, 4760] bool: exactly round(ratio * n_valid) of each event's valid sensors, uniformly
    drawn with its key (keys [B]); never an invalid sensor."""
    u = jax.vmap(lambda k: jax.random.uniform(k, valid.shape[1:]))(keys)
    u = jnp.where(valid, u, 2.0)  # invalid sensors rank after every valid one
    rank = jnp.argsort(jnp.argsort(u, axis=-1, stable=True), axis=-1, stable=True)
    n_mask = jnp.round(ratio * valid.sum(axis=-1).astype(jnp.float32)).astype(rank.dtype)
    return rank < n_mask[:, None]


def event_keys(run: jax.Array, event: jax.Array, seed: int = VAL_MASK_SEED) -> jax.Array:
    """A key per event from its (run, event) numbers: the validation masks."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda r, e: jax.random.fold_in(jax.random.fold_in(base, r), e))(run, event)


def apply_mask(x: jax.Array, mask: jax.Array, sentinel_npho: float, sentinel_time: float):
    """x [B, 4760, 2] with the masked sensors set to (sentinel_npho, sentinel_time)."""
    sentinels = jnp.asarray([sentinel_npho, sentinel_time], x.dtype)
    return jnp.where(mask[..., None], sentinels, x)


# ----------------------------------------------------------------------------------------------
# Loss.
# ----------------------------------------------------------------------------------------------
def elementwise(pred: jax.Array, target: jax.Array, name: str, beta: float) -> jax.Array:
    """The per-value loss (feature units): smooth_l1 (transition beta; <= 0: l1), l1, mse."""
    d = pred - target
    if name == "mse":
        return d * d
    a = jnp.abs(d)
    if name == "l1" or beta <= 0:
        return a
    return jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def face_onehot() -> np.ndarray:
    """[4760, faces] float32: sensor -> physical face (geometry.FACE_NAMES order)."""
    return np.eye(len(geometry.FACE_NAMES), dtype=np.float32)[geometry.FACE_OF]


def masked_sums(
    pred: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    m: ml_collections.ConfigDict,
    sentinel_time: float,
) -> dict[str, jax.Array]:
    """Sums over the masked sensors of a batch, per channel (npho, time) and face:
    "num" [2, F] weighted loss, "den" [2, F] weights; unweighted "sq" [2] squared errors and
    "count" [2] scored values (for the RMSE). Only masked sensors count; time only where the
    target's time feature is not sentinel_time."""
    t = target.astype(jnp.float32)
    p = pred.astype(jnp.float32)
    if m.npho_weight == "npho":
        w = jnp.maximum(t[..., 0], 0.0) + float(m.npho_weight_floor)
    else:
        w = jnp.ones(t.shape[:2], jnp.float32)
    time_ok = t[..., 1] != jnp.asarray(sentinel_time, jnp.float32)
    scored = jnp.stack([mask, mask & time_ok], axis=-1).astype(jnp.float32)  # [B, N, 2]
    # zero the unscored values themselves (not just their weights): an unmasked sensor's
    # prediction or target can then change nothing, not even through an Inf or NaN
    err = jnp.where(scored > 0, elementwise(p, t, m.loss, float(m.beta)), 0.0)
    sq = jnp.where(scored > 0, jnp.square(p - t), 0.0)
    weighted = jnp.where(scored > 0, w[..., None], 0.0)
    onehot = jnp.asarray(face_onehot())
    return {
        "num": jnp.einsum("bnc,nf->cf", weighted * err, onehot),
        "den": jnp.einsum("bnc,nf->cf", weighted, onehot),
        "sq": sq.sum(axis=(0, 1)),
        "count": scored.sum(axis=(0, 1)),
    }


def face_losses(num, den):
    """[2, F] weighted means (0 where a face has nothing scored). jax or NumPy."""
    xp = jnp if isinstance(num, jax.Array) else np
    return xp.where(den > 0, num / xp.maximum(den, 1e-12), 0.0)


def total_loss(losses, channel_weights) -> Any:
    """sum over faces of w_npho * L_npho(face) + w_time * L_time(face)."""
    return channel_weights[0] * losses[0].sum() + channel_weights[1] * losses[1].sum()


# ----------------------------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------------------------
def make_train_step(apply_fn, tx, config: ml_collections.ConfigDict, normaliser, freeze=None):
    """step(state, batch) -> (state, {"loss", "grad_norm", "finite"}): a fresh random mask
    per event (from the step's key), the reconstruction loss of the masked sensors, and the
    update, EMA and NaN guard shared with the regression (xecjax.steps.apply_update).
    freeze: None, or fn(step, updates) -> updates (xecjax.finetune: the encoder of an
    inpainter)."""
    m = settings(config)
    sn, st = float(normaliser.sentinel_npho), float(normaliser.sentinel_time)
    ratio, cw = float(m.mask_ratio), tuple(float(w) for w in m.channel_weights)

    def step_fn(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        r_mask, r_model = jax.random.split(rng)
        x = batch["x"]
        valid = valid_sensors(x, sn) & batch["valid"][:, None]
        mask = random_mask(jax.random.split(r_mask, x.shape[0]), valid, ratio)
        x_in = apply_mask(x, mask, sn, st)

        def loss_of(params):
            pred = apply_fn(params, x_in, True, r_model)
            s = masked_sums(pred, x, mask, m, st)
            return total_loss(face_losses(s["num"], s["den"]), cw)

        loss, grads = jax.value_and_grad(loss_of)(state["params"])
        return apply_update(state, loss, grads, tx, config, freeze)

    return step_fn


def make_eval_step(apply_fn, config: ml_collections.ConfigDict, normaliser):
    """eval(params, batch) -> the masked_sums of the batch plus "masked" and "valid" sensor
    counts; the masks from each event's (run, event) (event_keys)."""
    m = settings(config)
    sn, st = float(normaliser.sentinel_npho), float(normaliser.sentinel_time)
    ratio = float(m.mask_ratio)

    def eval_fn(params, batch):
        x = batch["x"]
        valid = valid_sensors(x, sn) & batch["valid"][:, None]
        mask = random_mask(event_keys(batch["run"], batch["event"]), valid, ratio)
        pred = apply_fn(params, apply_mask(x, mask, sn, st), False, None)
        out = masked_sums(pred, x, mask, m, st)
        out["masked"] = mask.sum(dtype=jnp.float32)
        out["valid"] = valid.sum(dtype=jnp.float32)
        return out

    return eval_fn


def evaluate(
    eval_step, params, loader, batch_sharding: NamedSharding, config: ml_collections.ConfigDict
) -> dict[str, float]:
    """The validation metrics of the module docstring over the loader's events (the sums of
    every batch, then the per-face means: the training loss's formula on the whole set)."""
    sums: dict[str, np.ndarray] = {}
    for local in loader.epoch(0):  # the same number of batches on every process
        out = eval_step(params, to_global(local, batch_sharding, BATCH_KEYS))
        for k, v in out.items():  # replicated: every process holds the global sums
            sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
    if not sums:
        raise ValueError("the validation set is empty: check config.data.val / val_fraction")
    return summarise(sums, settings(config).channel_weights, prefix="val_")


def summarise(sums: dict, channel_weights, prefix: str = "") -> dict[str, float]:
    """The metrics of the module docstring from the sums of make_eval_step over a data set
    ({"num", "den", "sq", "count", "masked", "valid"}), keys with `prefix` ("val_" in
    training): loss (= total_loss), total_loss, loss_{npho,time}[_<face>], rmse_{npho,time},
    actual_mask_ratio."""
    sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
    losses = face_losses(sums["num"], sums["den"])
    cw = tuple(float(w) for w in channel_weights)
    total = float(total_loss(losses, cw))
    res = {"loss": total, "total_loss": total}
    for c, channel in enumerate(("npho", "time")):
        res[f"loss_{channel}"] = float(losses[c].sum())
        for f, face in enumerate(geometry.FACE_NAMES):
            res[f"loss_{channel}_{face}"] = float(losses[c, f])
        res[f"rmse_{channel}"] = float(np.sqrt(sums["sq"][c] / max(sums["count"][c], 1.0)))
    res["actual_mask_ratio"] = float(sums["masked"] / max(sums["valid"], 1.0))
    return {prefix + k: v for k, v in res.items()}
