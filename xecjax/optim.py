"""Optimiser of the training run: AdamW with a weight-decay mask, clipping, per-step schedules.

Weight decay applies to kernels/matrices only: never to biases, norm scales, GRN gamma/beta or
position embeddings (matched by parameter path, and any parameter of rank < 2). Schedules give
the learning rate per optimiser step; optax keeps the step count inside the optimiser state, so
a restored optimiser state resumes the schedule where it stopped.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
import optax

# ----------------------------------------------------------------------------------------------
_NO_DECAY_PARTS = (
    "bias",
    "scale",
    "norm",
    "grn",
    "gamma",
    "beta",
    "pos_emb",
    "pos_embed",
    "position",
)


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: matrices/kernels that are not norms, GRN,
    biases or position embeddings (matched on the path, and any parameter of rank < 2)."""

    def decays(path, leaf) -> bool:
        parts = [
            str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))).lower() for k in path
        ]
        named = any(tok in part for part in parts for tok in _NO_DECAY_PARTS)
        named = named or any(part == "ln" or part.startswith("ln_") for part in parts)
        return bool(np.ndim(leaf) >= 2 and not named)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_schedule(o: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int):
    """Learning rate per optimiser step (warmup_cosine | onecycle | constant)."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(round(o.warmup_epochs * steps_per_epoch)), total - 1)
    if o.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, total, o.lr * o.final_lr_ratio)
    if o.schedule == "onecycle":
        div = 25.0
        return optax.cosine_onecycle_schedule(
            total,
            o.lr,
            pct_start=max(warmup, 1) / total,
            div_factor=div,
            final_div_factor=1.0 / (div * o.final_lr_ratio),
        )
    if o.schedule == "constant":
        return optax.constant_schedule(o.lr)
    raise ValueError(f"config.optim.schedule = {o.schedule!r}: warmup_cosine|onecycle|constant")


def make_optimizer(o: ml_collections.ConfigDict, schedule) -> optax.GradientTransformation:
    adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip > 0 else adamw
