"""Evaluation plots (matplotlib, Agg): resolution profiles, scatter, saliency, event displays;
and the Markdown report of an evaluation summary.

Every function takes NumPy arrays and a path and writes one PDF atomically (a temporary file
beside the target, renamed when complete). Face images follow the physical layout of
xecjax.geometry: inner 93 (phi) x 44 (z), outer fine grid 45 (z) x 72 (phi) with the centre
patch at its own resolution, US/DS 24 (phi) x 6 (r), top/bottom hexagonal faces drawn at the
sensor positions (r, z). Angles in degrees.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from xecjax.geometry import (  # noqa: E402
    BOTTOM_IDS,
    DS_MAP,
    FACE_NAMES,
    FACE_OF,
    INNER_DZ,
    INNER_MAP,
    INNER_NPHI,
    INNER_NZ,
    OUTER_FINE_MAP,
    PHI_COVERAGE_DEG,
    PHI_EDGE_DEG,
    POSITIONS,
    R_INNER,
    TOP_IDS,
    US_MAP,
)

FACE_PANELS = ("inner", "outer", "us", "ds", "top", "bottom")
_IMAGE_MAPS = {"inner": INNER_MAP, "outer": OUTER_FINE_MAP, "us": US_MAP, "ds": DS_MAP}
_HEX_IDS = {"top": TOP_IDS, "bottom": BOTTOM_IDS}
_HEX_RZ = {k: (np.hypot(*POSITIONS[v, :2].T), POSITIONS[v, 2]) for k, v in _HEX_IDS.items()}
_AXIS_LABELS = {
    "inner": ("z column", "phi row"),
    "outer": ("phi column", "z row"),
    "us": ("r column", "phi row"),
    "ds": ("r column", "phi row"),
    "top": ("z (cm)", "r (cm)"),
    "bottom": ("z (cm)", "r (cm)"),
}


@contextlib.contextmanager
def atomic_pdf(path: str | os.PathLike) -> Iterator[PdfPages]:
    """Multi-page PDF written to a temporary file and renamed into place when complete."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    try:
        with PdfPages(tmp) as pdf:
            yield pdf
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save(fig, pdf: PdfPages, tight: bool = True) -> None:
    # tight_layout draws the figure once more: too slow for the 24-axes face displays.
    if tight:
        fig.tight_layout()
    else:
        fig.subplots_adjust(left=0.03, right=0.97, bottom=0.07, top=0.9, wspace=0.45, hspace=0.35)
    pdf.savefig(fig)
    plt.close(fig)


def draw_face(ax, values: np.ndarray, face: str, cmap: str = "viridis", title: str = ""):
    """Draw one face of per-sensor values [4760] on ax; returns the mappable for a colorbar."""
    if face in _IMAGE_MAPS:
        img = values[_IMAGE_MAPS[face]]
        m = ax.imshow(img, origin="upper", aspect="auto", cmap=cmap, interpolation="nearest")
    else:
        r, z = _HEX_RZ[face]
        m = ax.scatter(z, r, c=values[_HEX_IDS[face]], s=60, marker="h", cmap=cmap)
        ax.set_aspect("equal")
    ax.set_title(title or face, fontsize=8)
    ax.set_xlabel(_AXIS_LABELS[face][0], fontsize=7)
    ax.set_ylabel(_AXIS_LABELS[face][1], fontsize=7)
    ax.tick_params(labelsize=6)
    return m


def draw_faces(fig, axes: Sequence, values: np.ndarray, label: str, cmap: str = "viridis") -> None:
    """One row of six face panels of values [4760] with colorbars."""
    for ax, face in zip(axes, FACE_PANELS, strict=True):
        m = draw_face(ax, values, face, cmap, f"{face}: {label}")
        fig.colorbar(m, ax=ax, fraction=0.05)


def inner_face_point(theta_deg: float, phi_deg: float) -> tuple[float, float]:
    """(z column, phi row) on the inner image where a direction from the origin crosses it."""
    z = R_INNER / np.tan(np.deg2rad(theta_deg))
    row = (PHI_EDGE_DEG - phi_deg) / (PHI_COVERAGE_DEG / INNER_NPHI) - 0.5
    return z / INNER_DZ + (INNER_NZ - 1) / 2, row


# ----------------------------------------------------------------------------------------------
# Resolution profiles and scatter plots.
# ----------------------------------------------------------------------------------------------
PROFILE_ROWS = (
    ("theta_width68", "68% width of d_theta (deg)"),
    ("phi_width68", "68% width of d_phi (deg)"),
    ("psi68", "68% opening angle (deg)"),
    ("theta_bias", "median d_theta (deg)"),
    ("phi_bias", "median d_phi (deg)"),
)


def plot_resolution_profiles(profiles: Mapping[str, Mapping[str, Mapping]], path) -> Path:
    """profiles[method]["theta" | "phi"] = resolution_profile(...) dicts -> PDF, one curve each.

    The first method is drawn as the main one (the model), the others as comparison curves.
    """
    with atomic_pdf(path) as pdf:
        fig, axes = plt.subplots(len(PROFILE_ROWS), 2, figsize=(11, 3.2 * len(PROFILE_ROWS)))
        for col, var in enumerate(("theta", "phi")):
            for row, (key, label) in enumerate(PROFILE_ROWS):
                ax = axes[row, col]
                for i, (method, prof) in enumerate(profiles.items()):
                    p = prof[var]
                    style = "o-" if i == 0 else "s--"
                    ax.plot(
                        p["centers"], p[key], style, ms=3, lw=1.5 if i == 0 else 1, label=method
                    )
                ax.set(xlabel=f"true {var} (deg)", ylabel=label)
                ax.grid(alpha=0.3)
                if row == 0 and col == 0:
                    ax.legend(fontsize=7)
        _save(fig, pdf)
    return Path(path)


def plot_task_profiles(profiles: Mapping[str, Mapping[str, Mapping]], path) -> Path:
    """profiles[task]["model" | "conventional"] = xecjax.tasks.profile dicts -> PDF: per task
    (a row) the 68 % resolution and the bias in bins of the true value."""
    from xecjax.tasks import UNIT

    names = list(profiles)
    with atomic_pdf(path) as pdf:
        fig, axes = plt.subplots(len(names), 2, figsize=(11, 3.2 * len(names)), squeeze=False)
        for row, name in enumerate(names):
            unit = UNIT[name]
            what = ("distance 68% (cm)", "w bias (cm)") if name == "uvw" else (
                f"|residual| 68% ({unit})", f"bias ({unit})")  # fmt: skip
            for col, (key, label) in enumerate(zip(("res68", "bias"), what, strict=True)):
                ax = axes[row, col]
                for i, (method, prof) in enumerate(profiles[name].items()):
                    ax.plot(prof["centers"], prof[key], "o-" if i == 0 else "s--", ms=3,
                            label=method)  # fmt: skip
                    ax.set(xlabel=prof["variable"], ylabel=label)
                ax.grid(alpha=0.3)
                if col == 0:
                    ax.legend(fontsize=7)
        _save(fig, pdf)
    return Path(path)


def plot_scatter(
    true: np.ndarray, preds: Mapping[str, np.ndarray], path, max_points: int = 50_000
) -> Path:
    """Predicted vs true (theta, phi) of the first method, residual histograms of all. [N, 2]."""
    from xecjax.geometry import wrap_deg
    from xecjax.metrics import opening_angles

    names = list(preds)
    rng = np.random.default_rng(0)
    sel = rng.permutation(len(true))[:max_points] if len(true) > max_points else slice(None)
    with atomic_pdf(path) as pdf:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
        first = preds[names[0]]
        for k, var in enumerate(("theta", "phi")):
            ax = axes[k]
            ax.scatter(true[sel, k], first[sel, k], s=2, alpha=0.4, rasterized=True)
            lo, hi = np.nanmin(true[:, k]), np.nanmax(true[:, k])
            ax.plot([lo, hi], [lo, hi], "r-", lw=0.8)
            ax.set(xlabel=f"true {var} (deg)", ylabel=f"predicted {var} (deg)", title=names[0])
        _save(fig, pdf)

        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
        residuals = {
            m: (p[:, 0] - true[:, 0], wrap_deg(p[:, 1] - true[:, 1]), opening_angles(p, true))
            for m, p in preds.items()
        }
        for k, label in enumerate(("d_theta (deg)", "d_phi (deg)", "opening angle (deg)")):
            allv = np.concatenate([r[k] for r in residuals.values()])
            lim = np.nanpercentile(np.abs(allv), 99) if allv.size else 1.0
            bins = np.linspace(0 if k == 2 else -lim, lim, 81)
            for m, r in residuals.items():
                axes[k].hist(r[k], bins=bins, histtype="step", label=m, density=True)
            axes[k].set(xlabel=label, ylabel="density")
        axes[0].legend(fontsize=7)
        _save(fig, pdf)
    return Path(path)


# ----------------------------------------------------------------------------------------------
# Saliency and event displays.
# ----------------------------------------------------------------------------------------------
def plot_calibration(unc: Mapping[str, Any], path) -> Path:
    """Calibration of a predicted uncertainty (metrics.uncertainty_metrics output) -> PDF.

    Left: observed vs nominal coverage of the predicted regions, with the diagonal of a
    calibrated uncertainty. Right: the observed 68 % opening angle vs the predicted one, in
    quantile bins of the predicted psi68, with the diagonal.
    """
    cal, res = unc["calibration"], unc["resolution_vs_uncertainty"]
    with atomic_pdf(path) as pdf:
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.4))
        ax0.plot([0, 1], [0, 1], "k:", lw=1, label="calibrated")
        ax0.plot(cal["nominal"], cal["observed"], "o-", ms=3, label=f"model ({unc['kind']})")
        for q in (0.68, 0.90):
            ax0.axvline(q, color="grey", lw=0.5, alpha=0.5)
        ax0.set(xlabel="nominal coverage", ylabel="observed coverage", xlim=(0, 1), ylim=(0, 1))
        ax0.set_title(
            f"coverage 68%: {unc['coverage_68']:.3f}, 90%: {unc['coverage_90']:.3f} "
            f"({unc['n_events']} events)",
            fontsize=9,
        )
        pred_w, obs = np.asarray(res["predicted_psi68"]), np.asarray(res["psi68"])
        ok = np.isfinite(pred_w) & np.isfinite(obs) & (pred_w > 0) & (obs > 0)
        if ok.any():
            lo = min(pred_w[ok].min(), obs[ok].min())
            hi = max(pred_w[ok].max(), obs[ok].max())
            ax1.plot([lo, hi], [lo, hi], "k:", lw=1, label="predicted = observed")
            ax1.plot(pred_w[ok], obs[ok], "o-", ms=4, label="model")
            if hi > 10 * lo:
                ax1.set(xscale="log", yscale="log")
        ax1.set(
            xlabel="predicted psi 68% (deg, bin median)",
            ylabel="observed psi 68% (deg)",
            title="resolution in bins of the predicted uncertainty",
        )
        for ax in (ax0, ax1):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        _save(fig, pdf)
    return Path(path)


def face_means(values: np.ndarray) -> np.ndarray:
    """Mean over the sensors of each face: [..., 4760] -> [..., 6] (FACE_NAMES order)."""
    return np.stack([values[..., FACE_OF == f].mean(-1) for f in range(len(FACE_NAMES))], -1)


def plot_saliency(saliency: np.ndarray, path, n_events: int) -> Path:
    """saliency [2 (theta, phi), 4760, 2 (npho, time)] mean |d output / d input| -> PDF.

    Page 1: mean over each face's sensors, per output and input channel. Then one page per
    output (theta, phi) with the npho and time saliency drawn on the face images.
    """
    per_face = face_means(np.moveaxis(saliency, -1, 1))  # [2, 2, 6]
    with atomic_pdf(path) as pdf:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        x = np.arange(len(FACE_NAMES))
        for o, out in enumerate(("theta", "phi")):
            for c, chan in enumerate(("npho", "time")):
                axes[o].bar(x + 0.4 * c - 0.2, per_face[o, c], width=0.4, label=chan)
            axes[o].set_xticks(x, FACE_NAMES)
            axes[o].set(
                ylabel=f"mean |d {out} / d input| (deg per unit)",
                title=f"{out}: saliency per face ({n_events} events)",
            )
            axes[o].legend()
        _save(fig, pdf)
        for o, out in enumerate(("theta", "phi")):
            fig, axes = plt.subplots(2, len(FACE_PANELS), figsize=(22, 7))
            for c, chan in enumerate(("npho", "time")):
                draw_faces(fig, axes[c], saliency[o, :, c], f"|d{out}/d {chan}|", "magma")
            _save(fig, pdf, tight=False)
    return Path(path)


def plot_worst_events(
    events: Sequence[Mapping], path, sentinels: tuple[float, float] | None = (-1.0, -1.0)
) -> Path:
    """One page per event: npho and time features on all faces, true and predicted direction.

    events: dicts with "x" [4760, 2] (network input), "true", "pred" [2] deg, "psi" deg,
    "run", "event". Feature values equal to the Normaliser's sentinels (dead channel, no time)
    are left blank so that they do not set the colour scale.
    """
    with atomic_pdf(path) as pdf:
        if not events:
            fig = plt.figure(figsize=(6, 2))
            fig.text(0.5, 0.5, "no events", ha="center")
            _save(fig, pdf)
        for rank, ev in enumerate(events):
            fig, axes = plt.subplots(2, len(FACE_PANELS), figsize=(22, 7))
            for c, chan in enumerate(("npho feature", "time feature")):
                values = np.asarray(ev["x"], np.float64)[:, c]
                if sentinels is not None:
                    values = np.where(values == sentinels[c], np.nan, values)
                draw_faces(fig, axes[c], values, chan)
            for c in range(2):
                ax = axes[c, 0]
                for key, marker, color in (("true", "x", "red"), ("pred", "+", "cyan")):
                    col, row = inner_face_point(*ev[key][:2])
                    ax.plot(col, row, marker, color=color, ms=12, mew=2, label=key)
                ax.legend(fontsize=7, loc="upper right")
            fig.suptitle(
                f"#{rank + 1}: run {ev['run']} event {ev['event']}  opening angle "
                f"{ev['psi']:.2f} deg  true (theta, phi) = ({ev['true'][0]:.2f}, "
                f"{ev['true'][1]:.2f})  predicted = ({ev['pred'][0]:.2f}, {ev['pred'][1]:.2f})"
            )
            _save(fig, pdf, tight=False)
    return Path(path)


# ----------------------------------------------------------------------------------------------
# Inpainting (xecjax.inpainter).
# ----------------------------------------------------------------------------------------------
def plot_inpainting_errors(
    values: Mapping[str, np.ndarray], scores: Mapping[str, Mapping], path, time_min_npho: float
) -> Path:
    """Errors on the masked sensors per method -> PDF. values: flat arrays "sensor", "truth_n",
    "truth_t" and "<method>_n", "<method>_t" (photons, seconds); scores: {method: score dict of
    xecjax.inpaint.score_sensors}. Page 1: mean |error| of npho and time per face and method;
    page 2: the distributions of npho error (relative to the truth) and of time error (ns,
    truth npho >= time_min_npho)."""
    methods = list(scores)
    with atomic_pdf(path) as pdf:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        x = np.arange(len(FACE_NAMES))
        width = 0.8 / max(len(methods), 1)
        for k, (key, label) in enumerate((("npho_mae", "mean |npho error| (photons)"),
                                           ("time_mae_ns", "mean |time error| (ns)"))):  # fmt: skip
            for i, m in enumerate(methods):
                v = [scores[m][f][key] for f in FACE_NAMES]
                axes[k].bar(x + width * (i - (len(methods) - 1) / 2), v, width=width, label=m)
            axes[k].set_xticks(x, FACE_NAMES)
            axes[k].set(ylabel=label, title=f"{label.split(' (')[0]} per face")
            axes[k].legend(fontsize=7)
        _save(fig, pdf)

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        tn = np.asarray(values["truth_n"], np.float64)
        tt = np.asarray(values["truth_t"], np.float64)
        ok_n = np.isfinite(tn) & (np.abs(tn) < 9e9)
        ok_t = ok_n & (tn >= time_min_npho) & np.isfinite(tt) & (np.abs(tt) < 9e9)
        rel = {m: (values[f"{m}_n"] - tn)[ok_n] / np.maximum(tn[ok_n], 1.0) for m in methods}
        dt = {m: ((values[f"{m}_t"] - tt) * 1e9)[ok_t] for m in methods}
        for ax, errs, label in ((axes[0], rel, "(pred - truth) / max(truth, 1), npho"),
                                (axes[1], dt, "pred - truth, time (ns)")):  # fmt: skip
            allv = np.concatenate([e[np.isfinite(e)] for e in errs.values()] or [np.zeros(0)])
            lim = float(np.percentile(np.abs(allv), 98)) if allv.size else 1.0
            bins = np.linspace(-lim, lim, 81) if lim > 0 else 81
            for m, e in errs.items():
                ax.hist(e[np.isfinite(e)], bins=bins, histtype="step", label=m)
            ax.set(xlabel=label, ylabel="masked sensors")
            ax.legend(fontsize=7)
        _save(fig, pdf)
    return Path(path)


def plot_inpainting_examples(events: Sequence[Mapping], path, time_min_npho: float) -> Path:
    """One page per event: per face the true npho, the completed npho (the model's estimate on
    masked and dead sensors), the npho error and the time error (ns) of the masked sensors.

    events: dicts with "truth" and "completed" [4760, 2] (photons, seconds), "mask" and "dead"
    [4760] bool, "run", "event". npho drawn as log10(1 + max(npho, 0)); dead channels blank in
    the truth row."""
    with atomic_pdf(path) as pdf:
        if not events:
            fig = plt.figure(figsize=(6, 2))
            fig.text(0.5, 0.5, "no events", ha="center")
            _save(fig, pdf)
        for ev in events:
            truth = np.asarray(ev["truth"], np.float64)
            done = np.asarray(ev["completed"], np.float64)
            mask, dead = np.asarray(ev["mask"], bool), np.asarray(ev["dead"], bool)
            shown = np.where(dead, np.nan, np.log10(1.0 + np.maximum(truth[:, 0], 0.0)))
            filled = np.log10(1.0 + np.maximum(done[:, 0], 0.0))
            err_n = np.where(mask, done[:, 0] - truth[:, 0], np.nan)
            timed = mask & (truth[:, 0] >= time_min_npho) & (np.abs(truth[:, 1]) < 9e9)
            err_t = np.where(timed, (done[:, 1] - truth[:, 1]) * 1e9, np.nan)
            fig, axes = plt.subplots(4, len(FACE_PANELS), figsize=(22, 13))
            draw_faces(fig, axes[0], shown, "truth log10(1+npho)")
            draw_faces(fig, axes[1], filled, "completed log10(1+npho)")
            draw_faces(fig, axes[2], err_n, "masked: npho error", "coolwarm")
            draw_faces(fig, axes[3], err_t, "masked: time error (ns)", "coolwarm")
            fig.suptitle(
                f"run {ev['run']} event {ev['event']}: {int(mask.sum())} masked, "
                f"{int(dead.sum())} dead sensors (the completed array holds the model's "
                "estimate on both)"
            )
            _save(fig, pdf, tight=False)
    return Path(path)


def summary_markdown(summary: dict[str, Any]) -> str:
    """A short human-readable report of an evaluation summary."""
    ck, d = summary["checkpoint"], summary["data"]
    # "split": test | val | files (older summaries: recorded_split, i.e. validation or files)
    split = d.get("split") or ("val" if d.get("recorded_split") else "files")
    what = {
        "test": "the run’s test split (held out from training and from choosing `best`)",
        "val": "the run’s validation split (it chose `best`: not an independent measurement)",
        "files": "given files",
    }[split]
    lines = [
        f"# Evaluation of {summary['run']} on the {split} split"
        if split != "files"
        else f"# Evaluation of {summary['run']} on given files",
        "",
        f"- model: {summary['model']} ({summary['variant']}), checkpoint `{ck['which']}` step "
        f"{ck['step']}, {'EMA' if ck['ema'] else 'raw'} parameters",
        f"- data: {d['n_events']} events, {what}: " + ", ".join(d["sources"]),
        f"- 68% opening angle: **{summary['val_resolution_deg']:.3f} deg**",
        "",
        "| method | psi 50% | psi 68% | psi 90% | theta bias | theta rms | phi bias | phi rms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, r in summary["metrics"].items():
        keys = ("psi_50", "psi_68", "psi_90", "theta_bias", "theta_rms", "phi_bias", "phi_rms")
        lines.append(f"| {m} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    lines += [
        "",
        "Angles in degrees. Baselines: point-source fit and light centroid from the "
        "target centre; `baseline_fit_vertex` from the event vertex (xyzVTX); "
        "`model_from_vertex`: the model's predicted conversion point seen from the event vertex "
        "(models that predict one); `truth_point_floor`: the true conversion point seen from the "
        "target centre.",
        "",
    ]
    unc = summary.get("uncertainty")
    if unc:
        lines.append(
            f"Predicted uncertainty ({unc['kind']}): coverage of the 68% / 90% regions "
            f"**{unc['coverage_68']:.3f}** / **{unc['coverage_90']:.3f}**, median predicted "
            f"psi 68% {unc['predicted_psi68_median']:.3f} deg"
            + (
                ", pulls theta {theta_mean:.3f} +- {theta_std:.3f}, "
                "phi {phi_mean:.3f} +- {phi_std:.3f} (mean +- std)".format(**unc["pulls"])
                if "pulls" in unc
                else f", median kappa {unc['kappa_median']:.4g} / rad^2"
            )
            + " (calibration.pdf)."
        )
        lines.append("")
    from xecjax.tasks import UNIT

    for name, m in summary.get("tasks", {}).items():  # the heads beside the angle
        task = name.removeprefix("baseline_")
        unit = UNIT[task]
        who = "conventional" if name.startswith("baseline_") else "model"
        lines.append(
            f"Task {task} ({unit}), {who}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items())
        )
        lines.append("")
    rates = [f"{k} {v:.0f}" for k, v in summary["events_per_s"].items() if v is not None]
    lines.append("Throughput (events/s, after the first batch): " + ", ".join(rates))
    return "\n".join(lines) + "\n"
