"""onnxruntime CPU inference of the exported reference-size model, next to JAX (jit, CPU).

  python tools/bench.py onnx [--quick] [--config configs/convnext.py:default] [--threads N]

Untrained weights (build_model with the config's model section), exported without a checkpoint
through xecjax.export.to_onnx_model, as the graph export_model writes (onnx_function). Measures
throughput at batch 256 (events/s) and latency at batch 1 (median ms) for both runtimes on
random normalised inputs; the batch-1 latency also as the medians of 5 consecutive blocks of
its repetitions, which show the noisy phases of a shared machine. Targets (what the PyTorch
export of the reference model achieves on the 2-core development machine): >= 35 events/s at
batch 256 and <= 16 ms at batch 1.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TARGET_EVENTS_PER_S = 35.0
TARGET_LATENCY_MS = 16.0
REFERENCE_CONFIG = f"{ROOT / 'configs' / 'convnext.py'}:default"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--config",
        default=REFERENCE_CONFIG,
        help="model config (file:variant); default: the reference size",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="onnxruntime threads (default: CPUs we may use)"
    )
    parser.add_argument("--skip-jax", action="store_true", help="onnxruntime numbers only")


def timed(fn, x, repeats: int) -> list[float]:
    fn(x)  # warm-up (compilation / allocation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return times


def export_graph(config: str):
    """The untrained model of `config` (file:variant) and its ONNX graph as export_model writes
    it: (serialised graph, params, apply_fn, export seconds)."""
    from flax import nnx

    from xecjax.config import load_config
    from xecjax.export import DEFAULT_OPSET, build_metadata, onnx_function, to_onnx_model
    from xecjax.models import build_model, make_apply
    from xecjax.normalise import Normaliser

    model_cfg = load_config(config).model
    params, apply_fn = make_apply(build_model(model_cfg, rngs=nnx.Rngs(0)))
    meta = build_metadata(Normaliser(), model_cfg, raw_input=False, opset=DEFAULT_OPSET)
    t0 = time.perf_counter()
    proto = to_onnx_model(onnx_function(apply_fn, params, model_cfg), meta).SerializeToString()
    return proto, params, apply_fn, time.perf_counter() - t0


def run(args) -> dict:
    import jax
    import jax.numpy as jnp
    import onnxruntime as ort

    from xecjax.export import angles_function

    proto, params, apply_fn, export_s = export_graph(args.config)
    n_params = int(sum(np.size(p) for p in jax.tree.leaves(params)))
    fn = angles_function(apply_fn, params)

    threads = args.threads or len(os.sched_getaffinity(0))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(proto, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x256 = rng.normal(size=(256, 4760, 2)).astype(np.float32)
    x1 = x256[:1].copy()
    reps256, reps1 = (1, 10) if args.quick else (5, 100)

    def ort_fn(x):
        return session.run(["output"], {"input": x})[0]

    t256 = timed(ort_fn, x256, reps256)
    t1 = timed(ort_fn, x1, reps1)
    out = {
        "events_per_s": round(256 / float(np.median(t256)), 1),
        "latency_ms_b1": round(1e3 * float(np.median(t1)), 2),
        # medians of 5 consecutive blocks: this shared VM has noisy phases of seconds
        "latency_ms_b1_blocks": [
            round(1e3 * float(np.median(b)), 2) for b in np.array_split(np.asarray(t1), 5)
        ],
        "threads": threads,
        "n_params": n_params,
        "onnx_mib": round(len(proto) / 2**20, 1),
        "export_s": round(export_s, 1),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "target_latency_ms_b1": TARGET_LATENCY_MS,
    }
    out["meets_targets"] = bool(
        out["events_per_s"] >= TARGET_EVENTS_PER_S and out["latency_ms_b1"] <= TARGET_LATENCY_MS
    )
    if not args.skip_jax:
        jitted = jax.jit(fn)

        def jax_fn(x):
            return jitted(jnp.asarray(x)).block_until_ready()

        out["jax_events_per_s"] = round(256 / float(np.median(timed(jax_fn, x256, reps256))), 1)
        out["jax_latency_ms_b1"] = round(1e3 * float(np.median(timed(jax_fn, x1, reps1))), 2)
    return out
