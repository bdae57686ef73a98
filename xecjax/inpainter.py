"""Dead-channel inpainting (config.objective = "inpainter", configs/inpainter.py): the completed
sensor array, the evaluation of a run against the conventional estimates, the exported function.

Training is xecjax.mae's (the same model family, masking, loss and metrics; the settings in
config.inpainter): a share mask_ratio (default 0.05) of each event's valid sensors is set to the
Normaliser's sentinels, the file's dead channels are sentinels already, and the loss covers
the artificially masked sensors only (dead channels have no truth).

Completion (`complete`, the ONNX graph of `completion_function`): with x [B, 4760, 2]
normalised features and mask [B, 4760] (1 = fill this sensor), the sensors to fill are
    fill = mask | (npho feature == sentinel_npho)          (asked for, or dead)
they are set to the sentinels, the model reconstructs every sensor, and the output is
    completed = where(fill, reconstruction, x)
i.e. the input where a sensor was observed (bit for bit) and the model's estimate where it was
masked or dead. An observed sensor's sentinel time (below the npho threshold) stays.

Evaluation (`evaluate_run`; `python -m xecjax.evaluate --workdir W` detects an inpainter or MAE
run from its checkpoint's config.objective) masks each evaluated event with a fixed mask: the
run's mask_ratio (or --mask-ratio) of its valid sensors drawn with a key of its (run, event)
numbers (xecjax.mae.event_keys: the training validation's masks, so `--split val` reproduces
val_total_loss), and writes into <workdir>/evaluation_<which>[_raw]:
  inpainting_results_<run>.root   tree `inpaint_tree`, one entry per masked sensor (SENSOR_TREE):
                                  event_idx (position of the event among the evaluated ones),
                                  run_number, event_number, sensor_id (0..4759), face (index in
                                  geometry.FACE_NAMES: inner, outer, us, ds, top, bottom),
                                  truth_npho, pred_npho, error_npho = pred - truth (photons: the
                                  unit of the Normaliser's npho branch), truth_time, pred_time,
                                  error_time (ns; truth NaN where the file has no valid time),
                                  time_scored (the truth time counts: valid, truth npho >= the
                                  Normaliser's npho_threshold), and the conventional estimates
                                  neighbour_npho / neighbour_time and solid_angle_npho /
                                  solid_angle_time (same units; NaN where they have none)
  summary.json, summary.md        errors per face (xecjax.inpaint.score_sensors: bias, mean
                                  |error| and 68 % quantile of |error| of npho and time) of the
                                  model next to neighbour_average and solid_angle_weighted on the
                                  same sensors, and the loss metrics in feature units
  inpainting_errors.pdf           mean |error| per face and error distributions, per method
  inpainting_examples.pdf         a few events: truth, completed array and error per face
The predictions are turned into physical units with Normaliser.inverse. Memory: about 35 bytes
per masked sensor are kept for the summary (mask_ratio 0.05: ~8 kB per event); --max-events
bounds it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xecjax import geometry, inpaint
from xecjax import mae as mae_objective
from xecjax.normalise import Normaliser

TREE = "inpaint_tree"
# the branches of TREE and their types (photons or the npho branch's unit; ns)
SENSOR_TREE = {
    "event_idx": np.int64, "run_number": np.int32, "event_number": np.int32,
    "sensor_id": np.int32, "face": np.int32,
    "truth_npho": np.float32, "truth_time": np.float32, "pred_npho": np.float32,
    "pred_time": np.float32, "error_npho": np.float32, "error_time": np.float32,
    "time_scored": np.bool_,
    "neighbour_npho": np.float32, "neighbour_time": np.float32,
    "solid_angle_npho": np.float32, "solid_angle_time": np.float32,
}  # fmt: skip
METHODS = ("model", "neighbour_average", "solid_angle_weighted")
# the conventional estimates: (xecjax.inpaint function, branch prefix in TREE)
BASELINES = {"neighbour_average": "neighbour", "solid_angle_weighted": "solid_angle"}
NS = 1e9  # seconds -> ns


def is_reconstruction(config: dict) -> bool:
    """Whether a run's config (meta["config"], a dict) is an MAE or inpainter run."""
    return config.get("objective", "regression") in mae_objective.RECONSTRUCTION


# ----------------------------------------------------------------------------------------------
# The completed array (evaluation, ONNX).
# ----------------------------------------------------------------------------------------------
def to_fill(x, mask, sentinel_npho: float):
    """[B, 4760] bool: the sensors asked for (mask, bool or float > 0.5) or dead (npho feature
    equal to the sentinel)."""
    asked = mask if mask.dtype == jnp.bool_ else mask > 0.5
    return asked | (x[..., 0] == jnp.asarray(sentinel_npho, x.dtype))


def complete(apply_fn, params, x, mask, normaliser: Normaliser):
    """(completed [B, 4760, 2], reconstruction [B, 4760, 2]) of normalised features x and the
    sensors to fill `mask` [B, 4760] (module docstring). Jit-able."""
    sn, st = float(normaliser.sentinel_npho), float(normaliser.sentinel_time)
    fill = to_fill(x, mask, sn)
    pred = apply_fn(params, mae_objective.apply_mask(x, fill, sn, st), False, None)
    pred = pred.astype(jnp.float32)
    # as the Normaliser does: no time feature where the (filled) npho is below its threshold,
    # so the completed array is what normalising the filled raw values gives (and the angle
    # model never sees a time the inpainter was not trained on)
    dim = pred[..., 0] < npho_threshold_feature(normaliser)
    filled = jnp.stack([pred[..., 0], jnp.where(dim, st, pred[..., 1])], -1)
    return jnp.where(fill[..., None], filled, x), pred


def compare_methods(cat: dict, methods, threshold: float) -> dict[str, dict]:
    """{method: inpaint.score_sensors result} with every method's errors taken on the same
    sensors: those that every method filled (a baseline leaves a sensor unfilled, NaN, where
    no neighbour is usable; the model fills all). Per face and channel, n_<ch> counts the
    scored sensors, n_<ch>_unfilled this method's unfilled ones, n_<ch>_compared the sensors
    the errors are computed on."""
    filled = {ch: np.logical_and.reduce([inpaint.valid(cat[f"{m}_{ch}"]) for m in methods])
              for ch in ("n", "t")}  # fmt: skip
    out = {}
    for m in methods:
        args = (cat["sensor"], cat[f"{m}_n"], cat[f"{m}_t"], cat["truth_n"], cat["truth_t"])
        full = inpaint.score_sensors(*args, threshold)
        common = {ch: np.where(filled[ch], cat[f"{m}_{ch}"], np.nan) for ch in ("n", "t")}
        res = inpaint.score_sensors(cat["sensor"], common["n"], common["t"], cat["truth_n"],
                                    cat["truth_t"], threshold)  # fmt: skip
        for face, row in res.items():
            for ch in ("npho", "time"):
                row[f"n_{ch}_compared"] = row[f"n_{ch}"] - row[f"n_{ch}_unfilled"]
                row[f"n_{ch}_unfilled"] = full[face][f"n_{ch}_unfilled"]
        out[m] = res
    return out


def npho_threshold_feature(normaliser: Normaliser) -> float:
    """The npho feature of Normaliser.npho_threshold photons: below it the Normaliser gives
    the time feature sentinel_time (the npho feature rises with npho in every scheme)."""
    n = np.full((1, geometry.N_SENSORS), normaliser.npho_threshold, np.float32)
    return float(np.asarray(normaliser(n, np.zeros_like(n)))[0, 0, 0])


def completion_function(apply_fn, params, normaliser: Normaliser) -> Callable:
    """fn(x [B, 4760, 2] normalised, mask [B, 4760] float32, 1 = fill) -> the completed
    [B, 4760, 2]: the exported graph of an inpainter (xecjax.export)."""
    return lambda x, mask: complete(apply_fn, params, x, mask, normaliser)[0]


# ----------------------------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------------------------
def make_eval_fn(apply_fn, settings, normaliser: Normaliser, ratio: float):
    """Jitted fn(params, x, run, event, rows [B] bool) -> (reconstruction [B, 4760, 2], mask
    [B, 4760] bool, the sums of xecjax.mae.make_eval_step): the fixed evaluation masks of the
    rows that count (rows), from each event's (run, event)."""
    sn, st = float(normaliser.sentinel_npho), float(normaliser.sentinel_time)

    def fn(params, x, run, event, rows):
        valid = mae_objective.valid_sensors(x, sn) & rows[:, None]
        mask = mae_objective.random_mask(mae_objective.event_keys(run, event), valid, ratio)
        pred = apply_fn(params, mae_objective.apply_mask(x, mask, sn, st), False, None)
        pred = pred.astype(jnp.float32)
        sums = mae_objective.masked_sums(pred, x, mask, settings, st)
        sums["masked"] = mask.sum(dtype=jnp.float32)
        sums["valid"] = valid.sum(dtype=jnp.float32)
        return pred, mask, sums

    return jax.jit(fn)


def _valid(a: np.ndarray) -> np.ndarray:
    return np.isfinite(a) & (np.abs(a) < inpaint.INVALID)


def sensor_columns(first_event: int, ev, sensor, run, event, truth, pred, baselines,
                   threshold: float) -> dict[str, np.ndarray]:  # fmt: skip
    """The TREE columns of masked sensors (ev [P] index within the chunk, sensor [P]); truth,
    pred and each baseline {name: (npho [P], time [P] seconds)}; threshold: the Normaliser's
    npho_threshold (time_scored)."""
    tn, tt = (np.asarray(a, np.float64) for a in truth)
    pn, pt = (np.asarray(a, np.float64) for a in pred)
    tt = np.where(_valid(tt), tt, np.nan)  # a marker is no time
    cols = {
        "event_idx": first_event + ev, "run_number": run[ev], "event_number": event[ev],
        "sensor_id": sensor, "face": geometry.FACE_OF[sensor],
        "truth_npho": tn, "truth_time": tt * NS, "pred_npho": pn, "pred_time": pt * NS,
        "error_npho": pn - tn, "error_time": (pt - tt) * NS,
        "time_scored": _valid(tn) & (tn >= threshold) & _valid(tt),
    }  # fmt: skip
    for name, prefix in BASELINES.items():
        bn, bt = baselines.get(name, (np.full(len(ev), np.nan), np.full(len(ev), np.nan)))
        cols[f"{prefix}_npho"], cols[f"{prefix}_time"] = bn, np.asarray(bt, np.float64) * NS
    return {k: np.asarray(cols[k], dt) for k, dt in SENSOR_TREE.items()}


def evaluate_run(
    workdir,
    data=None,
    which: str = "best",
    ema: bool = True,
    *,
    max_events: int | None = None,
    out_dir=None,
    batch_size: int | None = None,
    with_baseline: bool = True,
    n_examples: int = 4,
    log_mlflow: bool = True,
    split: str = "test",
    mask_ratio: float | None = None,
) -> dict[str, Any]:
    """Evaluate an inpainter (or MAE) run; writes the files of the module docstring.

    Arguments as xecjax.evaluate.evaluate_run; n_examples: events drawn in
    inpainting_examples.pdf; mask_ratio: the share of valid sensors masked per event (default
    the run's config.inpainter / config.mae mask_ratio). Returns the summary dict.
    """
    from xecjax import plots
    from xecjax.checkpoint import load_for_inference, read_meta
    from xecjax.data import Loader
    from xecjax.evaluate import _write_text, evaluation_sources, log_to_mlflow
    from xecjax.rootio import TreeWriter

    workdir = Path(workdir)
    if max_events is not None and max_events < 1:
        raise ValueError(f"max_events must be >= 1 (or None for all), got {max_events}")
    t0 = time.time()
    step, meta = read_meta(workdir, which)
    cfg = meta["config"]
    if not is_reconstruction(cfg):
        raise ValueError(f"{workdir} is a {cfg.get('objective', 'regression')!r} run, not an "
                         "inpainter or MAE run: use xecjax.evaluate.evaluate_run")  # fmt: skip
    settings = mae_objective.settings(cfg)
    ratio = float(settings["mask_ratio"] if mask_ratio is None else mask_ratio)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {ratio}")
    sources = evaluation_sources(meta, data, split, workdir)  # before anything is written
    model_cfg, normaliser, params, apply_fn = load_for_inference(workdir, which, ema)
    npho_branch, time_branch = normaliser.branches
    loader = Loader(sources, normaliser, int(batch_size or cfg["data"]["batch_size"]),
                    shuffle=False, drop_remainder=False, truth=False,
                    extra_branches=normaliser.branches)  # fmt: skip
    out = Path(out_dir) if out_dir else workdir / f"evaluation_{which}{'' if ema else '_raw'}"
    out.mkdir(parents=True, exist_ok=True)
    run = workdir.resolve().name
    files = {
        "root": out / f"inpainting_results_{run}.root",
        "errors": out / "inpainting_errors.pdf",
        "examples": out / "inpainting_examples.pdf",
        "json": out / "summary.json",
        "md": out / "summary.md",
    }
    threshold = float(normaliser.npho_threshold)
    eval_fn = make_eval_fn(apply_fn, _as_config(settings), normaliser, ratio)
    keep: dict[str, list] = {k: [] for k in ("sensor", "truth_n", "truth_t")}
    for m in METHODS:
        keep[f"{m}_n"], keep[f"{m}_t"] = [], []
    sums: dict[str, np.ndarray] = {}
    examples: list[dict] = []
    timing = {"model": [], "baseline": []}
    n_done = 0
    with TreeWriter(files["root"], TREE) as tree:
        for batch in loader.epoch(0):
            ok = batch["valid"] & (np.cumsum(batch["valid"]) <= (max_events or np.inf) - n_done)
            if not ok.any():
                break
            t = time.time()
            pred, mask, s = eval_fn(params, batch["x"], batch["run"], batch["event"], ok)
            pred, mask = np.asarray(pred), np.asarray(mask)
            timing["model"].append((int(ok.sum()), time.time() - t))
            for k, v in s.items():
                sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
            rows = np.flatnonzero(ok)
            raw_n = np.asarray(batch[npho_branch], np.float32)[rows]
            raw_t = np.asarray(batch[time_branch], np.float32)[rows]
            m = mask[rows]
            ev, sensor = np.nonzero(m)
            pn, pt = normaliser.inverse(pred[rows][ev, sensor])
            estimates = {}
            if with_baseline:
                t = time.time()
                for name in BASELINES:
                    fn = inpaint.METHODS[name]
                    bn, bt = fn(raw_n, raw_t, m, time_min_npho=threshold)
                    estimates[name] = (bn[ev, sensor], bt[ev, sensor])
                timing["baseline"].append((len(rows), time.time() - t))
            truth = (raw_n[ev, sensor], raw_t[ev, sensor])
            tree.extend(sensor_columns(n_done, ev, sensor, batch["run"][rows],
                                       batch["event"][rows], truth, (pn, pt), estimates,
                                       threshold))  # fmt: skip
            keep["sensor"].append(sensor.astype(np.int16))
            keep["truth_n"].append(truth[0])
            keep["truth_t"].append(truth[1])
            for name, (a, b) in {"model": (pn, pt), **estimates}.items():
                keep[f"{name}_n"].append(np.asarray(a, np.float32))
                keep[f"{name}_t"].append(np.asarray(b, np.float32))
            for i in range(min(len(rows), n_examples - len(examples))):
                r = rows[i]
                dead = batch["x"][r, :, 0] == normaliser.sentinel_npho
                filled = np.stack(normaliser.inverse(pred[r]), -1)  # physical units
                raw = np.stack([raw_n[i], raw_t[i]], -1)
                examples.append({
                    "run": int(batch["run"][r]), "event": int(batch["event"][r]),
                    "truth": raw, "mask": m[i], "dead": dead,
                    "completed": np.where((m[i] | dead)[:, None], filled, raw),
                })  # fmt: skip
            n_done += len(rows)
        if n_done == 0:  # inside the writer: its temporary file is removed, not renamed
            raise ValueError(f"no events to evaluate in {[s.path for s in sources]}")
    cat = {k: np.concatenate(v) for k, v in keep.items() if v}
    scores = compare_methods(cat, [m for m in METHODS if f"{m}_n" in cat], threshold)
    losses = mae_objective.summarise(sums, settings["channel_weights"])
    plots.plot_inpainting_errors(cat, scores, files["errors"], threshold)
    plots.plot_inpainting_examples(examples, files["examples"], threshold)
    summary = {
        "run": run,
        "workdir": str(workdir.resolve()),
        "objective": cfg.get("objective"),
        "model": model_cfg.get("name"),
        "variant": cfg.get("variant", ""),
        "checkpoint": {"which": which, "ema": ema, "step": int(step)},
        "data": {
            "sources": [f"{s.path}[{s.start}:{s.stop}]" for s in sources],
            "split": split if data is None else "files",
            "recorded_split": data is None,
            "n_events": n_done,
        },
        "mask_ratio": ratio,
        "n_masked_sensors": int(len(cat["sensor"])),
        "units": {
            "npho": "photons" if npho_branch == "npho" else f"{npho_branch} units",
            "time": "ns",
        },  # fmt: skip
        "time_min_npho": threshold,
        "scores": scores,
        "feature_losses": losses,
        "events_per_s": {k: _rate(v) for k, v in timing.items()},
        "wall_time_s": round(time.time() - t0, 1),
        "files": {k: v.name for k, v in files.items()},
    }
    _write_text(files["json"], json.dumps(summary, indent=1, default=float) + "\n")
    _write_text(files["md"], summary_markdown(summary))
    if log_mlflow:
        flat = {f"{m}_{face}_{k}": v for m, per in scores.items() for face, r in per.items()
                for k, v in r.items() if face == "all" or "mae" in k}  # fmt: skip
        flat.update(losses)
        log_to_mlflow(workdir, meta, summary, list(files.values()), metrics=flat)
    return summary


def _as_config(d):
    import ml_collections

    return d if isinstance(d, ml_collections.ConfigDict) else ml_collections.ConfigDict(d)


def _rate(batches: list[tuple[int, float]]) -> float | None:
    """Events/s over timed (events, seconds) batches after the first (compilation), if any."""
    steady = batches[1:] or batches
    return sum(n for n, _ in steady) / max(sum(t for _, t in steady), 1e-9) if steady else None


def summary_markdown(summary: dict[str, Any]) -> str:
    """The report of an inpainter evaluation: per face and method, the npho and time errors."""
    ck, d = summary["checkpoint"], summary["data"]
    lines = [
        f"# Inpainting evaluation of {summary['run']} ({d['split']})",
        "",
        f"- model: {summary['model']} ({summary['variant']}, objective {summary['objective']}),"
        f" checkpoint `{ck['which']}` step {ck['step']}, {'EMA' if ck['ema'] else 'raw'} "
        "parameters",
        f"- data: {d['n_events']} events, {summary['n_masked_sensors']} masked sensors (mask "
        f"ratio {summary['mask_ratio']:g} of the valid sensors, fixed per (run, event)): "
        + ", ".join(d["sources"]),
        f"- feature-space loss (as val_total_loss): {summary['feature_losses']['total_loss']:.4g}",
        "",
        f"Errors = estimate - truth on the masked sensors: npho in {summary['units']['npho']}, "
        f"time in ns (sensors with truth npho >= {summary['time_min_npho']:g}). MAE = mean "
        "|error|, abs68 = 68 % quantile of |error|. Every method on the same sensors: those "
        "that all methods filled (n); `unfilled` counts each method's sensors without an "
        "estimate (npho / time).",
        "",
        "| face | method | n | npho MAE | npho abs68 | npho bias | time MAE | time abs68 | "
        "time bias | unfilled |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    scores = summary["scores"]
    for face in (*geometry.FACE_NAMES, "all"):
        for method, per in scores.items():
            r = per[face]
            lines.append(
                f"| {face} | {method} | {r['n_npho_compared']} | {r['npho_mae']:.4g} | "
                f"{r['npho_abs68']:.4g} | {r['npho_bias']:.4g} | {r['time_mae_ns']:.4g} | "
                f"{r['time_abs68_ns']:.4g} | {r['time_bias_ns']:.4g} | "
                f"{r['n_npho_unfilled']} / {r['n_time_unfilled']} |"
            )
    rates = [f"{k} {v:.0f}" for k, v in summary["events_per_s"].items() if v is not None]
    lines += ["", "Throughput (events/s, after the first batch): " + ", ".join(rates)]
    return "\n".join(lines) + "\n"
