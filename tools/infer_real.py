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

Dead-channel inpainting: `--inpaint INP.onnx` (an inpainter exported by tools/export_onnx.py:
inputs `input` (N, 4760, 2) and `mask` (N, 4760), output the completed (N, 4760, 2)) fills every
event's dead channels before the angle model sees it (`--onnx`), or alone without --onnx:
  python tools/infer_real.py --inpaint INP.onnx [--onnx ANGLE.onnx] --input FILES
                             [--dead-channels LIST] [--unknown-run error|empty]
Dead are the channels whose npho is not a measurement (the 1e10 marker, NaN, Inf: the
Normaliser's sentinel) and, with --dead-channels (a run -> channels list, text or ROOT,
xecjax.deadchannels), the channels listed for the event's run (needs the `run` branch; a run
missing from the list is an error unless --unknown-run empty). The inpainter fills them
(Normaliser.inverse of its output: photons in its npho branch's unit, seconds); the angle
model then reads the filled npho and time branches (so both models must read the same
branches). The output file gets a second tree `inpainted`, one entry per filled sensor:
run_number, event_number (as val_tree's run_id / event_id), sensor_id, face (index in
xecjax.geometry.FACE_NAMES), pred_npho (photons), pred_time (ns; only meaningful where pred_npho
reaches the Normaliser's npho_threshold), marker (the file's npho was not a measurement) and
listed (the channel is in --dead-channels). Without --onnx the file holds only `inpainted`.
Without --inpaint nothing changes.
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

from xecjax import deadchannels, tasks
from xecjax.distributed import keep_freed_host_memory
from xecjax.evaluate import val_tree_columns
from xecjax.geometry import FACE_OF, N_SENSORS
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
INPAINTED_TREE = "inpainted"
INPAINTED_DTYPES = {"run_number": np.int32, "event_number": np.int32, "sensor_id": np.int32,
                    "face": np.int32, "pred_npho": np.float32, "pred_time": np.float32,
                    "marker": np.bool_, "listed": np.bool_}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
def load_session(path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
    """(onnxruntime session, metadata dict) for an exported model, its input checked.

    device 'cuda' uses the CUDA provider with CPU fallback (a warning when CUDA is unavailable).
    threads: intra-op threads of the CPU provider (default: the CPUs this process may use).
    """
    session = open_session(path, device, threads)
    check_signature(session, path)
    return session, dict(session.get_modelmeta().custom_metadata_map)


def load_inpainter(path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
    """(onnxruntime session, Normaliser) of an exported inpainter (xecjax.export), its inputs,
    output and metadata checked."""
    session = open_session(path, device, threads)
    where = f"{str(path)!r}"
    inputs, outputs = session.get_inputs(), session.get_outputs()
    got = [(i.name, i.shape, i.type) for i in inputs]
    ok = (
        [i.name for i in inputs] == ["input", "mask"]
        and len(inputs[0].shape) == 3 and list(inputs[0].shape[1:]) == [N_SENSORS, 2]
        and len(inputs[1].shape) == 2 and inputs[1].shape[1] == N_SENSORS
        and all(i.type == "tensor(float)" for i in inputs)
        and not isinstance(inputs[0].shape[0], int)
    )  # fmt: skip
    if not ok:
        raise ValueError(
            f"{where}: model inputs {got}; an inpainter takes 'input' float32 (N, {N_SENSORS}, "
            f"2) and 'mask' float32 (N, {N_SENSORS}) with a dynamic N (export an inpainter run "
            "with tools/export_onnx.py)"
        )
    if len(outputs) != 1 or list(outputs[0].shape[1:]) != [N_SENSORS, 2]:
        got = [(o.name, o.shape) for o in outputs]
        raise ValueError(f"{where}: model outputs {got}; expected one output "
                         f"(N, {N_SENSORS}, 2), the completed sensors")  # fmt: skip
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get("input_kind", "normalised") != "normalised" or "normaliser" not in meta:
        raise ValueError(f"{where}: an inpainter needs normalised input and its 'normaliser' "
                         "metadata (export with tools/export_onnx.py)")  # fmt: skip
    return session, Normaliser.from_dict(json.loads(meta["normaliser"]))


def open_session(path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
    """An onnxruntime session of the file (load_session without the signature check)."""
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
    return session


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
    npho, tm, reco = read_raw(t, start, stop, normaliser.branches, present)
    return (np.stack([npho, tm], -1) if raw else normaliser(npho, tm)), reco


def read_raw(t, start: int, stop: int, branches, present: set):
    """(npho [n, 4760], time [n, 4760] float32 of the two sensor `branches`, reconstructed
    branches) of entries [start, stop)."""
    a = read_arrays(t, [*branches, *sorted(present)], start, stop)
    npho, tm = (np.asarray(a[b], np.float32) for b in branches)
    reco = {}
    for b, shape in RECO_SHAPES.items():
        if b in present:
            reco[b] = a[b]
        elif b == "event":  # the entry number still identifies the event in its file
            reco[b] = np.arange(start, stop)
        else:
            reco[b] = np.zeros((stop - start, *shape), np.float32)
    return npho, tm, reco


# ----------------------------------------------------------------------------------------------
# Inpainting
# ----------------------------------------------------------------------------------------------
class Inpainting:
    """An exported inpainter (load_inpainter) and the dead-channel list (`dead`, {run:
    channels} of xecjax.deadchannels, or None) with its rule for runs it lacks (`unknown`).
    (A plain class: this script is also loaded by file path, without a sys.modules entry.)"""

    def __init__(self, session, normaliser: Normaliser, dead: dict | None = None,
                 unknown: str = "error"):  # fmt: skip
        self.session, self.normaliser, self.dead, self.unknown = session, normaliser, dead, unknown

    def fill(self, npho, tm, reco, batch_size: int):
        """(npho, time) [n, 4760] with the dead channels filled, and the INPAINTED_TREE
        columns of the filled sensors (module docstring)."""
        x = self.normaliser(npho, tm)
        marker = x[..., 0] == np.float32(self.normaliser.sentinel_npho)
        listed = np.zeros(marker.shape, bool)
        if self.dead is not None:
            listed = deadchannels.dead_mask(self.dead, reco["run"].astype(np.int64), self.unknown)
        mask = listed.astype(np.float32)
        out = np.concatenate([
            self.session.run(["output"], {"input": x[b : b + batch_size],
                                          "mask": mask[b : b + batch_size]})[0]
            for b in range(0, len(x), batch_size)
        ])  # fmt: skip
        ev, sensor = np.nonzero(listed | marker)
        pn, pt = self.normaliser.inverse(out[ev, sensor])
        npho, tm = npho.copy(), tm.copy()
        npho[ev, sensor], tm[ev, sensor] = pn, pt
        cols = {
            "run_number": reco["run"][ev], "event_number": reco["event"][ev],
            "sensor_id": sensor, "face": FACE_OF[sensor], "pred_npho": pn,
            "pred_time": pt.astype(np.float64) * 1e9, "marker": marker[ev, sensor],
            "listed": listed[ev, sensor],
        }  # fmt: skip
        return npho, tm, {k: np.asarray(cols[k], dt) for k, dt in INPAINTED_DTYPES.items()}


def check_runs(plan, tree: str, table: dict, unknown: str) -> None:
    """Before any output: the `run` branch of every file, and every run in the dead-channel
    list (unless unknown == "empty")."""
    lacking = [path for path, _, present in plan if "run" not in present]
    if lacking:
        raise DataError(f"--dead-channels: {lacking} have no branch 'run' (the list is per run)")
    if unknown == "empty":
        return
    runs = []
    for path, n, _ in plan:
        t = open_tree(path, tree)
        try:
            runs.append(read_arrays(t, ["run"], 0, n)["run"])
        finally:
            t.file.close()
    try:
        deadchannels.dead_mask(table, np.unique(np.concatenate(runs)).astype(np.int64), unknown)
    except deadchannels.DeadChannelError as e:
        raise deadchannels.DeadChannelError(
            f"--dead-channels: {e} (--unknown-run empty: no listed channels for them)"
        ) from None


# ----------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------
def run_inference(session, plan, normaliser: Normaliser, raw: bool, output: str | os.PathLike,
                  tree: str = "tree", chunksize: int = 2048, batch_size: int = 256,
                  progress: bool = True, inpainting: Inpainting | None = None) -> int:  # fmt: skip
    """Predict every event of plan and write val_tree to output; returns the number of events.
    With inpainting, the dead channels are filled first (tree `inpainted`); session None:
    inpainting only (no val_tree)."""
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
            if inpainting is not None:  # raw values: filled first, normalised afterwards
                branches = inpainting.normaliser.branches
                return (*read_raw(trees[path], start, stop, branches, present), present)
            return (*read_chunk(trees[path], start, stop, normaliser, raw, present), present)
        finally:
            if stop == n:
                trees.pop(path).file.close()

    if session is None and inpainting is None:
        raise ValueError("run_inference: no model (an angle model, an inpainter or both)")
    name, vertex, outputs = None, [], []
    if session is not None:
        name = session.get_inputs()[0].name
        vertex = [i.name for i in session.get_inputs()[1:]]  # ["vertex"]: the model reads xyzVTX
        outputs = [o.name for o in session.get_outputs()]
    lacking = [path for path, _, present in plan if "xyzVTX" not in present]
    if vertex and lacking:
        raise DataError(
            f"the model has a vertex input (xyzVTX, cm) but {lacking} have no branch 'xyzVTX'"
        )
    bar = tqdm(total=sum(n for _, n, _ in plan), unit="ev", desc="infer",
               disable=True if not progress else None)  # fmt: skip
    done = 0
    try:
        main_tree = "val_tree" if session is not None else INPAINTED_TREE
        with TreeWriter(output, main_tree) as writer, ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(load, tasks[0])
            for i in range(len(tasks)):
                loaded = ahead.result()  # (x, reco, present) or (npho, time, reco, present)
                reco, present = loaded[-2:]
                if i + 1 < len(tasks):  # read and normalise the next chunk while this one runs
                    ahead = pool.submit(load, tasks[i + 1])
                if inpainting is None:
                    x = loaded[0]
                else:
                    try:
                        npho, tm, filled = inpainting.fill(*loaded[:2], reco, batch_size)
                    except deadchannels.DeadChannelError:
                        raise
                    except Exception as e:  # onnxruntime's own errors: a message
                        src, start, stop = tasks[i][:3]
                        raise RuntimeError(
                            f"onnxruntime (inpainter) failed on {src!r} events {start}..{stop}: {e}"
                        ) from None
                    writer.extend(filled, INPAINTED_TREE)  # the first chunk creates the tree
                    if session is None:
                        done += len(npho)
                        bar.update(len(npho))
                        continue
                    x = np.stack([npho, tm], -1) if raw else normaliser(npho, tm)
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
    p.add_argument("--onnx", help="angle model exported by tools/export_onnx.py")
    p.add_argument(
        "--inpaint",
        metavar="INP.onnx",
        help="inpainter exported by tools/export_onnx.py: fill dead channels first",
    )
    p.add_argument(
        "--dead-channels",
        metavar="FILE",
        help="with --inpaint: run -> dead channels list (text or ROOT) to fill too",
    )
    p.add_argument(
        "--unknown-run",
        choices=deadchannels.UNKNOWN,
        default="error",
        help="a run missing from --dead-channels: error (default) or none listed",
    )
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
        if not (args.onnx or args.inpaint):
            raise ValueError("give --onnx (angle model), --inpaint (inpainter) or both")
        if args.dead_channels and not args.inpaint:
            raise ValueError("--dead-channels needs --inpaint (the inpainter fills them)")
        if args.norm and not args.onnx:
            raise ValueError("--norm overrides the angle model's (--onnx) normalisation")
        session, normaliser, raw, inpainting = None, None, False, None
        if args.onnx:
            session, meta = load_session(args.onnx, args.device, args.threads)
            normaliser, raw = resolve_normaliser(meta, _norm_overrides(args.norm), args.onnx)
        if args.inpaint:
            inp_session, inp_norm = load_inpainter(args.inpaint, args.device, args.threads)
            if normaliser is not None and normaliser.branches != inp_norm.branches:
                raise ValueError(
                    f"--inpaint reads the branches {inp_norm.branches}, --onnx "
                    f"{normaliser.branches}: the angle model must read the branches the "
                    "inpainter fills"
                )
            table = deadchannels.read(args.dead_channels) if args.dead_channels else None
            inpainting = Inpainting(inp_session, inp_norm, table, args.unknown_run)
        files = discover_files(args.input)
        plan = plan_inputs(files, args.tree, normaliser or inpainting.normaliser)
        if inpainting is not None and inpainting.dead is not None:
            check_runs(plan, args.tree, inpainting.dead, inpainting.unknown)
        output = args.output or default_output(files)
        t0 = time.perf_counter()
        n = run_inference(session, plan, normaliser, raw, output, args.tree, args.chunksize,
                          args.batch_size, progress=not args.no_progress,
                          inpainting=inpainting)  # fmt: skip
    except (FileNotFoundError, ValueError, KeyError, PermissionError, RuntimeError) as e:
        print(f"infer_real: {e}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    provider = (session or inpainting.session).get_providers()[0]
    print(f"{n} events in {dt:.1f} s ({n / dt:.1f} events/s, {provider}) -> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
