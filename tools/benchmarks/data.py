"""Data pipeline throughput: read + normalise + shuffle + batch from toy ROOT files.

  python tools/bench.py data [--quick] [--workers 2] [--batch-size 256]

Times full shuffled epochs of `xecjax.data.Loader` over LZ4 files and over ZLIB files (the toy
files are simulated once into --data-dir, in a subprocess so that the simulation's memory does
not count in peak_rss_mb). The rates are those of the last of --epochs epochs (default 2): a
training job runs many, while the first epoch of a process also pays one-time costs (page
faults of a fresh heap: 0-30 % slower on the development VM), reported as
`first_epoch_events_per_s`. `events_per_s` is the LZ4 figure. Targets on the 2-core
development machine: >= 20,000 events/s (LZ4), >= 8,000 events/s (ZLIB). On a shared machine
read the figures together with `load_avg`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xecjax.data import Loader, Normaliser, Source, discover_files, num_entries
from xecjax.rootio import zlib_inflate

BYTES_PER_EVENT = 4760 * 2 * 4  # one normalised event in the pool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events", type=int, default=None, help="LZ4 events (default 20000, --quick 4000)"
    )
    parser.add_argument(
        "--zlib-events", type=int, default=None, help="ZLIB events (default 8000, --quick 2000)"
    )
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "xecjax_bench"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--shuffle-buffer", type=int, default=4096)
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="epochs per format; the last is reported (the first pays the process's one-time "
        "page faults: see first_epoch_events_per_s)",
    )


def _toy_files(directory: Path, n_events: int, compression: str) -> list[str]:
    """Toy files of n_events in 2 files, simulated once (subprocess) and reused."""
    out = directory / f"{compression}_{n_events}"
    if not (out / "done").exists():
        out.mkdir(parents=True, exist_ok=True)
        code = (
            "import sys; from xecjax.simulate import write_toy_files; "
            "write_toy_files(sys.argv[1], int(sys.argv[2]), n_files=2, seed=11, "
            "compression=sys.argv[3])"
        )
        subprocess.run(
            [sys.executable, "-c", code, str(out), str(n_events), compression], check=True
        )
        (out / "done").touch()
    return discover_files(str(out / "*.root"))


def _epoch_rate(files: list[str], args: argparse.Namespace) -> dict[str, float]:
    sources = [Source(f, 0, num_entries(f)) for f in files]
    loader = Loader(
        sources,
        Normaliser(),
        args.batch_size,
        shuffle=True,
        seed=0,
        shuffle_buffer=args.shuffle_buffer,
        chunk_size=args.chunk_size,
        workers=args.workers,
    )
    epochs = []
    for e in range(args.epochs):
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        for batch in loader.epoch(e):
            n += int(batch["valid"].sum())
        epochs.append((n, time.perf_counter() - t0, time.process_time() - c0))
    n, wall, cpu = epochs[-1]
    return {
        "events_per_s": n / wall,
        "first_epoch_events_per_s": epochs[0][0] / epochs[0][1],
        "events": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "file_mb_per_event": sum(map(os.path.getsize, files)) / 1e6 / n,
        "pool_events": loader.pool_events(0),
    }


def run(args: argparse.Namespace) -> dict:
    n_lz4 = args.events or (4000 if args.quick else 20000)
    n_zlib = args.zlib_events or (2000 if args.quick else 8000)
    data = Path(args.data_dir)
    files = {"lz4": _toy_files(data, n_lz4, "lz4"), "zlib": _toy_files(data, n_zlib, "zlib")}
    for fs in files.values():  # warm the page cache: measure decoding, not the disk
        for f in fs:
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    rates = {c: _epoch_rate(fs, args) for c, fs in files.items()}
    return {
        "events_per_s": round(rates["lz4"]["events_per_s"]),
        "zlib_events_per_s": round(rates["zlib"]["events_per_s"]),
        "zlib_inflate": zlib_inflate(),
        "targets": {"lz4": 20000, "zlib": 8000},
        "lz4": {k: round(v, 3) for k, v in rates["lz4"].items()},
        "zlib": {k: round(v, 3) for k, v in rates["zlib"].items()},
        "batch_size": args.batch_size,
        "workers": args.workers,
        "chunk_size": args.chunk_size,
        "shuffle_buffer": args.shuffle_buffer,
        "pool_mb": round(rates["lz4"]["pool_events"] * BYTES_PER_EVENT / 2**20, 1),
        "load_avg": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
