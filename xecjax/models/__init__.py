"""Model families, looked up by name from the config (`model.name`).

  model = build_model(config.model, rngs=nnx.Rngs(0))   # "regressor" | "graph" | "mae"
  params, apply_fn = make_apply(model)
  y = apply_fn(params, x, False, None)                  # x [B, 4760, 2] -> [B, 2 | 4]
                                      # ("mae": the reconstruction [B, 4760, 2], xecjax.mae)

Each family is a module xecjax.models.<name> with `build(cfg, *, rngs, dtype) -> nnx.Module`;
the model config carries every architectural option, so build_model(cfg) rebuilds the exact
network from a checkpoint or ONNX metadata alone. The compute dtype is not an architectural
option and not in the config: float32 (evaluation, export) unless training asks for bfloat16
(config.train.bf16; see training_dtype).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

FAMILIES = ("regressor", "graph", "mae")

ApplyFn = Callable[[nnx.State, jax.Array, bool, "jax.Array | None"], jax.Array]


def training_dtype(bf16: bool):
    """The layers' compute dtype for a training run: bfloat16 with config.train.bf16, else
    float32. (Evaluation and ONNX export always build the float32 model.)"""
    return jnp.bfloat16 if bf16 else jnp.float32


def build_model(
    model_cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype=jnp.float32
) -> nnx.Module:
    """Instantiate the model family `model_cfg.name` with freshly initialised parameters.

    The model is called as model(x [B, 4760, 2], *, train=False, rng=None) -> [B, out_dim],
    out_dim = 2 (theta, phi in degrees) or 4 with model_cfg.uncertainty (+ log sigmas).
    dtype: the compute dtype of the layers, float32 or bfloat16 (config.train.bf16). The
    parameters are float32 either way, and the same values for the same rngs: a model built
    with bfloat16 has exactly the parameter pytree of the float32 one (checkpoints of a
    bfloat16 run load into the float32 model). The output is float32 either way.
    """
    name = model_cfg.get("name")
    if name not in FAMILIES:
        raise ValueError(f"model.name must be one of {FAMILIES}, got {name!r}")
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"build_model: dtype must be float32 or bfloat16, got {dtype!r}")
    module = importlib.import_module(f"xecjax.models.{name}")
    return module.build(model_cfg, rngs=rngs, dtype=jnp.dtype(dtype))


def make_apply(model: nnx.Module) -> tuple[nnx.State, ApplyFn]:
    """Split once into (params, apply_fn).

    params: the nnx.Param state (a pytree of float32 arrays; optimiser, EMA and checkpoints
    work on it, in a bfloat16 model too: its layers cast parameters to bfloat16 where they
    compute, so gradients come back float32). apply_fn(params, x, train, rng) -> [B, out_dim]
    is pure and jit-able with `train` static; `rng` (a jax.random key, or None when train is
    False) drives dropout and drop path. Index tables are NumPy constants closed over by the
    model code, not state. With tasks=True it returns (angle output, {task: [B, width]}): the
    heads of the tasks beside the angle (xecjax.tasks; {} for an angle-only model). A model
    with model.vertex_input needs vertex=[B, 3] (xyzVTX, cm; see needs_vertex).
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply_fn(
        params: nnx.State,
        x: jax.Array,
        train: bool = False,
        rng: jax.Array | None = None,
        *,
        tasks: bool = False,
        vertex: jax.Array | None = None,
    ) -> jax.Array:
        model = nnx.merge(graphdef, params, rest)
        extra = {} if vertex is None else {"vertex": vertex}
        if tasks:
            return model(x, train=train, rng=rng, tasks=True, **extra)
        return model(x, train=train, rng=rng, **extra)

    return params, apply_fn


def needs_vertex(model_cfg: ml_collections.ConfigDict) -> bool:
    """Whether the model takes the positron vertex (xyzVTX) as an input (model.vertex_input)."""
    return bool(model_cfg.get("vertex_input", False))


def count_params(params) -> int:
    """Total number of scalar parameters in a params pytree."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))
