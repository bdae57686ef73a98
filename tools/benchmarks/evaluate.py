"""Evaluation and conventional-baseline throughput (events/s) and the baseline's resolution.

  python tools/bench.py evaluate [--quick] [--events N] [--vertex point|slanted]
      [--workdir RUN [--split test|val]] [--eval-events N]

Baseline: N toy events (xecjax.simulate, in memory) reconstructed by the point-source fit and
the light centroid; events_per_s is the fit's steady rate (a warm-up call compiles first), with
the centroid's rate and both 68 % opening angles (from the origin) beside it.
Evaluation: with --workdir, xecjax.evaluate.evaluate_run on that run's recorded --split (test
by default; val for runs recorded without a test part): model, baseline and saliency, every
output file, into a temporary directory; its summary reports the model's and the baseline's
rates after the first batch, and the wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=None, help="default 4096 (--quick: 512)")
    parser.add_argument("--vertex", default="point", choices=("point", "slanted", "flat"))
    parser.add_argument("--workdir", default=None, help="a trained run to evaluate as well")
    parser.add_argument("--eval-events", type=int, default=None, help="evaluation events cap")
    parser.add_argument("--split", default="test", choices=("test", "val"),
                        help="the run's recorded part to evaluate")  # fmt: skip


def _resolution(angles, true) -> float:
    import numpy as np

    from xecjax.metrics import opening_angles

    return round(float(np.percentile(opening_angles(angles, true), 68)), 4)


def run(args: argparse.Namespace) -> dict:
    import jax

    from xecjax import baseline
    from xecjax.simulate import SimConfig, simulate

    n = args.events or (512 if args.quick else 4096)
    ev = simulate(0, n, SimConfig(vertex=args.vertex))
    npho, true = ev["npho"], ev["emiAng"]
    chunk = min(n, 1024)
    out = {"device": jax.devices()[0].device_kind, "events": n, "vertex": args.vertex}
    for method in ("fit", "centroid"):
        baseline.reconstruct(npho[:chunk], method=method, chunk=chunk)  # compile
        t = time.perf_counter()
        angles = baseline.reconstruct(npho, method=method, chunk=chunk)
        rate = n / (time.perf_counter() - t)
        out[f"baseline_{method}_events_per_s"] = round(rate, 1)
        out[f"baseline_{method}_psi68_deg"] = _resolution(angles, true)
    out["events_per_s"] = out["baseline_fit_events_per_s"]
    if args.workdir:
        from xecjax.evaluate import evaluate_run

        with tempfile.TemporaryDirectory(prefix="xecjax-bench-eval-") as tmp:
            t = time.perf_counter()
            s = evaluate_run(args.workdir, out_dir=tmp, max_events=args.eval_events,
                             log_mlflow=False, split=args.split)  # fmt: skip
            out["evaluate_wall_s"] = round(time.perf_counter() - t, 1)
        out["evaluate_events"] = s["data"]["n_events"]
        out["evaluate_split"] = s["data"]["split"]
        for k, v in s["events_per_s"].items():
            out[f"evaluate_{k}_events_per_s"] = None if v is None else round(v, 1)
        out["evaluate_psi68_deg"] = round(s["val_resolution_deg"], 4)
    return out
