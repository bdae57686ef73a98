"""Export a trained run to ONNX for the C++ analyzer and real-data inference (xecjax.export).

  python tools/export_onnx.py RUN_OR_CHECKPOINT --output FILE.onnx [--which best|last]
                              [--no-ema] [--opset N] [--raw-input]

RUN_OR_CHECKPOINT is a training workdir (or its checkpoints/<which> directory). Architecture and
Normaliser are read from the checkpoint. Input `input` float32 [batch_size, 4760, 2], output
`output` float32 [batch_size, 2] = (theta, phi) degrees. An inpainter (or MAE) run, detected
from its checkpoint's config.objective, exports the completion (xecjax.inpainter): inputs `input`
[batch_size, 4760, 2] normalised features and `mask` float32 [batch_size, 4760] (1 = fill),
output `output` [batch_size, 4760, 2], the input with masked and dead sensors filled; metadata
`objective`. A parity check (onnxruntime vs JAX at batch 1, 7, 256) follows every export; exit
status 1 and no file when it exceeds --tolerance.
"""

from __future__ import annotations

import argparse
import sys

from xecjax.distributed import keep_freed_host_memory
from xecjax.export import (
    DEFAULT_OPSET,
    PARITY_TOLERANCE_DEG,
    PARITY_TOLERANCE_FEATURES,
    ExportError,
    export_run,
)


def main(argv: list[str] | None = None) -> int:
    keep_freed_host_memory()  # before JAX's first computation
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="training workdir or <workdir>/checkpoints/<which>")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--which", choices=("best", "last"), default="best")
    p.add_argument("--no-ema", action="store_true", help="raw trained weights instead of EMA")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"default {DEFAULT_OPSET}")
    p.add_argument(
        "--raw-input",
        action="store_true",
        help="normalisation inside the graph: input = raw npho and relative_time branches "
        "(not for an inpainter)",
    )
    p.add_argument("--tolerance", type=float, default=None,
                   help=f"parity limit: default {PARITY_TOLERANCE_DEG:g} degrees (an inpainter: "
                        f"{PARITY_TOLERANCE_FEATURES:g} feature units)")  # fmt: skip
    args = p.parse_args(argv)
    try:
        export_run(
            args.run, args.output, which=args.which, ema=not args.no_ema, opset=args.opset,
            raw_input=args.raw_input, tolerance=args.tolerance,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, ExportError) as e:
        print(f"export_onnx: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
