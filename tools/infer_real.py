"""Real-data inference: an exported ONNX model on PrepareRealData files -> tree val_tree.

  python tools/infer_real.py --onnx FILE.onnx --input FILE_OR_GLOB [--output FILE] [--tree tree]
                             [--chunksize N] [--batch-size N] [--threads N] [--device cpu|cuda]
                             [--norm KEY=VALUE ...]

Inputs are files made by macro/PrepareRealData.C (or `xecjax.simulate --real-data`): tree `tree`
with the per-sensor branches the model's Normaliser reads (stored in the ONNX metadata; `--norm`
overrides a parameter, with a warning when it differs) and the reconstructed quantities. The
output tree `val_tree` has the branches of DESIGN.md section 8 (xecjax.evaluate.val_tree_columns)
and, for a multi-task model, pred_energy, pred_timing, pred_u, pred_v, pred_w of its other outputs;
on data the "truth" columns hold the conventional reconstruction: true_theta/true_phi <- emiAng
(positron vertex -> reconstructed gamma position), energy_truth <- energyReco, x/y/z_truth <-
xyzRecoFI, x/y/z_vtx <- xyzVTX, opening_angle = angle between prediction and emiAng (degrees).
Reconstructed branches missing from the input are filled with zeros and reported once. Default
output name:
inference_results_Run<first>-<last>.root when the input names carry run ranges
(DataGammaAngle_430000-432000.root), else inference_results_<input stem>.root.

Everything is checked before any output is written (model input (N, 4760, 2), files, trees,
branches); the output appears atomically. Chunks are read and normalised in a background thread
while onnxruntime runs the previous one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from xecjax import tasks
from xecjax.distributed import keep_freed_host_memory
from xecjax.evaluate import val_tree_columns
from xecjax.geometry import N_SENSORS
from xecjax.normalise import Normaliser
from xecjax.rootio import (
    DataError,
    TreeWriter,
    check_branches,
    discover_files,
    open_tree,
    read_arrays,
)

# reconstructed branch -> per-event shape; missing ones are zero-filled ("event": entry number)
RECO_SHAPES = {"run": (), "event": (), "emiAng": (2,), "energyReco": (), "xyzRecoFI": (3,),
               "xyzVTX": (3,)}  # fmt: skip
RUN_RANGE = re.compile(r"(\d+)-(\d+)")


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
def load_session(path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
    """(onnxruntime session, metadata dict) for an exported model, its input checked.

    device 'cuda' uses the CUDA provider with CPU fallback (a warning when CUDA is unavailable).
    threads: intra-op threads of the CPU provider (default: the CPUs this process may use).
    """
    from xecjax.export import import_onnxruntime

    ort = import_onnxruntime()

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {str(path)!r} does not exist")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: expected 'cpu' or 'cuda'")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            warnings.warn(
                "--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu); "
                "running on CPU",
                stacklevel=2,
            )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads) if threads else len(os.sched_getaffinity(0))
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a loadable ONNX model ({e})") from None
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        warnings.warn("CUDA provider could not be initialised; running on CPU", stacklevel=2)
    check_signature(session, path)
    return session, dict(session.get_modelmeta().custom_metadata_map)


def check_signature(session, path) -> None:
    """The model's input and first output as the ONNX contract (DESIGN.md section 9) says,
    checked before any data is read: one float32 input (batch_size, 4760, 2) with a dynamic
    batch, a float32 output (batch_size, 2) = (theta, phi) degrees. A model with a vertex
    input (model.vertex_input) has the second input "vertex" (batch_size, 3): the file's
    xyzVTX."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    where = f"{str(path)!r}"
    shape = inputs[0].shape if 1 <= len(inputs) <= 2 else None
    vertex_ok = len(inputs) == 1 or (
        inputs[1].name == "vertex" and len(inputs[1].shape) == 2 and inputs[1].shape[1] == 3
    )
    if shape is None or len(shape) != 3 or list(shape[1:]) != [N_SENSORS, 2] or not vertex_ok:
        got = [(i.name, i.shape) for i in inputs]
        raise ValueError(
            f"{where}: model inputs {got}; expected one input (N, {N_SENSORS}, 2), optionally "
            "followed by 'vertex' (N, 3)"
        )
    if inputs[0].type != "tensor(float)":
        raise ValueError(f"{where}: model input type {inputs[0].type}; expected float32")
    if isinstance(shape[0], int):
        raise ValueError(
            f"{where}: model input batch dimension fixed at {shape[0]}; expected a dynamic batch "
            "(export with tools/export_onnx.py)"
        )
    out_shape = outputs[0].shape
    if len(out_shape) != 2 or out_shape[1] != 2:
        raise ValueError(f"{where}: model output shape {out_shape}; expected (N, 2)")
    if outputs[0].type != "tensor(float)":
        raise ValueError(f"{where}: model output type {outputs[0].type}; expected float32")
    for o in outputs[1:]:  # a multi-task model: output_energy (N, 1), ..., output_uvw (N, 3)
        task = o.name.removeprefix("output_")
        want = tasks.WIDTH.get(task) if o.name.startswith("output_") else None
        if want is None or len(o.shape) != 2 or o.shape[1] != want:
            raise ValueError(
                f"{where}: model output {o.name!r} {o.shape}; expected output_<task> (N, width) "
                f"of the tasks {dict(tasks.WIDTH)}"
            )


def resolve_normaliser(metadata: dict[str, str], overrides: dict[str, str], path: str = ""):
    """(Normaliser, raw_input) from the model metadata, with KEY=VALUE overrides applied.

    A raw-input model normalises inside its graph: only its branch names can be overridden.
    """
    if "normaliser" in metadata:
        base = Normaliser.from_dict(json.loads(metadata["normaliser"]))
    elif overrides:
        warnings.warn(f"{path!r} has no normaliser metadata: using defaults + --norm", stacklevel=2)
        base = Normaliser()
    else:
        raise ValueError(
            f"{path!r} has no 'normaliser' metadata (not exported by xecjax?); give the "
            "normalisation with --norm KEY=VALUE"
        )
    raw = metadata.get("input_kind", "normalised") == "raw"
    fields = {f.name: f for f in dataclasses.fields(Normaliser)}
    changes = {}
    for key, text in overrides.items():
        if key not in fields:
            raise ValueError(f"--norm {key}: unknown parameter; known: {sorted(fields)}")
        current = getattr(base, key)
        value = text if isinstance(current, str) else float(text)
        if value != current:
            if raw and not key.endswith("_branch"):
                raise ValueError(
                    f"--norm {key}: {path!r} normalises inside its graph; only npho_branch and "
                    "time_branch can be overridden"
                )
            warnings.warn(
                f"--norm {key}={value!r} differs from the model's {current!r}", stacklevel=2
            )
            changes[key] = value
    return dataclasses.replace(base, **changes), raw


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def default_output(files: list[str]) -> str:
    """inference_results_Run<first>-<last>.root from run ranges in the names, else <stem>."""
    ranges = [RUN_RANGE.search(Path(f).stem) for f in files]
    if all(ranges):
        first = min(int(m.group(1)) for m in ranges)
        last = max(int(m.group(2)) for m in ranges)
        return f"inference_results_Run{first}-{last}.root"
    return f"inference_results_{Path(files[0]).stem}.root"


def plan_inputs(files: list[str], tree: str, normaliser: Normaliser) -> list[tuple[str, int, set]]:
    """[(path, entries, reconstructed branches present)]; errors name file and branch."""
    plan = []
    for path in files:
        t = open_tree(path, tree)
        if t is None:
            warnings.warn(f"{path!r} is empty (0 bytes): skipped", stacklevel=2)
            continue
        try:
            check_branches(path, t, {b: (N_SENSORS,) for b in normaliser.branches})
            present = set()
            for b, shape in RECO_SHAPES.items():
                if b in t.keys():
                    check_branches(path, t, {b: shape})
                    present.add(b)
            plan.append((path, int(t.num_entries), present))
        finally:
            t.file.close()
    if not plan or sum(n for _, n, _ in plan) == 0:
        raise DataError(f"no events in {files}")
    return plan


def read_chunk(t, start: int, stop: int, normaliser: Normaliser, raw: bool,
               present: set) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # fmt: skip
    """(x [n, 4760, 2] float32, reconstructed branches) of entries [start, stop)."""
    a = read_arrays(t, [*normaliser.branches, *sorted(present)], start, stop)
    npho, tm = (np.asarray(a[b], np.float32) for b in normaliser.branches)
    x = np.stack([npho, tm], -1) if raw else normaliser(npho, tm)
    reco = {}
    for b, shape in RECO_SHAPES.items():
        if b in present:
            reco[b] = a[b]
        elif b == "event":  # the entry number still identifies the event in its file
            reco[b] = np.arange(start, stop)
        else:
            reco[b] = np.zeros((stop - start, *shape), np.float32)
    return x, reco


# ----------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------
def run_inference(session, plan, normaliser: Normaliser, raw: bool, output: str | os.PathLike,
                  tree: str = "tree", chunksize: int = 2048, batch_size: int = 256,
                  progress: bool = True) -> int:  # fmt: skip
    """Predict every event of plan and write val_tree to output; returns the number of events."""
    from tqdm import tqdm

    missing = sorted(set(RECO_SHAPES) - set.intersection(*(p for _, _, p in plan)))
    if missing:
        warnings.warn(
            f"reconstructed branches {missing} missing in some inputs: filled with zeros "
            "(event_id: the entry number)",
            stacklevel=2,
        )
    tasks = [(path, s, min(s + chunksize, n), n, present)
             for path, n, present in plan for s in range(0, n, chunksize)]  # fmt: skip
    trees = {}

    def load(task):  # runs in the reader thread; a file stays open until its last chunk
        path, start, stop, n, present = task
        if path not in trees:
            trees[path] = open_tree(path, tree)
        try:
            return (*read_chunk(trees[path], start, stop, normaliser, raw, present), present)
        finally:
            if stop == n:
                trees.pop(path).file.close()

    name = session.get_inputs()[0].name
    vertex = [i.name for i in session.get_inputs()[1:]]  # ["vertex"]: the model reads xyzVTX
    lacking = [path for path, _, present in plan if "xyzVTX" not in present]
    if vertex and lacking:
        raise DataError(
            f"the model has a vertex input (xyzVTX, cm) but {lacking} have no branch 'xyzVTX'"
        )
    outputs = [o.name for o in session.get_outputs()]
    bar = tqdm(total=sum(n for _, n, _ in plan), unit="ev", desc="infer",
               disable=True if not progress else None)  # fmt: skip
    done = 0
    try:
        with TreeWriter(output, "val_tree") as writer, ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(load, tasks[0])
            for i in range(len(tasks)):
                x, reco, present = ahead.result()
                if i + 1 < len(tasks):  # read and normalise the next chunk while this one runs
                    ahead = pool.submit(load, tasks[i + 1])
                try:
                    feeds = [{name: x[b : b + batch_size],
                              **{v: reco["xyzVTX"][b : b + batch_size].astype(np.float32)
                                 for v in vertex}}
                             for b in range(0, len(x), batch_size)]  # fmt: skip
                    runs = [session.run(None, f) for f in feeds]
                    pred = np.concatenate([r[0][:, :2] for r in runs]).astype(np.float32)
                    # the other outputs of a multi-task model: output_energy, ... (xecjax.tasks)
                    heads = {o.removeprefix("output_"): np.concatenate([r[k] for r in runs])
                             for k, o in enumerate(outputs) if k > 0}  # fmt: skip
                except Exception as e:  # onnxruntime's own errors: a message, not a traceback
                    src, start, stop = tasks[i][:3]
                    raise RuntimeError(
                        f"onnxruntime failed on {src!r} events {start}..{stop}: {e}"
                    ) from None
                cols = val_tree_columns(
                    pred, reco["emiAng"], reco["run"], reco["event"], reco["energyReco"],
                    reco["xyzRecoFI"], reco["xyzVTX"], heads,
                )  # fmt: skip
                if "emiAng" not in present:  # no reference direction: no opening angle
                    cols["opening_angle"][:] = 0
                writer.extend(cols)
                done += len(x)
                bar.update(len(x))
    finally:
        bar.close()
        for t in trees.values():
            t.file.close()
    return done


def _norm_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--norm {item!r}: expected KEY=VALUE, e.g. npho_branch=relative_npho")
        out[key.strip()] = value.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    keep_freed_host_memory()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", required=True, help="model exported by tools/export_onnx.py")
    p.add_argument("--input", required=True, nargs="+", help="ROOT file(s), directory or glob")
    p.add_argument("--output", help="default: inference_results_Run<first>-<last>.root")
    p.add_argument("--tree", default="tree")
    p.add_argument("--chunksize", type=int, default=2048, help="events read at a time")
    p.add_argument("--batch-size", type=int, default=256, help="events per onnxruntime call")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the CPUs this process may use)")  # fmt: skip
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--norm", action="append", default=[], metavar="KEY=VALUE",
                   help="override a Normaliser parameter of the model (warns)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.chunksize <= 0 or args.batch_size <= 0:
            raise ValueError("--chunksize and --batch-size must be > 0")
        session, meta = load_session(args.onnx, args.device, args.threads)
        normaliser, raw = resolve_normaliser(meta, _norm_overrides(args.norm), args.onnx)
        files = discover_files(args.input)
        plan = plan_inputs(files, args.tree, normaliser)
        output = args.output or default_output(files)
        t0 = time.perf_counter()
        n = run_inference(session, plan, normaliser, raw, output, args.tree, args.chunksize,
                          args.batch_size, progress=not args.no_progress)  # fmt: skip
    except (FileNotFoundError, ValueError, KeyError, PermissionError, RuntimeError) as e:
        print(f"infer_real: {e}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    print(f"{n} events in {dt:.1f} s ({n / dt:.1f} events/s, {session.get_providers()[0]}) "
          f"-> {output}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
