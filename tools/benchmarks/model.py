"""Model throughput: forward (batch 256) and forward + backward + AdamW (batch 32).

  python tools/bench.py model --config configs/convnext.py[:variant] [--quick] [--bf16]
  python tools/bench.py model --config configs/multitask.py[:variant]   # + the task heads

Reports params, infer_events_per_s, train_events_per_s (median call; the training mean and
every step's seconds beside it), compile_s (both jits) and, as `events_per_s`, the training
throughput. --bf16 builds the model as training with config.train.bf16 does (layers compute in
bfloat16; parameters and optimiser state float32), for both steps; `dtype` says which. Inputs
are random normalised sensor arrays: the cost of the model does not depend on the values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from xecjax import geometry, native, tasks
from xecjax.config import load_config
from xecjax.models import build_model, count_params, make_apply, needs_vertex, training_dtype

from .onnx import timed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="configs/convnext.py", help="config file[:variant] with a model section"
    )
    parser.add_argument("--infer-batch", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument(
        "--bf16", action="store_true", help="bfloat16 compute, as config.train.bf16 trains"
    )


def load_model_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/x.py:variant' -> the model section of get_config(variant)."""
    config = load_config(spec)
    tasks.configure_model(config)  # the task heads of a multi-task config, as training adds them
    return config.model


def run(args: argparse.Namespace) -> dict:
    cfg = load_model_config(args.config)
    dtype = training_dtype(args.bf16)  # as xecjax.train builds the model
    model = build_model(cfg, rngs=nnx.Rngs(0), dtype=dtype)
    params, apply_fn = make_apply(model)
    tx = optax.adamw(1e-4, weight_decay=0.05)
    opt_state = tx.init(params)
    key = jax.random.key(0)
    n_iter = 2 if args.quick else 10

    heads = tasks.model_tasks(cfg)  # multi-task models: every head computed and trained
    vertex = needs_vertex(cfg)  # model.vertex_input: a vertex [B, 3] cm beside x

    def call(p, x, train, rng, **kw):
        extra = {"vertex": jnp.zeros((x.shape[0], 3), jnp.float32)} if vertex else {}
        return apply_fn(p, x, train, rng, **kw, **extra)

    @jax.jit
    def infer(params, x):
        return call(params, x, False, None, tasks=True) if heads else call(params, x, False, None)

    @jax.jit
    def train_step(params, opt_state, x, y, rng):
        def loss_fn(p):
            if not heads:
                return jnp.mean(jnp.square(call(p, x, True, rng)[:, :2] - y))
            out, task_out = call(p, x, True, rng, tasks=True)
            loss = jnp.mean(jnp.square(out[:, :2] - y))
            return loss + sum(jnp.mean(jnp.square(task_out[t])) for t in heads)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    shape = (geometry.N_SENSORS, 2)
    x_inf = jax.random.normal(key, (args.infer_batch, *shape), jnp.float32)
    x_tr = jax.random.normal(key, (args.train_batch, *shape), jnp.float32)
    y_tr = jnp.zeros((args.train_batch, 2), jnp.float32)

    t0 = time.perf_counter()
    jax.block_until_ready(infer(params, x_inf))
    compile_infer = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = train_step(params, opt_state, x_tr, y_tr, key)
    jax.block_until_ready(state)
    compile_train = time.perf_counter() - t0

    t_inf = timed(lambda x: jax.block_until_ready(infer(params, x)), x_inf, n_iter)

    def step():
        nonlocal state
        state = train_step(state[0], state[1], x_tr, y_tr, key)
        return state[2]

    t_tr = timed(lambda _: jax.block_until_ready(step()), None, n_iter)
    # Median step: this VM stalls for seconds at times (single steps of 5-7 s among 1.2-1.5 s
    # ones, measured), which a mean of a few steps turns into a throughput loss of the code.
    # The mean and every step are reported too.
    train_eps = args.train_batch / statistics.median(t_tr)
    return {
        "config": args.config,
        "params": count_params(params),
        "tasks": list(heads),
        "dtype": jnp.dtype(dtype).name,
        "infer_events_per_s": round(args.infer_batch / statistics.median(t_inf), 1),
        "train_events_per_s": round(train_eps, 1),
        "train_events_per_s_mean": round(args.train_batch / statistics.mean(t_tr), 1),
        "train_step_s": [round(t, 3) for t in t_tr],
        "events_per_s": round(train_eps, 1),
        "compile_s": round(compile_infer + compile_train, 1),
        "compile_infer_s": round(compile_infer, 1),
        "compile_train_s": round(compile_train, 1),
        "backend": jax.default_backend(),
        # the C++ depthwise kernels (xecjax.native) run on CPU when built
        "native_kernels": jax.default_backend() == "cpu" and native.available(),
    }
