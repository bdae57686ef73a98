"""Training throughput: events/s of real training steps fed from ROOT toy files.

  python tools/bench.py train [--quick] [--config configs/convnext.py:toy] [--epochs 3]
      [--events 2000] [--batch-size 32]

Runs xecjax.train.train_and_evaluate on the embedded toy data set (cached in data/toy/ as
for training) in a temporary workdir, so the data pipeline (ROOT reading, normalisation,
shuffling, prefetch), the jitted update step, EMA, checkpoints and validation are the real
ones. events_per_s is the steady-state training rate: the mean over epochs after the first
(which includes compilation); validation and checkpointing are timed separately.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/convnext.py:toy", help="config[:variant]")
    parser.add_argument("--epochs", type=int, default=None, help="default 3 (--quick: 2)")
    parser.add_argument("--events", type=int, default=None, help="toy events (--quick: 512)")
    parser.add_argument("--batch-size", type=int, default=None)


def run(args: argparse.Namespace) -> dict:
    import jax

    from xecjax.config import load_config
    from xecjax.train import train_and_evaluate

    spec = args.config
    if args.quick and spec == "configs/convnext.py:toy":
        spec = "configs/convnext.py:smoke"
    root = Path(__file__).resolve().parents[2]
    path, _, variant = spec.partition(":")
    config = load_config(str(root / path) + (f":{variant}" if variant else ""))
    config.train.epochs = args.epochs or (2 if args.quick else 3)
    if args.events or args.quick:
        config.data.toy_events = args.events or 512
    if args.batch_size:
        config.data.batch_size = args.batch_size
    if not config.data.path:
        config.data.toy_dir = str(root / "data" / "toy")
    config.train.progress = False
    config.train.eval_every = config.train.epochs  # validate once, at the end
    with tempfile.TemporaryDirectory(prefix="xecjax-bench-train-") as tmp:
        config.tracking.mlflow_uri = f"sqlite:///{tmp}/mlruns.db"
        config.tracking.tensorboard = False
        t0 = time.time()
        summary = train_and_evaluate(config, Path(tmp) / "run")
        wall = time.time() - t0
    rates = summary.get("epoch_events_per_s") or []
    steady = rates[1:] or rates
    stats = jax.local_devices()[0].memory_stats() or {}
    return {
        "config": spec,
        "device": jax.devices()[0].device_kind,
        "n_devices": jax.device_count(),
        "batch_size": config.data.batch_size,
        "epochs": config.train.epochs,
        "events_per_s": round(sum(steady) / max(len(steady), 1), 1),
        "first_epoch_events_per_s": round(rates[0], 1) if rates else None,
        "val_resolution_deg": summary.get("val_resolution_deg"),
        "wall_s": round(wall, 1),
        "peak_device_mb": round(stats.get("peak_bytes_in_use", 0) / 2**20, 1) or None,
    }
