"""Evaluation of a trained run on its held-out test events, next to the conventional baseline.

  python -m xecjax.evaluate --workdir RUN [--split test|val | --data PATH]
                            [--checkpoint best|last] [--no-ema] [--max-events N] [--out DIR]
                            [--batch-size B] [--no-baseline]

Loads the model, its Normaliser and the data split from the run's checkpoint and evaluates the
recorded test part (`--split test`, the default: events that played no part in training nor in
choosing `best`, which is chosen on validation), the validation part (`--split val`) or the files
given by --data (a warning names those the run trained or validated on). A run recorded without
a test part (test_fraction 0, or trained before the test split existed) is refused before
anything is written: use --split val or --data. The events are streamed batch by batch and the
results written into <workdir>/evaluation_<which> (`_raw` appended without EMA):
  summary.json, summary.md          metrics of the model and of the baselines, model, data
                                    (with "split": test | val | files), checkpoint, throughput
  resolution_profile.pdf            68 % widths of d_theta, d_phi and the 68 % opening angle vs
                                    true theta and phi (20 bins), model and baselines
  scatter.pdf                       predicted vs true angles, residual distributions
  saliency_profile.pdf              mean |d theta / d input|, |d phi / d input| (jax.grad) per
                                    face and channel (npho, time), and on the face images
  saliency.npz                      mean_abs [2, 4760, 2] (output, sensor, channel), n_events;
                                    grad [2, 4760, 2] and x [4760, 2] of one example event
  worst_events.pdf                  the events with the largest opening angle, all faces
  predictions_<run>.csv             true_theta, true_phi, pred_theta, pred_phi, run, event
  validation_results_<run>.root     tree val_tree (DESIGN.md section 8); with a predicted
                                    uncertainty also pred_sigma_theta, pred_sigma_phi (deg,
                                    Gaussian) or pred_kappa (1/rad^2), pred_psi68 (deg, vMF)
  calibration.pdf                   (models with an uncertainty) observed vs nominal coverage,
                                    psi 68% in bins of the predicted uncertainty; summary.json
                                    "uncertainty" (metrics.uncertainty_metrics)
and logs them to the run's MLflow entry. Metrics: bias, RMS (standard deviation) and skewness of
d_theta and of d_phi wrapped into [-180, 180), and the 50/68/90th percentiles of the opening
angle (psi_68 = val_resolution_deg). The baselines (xecjax.baseline) are the point-source fit and
the light centroid with the direction taken from the target centre (the information the model
has) and the fit from the event's vertex (xyzVTX; on toy data the true vertex). A model that
predicts the conversion point ("point" output, or a uvw task head) also gets the vertex-aware
angle `model_from_vertex`: from the event's vertex to its predicted point. Multi-task models
(xecjax.tasks) add the task metrics beside their conventional estimates (summary "tasks") and
pred_ / true_ energy, timing, u, v, w branches to val_tree.

An inpainter or MAE run (config.objective "inpainter" | "mae", read from the checkpoint) is
evaluated by xecjax.inpainter.evaluate_run instead: a sensor-level tree of the masked sensors
(inpainting_results_<run>.root, tree inpaint_tree), the errors per face next to the
neighbour-average and solid-angle-weighted estimates (summary.json, summary.md), and plots
(inpainting_errors.pdf, inpainting_examples.pdf); `--mask-ratio` overrides the run's.

Memory: batches (the [B, 4760, 2] inputs) are never accumulated; per event only a few floats of
results are kept for the percentiles and profiles, and the N worst events' inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import heapq
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xecjax import baseline, plots, tasks
from xecjax.distributed import keep_freed_host_memory
from xecjax.geometry import N_SENSORS, uvw_to_xyz, vec_to_angles
from xecjax.losses import POINT_WIDTHS
from xecjax.metrics import (
    evaluation_metrics,
    opening_angles,
    profiles_of,
    uncertainty_columns,
    uncertainty_metrics,
)
from xecjax.models import needs_vertex
from xecjax.rootio import TreeWriter

CSV_COLUMNS = ("true_theta", "true_phi", "pred_theta", "pred_phi", "run", "event")
VAL_TREE_DTYPES = {
    "run_id": np.int32, "event_id": np.int32, "pred_theta": np.float32, "pred_phi": np.float32,
    "true_theta": np.float32, "true_phi": np.float32, "opening_angle": np.float32,
    "energy_truth": np.float32, "x_truth": np.float32, "y_truth": np.float32,
    "z_truth": np.float32, "x_vtx": np.float32, "y_vtx": np.float32, "z_vtx": np.float32,
}  # fmt: skip
BASELINES = ("baseline_fit", "baseline_centroid", "baseline_fit_vertex")
# Not a method: the direction of the TRUE conversion point (xyzTruth) seen from the target
# centre, i.e. the best any vertex-blind angle can do (0 with a point vertex at the centre).
TRUTH_POINT = "truth_point_floor"
# The vertex-aware angle of a model that predicts the conversion point ("point" output, or a
# uvw task head): the direction from the measured vertex (xyzVTX) to the predicted point.
MODEL_VERTEX = "model_from_vertex"


# ----------------------------------------------------------------------------------------------
# Output files that other tools share.
# ----------------------------------------------------------------------------------------------
def val_tree_columns(
    pred, true, run, event, energy, xyz_truth, xyz_vtx, task_pred=None, task_true=None
) -> dict[str, np.ndarray]:
    """Columns of tree val_tree (DESIGN.md section 8) for one chunk of N events.

    pred [N, >=2] model output ((theta, phi) deg first), true [N, 2]; run, event [N]; energy
    [N] GeV; xyz_truth, xyz_vtx [N, 3] cm. Returns {branch: array [N]} in the order of
    VAL_TREE_DTYPES (run_id, event_id int32, the rest float32); opening_angle in degrees. A pred
    with a predicted uncertainty (width 4, 6 or 9) adds metrics.uncertainty_columns (float32);
    task_pred / task_true ({task: [N, width]}, xecjax.tasks) add pred_ / true_ energy, timing,
    u, v, w.
    """
    pred, true = np.asarray(pred), np.asarray(true)
    xyz_truth, xyz_vtx = np.asarray(xyz_truth), np.asarray(xyz_vtx)
    psi = opening_angles(pred, true)
    cols = {
        "run_id": run, "event_id": event, "pred_theta": pred[:, 0], "pred_phi": pred[:, 1],
        "true_theta": true[:, 0], "true_phi": true[:, 1], "opening_angle": psi,
        "energy_truth": energy, "x_truth": xyz_truth[:, 0], "y_truth": xyz_truth[:, 1],
        "z_truth": xyz_truth[:, 2], "x_vtx": xyz_vtx[:, 0], "y_vtx": xyz_vtx[:, 1],
        "z_vtx": xyz_vtx[:, 2],
    }  # fmt: skip
    out = {k: np.asarray(cols[k], dt) for k, dt in VAL_TREE_DTYPES.items()}
    out.update({k: np.asarray(v, np.float32) for k, v in uncertainty_columns(pred).items()})
    if task_pred:
        out.update(tasks.columns(task_pred, task_true))
    return out


@contextlib.contextmanager
def csv_writer(path: str | os.PathLike, extra: Sequence[str] = ()):
    """csv.writer on a temporary file, renamed to path when the block completes. Header:
    CSV_COLUMNS, then `extra` (the task columns of a multi-task model, task_csv_columns)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow((*CSV_COLUMNS, *extra))
            yield w
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_npz(path: Path, **arrays) -> None:
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Model-side pieces: prediction, saliency, worst events.
# ----------------------------------------------------------------------------------------------
def task_csv_columns(model_cfg) -> tuple[str, ...]:
    """The predictions-CSV columns after CSV_COLUMNS for a model's task heads: pred_, true_
    (and sigma_ for a head with a predicted uncertainty) energy, timing, u, v, w."""
    names = tasks.model_tasks(model_cfg)
    sigma = tasks.model_sigma(model_cfg)
    out = []
    for n in names:
        for part in ("u", "v", "w") if n == "uvw" else (n,):
            out += [f"pred_{part}", f"true_{part}"] + ([f"sigma_{part}"] if n in sigma else [])
    return tuple(out)


def make_predict_and_saliency(apply_fn, with_tasks: bool = False):
    """Jitted predict(params, x, vertex=None) -> [B, C] and saliency(params, x, vertex=None) ->
    ([B, C], [B, 2, 4760, 2]); vertex [B, 3] cm for a model with model.vertex_input.

    C is the model's output width (theta, phi first; xecjax.losses). saliency returns the whole
    prediction and d output_o / d x_b (o = theta, phi only) from one forward pass and two
    vector-Jacobian products; exact per event because in evaluation mode events do not
    interact. Each is compiled on first use only. with_tasks (a multi-task model, xecjax.tasks):
    the prediction is ([B, C], {task: [B, width]}) from the same forward pass, in both.
    """

    def forward(params, x, vertex=None):
        extra = {} if vertex is None else {"vertex": vertex}
        if with_tasks:
            return apply_fn(params, x, train=False, rng=None, tasks=True, **extra)
        return apply_fn(params, x, train=False, rng=None, **extra)

    def angles_and_output(params, x, vertex):
        y = forward(params, x, vertex)
        return (y[0] if with_tasks else y)[:, :2], y

    def saliency(params, x, vertex=None):
        y2, vjp, y = jax.vjp(lambda x_: angles_and_output(params, x_, vertex), x, has_aux=True)
        cotangents = jnp.stack([jnp.zeros_like(y2).at[:, o].set(1.0) for o in range(2)])
        (grads,) = jax.vmap(vjp)(cotangents)  # one backward pass traced, batched over outputs
        return y, jnp.moveaxis(grads, 0, 1)

    return jax.jit(forward), jax.jit(saliency)


def make_task_saliency(apply_fn, names: tuple[str, ...]):
    """(jitted saliency(params, x, vertex=None) -> [B, K, 4760, 2], the K output labels) of the
    task heads
    (xecjax.tasks): d output_k / d x_b for every component of every task (energy, timing, u,
    v, w), from one forward pass and K vector-Jacobian products, as for the angles."""
    labels = [part for n in names for part in (("u", "v", "w") if n == "uvw" else (n,))]

    def heads(params, x, vertex):
        extra = {} if vertex is None else {"vertex": vertex}
        out = apply_fn(params, x, train=False, rng=None, tasks=True, **extra)[1]
        return jnp.concatenate([out[n].reshape(x.shape[0], -1) for n in names], -1)  # [B, K]

    def saliency(params, x, vertex=None):
        y, vjp = jax.vjp(lambda x_: heads(params, x_, vertex), x)
        cotangents = jnp.stack([jnp.zeros_like(y).at[:, k].set(1.0) for k in range(y.shape[1])])
        (grads,) = jax.vmap(vjp)(cotangents)
        return jnp.moveaxis(grads, 0, 1)

    return jax.jit(saliency), labels


class WorstEvents:
    """The n events with the largest opening angle seen so far (a min-heap; streaming)."""

    def __init__(self, n: int):
        self.n, self._heap, self._count = n, [], 0

    def offer(self, psi, x, true, pred, run, event) -> None:
        if self.n <= 0:
            return
        floor = self._heap[0][0] if len(self._heap) == self.n else -np.inf
        for i in np.flatnonzero(psi > floor):
            item = (
                float(psi[i]),
                self._count,
                {
                    "psi": float(psi[i]),
                    "x": np.array(x[i]),
                    "true": np.array(true[i]),
                    "pred": np.array(pred[i]),
                    "run": int(run[i]),
                    "event": int(event[i]),
                },
            )
            self._count += 1
            (heapq.heappush if len(self._heap) < self.n else heapq.heappushpop)(self._heap, item)

    def events(self) -> list[dict]:
        return [e for *_, e in sorted(self._heap, key=lambda t: -t[0])]


# ----------------------------------------------------------------------------------------------
# The evaluation of one run.
# ----------------------------------------------------------------------------------------------
SPLITS = ("test", "val")


def evaluation_sources(meta: dict, data=None, split: str = "test", workdir="the run") -> list:
    """The run's recorded `split` part ("test" | "val"), or the files named by data.

    With data, warns when it includes files the run trained on or validated on (validation
    chose `best`, so it is not an independent measurement either). A recorded split without
    the asked part (test_fraction 0, or a run from before the test split) is a ValueError.
    """
    from xecjax.data import Source, Split, discover_files, num_entries

    recorded = Split.from_dict(meta["split"])
    if data is None:
        recorded.verify(f"the split recorded in {workdir}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {'|'.join(SPLITS)}, got {split!r}")
        sources = getattr(recorded, split)
        if not sources:
            raise ValueError(
                f"the {split} split is not recorded in {workdir} (trained with "
                "config.data.test_fraction = 0 or before the test split existed): evaluate its "
                "validation part with --split val (split='val'; it chose `best`, so it is not an "
                "independent measurement) or give held-out files with --data FILES"
            )
        return sources
    files = discover_files(data)
    for part in ("train", "val"):
        seen = {os.path.realpath(s.path) for s in getattr(recorded, part)}
        overlap = sorted(f for f in files if os.path.realpath(f) in seen)
        if overlap:
            what = "training" if part == "train" else "validation (chose `best`)"
            warnings.warn(f"--data includes {what} files of this run: {overlap}", stacklevel=2)
    return [Source(f, 0, num_entries(f)) for f in files]


def baseline_angles(npho, vtx, fit_info: dict | None = None) -> dict[str, np.ndarray]:
    """(theta, phi) [N, 2] deg of each conventional method (BASELINES) from raw npho [N, 4760]
    and the event vertices [N, 3] cm (the fit from the vertex: baseline_fit_vertex). fit_info,
    a dict, receives the point-source fit's "uvw" [N, 3] cm and the photon sum of the valid
    sensors "photon_sum" [N] (the baselines of the tasks beside the angle, task_baselines)."""

    fit, info = baseline.fit_point_source(npho, return_info=True)
    if fit_info is not None:
        total = np.where(baseline.alive(npho), npho, 0).sum(1)  # dead channels left out
        fit_info.update(uvw=np.asarray(info["uvw"]), photon_sum=total)
    return {
        "baseline_fit": baseline.direction(fit),
        "baseline_centroid": baseline.direction(baseline.centroid(npho)),
        "baseline_fit_vertex": baseline.direction(fit, vtx),
    }


def task_baselines(fit: dict[str, np.ndarray], true: dict[str, np.ndarray]) -> dict:
    """The conventional estimate of each task beside the angle, per event ({task: [N, width]},
    NaN where it has none), from the point-source fit's outputs `fit` and calibrated against
    `true` ({task: [N, width]}):

    energy: the photon sum of all valid sensors times a calibration quadratic in the fitted
      depth w (3 constants, least squares of E / sum on these events; the toy's light
      collection falls with depth);
    uvw: the point-source fit's light centre, its median offset from the true conversion point
      (the shower depth) removed on these events (three constants);
    timing: the median over bright sensors of their time minus the light's flight from the
      fitted light centre (baseline.fit_time), its median offset removed on these events.
    The calibrations use the evaluated events themselves (7 constants in all, not a
    resolution).
    """
    out = {}
    if "energy" in true:
        e = np.asarray(true["energy"], np.float64).ravel()
        total, w = fit["photon_sum"].astype(np.float64), fit["uvw"][:, 2].astype(np.float64)
        ok = total > 0
        design = np.stack([np.ones_like(w), w, w * w], 1)
        coef = np.linalg.lstsq(design[ok], e[ok] / total[ok], rcond=None)[0]
        out["energy"] = np.where(ok, design @ coef * total, np.nan)[:, None]
    if "uvw" in true:
        t = np.asarray(true["uvw"], np.float64)
        u = fit["uvw"].astype(np.float64)
        out["uvw"] = u - np.median(u - t, axis=0)
    if "timing" in true and "time_est" in fit:
        t = np.asarray(true["timing"], np.float64).ravel()
        est = fit["time_est"].astype(np.float64)
        ok = np.isfinite(est)
        out["timing"] = (est - np.median(est[ok] - t[ok]) if ok.any() else est)[:, None]
    return out


def task_results(
    pred: dict, true: dict, conventional: dict, log_sigma: dict | None = None
) -> tuple[dict, dict]:
    """(metrics, profiles) of the tasks beside the angle: {task | "baseline_<task>": metrics
    (xecjax.tasks.metrics, with the predicted uncertainty's where log_sigma has the task)} and
    {task: {"model" | "conventional": tasks.profile}}, the conventional estimates on the
    events that have one."""
    metrics_, profiles = {}, {}
    for name in pred:
        t = np.asarray(true[name], np.float64).reshape(len(true[name]), -1)
        metrics_[name] = tasks.metrics(name, pred[name], t, (log_sigma or {}).get(name))
        profiles[name] = {"model": tasks.profile(name, pred[name], t)}
        if name in conventional:
            c = conventional[name]
            ok = np.isfinite(c).all(axis=1)
            metrics_[f"baseline_{name}"] = tasks.metrics(name, c[ok], t[ok])
            profiles[name]["conventional"] = tasks.profile(name, c[ok], t[ok])
    return metrics_, profiles


def _rate(batches: list[tuple[int, float]]) -> float | None:
    """Events/s over timed (events, seconds) batches after the first (compilation), if any."""
    steady = batches[1:] or batches
    return sum(n for n, _ in steady) / max(sum(t for _, t in steady), 1e-9) if steady else None


def evaluate_run(
    workdir: str | os.PathLike,
    data=None,
    which: str = "best",
    ema: bool = True,
    *,
    max_events: int | None = None,
    out_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    with_baseline: bool = True,
    n_saliency: int = 256,
    n_worst: int = 10,
    log_mlflow: bool = True,
    split: str = "test",
    mask_ratio: float | None = None,
) -> dict[str, Any]:
    """Evaluate a training run; writes the files listed in the module docstring. An inpainter
    or MAE run goes to xecjax.inpainter.evaluate_run (n_worst events drawn as examples, at
    most 4; mask_ratio: default the run's).

    Args:
      workdir: the training run directory (checkpoints/, summary.json, MLflow store).
      data: None (the run's recorded `split`) or ROOT file(s)/directory/glob to evaluate.
      which, ema: the checkpoint ("best" | "last") and EMA or raw parameters.
      max_events: stop after this many events (None: all).
      out_dir: output directory (default <workdir>/evaluation_<which>[_raw]).
      batch_size: events per batch (default the run's batch size).
      with_baseline: also run the conventional reconstruction on the same events.
      n_saliency: events used for the saliency maps; n_worst: events in worst_events.pdf.
      log_mlflow: log the files and headline metrics into the run's MLflow entry.
      split: with data None, the recorded part to evaluate: "test" (held out from training and
        from choosing `best`) or "val"; a ValueError, before anything is written, when the run
        has no such part recorded.
    Returns:
      the summary dict (also summary.json).
    """
    from xecjax.checkpoint import load_for_inference, read_meta
    from xecjax.data import Loader

    workdir = Path(workdir)
    if max_events is not None and max_events < 1:
        raise ValueError(f"max_events must be >= 1 (or None for all), got {max_events}")
    t0 = time.time()
    step, meta = read_meta(workdir, which)
    from xecjax import inpainter

    if inpainter.is_reconstruction(meta["config"]):
        return inpainter.evaluate_run(
            workdir, data, which, ema, max_events=max_events, out_dir=out_dir,
            batch_size=batch_size, with_baseline=with_baseline, n_examples=min(n_worst, 4),
            log_mlflow=log_mlflow, split=split, mask_ratio=mask_ratio,
        )  # fmt: skip
    if mask_ratio is not None:
        raise ValueError("mask_ratio: only for an inpainter or MAE run (this is a regression)")
    sources = evaluation_sources(meta, data, split, workdir)  # before anything is written
    model_cfg, normaliser, params, apply_fn = load_for_inference(workdir, which, ema)
    cfg = meta["config"]
    task_names = tasks.model_tasks(model_cfg)  # heads beside the angle: their outputs too
    loader = Loader(
        sources,
        normaliser,
        int(batch_size or cfg["data"]["batch_size"]),
        shuffle=False,
        drop_remainder=False,
        fiducial=cfg["data"].get("fiducial", False),
        # raw npho (and absolute sensor times for the timing task) of the baselines
        extra_branches=(("npho", "time") if "timing" in task_names else ("npho",))
        if with_baseline
        else (),
        targets=task_names,
    )
    out = Path(out_dir) if out_dir else workdir / f"evaluation_{which}{'' if ema else '_raw'}"
    out.mkdir(parents=True, exist_ok=True)
    run = workdir.resolve().name
    files = {
        "csv": out / f"predictions_{run}.csv",
        "root": out / f"validation_results_{run}.root",
        "profile": out / "resolution_profile.pdf",
        "scatter": out / "scatter.pdf",
        "saliency": out / "saliency_profile.pdf",
        "saliency_arrays": out / "saliency.npz",
        "worst": out / "worst_events.pdf",
        "json": out / "summary.json",
        "md": out / "summary.md",
    }
    predict, saliency_fn = make_predict_and_saliency(apply_fn, with_tasks=bool(task_names))
    references = (*BASELINES, TRUTH_POINT) if with_baseline else ()
    acc: dict[str, list] = {k: [] for k in ("output", "true", *references)}
    task_acc = {f"{k}_{n}": [] for n in task_names for k in ("pred", "true")}
    fit_acc: list[dict] = []  # the point-source fit's uvw and yield (task baselines)
    sal_sum, n_sal, example = np.zeros((2, N_SENSORS, 2)), 0, {}
    task_saliency, task_labels = make_task_saliency(apply_fn, task_names)
    task_sal_sum = np.zeros((len(task_labels), N_SENSORS, 2))
    worst = WorstEvents(n_worst)
    timing = {"model": [], "baseline": []}  # per batch (events, seconds)
    n_done = 0
    csv_extra = task_csv_columns(model_cfg)
    with_vertex = needs_vertex(model_cfg)  # the model reads the event's xyzVTX
    with (
        TreeWriter(files["root"], "val_tree") as tree,
        csv_writer(files["csv"], csv_extra) as rows,
    ):
        for batch in loader.epoch(0):
            vtx = batch["xyzVTX"] if with_vertex else None
            ok = batch["valid"] & (np.cumsum(batch["valid"]) <= (max_events or np.inf) - n_done)
            if not ok.any():
                break
            b = {k: v[ok] for k, v in batch.items() if k not in ("x", "npho", "time")}
            n_ok = int(ok.sum())
            t = time.time()
            if n_sal < n_saliency:  # the first batches also give the saliency maps
                pred, grads = saliency_fn(params, batch["x"], vtx)
                grads = np.asarray(grads)
                use = ok & (np.cumsum(ok) <= n_saliency - n_sal)
                if n_sal == 0:  # one event kept whole: its gradient map and its input
                    example = {"grad": grads[use][0], "x": batch["x"][use][0]}
                sal_sum += np.abs(grads[use]).sum(0)
                if task_names:  # the same events for every task component
                    task_grads = np.asarray(task_saliency(params, batch["x"], vtx))
                    task_sal_sum += np.abs(task_grads[use]).sum(0)
                n_sal += int(use.sum())
            else:
                pred = jax.block_until_ready(predict(params, batch["x"], vtx))
                timing["model"].append((n_ok, time.time() - t))
            pred, heads = pred if task_names else (pred, {})  # one forward pass for both
            # [n, C]: theta, phi (+ uncertainty columns)
            output = np.asarray(pred)[ok].astype(np.float32)
            pred = output[:, :2]
            true, ids = b["angles"], (b["run"], b["event"])
            t_pred, t_true = {}, {}
            if task_names:  # the task heads of the same forward pass
                t_pred = {n: np.asarray(heads[n])[ok] for n in task_names}
                t_true = {n: b[n] for n in task_names}
                for n in task_names:
                    task_acc[f"pred_{n}"].append(t_pred[n])
                    task_acc[f"true_{n}"].append(t_true[n])
                    if f"{n}_log_sigma" in heads:  # a predicted uncertainty (gaussian_nll ...)
                        sigma = np.asarray(heads[f"{n}_log_sigma"])[ok]
                        task_acc.setdefault(f"sigma_{n}", []).append(sigma)
                        t_pred[f"{n}_log_sigma"] = sigma  # sigma_<part> branches and columns
            tree.extend(val_tree_columns(output, true, *ids, b["energy"], b["xyzTruth"],
                                         b["xyzVTX"], t_pred, t_true))  # fmt: skip
            task_cols = tasks.columns(t_pred, t_true)
            extra_cols = (np.round(task_cols[c], 5) for c in csv_extra)
            rows.writerows(zip(*(np.round(a, 5) for a in (*true.T, *pred.T)), *ids, *extra_cols,
                               strict=True))  # fmt: skip
            acc["output"].append(output)
            acc["true"].append(true)
            if with_baseline:  # on the whole padded batch: one jitted shape
                t = time.time()
                info = {}
                for k, v in baseline_angles(batch["npho"], batch["xyzVTX"], info).items():
                    acc[k].append(v[ok])
                if "timing" in task_names:  # the sensor times from the fitted light position
                    info["time_est"] = baseline.fit_time(batch["npho"], batch["time"], info["uvw"])
                if task_names:
                    fit_acc.append({k: v[ok] for k, v in info.items()})
                timing["baseline"].append((n_ok, time.time() - t))
                acc[TRUTH_POINT].append(vec_to_angles(b["xyzTruth"].astype(np.float64)))
            point = output[:, -3:] if output.shape[1] in POINT_WIDTHS else t_pred.get("uvw")
            if point is not None:  # the vertex-aware angle from the predicted conversion point
                seen = uvw_to_xyz(np.asarray(point, np.float64)) - b["xyzVTX"].astype(np.float64)
                acc.setdefault(MODEL_VERTEX, []).append(vec_to_angles(seen))
            worst.offer(opening_angles(pred, true), batch["x"][ok], true, pred, *ids)
            n_done += n_ok
        if n_done == 0:  # inside the writers: their temporary files are removed, not renamed
            raise ValueError(f"no events to evaluate in {[s.path for s in sources]}")
    res = {k: np.concatenate(v) for k, v in acc.items()}
    task_metrics, task_profiles = {}, {}
    if task_names:
        t_pred = {n: np.concatenate(task_acc[f"pred_{n}"]) for n in task_names}
        t_true = {n: np.concatenate(task_acc[f"true_{n}"]) for n in task_names}
        conventional = {}
        if fit_acc:
            fits = {k: np.concatenate([f[k] for f in fit_acc]) for k in fit_acc[0]}
            conventional = task_baselines(fits, t_true)
        sigma = {n: np.concatenate(task_acc[f"sigma_{n}"]) for n in task_names
                 if task_acc.get(f"sigma_{n}")}  # fmt: skip
        task_metrics, task_profiles = task_results(t_pred, t_true, conventional, sigma)
        files["task_profiles"] = plots.plot_task_profiles(task_profiles, out / "task_profiles.pdf")
    vertex_aware = (MODEL_VERTEX,) if MODEL_VERTEX in res else ()
    methods = {"model": res["output"][:, :2], **{k: res[k] for k in (*vertex_aware, *references)}}
    metrics = {m: evaluation_metrics(p, res["true"]) for m, p in methods.items()}
    plots.plot_resolution_profiles(
        {m: profiles_of(p, res["true"]) for m, p in methods.items()}, files["profile"]
    )
    plots.plot_scatter(res["true"], methods, files["scatter"])
    saliency = sal_sum / max(n_sal, 1)
    plots.plot_saliency(saliency, files["saliency"], n_sal)
    task_sal = task_sal_sum / max(n_sal, 1)  # [K, 4760, 2]
    extra_npz = (
        {"task_mean_abs": task_sal, "task_labels": np.array(task_labels)} if task_names else {}
    )
    _save_npz(files["saliency_arrays"], mean_abs=saliency, n_events=n_sal, **example, **extra_npz)
    sentinels = (normaliser.sentinel_npho, normaliser.sentinel_time)
    plots.plot_worst_events(worst.events(), files["worst"], sentinels)
    per_face = plots.face_means(np.moveaxis(saliency, -1, 1))  # [2 out, 2 chan, 6 faces]
    uncertainty = uncertainty_metrics(res["output"], res["true"])  # None: no uncertainty
    if uncertainty is not None:
        files["calibration"] = plots.plot_calibration(uncertainty, out / "calibration.pdf")
    summary = {
        "run": run,
        "workdir": str(workdir.resolve()),
        "model": model_cfg.get("name"),
        "variant": cfg.get("variant", ""),
        "checkpoint": {"which": which, "ema": ema, "step": int(step)},
        "data": {
            "sources": [f"{s.path}[{s.start}:{s.stop}]" for s in sources],
            "split": split if data is None else "files",  # test | val | files (--data)
            "recorded_split": data is None,
            "n_events": n_done,
            "fiducial": bool(cfg["data"].get("fiducial", False)),
        },
        "val_resolution_deg": metrics["model"]["val_resolution_deg"],
        "metrics": metrics,
        **({"uncertainty": uncertainty} if uncertainty is not None else {}),
        **({"tasks": task_metrics} if task_metrics else {}),
        "saliency_per_face": {
            f"{o}/{c}": dict(zip(plots.FACE_NAMES, per_face[i, j].round(8).tolist(), strict=True))
            for i, o in enumerate(("theta", "phi"))
            for j, c in enumerate(("npho", "time"))
        },
        "n_saliency_events": n_sal,
        **(
            {
                "task_saliency_per_face": {
                    f"{label}/{c}": dict(
                        zip(plots.FACE_NAMES, values.round(10).tolist(), strict=True)
                    )
                    for label, per in zip(
                        task_labels, plots.face_means(np.moveaxis(task_sal, -1, 1)), strict=True
                    )
                    for c, values in zip(("npho", "time"), per, strict=True)
                }
            }
            if task_names
            else {}
        ),
        "events_per_s": {k: _rate(v) for k, v in timing.items()},
        "wall_time_s": round(time.time() - t0, 1),
        "files": {k: v.name for k, v in files.items()},
    }
    _write_text(files["json"], json.dumps(summary, indent=1, default=float) + "\n")
    _write_text(files["md"], plots.summary_markdown(summary))
    if log_mlflow:
        log_to_mlflow(workdir, meta, summary, list(files.values()))
    return summary


def log_to_mlflow(
    workdir: Path, meta: dict, summary: dict, paths: list[Path], metrics: dict | None = None
) -> bool:
    """Add the files and eval/* metrics to the run's MLflow entry; False (warned) if unavailable.
    metrics: the eval/* metrics (default: the model's angle metrics of the summary)."""
    from xecjax.tracking import Tracker, default_mlflow_uri

    run_id = meta.get("mlflow_run_id")
    track = meta["config"].get("tracking", {})
    uri = track.get("mlflow_uri") or default_mlflow_uri()
    db = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    if not run_id or (db is not None and not db.exists()):
        warnings.warn(f"no MLflow run to log to (run id {run_id!r}, store {uri})", stacklevel=2)
        return False
    status = "FINISHED"
    with contextlib.suppress(OSError, ValueError, KeyError):
        status = json.loads((workdir / "summary.json").read_text())["status"]
    try:
        tracker = Tracker(
            workdir,
            {},
            mlflow_uri=uri,
            experiment=track.get("experiment", "gamma_angle"),
            run_id=run_id,
            tensorboard=False,
        )
        if metrics is None:
            model = dict(summary["metrics"]["model"])
            unc = summary.get("uncertainty") or {}
            model.update({k: unc[k] for k in ("coverage_68", "coverage_90") if k in unc})
        else:
            model = {k: v for k, v in metrics.items() if np.isfinite(v)}
        tracker.log_metrics(
            {f"eval/{k}": v for k, v in model.items()}, summary["checkpoint"]["step"]
        )
        for p in paths:
            tracker.log_artifact(p)
        tracker.close(status)
    except Exception as e:  # tracking must not lose the evaluation outputs already written
        warnings.warn(f"MLflow logging failed ({type(e).__name__}: {e})", stacklevel=2)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; 0 on success, 2 on bad input."""
    keep_freed_host_memory()  # before JAX's first computation
    p = argparse.ArgumentParser(
        prog="python -m xecjax.evaluate", description=__doc__.splitlines()[0]
    )
    p.add_argument("--workdir", required=True, help="training run directory")
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="the run's recorded part to evaluate (default test; val chose `best`)",
    )
    p.add_argument(
        "--data", default=None, help="ROOT file(s)/dir/glob instead of the recorded --split"
    )
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--no-ema", action="store_true", help="raw instead of EMA parameters")
    p.add_argument("--max-events", type=int, default=None)
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--no-baseline", action="store_true", help="skip the conventional methods")
    p.add_argument("--saliency-events", type=int, default=256)
    p.add_argument("--worst", type=int, default=10, help="events in worst_events.pdf")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--mask-ratio", type=float, default=None,
                   help="inpainter / MAE runs: share of valid sensors masked (default: the "
                        "run's)")  # fmt: skip
    a = p.parse_args(argv)
    try:
        s = evaluate_run(
            a.workdir,
            a.data,
            a.checkpoint,
            not a.no_ema,
            max_events=a.max_events,
            out_dir=a.out,
            batch_size=a.batch_size,
            with_baseline=not a.no_baseline,
            n_saliency=a.saliency_events,
            n_worst=a.worst,
            log_mlflow=not a.no_mlflow,
            split=a.split,
            mask_ratio=a.mask_ratio,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"xecjax.evaluate: error: {e}", file=sys.stderr)
        return 2
    if "scores" in s:  # an inpainter / MAE run
        from xecjax.inpainter import summary_markdown

        print(summary_markdown(s))
        return 0
    print(plots.summary_markdown(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
