"""Fine-tuning from a pretrained encoder: `--config.init_from=W_mae` of a regression run.

The encoder of the XECRegressor (the parameters under ENCODER_PARTS: backbone, hex_encoder,
pos_embed, fusion) is copied from the best EMA checkpoint of a masked-autoencoder run
(xecjax.models.mae keeps those names); the heads stay freshly initialised. A regressor with
model.vertex_input (which the MAE has not: no vertex in unlabelled data) gets the MAE's
positional embeddings for the face tokens and keeps its vertex embedding and the vertex token's
position (the last row of pos_embed) freshly initialised. Strict: every encoder leaf of the new
model must exist in the checkpoint with the same shape and dtype, and the checkpoint's encoder
must have no leaf the model lacks; the input normalisation must be the checkpoint's, since the
encoder learned on its features. Anything else is a ValueError naming the parameter, the shapes
and the checkpoint, never a partial load.

An inpainter (config.objective = "inpainter", xecjax.inpainter; the MAE's own model family)
copies the decoders too (decoders=True, config.inpainter.init_decoders): every parameter under
ENCODER_PARTS and DECODER_PREFIX, with the same strictness. The decoders of a checkpoint with
another model.decoder_residual are refused (their output would mean something else: a
reconstruction, not a correction of the neighbour average; xecjax.models.mae): an inpainter
with decoder_residual = "neighbours" takes the encoder only (inpainter.init_decoders = False,
the default of configs/inpainter.py) and its decoders start at the neighbour average.

The copy happens once, when the run starts fresh; a resumed run restores its own parameters
(and keeps config.init_from in its config only as a record). With config.init_freeze_epochs = N
the encoder gets zero updates during the first N epochs (freeze_encoder_updates): the heads
learn on the pretrained features first; an inpainter with config.inpainter.freeze_encoder keeps
it frozen for the whole run. The optimiser's moments keep following the encoder's
gradients meanwhile, so the encoder starts moving with settled moments when it unfreezes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from xecjax.models.mae import ENCODER_PARTS

# the parameters of the MAE's face decoders (xecjax.models.mae: decoder_<token>)
DECODER_PREFIX = "decoder_"
# steps of a freeze that lasts the whole run (freeze_encoder_updates(FOREVER); int32 steps)
FOREVER = 2**31 - 1


def leaf_name(path) -> str:
    """'backbone/stages/0/1/dw_kernel' of a parameter-pytree path (nnx.State flattening)."""
    parts = []
    for k in path:
        key = getattr(k, "key", getattr(k, "idx", None))
        if key is None:  # GetAttrKey('value') of an nnx.Param
            continue
        parts.append(str(key))
    return "/".join(parts)


def is_encoder(name: str) -> bool:
    """Whether a parameter (leaf_name) belongs to the shared encoder."""
    return name.split("/", 1)[0] in ENCODER_PARTS


def is_decoder(name: str) -> bool:
    """Whether a parameter (leaf_name) belongs to one of the MAE's face decoders."""
    return name.split("/", 1)[0].startswith(DECODER_PREFIX)


def encoder_leaves(params, decoders: bool = False) -> dict[str, Any]:
    """{leaf_name: array} of the encoder parameters of a parameter pytree (and of the decoders
    with decoders=True)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {leaf_name(p): v for p, v in flat if _copied(leaf_name(p), decoders)}


def _names(params) -> list[str]:
    return [leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _copied(name: str, decoders: bool) -> bool:
    return is_encoder(name) or (decoders and is_decoder(name))


def load_encoder(
    params,
    init_from: str | Path,
    normaliser=None,
    which: str = "best",
    decoders: bool = False,
    decoder_residual: str | None = None,
):
    """params with their encoder leaves replaced by those of the `which` (default best) EMA
    checkpoint of the run in `init_from` (a workdir or its checkpoints directory); with
    decoders=True the face decoders' leaves too (an inpainter from an MAE run).

    Returns (params, info) with info {"checkpoint", "step", "model", "leaves"}. normaliser: the
    run's Normaliser, refused when it differs from the checkpoint's. decoder_residual: this
    model's model.decoder_residual; with decoders=True refused when it differs from the
    checkpoint's (even where the shapes would fit). Raises ValueError on any mismatch (names,
    shapes, dtypes, normalisation), FileNotFoundError without a checkpoint.
    """
    from xecjax.checkpoint import load_for_inference, read_meta, resolve_checkpoint_dir

    where = resolve_checkpoint_dir(init_from, which)
    step, _ = read_meta(where, which)
    model_cfg, ckpt_norm, ckpt_params, _ = load_for_inference(where, which, ema=True)
    if normaliser is not None and ckpt_norm != normaliser:
        diff = {k: (v, getattr(normaliser, k)) for k, v in ckpt_norm.to_dict().items()
                if getattr(normaliser, k) != v}  # fmt: skip
        raise ValueError(
            f"init_from {where}: the checkpoint's encoder learned on another normalisation; "
            "set config.norm to the checkpoint's values: "
            + ", ".join(f"norm.{k} = {a!r} (here {b!r})" for k, (a, b) in diff.items())
        )
    theirs = model_cfg.get("decoder_residual", "none")
    if decoders and decoder_residual is not None and theirs != decoder_residual:
        raise ValueError(
            f"init_from {where}: its decoders have model.decoder_residual = {theirs!r}, this "
            f"model {decoder_residual!r}: take the encoder only "
            "(config.inpainter.init_decoders = false)"
        )
    source = encoder_leaves(ckpt_params, decoders)
    target = encoder_leaves(params, decoders)
    what = "encoder and decoder" if decoders else "encoder"
    missing = sorted(set(target) - set(source))
    extra = sorted(set(source) - set(target))
    if missing or extra:
        problems = [f"{what}: {names[:5]}{' ...' if len(names) > 5 else ''}"
                    for what, names in (("missing in the checkpoint", missing),
                                        ("in the checkpoint but not in this model", extra))
                    if names]  # fmt: skip
        raise ValueError(
            f"init_from {where} (model.name {model_cfg.get('name')!r}): {what} parameters "
            + "; ".join(problems)
            + f" (the {what} options of config.model must equal the checkpoint's)"
        )
    # a vertex-input regressor: one token (the last) more than the MAE, its pos_embed row fresh
    vertex_row = any(n.startswith("vertex_embed/") for n in _names(params))
    for name, new in target.items():
        old = source[name]
        if vertex_row and name == "pos_embed" and new.shape == (old.shape[0] + 1, *old.shape[1:]):
            source[name] = new.at[:-1].set(old.astype(new.dtype))
            continue
        if old.shape != new.shape or old.dtype != new.dtype:
            raise ValueError(
                f"init_from {where}: {what} parameter {name} has shape {tuple(old.shape)} "
                f"{old.dtype} in the checkpoint but {tuple(new.shape)} {new.dtype} in this model "
                f"(the {what} options of config.model must equal the checkpoint's)"
            )

    def copy(path, leaf):
        return source[name] if _copied(name := leaf_name(path), decoders) else leaf

    out = jax.tree_util.tree_map_with_path(copy, params)
    info = {"checkpoint": str(where), "step": int(step), "model": model_cfg.get("name"),
            "leaves": len(target)}  # fmt: skip
    return out, info


def check_config(config: ml_collections.ConfigDict) -> None:
    """init_freeze_epochs (and an inpainter's freeze_encoder) need init_from (a random encoder
    frozen would just be a handicap)."""
    n = int(config.get("init_freeze_epochs", 0))
    if n < 0:
        raise ValueError(f"config.init_freeze_epochs must be >= 0, got {n}")
    if n > 0 and not config.get("init_from", ""):
        raise ValueError("config.init_freeze_epochs > 0 needs config.init_from (a pretrained "
                         "encoder to freeze)")  # fmt: skip
    if frozen_for_the_run(config) and not config.get("init_from", ""):
        raise ValueError("config.inpainter.freeze_encoder needs config.init_from (an MAE run "
                         "whose encoder to freeze)")  # fmt: skip


def frozen_for_the_run(config) -> bool:
    """An inpainter whose encoder never moves (config.inpainter.freeze_encoder)."""
    return config.get("objective", "regression") == "inpainter" and bool(
        config.inpainter.get("freeze_encoder", False)
    )


def freeze_steps(config, steps_per_epoch: int) -> int:
    """Steps without encoder updates: FOREVER for an inpainter's freeze_encoder, else
    init_freeze_epochs * steps_per_epoch (0: none)."""
    if frozen_for_the_run(config):
        return FOREVER
    return int(config.get("init_freeze_epochs", 0)) * int(steps_per_epoch)


def freeze_encoder_updates(steps: int):
    """fn(step, updates) -> updates with the encoder leaves' updates zero while step < steps
    (for apply_update of xecjax.steps); None when steps <= 0 (nothing frozen, nothing traced)."""
    if steps <= 0:
        return None

    def freeze(step, updates):
        frozen = step < steps

        def one(path, u):
            return jnp.where(frozen, jnp.zeros_like(u), u) if is_encoder(leaf_name(path)) else u

        return jax.tree_util.tree_map_with_path(one, updates)

    return freeze
