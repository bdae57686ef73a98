"""Toy simulation throughput: generation alone, and generation + ROOT writing (end to end).

  python tools/bench.py simulate [--quick] [--events N] [--files K] [--compression lz4|zlib]

`events_per_s` is the end-to-end rate (generate + write LZ4 files with write_toy_files) into
--files files (default 2: write_toy_files writes simulate.WRITERS files at a time, as
`python -m xecjax.simulate --files K` does); `one_file_events_per_s` the same into one file
(one writer: uproot's basket writing is single-threaded); `gen_events_per_s` the generation
alone (NumPy arrays on the host, chunk by chunk, nothing kept). Compilation is done before the
clocks start and reported as `compile_s`. Targets on the 2-core development machine:
generation >= 3000 events/s, generation + LZ4 writing >= 2500 events/s.

At ~88 MB per 1000 events, 2500 events/s is 220 MB/s of file writing: the development
machine's disk sustains ~245 MB/s (`dd ... conv=fdatasync`), so once the page cache fills the
end-to-end rate is the disk's. `written_mb_per_s` reports it; `--dir` picks the disk.
"""

from __future__ import annotations

import os
import tempfile
import time

from xecjax import simulate


def add_arguments(parser) -> None:
    parser.add_argument("--events", type=int, default=None, help="default 20000 (--quick 3000)")
    parser.add_argument("--chunk-size", type=int, default=simulate.BLOCK)
    parser.add_argument("--compression", choices=("lz4", "zlib"), default="lz4")
    parser.add_argument("--files", type=int, default=2, help="files written (default 2)")
    parser.add_argument("--dir", default=None, help="where to write (default: the temp dir)")


def run(args) -> dict:
    n = args.events or (3000 if args.quick else 20000)
    cfg = simulate.SimConfig()
    t0 = time.perf_counter()
    simulate.simulate(0, 1, cfg)  # compiles the one block shape
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for start in range(0, n, args.chunk_size):  # chunked: memory bounded as when writing
        simulate.simulate(1, min(args.chunk_size, n - start), cfg, first_event=start)
    gen_s = time.perf_counter() - t0

    def write(n_files: int) -> tuple[float, float]:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            os.sync()  # no write-back of earlier files left to compete with this run
            t0 = time.perf_counter()
            paths = simulate.write_toy_files(
                tmp, n, n_files, seed=2, cfg=cfg, compression=args.compression,
                chunk_size=args.chunk_size,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            return seconds, sum(p.stat().st_size for p in paths) / 2**20

    one_s, _ = write(1)
    write_s, size_mb = write(args.files)
    return {
        "events": n,
        "events_per_s": round(n / write_s, 1),
        "files": args.files,
        "one_file_events_per_s": round(n / one_s, 1),
        "gen_events_per_s": round(n / gen_s, 1),
        "compression": args.compression,
        "file_mb_per_kevent": round(size_mb / n * 1000, 2),
        "written_mb_per_s": round(size_mb / write_s, 1),
        "compile_s": round(compile_s, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
