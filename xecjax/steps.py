"""The update step and the evaluation step (pure functions of a state dict and a batch) and
the validation pass over a loader.

`state` holds params, ema, opt_state, step and rng; a batch is the global (sharded) arrays x
[B, 4760, 2], angles [B, 2] (theta, phi degrees), weight [B] and valid [B].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from xecjax import losses, metrics, tasks
from xecjax.distributed import to_global
from xecjax.models import needs_vertex


def per_sample_loss(loss_fn, point_weight: float):
    """(pred, batch) -> [B]: the configured loss on the angles, plus point_weight times the
    conversion-point loss (losses.point_loss, "point" models) when point_weight > 0."""

    def fn(pred, batch):
        loss = loss_fn(pred, batch["angles"])
        if point_weight > 0:
            loss = loss + point_weight * losses.point_loss(pred, batch["xyzTruth"])
        return loss

    return fn


def init_state(params, tx, seed: int) -> dict[str, Any]:
    """The training state at step 0: params, their EMA copy, tx's optimiser state, step and
    the dropout rng (PRNGKey(seed))."""
    return {
        "params": params,
        "ema": jax.tree.map(jnp.copy, params),
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.PRNGKey(seed),
    }


def predict_and_loss(
    apply_fn, sample_loss, task_loss, params, batch, train: bool, rng, vertex: bool = False
):
    """(angle output [B, C] float32, per-sample loss [B], task outputs {task: [B, w]}) of one
    batch; with task_loss (xecjax.tasks.make_loss) the loss is the total over the tasks. With
    `vertex` (model.vertex_input) the model also reads the batch's xyzVTX."""
    extra = {"vertex": batch["xyzVTX"]} if vertex else {}
    if task_loss is None:
        pred = apply_fn(params, batch["x"], train, rng, **extra).astype(jnp.float32)
        return pred, sample_loss(pred, batch), {}
    pred, task_out = apply_fn(params, batch["x"], train, rng, tasks=True, **extra)
    pred = pred.astype(jnp.float32)
    return pred, task_loss(sample_loss(pred, batch), task_out, batch), task_out


def make_train_step(apply_fn, tx, loss_fn, config: ml_collections.ConfigDict, freeze=None):
    """step(state, batch) -> (state, {"loss", "grad_norm", "finite"}).

    apply_fn takes the float32 parameters and input; with config.train.bf16 it is the apply
    function of a model built with dtype=bfloat16 (xecjax.models.build_model), whose layers
    cast them to bfloat16 where they compute. Gradients, optimiser state and EMA are float32,
    and so is the loss (the model output is float32).

    A non-finite loss or gradient leaves parameters, EMA and optimiser state unchanged (the host
    then stops or counts the skip), so the in-memory state stays the last good one.
    freeze: None, or fn(step, updates) -> updates (xecjax.finetune.freeze_encoder_updates).
    """
    sample_loss = per_sample_loss(loss_fn, float(config.optim.get("point_weight", 0.0)))
    task_loss = tasks.make_loss(config)
    vertex = needs_vertex(config.model)

    def step_fn(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])

        def loss_of(params):
            _, per_sample, _ = predict_and_loss(
                apply_fn, sample_loss, task_loss, params, batch, True, rng, vertex
            )
            return losses.weighted_mean(per_sample, batch["weight"] * batch["valid"])

        loss, grads = jax.value_and_grad(loss_of)(state["params"])
        return apply_update(state, loss, grads, tx, config, freeze)

    return step_fn


def apply_update(state, loss, grads, tx, config: ml_collections.ConfigDict, freeze=None):
    """(new state, {"loss", "grad_norm", "finite"}) after one optimiser step with `grads`:
    parameters, EMA (config.optim.ema_decay; < 0: the parameters) and optimiser state, all
    left unchanged when the loss or the gradient norm is not finite. The update of every
    training objective (xecjax.mae too). config.train.debug_nan_step poisons one step's loss
    (tests). freeze: None, or fn(step, updates) -> updates applied before the parameters move
    (the encoder freeze of a fine-tuning run)."""
    ema_decay = float(config.optim.ema_decay)
    nan_step = int(config.train.debug_nan_step)
    if nan_step >= 0:  # testing hook: poison one step
        loss = jnp.where(state["step"] == nan_step, jnp.nan, loss)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    if freeze is not None:
        updates = freeze(state["step"], updates)
    params = optax.apply_updates(state["params"], updates)
    if ema_decay >= 0:
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state["ema"], params)
    else:
        ema = params
    new = {"params": params, "ema": ema, "opt_state": opt_state}
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, {k: state[k] for k in new})
    new.update(step=state["step"] + 1, rng=state["rng"])
    return new, {"loss": loss, "grad_norm": grad_norm, "finite": finite}


def make_eval_step(
    apply_fn, loss_fn, point_weight: float = 0.0, task_loss=None, vertex: bool = False
):
    """eval(params, batch) -> (predictions [B, C] float32, per-sample loss [B], task outputs
    {task: [B, width]}, empty without task_loss (xecjax.tasks.make_loss)). `vertex`: the
    model reads the batch's xyzVTX (model.vertex_input).

    In the compute dtype of apply_fn's model (bfloat16 for validation during a
    config.train.bf16 run; float32 parameters and input either way)."""
    sample_loss = per_sample_loss(loss_fn, point_weight)

    def eval_fn(params, batch):
        pred, loss, task_out = predict_and_loss(
            apply_fn, sample_loss, task_loss, params, batch, False, jax.random.PRNGKey(0), vertex
        )
        return pred, loss, {k: v for k, v in task_out.items() if k != "log_var"}

    return eval_fn


def evaluate(
    eval_step, params, loader, batch_sharding: NamedSharding, beta: float = 1.0
) -> dict[str, float]:
    """val_loss (the training loss on EMA parameters), the angle metrics and the reference's
    val_smooth_l1 (transition `beta`), val_l1, val_mse and val_cos_res over the val set; with
    tasks beside the angle their metrics (xecjax.tasks.metrics: energy_bias, ...)."""

    def gather(a):
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    preds, trues, per_sample, weights, valid = [], [], [], [], []
    task_pred, task_true = {}, {}
    for local in loader.epoch(0):  # the same number of batches on every process
        batch = to_global(local, batch_sharding)
        pred, loss, task_out = eval_step(params, batch)
        for out, a in (
            (preds, pred),
            (per_sample, loss),
            (trues, batch["angles"]),
            (weights, batch["weight"]),
            (valid, batch["valid"]),
        ):
            out.append(gather(a))
        for name, a in task_out.items():  # values and log sigmas ("<task>_log_sigma")
            task_pred.setdefault(name, []).append(gather(a))
            if name in tasks.NAMES:
                task_true.setdefault(name, []).append(gather(batch[name]))
    if not preds:
        raise ValueError("the validation set is empty: check config.data.val / val_fraction")
    pred, true = np.concatenate(preds), np.concatenate(trues)
    ok = np.concatenate(valid).astype(bool)
    w = np.concatenate(weights) * ok
    loss = np.concatenate(per_sample)
    out = metrics.angle_metrics(pred[ok], true[ok])
    out.update(metrics.reference_losses(pred[ok], true[ok], beta))
    out["val_loss"] = float(np.where(w > 0, w * loss, 0.0).sum() / max(w.sum(), 1e-12))
    for name in task_true:
        t_pred, t_true = np.concatenate(task_pred[name]), np.concatenate(task_true[name])
        sigma = task_pred.get(f"{name}_log_sigma")
        sigma = np.concatenate(sigma)[ok] if sigma else None
        out.update(tasks.metrics(name, t_pred[ok], t_true[ok], sigma))
    return out
