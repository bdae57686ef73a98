"""Learning curve: test-set psi 68 % against the number of training events, beside the baselines.

  python tools/learning_curve.py --config configs/convnext.py:toy --sizes 3000,10000,30000 \
      [--epochs E] [--vertex point|slanted|flat] [--test-events 4000] [--val-events 1000] \
      [--seeds 0,1] [--file-events 1000] [--out runs/lc_NAME] [--data-dir data/lc] \
      [--config.KEY=VALUE ...]

Data (xecjax.simulate toy MC, cached under --data-dir in folders named by their parameters,
<role>_<vertex>_<events>ev_<files>f_seed<seed>, generated once under a temporary name and
renamed): one fixed TEST set (simulation seed 13) and one fixed VALIDATION set (seed 12), the
same for every point, and per size N a TRAINING set of N events (seed 11), all in files of
about --file-events events. Training sets of different N are separate folders drawn from one
pool: event e of file (run) k depends only on (seed, k, e), so when every size is a multiple of
--file-events or not above it (3000, 10000, 30000 with 1000 per file) the smaller sets are
exactly the first files / events of the larger ones (nested; the JSON says whether they are).
Test, validation and training use different simulation seeds: disjoint events.

Per size N and training seed S: the config (--config plus its --config.* overrides, checked
as xecjax.train checks them) gets data.train / data.val = those files, train.seed = S,
train.epochs = --epochs (default the config's), no progress bar and an MLflow store
<out>/mlruns.db; xecjax.train.train_and_evaluate runs in <out>/N<N>_s<S> and
xecjax.evaluate.evaluate_run evaluates its `best` EMA checkpoint on the test files (into
<out>/N<N>_s<S>/evaluation_test), with the conventional baselines on the same events. A point
whose run finished with the same config is reused on a rerun; an unfinished one resumes.

Outputs: <out>/learning_curve.json (rewritten atomically after every point), <out>/
learning_curve.pdf (psi 68 % vs N, log-log: one marker per seed, the mean, the baselines as
horizontal lines) and a Markdown table on stdout. The number of optimiser steps grows with N at
a fixed number of epochs: fix the budget with --epochs if that matters for the comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xecjax.distributed import keep_freed_host_memory  # noqa: E402

SIM_SEEDS = {"train": 11, "val": 12, "test": 13}  # distinct: the three sets share no events
BASELINE_NAMES = ("baseline_fit", "baseline_centroid", "baseline_fit_vertex")
# config keys this tool sets itself: an override of them would be silently replaced
OWNED_KEYS = {
    "data.train": "--sizes",
    "data.val": "--val-events",
    "train.seed": "--seeds",
    "tracking.mlflow_uri": "--out",
}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _int_list(minimum: int):
    def parse(text: str) -> list[int]:
        values = []
        for part in text.split(","):
            try:
                value = int(part.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{part.strip()!r} is not an integer (expected e.g. 3000,10000,30000)"
                ) from None
            if value < minimum:
                raise argparse.ArgumentTypeError(f"{value}: expected an integer >= {minimum}")
            values.append(value)
        return sorted(set(values))

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python tools/learning_curve.py",
        description=__doc__.splitlines()[0],
        epilog="Any --config.section.key=value overrides the config (unknown keys are errors).",
    )
    p.add_argument("--config", required=True, help="config file[:variant]")
    p.add_argument(
        "--sizes", required=True, type=_int_list(1), help="training events per point: N1,N2,..."
    )
    p.add_argument("--seeds", type=_int_list(0), default=[0], help="training seeds (default 0)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="default: the config's")
    p.add_argument("--vertex", choices=("point", "slanted", "flat"), default="point")
    p.add_argument("--test-events", type=_positive_int, default=4000)
    p.add_argument("--val-events", type=_positive_int, default=1000)
    p.add_argument(
        "--file-events", type=_positive_int, default=1000, help="events per ROOT file (about)"
    )
    p.add_argument("--out", default=None, help="output directory (default runs/lc_<variant>)")
    p.add_argument("--data-dir", default="data/lc", help="cache of the simulated sets")
    p.add_argument("--saliency-events", type=int, default=16, help="per evaluation")
    p.add_argument("--worst", type=int, default=2, help="events in each worst_events.pdf")
    return p


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, Any]:
    """(args, config with the overrides applied) or a parser error (exit 2)."""
    from xecjax.config import apply_override, load_config, override_pairs

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        config = load_config(args.config)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    args.overrides = []
    for key, value in override_pairs(rest, parser.error):
        if key in OWNED_KEYS:
            parser.error(f"--config.{key} is set by this tool (use {OWNED_KEYS[key]})")
        try:
            apply_override(config, key, value)
        except (KeyError, ValueError) as e:
            parser.error(str(e.args[0]))
        args.overrides.append(f"--config.{key}={value}")
    if args.epochs is not None:
        config.train.epochs = args.epochs
    small = [n for n in args.sizes if n < config.data.batch_size]
    if small:
        parser.error(
            f"--sizes: {small} below one batch (config.data.batch_size = {config.data.batch_size})"
        )
    if args.out is None:
        args.out = f"runs/lc_{config.get('variant', 'default')}"
    return args, config


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def file_sizes(n_events: int, file_events: int) -> list[int]:
    """Events per file as xecjax.simulate.write_toy_files splits n_events over the files."""
    n_files = math.ceil(n_events / file_events)
    return [n_events // n_files + (k < n_events % n_files) for k in range(n_files)]


def nested(sizes: list[int], file_events: int) -> bool:
    """Whether every smaller training set is a subset of every larger one (same seed)."""
    per_file = [file_sizes(n, file_events) for n in sorted(sizes)]
    return all(
        len(a) <= len(b) and all(x <= y for x, y in zip(a, b, strict=False))
        for a, b in zip(per_file, per_file[1:], strict=False)
    )


def toy_set(data_dir: Path, role: str, n_events: int, file_events: int, vertex: str) -> dict:
    """The cached file set (generated once, atomically); {role, dir, seed, events, files}."""
    from xecjax.simulate import SimConfig, write_toy_files

    seed, n_files = SIM_SEEDS[role], len(file_sizes(n_events, file_events))
    out = data_dir / f"{role}_{vertex}_{n_events}ev_{n_files}f_seed{seed}"
    if not out.is_dir():
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"simulating the {role} set ({n_events} events) into {out}", flush=True)
        write_toy_files(tmp, n_events, n_files, seed=seed, cfg=SimConfig(vertex=vertex))
        try:
            tmp.rename(out)  # atomic: a half-written set is never mistaken for a complete one
        except OSError:
            if not out.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process made it meanwhile
    files = sorted(str(p.resolve()) for p in out.glob("*.root"))
    if len(files) != n_files:
        raise FileNotFoundError(f"{out}: expected {n_files} ROOT files, found {len(files)}")
    return {
        "role": role,
        "dir": str(out.resolve()),
        "seed": seed,
        "events": n_events,
        "files": files,
    }


# ----------------------------------------------------------------------------------------------
# One point: train, evaluate on the test set
# ----------------------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))  # tuples -> lists, as the run saves them


def run_point(config, n: int, seed: int, train: dict, val: dict, test: dict, out: Path, args):
    from xecjax.evaluate import evaluate_run
    from xecjax.tracking import default_mlflow_uri
    from xecjax.train import train_and_evaluate

    cfg = config.copy_and_resolve_references()
    cfg.data.train = train["dir"]  # a directory: its *.root files
    cfg.data.val = val["dir"]
    cfg.train.seed = seed
    cfg.train.progress = False
    cfg.tracking.mlflow_uri = default_mlflow_uri(out)
    cfg.resume = "auto"  # fresh in an empty workdir, continues an interrupted run
    workdir = out / f"N{n}_s{seed}"
    summary_path, config_path = workdir / "summary.json", workdir / "config.json"
    done = False
    if config_path.is_file():
        if json.loads(config_path.read_text()) != _plain(cfg.to_dict()):
            raise ValueError(f"{workdir} holds a run with another config: choose another --out")
        s = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        done = s.get("status") == "FINISHED" and s.get("epochs_done") == cfg.train.epochs
    if done:
        print(f"N={n} seed={seed}: reusing the finished run in {workdir}", flush=True)
        summary = s
    else:
        print(f"N={n} seed={seed}: training in {workdir}", flush=True)
        summary = train_and_evaluate(cfg, workdir)
        if summary["status"] != "FINISHED":
            raise RuntimeError(f"{workdir}: training ended with status {summary['status']}")
    ev = evaluate_run(
        workdir,
        data=test["files"],
        with_baseline=True,
        log_mlflow=False,
        out_dir=workdir / "evaluation_test",
        n_saliency=args.saliency_events,
        n_worst=args.worst,
    )
    metrics = ev["metrics"]
    return {
        "n": n,
        "seed": seed,
        "workdir": str(workdir),
        "psi68_deg": metrics["model"]["val_resolution_deg"],
        "metrics": metrics["model"],
        "baselines": {k: metrics[k]["val_resolution_deg"] for k in BASELINE_NAMES if k in metrics},
        "test_events": ev["data"]["n_events"],
        "best_val_resolution_deg": summary["best"].get("val_resolution_deg"),
        "best_epoch": summary["best"].get("epoch"),
        "epochs": summary["epochs_done"],
        "steps": summary["step"],
        "train_wall_s": summary["wall_time_s"],  # of the last (possibly resumed) session
        "eval_wall_s": ev["wall_time_s"],
    }


# ----------------------------------------------------------------------------------------------
# Results: aggregation, JSON, plot, table
# ----------------------------------------------------------------------------------------------
def aggregate(points: list[dict]) -> list[dict]:
    import numpy as np

    rows = []
    for n in sorted({p["n"] for p in points}):
        psi = np.array([p["psi68_deg"] for p in points if p["n"] == n], float)
        rows.append(
            {
                "n": n,
                "seeds": [p["seed"] for p in points if p["n"] == n],
                "psi68_mean_deg": float(psi.mean()),
                "psi68_std_deg": float(psi.std(ddof=1)) if len(psi) > 1 else None,
                "psi68_min_deg": float(psi.min()),
                "psi68_max_deg": float(psi.max()),
            }
        )
    return rows


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    tmp.replace(path)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    pts = result["points"]
    for i, seed in enumerate(result["seeds"]):
        mine = [p for p in pts if p["seed"] == seed]
        ax.plot(
            [p["n"] for p in mine],
            [p["psi68_deg"] for p in mine],
            "o",
            ms=4,
            alpha=0.5,
            color="tab:blue",
            label="model, one seed" if i == 0 else None,
        )
    rows = result["summary"]
    ax.plot(
        [r["n"] for r in rows],
        [r["psi68_mean_deg"] for r in rows],
        "s-",
        color="tab:blue",
        label=f"model, mean of {len(result['seeds'])} seed(s)",
    )
    styles = {"baseline_fit": ("tab:red", "--"), "baseline_centroid": ("tab:green", ":")}
    for name, (color, ls) in styles.items():
        value = result["baselines"].get(name)
        if value is not None:
            label = f"{name.removeprefix('baseline_')} ({value:.2f} deg)"
            ax.axhline(value, color=color, ls=ls, label=label)
    ax.set_xscale("log")  # learning curves are close to power laws: log-log
    ax.set_yscale("log")
    ax.set_xticks(result["sizes"], [f"{n:,}" for n in result["sizes"]])
    ax.minorticks_off()
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("training events N")
    ax.set_ylabel("psi 68 % on the test set [deg]")
    ax.set_title(
        f"{result['config']}, {result['vertex']} vertex, {result['test']['events']} test events",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def markdown_table(result: dict) -> str:
    b = result["baselines"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        "| N | seeds | model psi68 [deg] mean ± spread | fit | centroid |",
        "|---:|---|---|---:|---:|",
    ]
    for r in result["summary"]:
        spread = "" if r["psi68_std_deg"] is None else f" ± {r['psi68_std_deg']:.3f}"
        lines.append(
            f"| {r['n']} | {','.join(map(str, r['seeds']))} | {r['psi68_mean_deg']:.3f}{spread} "
            f"| {fmt(b.get('baseline_fit'))} | {fmt(b.get('baseline_centroid'))} |"
        )
    return "\n".join(lines) + "\n\nspread: sample standard deviation over the seeds"


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Entry point; 0 on success, 2 on bad input."""
    keep_freed_host_memory()  # as the entry points do, before JAX's first computation
    argv = sys.argv[1:] if argv is None else argv
    args, config = parse_args(argv)
    out, data_dir = Path(args.out), Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        test = toy_set(data_dir, "test", args.test_events, args.file_events, args.vertex)
        val = toy_set(data_dir, "val", args.val_events, args.file_events, args.vertex)
        train = {
            n: toy_set(data_dir, "train", n, args.file_events, args.vertex) for n in args.sizes
        }
    except (ValueError, OSError) as e:
        print(f"learning_curve: error: {e}", file=sys.stderr)
        return 2
    result = {
        "tool": "tools/learning_curve.py",
        "argv": argv,
        "config": args.config,
        "overrides": args.overrides,
        "variant": config.get("variant", ""),
        "model": config.model.name,
        "epochs": config.train.epochs,
        "batch_size": config.data.batch_size,
        "vertex": args.vertex,
        "sizes": args.sizes,
        "seeds": args.seeds,
        "file_events": args.file_events,
        "test": test,
        "val": val,
        "train": {str(n): s for n, s in train.items()},
        "train_sets_nested": nested(args.sizes, args.file_events),
        "points": [],
        "baselines": {},
        "summary": [],
    }
    for n in args.sizes:
        for seed in args.seeds:
            try:
                point = run_point(config, n, seed, train[n], val, test, out, args)
            except (ValueError, FileNotFoundError, FileExistsError) as e:
                print(f"learning_curve: error: {e}", file=sys.stderr)
                return 2
            result["points"].append(point)
            # the baselines do not depend on the model: the same test events give the same numbers
            if not result["baselines"]:
                result["baselines"] = dict(point["baselines"])
            result["summary"] = aggregate(result["points"])
            result["wall_time_s"] = round(time.time() - t0, 1)
            write_json(out / "learning_curve.json", result)
            print(
                f"N={n} seed={seed}: test psi68 {point['psi68_deg']:.3f} deg "
                f"(train {point['train_wall_s']:.0f} s)",
                flush=True,
            )
    plot(result, out / "learning_curve.pdf")
    print(markdown_table(result))
    print(f"wrote {out / 'learning_curve.json'} and {out / 'learning_curve.pdf'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
