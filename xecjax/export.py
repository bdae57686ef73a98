"""ONNX export of a trained model (jax2onnx) with an onnxruntime parity check.

  python tools/export_onnx.py runs/first --output onnx/first.onnx [--which best|last] [--no-ema]

The exported graph follows the contract of DESIGN.md section 9: one input `input` float32
[batch_size, 4760, 2] (dynamic batch), one output `output` float32 [batch_size, 2] = (theta, phi)
in degrees (an uncertainty model's log-sigma columns are dropped). By default the input is the
normalised features of DESIGN.md section 5; with `raw_input=True` the Normaliser is part of the
graph and the input holds the raw per-sensor branches (channel 0: the Normaliser's npho branch,
channel 1: its time branch, in seconds), so a C++ user need not re-implement it. A multi-task
model adds one output per task (`output_energy`, `output_timing`, `output_uvw`); a model with
model.vertex_input adds the input `vertex` float32 [batch_size, 3], the measured positron vertex
(xyzVTX) in cm.

An inpainter (or MAE) run (model.name "mae", xecjax.inpainter) exports the completion instead:
inputs `input` float32 [batch_size, 4760, 2] (normalised features) and `mask` float32
[batch_size, 4760] (1 = fill this sensor; > 0.5 counts), output `output` float32
[batch_size, 4760, 2], the completed array: the input where a sensor is observed, the model's
reconstruction where the mask asks for it or the sensor is dead (npho feature = the
Normaliser's sentinel). Normaliser.inverse of the metadata's normaliser turns it into photons
and seconds. Normalised input only (raw_input is refused); parity in feature units.

Architecture, weights and Normaliser come from the checkpoint (`checkpoint.load_for_inference`),
never from flags. The file is self-contained (weights as initializers) and carries metadata_props:
  normaliser      Normaliser.to_dict() as JSON
  model_config    the model section of the training config as JSON
  input_kind      "normalised" or "raw"
  objective       "regression", or "inpainter" / "mae" (the completion graph above)
  xecjax_version, git_commit, run_id (MLflow run id, or the workdir name), checkpoint
                  ("best@<step>/ema"), opset
Every export is followed by a parity check (onnxruntime CPU vs the jitted JAX function on toy
events and random inputs at batch 1, 7 and 256); the file is written (atomically) only if the
largest |difference| is at most `tolerance` degrees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import onnx

import xecjax
from xecjax.geometry import N_SENSORS
from xecjax.models import needs_vertex
from xecjax.normalise import Normaliser
from xecjax.tasks import UNIT, model_tasks

DEFAULT_OPSET = 18  # the lowest that passes the ONNX checker for these graphs (17 does not)
PARITY_TOLERANCE_DEG = 1e-3
PARITY_BATCHES = (1, 7, 256)
INPUT_NAME, OUTPUT_NAME = "input", "output"
# the second input of a model with model.vertex_input: the positron vertex (xyzVTX) [B, 3] cm
VERTEX_NAME = "vertex"
# the second input of an inpainter: [B, 4760] float32, 1 = fill the sensor
MASK_NAME = "mask"
# an inpainter's parity tolerance: the largest |onnxruntime - JAX| in feature units
PARITY_TOLERANCE_FEATURES = 1e-3
INPUT_KINDS = ("normalised", "raw")


class ExportError(RuntimeError):
    """The model could not be exported, or the exported graph disagrees with JAX."""


# ----------------------------------------------------------------------------------------------
# The function that is exported
# ----------------------------------------------------------------------------------------------
# the largest |onnxruntime - JAX| accepted per output: degrees, GeV, ns, cm
PARITY_TOLERANCE = {"output_energy": 1e-5, "output_timing": 1e-3, "output_uvw": 1e-3}


def output_names(model_cfg: Mapping[str, Any]) -> list[str]:
    """["output"] and, per task head of the model (xecjax.tasks), "output_<task>"."""
    return [OUTPUT_NAME] + [f"{OUTPUT_NAME}_{t}" for t in _task_names(model_cfg)]


def input_names(model_cfg: Mapping[str, Any]) -> list[str]:
    """["input"], and "vertex" (xyzVTX [batch_size, 3] cm) for a model with
    model.vertex_input, or "mask" ([batch_size, 4760]) for an inpainter."""
    if is_inpainter(model_cfg):
        return [INPUT_NAME, MASK_NAME]
    return [INPUT_NAME] + ([VERTEX_NAME] if _has_vertex(model_cfg) else [])


def is_inpainter(model_cfg: Mapping[str, Any]) -> bool:
    """Whether the model reconstructs sensors (model.name "mae": an inpainter or MAE run),
    exported as the completion of xecjax.inpainter."""
    return model_cfg.get("name") == "mae"


def _has_vertex(model_cfg: Mapping[str, Any]) -> bool:
    return needs_vertex(_as_config(model_cfg))


def _as_config(model_cfg: Mapping[str, Any]) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(_as_dict(model_cfg))


def angles_function(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    normaliser: Normaliser | None = None,
    task_names: tuple[str, ...] = (),
    vertex: bool = False,
) -> Callable[[jax.Array], jax.Array]:
    """Pure x [B, 4760, 2] -> (theta, phi) [B, 2] degrees, closing over the parameters; with
    task_names (the model's task heads, xecjax.tasks) the tuple of that and each task's
    [B, width] output in physical units (the ONNX outputs of output_names). With `vertex`
    (model.vertex_input) the function is fn(x, vertex [B, 3] cm) (the ONNX inputs of
    input_names).

    With a normaliser, x holds the raw (npho, time) branches and is normalised inside (the
    Normaliser's jax path, so the graph and the training pipeline share one definition).
    """

    def run(x: jax.Array, extra: dict) -> jax.Array:
        if normaliser is not None:
            x = normaliser(x[..., 0], x[..., 1])
        if not task_names:
            return apply_fn(params, x, train=False, **extra)[..., :2]
        out, tasks = apply_fn(params, x, train=False, tasks=True, **extra)
        return (out[..., :2], *(tasks[t] for t in task_names))

    if vertex:
        return lambda x, vtx: run(x, {"vertex": vtx})
    return lambda x: run(x, {})


def onnx_function(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    model_cfg: Mapping[str, Any],
    normaliser: Normaliser | None = None,
) -> Callable[[jax.Array], jax.Array]:
    """The function whose graph is exported: angles_function in the "onnx" form of the CNN.

    The CPU forms of the depthwise convolution ("direct": 49 shifted products per block,
    "toeplitz": banded matmuls) become many small ONNX nodes that onnxruntime runs slower than
    its own grouped Conv (and jax2onnx converts "direct" in minutes). dwconv="onnx" is that
    grouped conv plus onnxruntime-friendly forms of GRN and the patch conv (reference size,
    batch 1: ~2-3 ms less than the "xla" graph, measured interleaved). The parameters are the
    same for all forms, so a model trained with any exports with dwconv="onnx"; the metadata
    keeps the training config. Models without a dwconv option: apply_fn unchanged. apply_fn
    must be the model of model_cfg (as load_for_inference returns it): the parity check
    compares the export (rebuilt from model_cfg) against apply_fn, i.e. against the training
    form.
    """
    return angles_function(
        onnx_apply(apply_fn, model_cfg), params, normaliser, _task_names(model_cfg),
        _has_vertex(model_cfg),
    )  # fmt: skip


def onnx_apply(apply_fn: Callable[..., jax.Array], model_cfg: Mapping[str, Any]):
    """apply_fn of the model of model_cfg rebuilt with dwconv="onnx" (onnx_function); apply_fn
    itself for models without a dwconv option or already in that form."""
    if model_cfg.get("dwconv", "onnx") != "onnx":
        from flax import nnx

        from xecjax.models import build_model, make_apply

        cfg = ml_collections.ConfigDict({**_as_dict(model_cfg), "dwconv": "onnx"})
        apply_fn = make_apply(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))[1]
    return apply_fn


def _task_names(model_cfg: Mapping[str, Any]) -> tuple[str, ...]:
    return model_tasks(_as_config(model_cfg))


def _as_dict(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    return model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)


def git_commit() -> str:
    """Commit of the xecjax source tree ('-dirty' with uncommitted changes); '' if unknown."""
    src = Path(xecjax.__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", *a], cwd=src, capture_output=True, text=True, timeout=10
        )
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return ""
        dirty = run("diff", "--quiet", "HEAD", "--").returncode == 1
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def build_metadata(
    normaliser: Normaliser,
    model_cfg: Mapping[str, Any],
    *,
    raw_input: bool,
    opset: int,
    run_id: str = "",
    checkpoint: str = "",
    objective: str | None = None,
) -> dict[str, str]:
    """The metadata_props of an exported model (all values strings). objective: the training
    run's config.objective (default: "inpainter" for a model.name "mae", else "regression")."""
    cfg = _as_dict(model_cfg)
    if objective is None:
        objective = "inpainter" if is_inpainter(cfg) else "regression"
    return {
        "normaliser": json.dumps(normaliser.to_dict(), sort_keys=True),
        "model_config": json.dumps(cfg, sort_keys=True, default=str),
        "input_kind": INPUT_KINDS[int(raw_input)],
        "objective": str(objective),
        "xecjax_version": xecjax.__version__,
        "git_commit": git_commit(),
        "run_id": str(run_id),
        "checkpoint": checkpoint,
        "opset": str(opset),
    }


@contextlib.contextmanager
def _linear_time_output_check():
    """Make jax2onnx's per-equation output check O(1) for the common case.

    jax2onnx 0.17 verifies after each equation that its outputs are produced by a node of the
    graph by scanning every node built so far: quadratic in the graph size (~90 CPU s for the
    smoke model, minutes for the reference one). A value whose producer node belongs to the
    builder's graph is connected by definition; anything else goes to the original check, so
    the answer is unchanged. The ONNX checker and the parity check guard the result anyway.
    """
    try:
        from jax2onnx.converter import output_binding as ob
    except ImportError:  # another jax2onnx layout: nothing to speed up
        yield
        return
    original = getattr(ob, "_value_is_graph_connected", None)
    if original is None:
        yield
        return

    def connected(ctx, value) -> bool:
        producer = value.producer() if hasattr(value, "producer") else None
        if producer is not None and getattr(producer, "graph", None) is ctx.builder.nodes:
            return True
        return original(ctx, value)

    ob._value_is_graph_connected = connected
    try:
        yield
    finally:
        ob._value_is_graph_connected = original


def to_onnx_model(
    fn: Callable[[jax.Array], jax.Array],
    metadata: Mapping[str, str],
    opset: int = DEFAULT_OPSET,
    outputs: Sequence[str] = (OUTPUT_NAME,),
    inputs: Sequence[str] = (INPUT_NAME,),
) -> onnx.ModelProto:
    """jax2onnx conversion of fn with a symbolic batch, reshape targets folded
    (`fold_batch_shapes`); metadata set; ONNX checker passed. `outputs`: the names of fn's
    outputs (one, or one per element of the tuple it returns); `inputs`: of its arguments,
    "input" [batch_size, 4760, 2] and optionally "vertex" [batch_size, 3] or "mask"
    [batch_size, 4760]."""
    shapes = {INPUT_NAME: ("batch_size", N_SENSORS, 2), VERTEX_NAME: ("batch_size", 3),
              MASK_NAME: ("batch_size", N_SENSORS)}  # fmt: skip
    from jax2onnx import to_onnx

    if int(opset) < DEFAULT_OPSET:
        raise ValueError(f"opset {opset}: expected >= {DEFAULT_OPSET} (17 fails the ONNX checker)")
    # onnx_ir warns about shape-only helper values it leaves untyped in value_info; they do not
    # change the graph (the parity check is the judge), so keep the export output readable
    serde = logging.getLogger("onnx_ir.serde")
    level = serde.level
    serde.setLevel(logging.ERROR)
    try:
        with _linear_time_output_check():
            model = to_onnx(
                fn,
                inputs=[shapes[n] for n in inputs],
                model_name="xecjax",
                opset=int(opset),
                return_mode="proto",
                input_names=list(inputs),
                output_names=list(outputs),
                normalization_mode="prefer_native",
            )
    except Exception as e:
        raise ExportError(f"jax2onnx could not convert the model: {type(e).__name__}: {e}") from e
    finally:
        serde.setLevel(level)
    fold_batch_shapes(model)
    onnx.helper.set_model_props(model, dict(metadata))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported graph fails the ONNX checker (opset {opset}): {e}") from e
    return model


def fold_batch_shapes(model: onnx.ModelProto) -> int:
    """Reshape targets computed from the runtime batch size become constants with -1; returns
    the number of graph nodes removed.

    jax2onnx builds the target of every reshape that keeps the symbolic batch from the input's
    runtime shape (Shape -> Gather/Slice -> Unsqueeze -> Concat -> Reshape): at the reference
    size ~430 tiny nodes that onnxruntime runs one by one, which at batch 1 cost more time than
    the convolutions. Where ONNX shape inference (with data propagation) gives a Reshape's output
    exactly one symbolic dimension and fixed others, the target is replaced by a constant with -1
    in that place (a fixed output shape becomes that constant), which reshapes identically;
    nodes no output depends on any more are removed.
    The parity check after the export is the judge of the result.
    """
    g = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in g.node
        for a in n.attribute
    ):
        return 0  # subgraphs may use outer names: leave such a graph as it is
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    dims = {}
    for v in [*inferred.value_info, *inferred.output]:
        if v.type.tensor_type.HasField("shape"):
            dims[v.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in v.type.tensor_type.shape.dim
            ]
    constants = {i.name for i in g.initializer}
    for n in g.node:
        out = dims.get(n.output[0]) if n.op_type == "Reshape" else None
        if out is None or n.input[1] in constants:
            continue
        symbolic = [d for d in out if isinstance(d, str)]
        if len(symbolic) > 1 or any(d is None or d == 0 for d in out):
            continue
        target = np.array([-1 if isinstance(d, str) else d for d in out], np.int64)
        name = f"{n.output[0]}__target"
        g.initializer.append(onnx.numpy_helper.from_array(target, name))
        n.input[1] = name
    needed, kept = {o.name for o in g.output}, set()
    for k in reversed(range(len(g.node))):
        if any(o in needed for o in g.node[k].output):
            kept.add(k)
            needed.update(g.node[k].input)
    removed = len(g.node) - len(kept)
    _delete(g.node, lambda k, n: k not in kept)
    _delete(g.initializer, lambda k, i: i.name not in needed)
    produced = {o for n in g.node for o in n.output}
    _delete(g.value_info, lambda k, v: v.name not in produced)
    return removed


def _delete(field, drop: Callable[[int, Any], bool]) -> None:
    """Delete the elements of a repeated protobuf field for which drop(index, element)."""
    for k in [k for k, e in enumerate(field) if drop(k, e)][::-1]:
        del field[k]


def save_model(model: onnx.ModelProto, output: str | os.PathLike) -> Path:
    """Write one self-contained .onnx file atomically (temporary file + rename)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    try:
        onnx.save_model(model, tmp, save_as_external_data=False)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


# ----------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------
def parity_inputs(
    normaliser: Normaliser,
    raw_input: bool,
    n: int = 256,
    seed: int = 0,
    vertex: bool = False,
    mask: bool = False,
):
    """{"toy": x, "random": x}, float32 [n, 4760, 2] test inputs for the parity check; with
    `vertex` each is {"input": x, "vertex": [n, 3] cm} (the toy's xyzVTX; random: uniform
    within +-10 cm); with `mask` (an inpainter) {"input": x, "mask": [n, 4760] float32}, 5 %
    of the sensors and the first 20 to fill.

    Toy events come from the simulation (its npho / time branches, normalised unless raw_input);
    random inputs cover the feature range including the -1 sentinels (raw: photons up to 5000
    with 1e10 dead channels, times up to 100 ns).
    """
    from xecjax.simulate import simulate

    sim = simulate(seed, n)
    npho, time = (sim[b] for b in normaliser.branches)
    toy = np.stack([npho, time], -1) if raw_input else normaliser(npho, time)
    rng = np.random.default_rng(seed)
    if raw_input:
        rand = np.stack(
            [rng.uniform(-10, 5000, (n, N_SENSORS)), rng.uniform(0, 1e-7, (n, N_SENSORS))], -1
        )
        rand[rng.random((n, N_SENSORS)) < 0.01] = 1e10
    else:
        rand = rng.normal(0.0, 1.0, (n, N_SENSORS, 2))
        rand[rng.random((n, N_SENSORS, 2)) < 0.05] = -1.0
    out = {"toy": np.asarray(toy, np.float32), "random": rand.astype(np.float32)}
    if mask:  # 5 % of the sensors to fill, and the first 20 of every event
        fill = {k: (rng.random((n, N_SENSORS)) < 0.05) | (np.arange(N_SENSORS) < 20) for k in out}
        out = {k: {INPUT_NAME: x, MASK_NAME: fill[k].astype(np.float32)} for k, x in out.items()}
    if vertex:
        vtx = {"toy": sim["xyzVTX"], "random": rng.uniform(-10, 10, (n, 3))}
        out = {k: {INPUT_NAME: x, VERTEX_NAME: vtx[k].astype(np.float32)} for k, x in out.items()}
    return out


def import_onnxruntime():
    """The onnxruntime module, or an ExportError saying which extra installs it (the package is
    `onnxruntime` on CPU, `onnxruntime-gpu` on GPU nodes: never both, they overwrite each
    other's files)."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ExportError(
            "onnxruntime is not installed: pip install -e '.[cpu]' (CPU) or -e '.[cuda12]' "
            "(GPU nodes, onnxruntime-gpu)"
        ) from e
    return onnxruntime


def parity_check(
    model: onnx.ModelProto | str | os.PathLike,
    fn: Callable[[jax.Array], jax.Array],
    inputs: Mapping[str, np.ndarray | Mapping[str, np.ndarray]],
    batches=PARITY_BATCHES,
) -> dict[str, float]:
    """Max |onnxruntime - JAX| per input kind and batch size, {"toy[7]": diff, ...} for the
    angle `output` (degrees) and {"toy[7] output_energy": diff, ...} for the other outputs
    of a multi-task model (fn returns a tuple, in the order of the model's outputs).

    onnxruntime runs each batch size (the dynamic batch is what is tested); JAX runs each input
    once at its full size and is sliced, which saves a compilation per batch size. An input
    is the array of "input", or {ONNX input name: array} (fn's arguments in that order).
    """
    ort = import_onnxruntime()

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    jitted = jax.jit(fn)
    diffs = {}
    for kind, x in inputs.items():
        feeds = dict(x) if isinstance(x, Mapping) else {INPUT_NAME: x}
        want = jitted(*(jnp.asarray(a) for a in feeds.values()))
        want = [np.asarray(w, np.float64) for w in (want if isinstance(want, tuple) else (want,))]
        if len(want) != len(names):
            raise ExportError(f"parity: the ONNX model has outputs {names}, JAX {len(want)}")
        for b in batches:
            got = session.run(names, {k: a[:b] for k, a in feeds.items()})
            for name, g, w in zip(names, got, want, strict=True):
                key = f"{kind}[{b}]" + ("" if name == OUTPUT_NAME else f" {name}")
                if g.shape != w[:b].shape:
                    raise ExportError(
                        f"parity {key}: onnxruntime shape {g.shape} != JAX {w[:b].shape}"
                    )
                diffs[key] = float(np.max(np.abs(g - w[:b])))
    return diffs


# ----------------------------------------------------------------------------------------------
# Export entry points
# ----------------------------------------------------------------------------------------------
def export_model(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    normaliser: Normaliser,
    model_cfg: Mapping[str, Any],
    output: str | os.PathLike,
    *,
    opset: int | None = None,
    raw_input: bool = False,
    run_id: str = "",
    checkpoint: str = "",
    check: bool = True,
    tolerance: float | None = None,
    batches=PARITY_BATCHES,
    verbose: bool = True,
    objective: str | None = None,
) -> tuple[Path, dict[str, float]]:
    """Export apply_fn(params, x) to `output` after a parity check; returns (path, max diffs).

    Raises ExportError (and writes nothing) when the largest |difference| exceeds `tolerance`
    (None: PARITY_TOLERANCE_DEG degrees, an inpainter PARITY_TOLERANCE_FEATURES feature
    units). check=False skips the parity check (benchmarks,
    test fixtures). objective: the run's config.objective, for the metadata (build_metadata).
    """
    opset = DEFAULT_OPSET if opset is None else int(opset)
    inpainter = is_inpainter(model_cfg)
    if tolerance is None:
        tolerance = PARITY_TOLERANCE_FEATURES if inpainter else PARITY_TOLERANCE_DEG
    if inpainter:
        from xecjax.inpainter import completion_function

        if raw_input:
            raise ValueError(
                "raw_input: an inpainter exports with normalised input only (feed the "
                "Normaliser's features of the metadata; Normaliser.inverse converts the output)"
            )
        # the trained formulation: parity reference
        fn = completion_function(apply_fn, params, normaliser)
        exported = completion_function(onnx_apply(apply_fn, model_cfg), params, normaliser)
    else:
        norm = normaliser if raw_input else None
        names = _task_names(model_cfg)
        # the trained formulation: parity reference
        fn = angles_function(apply_fn, params, norm, names, _has_vertex(model_cfg))
        exported = onnx_function(apply_fn, params, model_cfg, norm)
    meta = build_metadata(
        normaliser, model_cfg, raw_input=raw_input, opset=opset, run_id=run_id,
        checkpoint=checkpoint, objective=objective,
    )  # fmt: skip
    model = to_onnx_model(exported, meta, opset, output_names(model_cfg), input_names(model_cfg))
    diffs: dict[str, float] = {}
    if check:
        inputs = parity_inputs(normaliser, raw_input, max(batches),
                               vertex=_has_vertex(model_cfg), mask=inpainter)  # fmt: skip
        diffs = parity_check(model, fn, inputs, batches)

        def limit(key: str) -> float:
            return PARITY_TOLERANCE.get(key.split(" ")[-1], tolerance)

        what = "feature units" if inpainter else "deg"
        if verbose:
            for name, d in diffs.items():
                unit = what if inpainter else UNIT.get(name.split("_")[-1], "deg")
                print(f"parity {name:>12s}: max |onnxruntime - jax| = {d:.3g} {unit}", flush=True)
        bad = {n: d for n, d in diffs.items() if not d <= limit(n)}  # NaN fails too
        if bad:
            worst = ", ".join(f"{n}: {d:.3g}" for n, d in bad.items())
            raise ExportError(
                f"parity check failed: max |onnxruntime - jax| above {tolerance:g} {what} "
                f"(tasks: {PARITY_TOLERANCE}) on {worst}; {os.fspath(output)!r} not written"
            )
    path = save_model(model, output)
    if verbose:
        mb = path.stat().st_size / 2**20
        print(f"wrote {path} ({mb:.1f} MiB, opset {opset}, input {meta['input_kind']})", flush=True)
    return path, diffs


def export_run(
    workdir: str | os.PathLike,
    output: str | os.PathLike,
    which: str = "best",
    ema: bool = True,
    opset: int | None = None,
    raw_input: bool = False,
    tolerance: float | None = None,
    verbose: bool = True,
) -> Path:
    """Export the `which` checkpoint (EMA weights by default) of a training run to `output`.

    workdir: a training workdir or its checkpoints/<which> directory. Returns the written path;
    raises FileNotFoundError without a checkpoint and ExportError when the parity check fails.
    """
    from xecjax.checkpoint import load_for_inference, read_meta

    if opset is not None and int(opset) < DEFAULT_OPSET:  # fail before loading the weights
        raise ValueError(f"opset {opset}: expected >= {DEFAULT_OPSET} (17 fails the ONNX checker)")
    step, meta = read_meta(workdir, which)
    objective = meta.get("config", {}).get("objective", "regression")
    if raw_input and objective != "regression":  # fail before loading the weights
        raise ValueError(f"raw_input: an {objective} run exports with normalised input only")
    model_cfg, normaliser, params, apply_fn = load_for_inference(workdir, which=which, ema=ema)
    run_id = meta.get("mlflow_run_id") or Path(workdir).resolve().name
    path, _ = export_model(
        apply_fn, params, normaliser, model_cfg, output, opset=opset, raw_input=raw_input,
        run_id=run_id, checkpoint=f"{which}@{step}/{'ema' if ema else 'params'}",
        tolerance=tolerance, verbose=verbose, objective=objective,
    )  # fmt: skip
    return path


# ----------------------------------------------------------------------------------------------
# Reading exported files (infer_real, tests)
# ----------------------------------------------------------------------------------------------
def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of an ONNX file, without loading the weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {str(path)!r} does not exist")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not an ONNX model ({type(e).__name__}: {e})") from e
    if not model.graph.node:  # protobuf parses many byte strings as an empty message
        raise ValueError(f"{str(path)!r} is not an ONNX model (no graph)")
    return {p.key: p.value for p in model.metadata_props}


def normaliser_of(metadata: Mapping[str, str], path: str = "") -> Normaliser:
    """The Normaliser stored in an exported model's metadata."""
    if "normaliser" not in metadata:
        raise KeyError(
            f"ONNX model {path!r} has no 'normaliser' metadata (not exported by xecjax?): pass "
            "the normalisation explicitly"
        )
    return Normaliser.from_dict(json.loads(metadata["normaliser"]))
