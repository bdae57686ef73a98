"""The project's benchmark entry point.

  python tools/bench.py NAME [--quick] [benchmark options]

NAME is a module in tools/benchmarks/ (simulate, data, model, train, evaluate, onnx, and
torch_reference, which needs torch) that defines `add_arguments(parser)` (optional) and
`run(args) -> dict`. The last line printed is one JSON object with at least `bench`,
`events_per_s`, `peak_rss_mb` and `cpu`. Timings belong here, never in tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchmarks  # noqa: E402

from xecjax.distributed import keep_freed_host_memory  # noqa: E402


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB); Linux reports ru_maxrss in KiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_info() -> dict:
    """The CPU the figures come from: model name, AVX-512 or not, CPUs this process may use.

    Sessions of this project have run on different CPUs behind the same "2-core machine"
    (NumPy's float32 log: 5-8 ns per element on an AVX2 one, 0.4 ns with AVX-512), so a
    figure is only comparable with figures of the same CPU.
    """
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "avx512f": "avx512f" in flags,
        "cpus": len(os.sched_getaffinity(0)),  # as infer_real and the onnx bench count them
    }


def main(argv: list[str] | None = None) -> int:
    keep_freed_host_memory()  # as the entry points do, before JAX's first computation
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=names)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    argv = sys.argv[1:] if argv is None else argv
    known, _ = parser.parse_known_args(argv)
    module = importlib.import_module(f"benchmarks.{known.name}")
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    result = {"bench": args.name, **module.run(args)}
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["cpu"] = cpu_info()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
