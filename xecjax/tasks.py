"""Tasks beside the angle: energy, timing and the conversion point (u, v, w), in one place.

The angle is always task one (ONNX `output`, every tool). `config.tasks.<energy|timing|uvw>`
adds a head per enabled task on the shared encoder (the fusion tokens of the XECRegressor, the
pooled nodes of the graph model):

  task     ROOT branch   width  unit  metrics (the reference's names)
  energy   energyTruth   1      GeV   energy_bias, energy_res_68pct
  timing   timeTruth     1      ns    timing_bias, timing_res_68pct
  uvw      uvwTruth      3      cm    uvw_{u,v,w}_bias, uvw_{u,v,w}_res_68pct, uvw_dist_68pct

bias is the mean residual (pred - true), res_68pct the 68th percentile of |residual|,
uvw_dist_68pct that of the distance between the predicted and true points.

Each head regresses a normalised target; its output in physical units is
offset + scale * head output. The (offset, scale) of each task is defined here once
(TARGET_NORM) and copied into the model config (`model.task_norm`) when a run starts, so it
travels inside checkpoints; losses are computed on (pred - true) / scale, so that tasks of
different units are O(1) alike. `loss_balance = "auto"` learns one log-variance s per task
(Kendall, Gal and Cipolla 2018): total = sum_t exp(-s_t) L_t + s_t, with the angle included;
"manual" is sum_t weight_t L_t.
"""

from __future__ import annotations

import ml_collections
import numpy as np

NAMES = ("energy", "timing", "uvw")  # in this order after the angle
BRANCH = {"energy": "energyTruth", "timing": "timeTruth", "uvw": "uvwTruth"}
WIDTH = {"energy": 1, "timing": 1, "uvw": 3}
UNIT = {"energy": "GeV", "timing": "ns", "uvw": "cm"}
# (offset, scale) per component: about the centre and the spread of the targets of signal
# gammas (40-56 MeV; the toy's first-interaction times, 2.3 +- 1.1 ns after emission; its
# conversion points: u 0 +- 19, v 0 +- 41, w 3.4 +- 3.4 cm).
TARGET_NORM = {
    "energy": ((0.05,), (0.005,)),
    "timing": ((2.5,), (1.0,)),
    "uvw": ((0.0, 0.0, 3.0), (20.0, 40.0, 4.0)),
}
LOSSES = (
    "smooth_l1", "l1", "mse", "relative_smooth_l1", "relative_l1", "gaussian_nll", "beta_nll"
)  # fmt: skip
# losses with a predicted uncertainty: the head also gives log sigma per component
SIGMA_LOSSES = ("gaussian_nll", "beta_nll")
BALANCES = ("manual", "auto")


def task_config() -> ml_collections.ConfigDict:
    """The `config.tasks` section: every task off (angle only, as the reference's default)."""
    c = ml_collections.ConfigDict()
    c.angle = ml_collections.ConfigDict({"weight": 1.0})  # its loss is config.optim.loss
    for name in NAMES:
        c[name] = ml_collections.ConfigDict(
            {
                "enabled": False,
                # smooth_l1 | l1 | mse on (pred - true) / scale; relative_smooth_l1 |
                # relative_l1 on (pred - true) / |true| (energy resolution is relative);
                # gaussian_nll | beta_nll: the head also predicts sigma (Gaussian negative
                # log-likelihood; beta-NLL, Seitzer et al. 2022, weights it by sigma^(2 beta))
                "loss": "smooth_l1",
                # smooth_l1: transition, in units of the residual; beta_nll: the exponent beta
                # (0.5 is the paper's choice)
                "beta": 1.0,
                "weight": 1.0,  # loss_balance "manual"
            }
        )
    c.loss_balance = "manual"  # manual | auto (learned uncertainty weighting)
    return c


def enabled(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The enabled tasks beside the angle, in NAMES order; checks the section."""
    t = config.get("tasks")
    if t is None:
        return ()
    if t.loss_balance not in BALANCES:
        raise ValueError(
            f"config.tasks.loss_balance must be one of {BALANCES}, got {t.loss_balance!r}"
        )
    out = []
    for name in NAMES:
        if t[name].enabled:
            if t[name].loss not in LOSSES:
                raise ValueError(
                    f"config.tasks.{name}.loss must be one of {LOSSES}, got {t[name].loss!r}"
                )
            out.append(name)
    return tuple(out)


def configure_model(config: ml_collections.ConfigDict) -> None:
    """Write the enabled tasks and their target normalisation into config.model (the part of
    the config that travels with checkpoints and ONNX files): model.tasks, model.task_norm."""
    names = enabled(config)
    sigma = tuple(n for n in names if config.tasks[n].loss in SIGMA_LOSSES)
    if "uvw" in sigma and config.model.get("output", "angles") == "point":
        raise ValueError(
            f"config.tasks.uvw.loss = {config.tasks.uvw.loss!r}: a point model's uvw is its "
            "conversion point, which has no predicted sigma; use smooth_l1, l1 or mse"
        )
    with config.unlocked():
        config.model.tasks = names
        config.model.task_sigma = sigma
        config.model.task_norm = ml_collections.ConfigDict(
            {
                n: {"offset": list(TARGET_NORM[n][0]), "scale": list(TARGET_NORM[n][1])}
                for n in names
            }
        )


def model_tasks(model_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The task heads of a model config (() for angle-only models, old checkpoints too)."""
    names = tuple(model_cfg.get("tasks", ()) or ())
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"model.tasks: unknown task(s) {unknown}; known: {NAMES}")
    return names


def model_sigma(model_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The task heads that also predict log sigma (model.task_sigma; () for older models)."""
    return tuple(model_cfg.get("task_sigma", ()) or ())


def target_norm(model_cfg: ml_collections.ConfigDict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) float32 [width] of a task head of this model."""
    norm = model_cfg.get("task_norm", {}) or {}
    if name not in norm:
        raise ValueError(f"model.task_norm has no entry for task {name!r}")
    return (
        np.asarray(norm[name]["offset"], np.float32),
        np.asarray(norm[name]["scale"], np.float32),
    )


def per_sample_task_loss(pred, true, scale, kind: str, beta: float = 1.0, log_sigma=None):
    """[B, w] prediction and target (physical units), scale [w] -> [B] (mean over components).

    smooth_l1 / l1 / mse of r = (pred - true) / scale; relative_*: of (pred - true) / |true|;
    gaussian_nll: 0.5 r^2 exp(-2 s) + s with s = log_sigma - log(scale) (log_sigma [B, w] in
    physical units); beta_nll: that times sigma^(2 beta), the factor without gradient."""
    import jax
    import jax.numpy as jnp

    if kind in SIGMA_LOSSES:
        if log_sigma is None:
            raise ValueError(f"task loss {kind!r} needs the head's log sigma")
        r = (pred - true) / scale
        s = log_sigma - jnp.log(scale)
        nll = 0.5 * r * r * jnp.exp(-2.0 * s) + s
        if kind == "beta_nll":
            nll = nll * jax.lax.stop_gradient(jnp.exp(2.0 * beta * s))
        return nll.mean(-1)
    if kind.startswith("relative_"):
        r = (pred - true) / jnp.maximum(jnp.abs(true), 1e-12)
        kind = kind.removeprefix("relative_")
    else:
        r = (pred - true) / scale
    a = jnp.abs(r)
    if kind == "smooth_l1":
        e = jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)
    elif kind == "l1":
        e = a
    elif kind == "mse":
        e = a * a
    else:
        raise ValueError(f"task loss must be one of {LOSSES}, got {kind!r}")
    return e.mean(-1)


def metrics(name: str, pred: np.ndarray, true: np.ndarray, log_sigma=None) -> dict[str, float]:
    """The reference's metrics of one task (module docstring), pred / true [N, width]; with a
    predicted log sigma [N, width] also <task>_pred_std_mean (mean predicted sigma) and
    <task>_calibration_ratio (that over the standard deviation of the residuals; 1 = calibrated).
    """
    pred = np.asarray(pred, np.float64).reshape(len(pred), -1)
    true = np.asarray(true, np.float64).reshape(len(true), -1)
    if len(pred) == 0:
        return {}
    d = pred - true
    out = {}
    if log_sigma is not None:
        sigma = np.exp(np.asarray(log_sigma, np.float64).reshape(len(pred), -1))
        out[f"{name}_pred_std_mean"] = float(sigma.mean())
        out[f"{name}_calibration_ratio"] = float(sigma.mean() / max(d.std(axis=0).mean(), 1e-30))
    if name in ("energy", "timing"):
        return {
            f"{name}_bias": float(d[:, 0].mean()),
            f"{name}_res_68pct": float(np.percentile(np.abs(d[:, 0]), 68)),
            **out,
        }
    for i, axis in enumerate("uvw"):
        out[f"uvw_{axis}_bias"] = float(d[:, i].mean())
        out[f"uvw_{axis}_res_68pct"] = float(np.percentile(np.abs(d[:, i]), 68))
    out["uvw_dist_68pct"] = float(np.percentile(np.linalg.norm(d, axis=1), 68))
    return out


def make_loss(config: ml_collections.ConfigDict):
    """(angle per-sample loss [B], task outputs of apply_fn(..., tasks=True), batch) -> [B]:
    the total loss of the enabled tasks (loss_balance manual or auto); None without tasks.

    The scales are the model's (config.model.task_norm, set by configure_model)."""
    names = enabled(config)
    if not names:
        return None
    t = config.tasks
    auto = t.loss_balance == "auto"
    specs = [
        (n, str(t[n].loss), float(t[n].beta), float(t[n].weight), target_norm(config.model, n)[1])
        for n in names
    ]
    w_angle = float(t.angle.weight)

    def fn(angle_loss, task_out, batch):
        import jax.numpy as jnp

        parts = [angle_loss]
        for n, kind, beta, _, scale in specs:
            true = batch[n].reshape(batch[n].shape[0], -1)  # energy, timing [B] -> [B, 1]
            log_sigma = task_out.get(f"{n}_log_sigma")
            parts.append(
                per_sample_task_loss(task_out[n], true, jnp.asarray(scale), kind, beta, log_sigma)
            )
        if auto:
            s = task_out["log_var"]
            return sum(jnp.exp(-s[i]) * loss + s[i] for i, loss in enumerate(parts))
        return w_angle * parts[0] + sum(
            w * loss for (_, _, _, w, _), loss in zip(specs, parts[1:], strict=True)
        )

    return fn


def columns(pred: dict, true: dict | None = None) -> dict[str, np.ndarray]:
    """val_tree / infer_real branches of the task outputs, float32 [N]: pred_energy,
    pred_timing, pred_u, pred_v, pred_w (and true_* from `true`) for the tasks present, and
    sigma_<part> (the predicted uncertainty, physical units) where `pred` holds a head's
    "<task>_log_sigma" (gaussian_nll / beta_nll)."""
    out = {}
    for kind, values in (("pred", pred), ("true", true or {}), ("sigma", pred)):
        for name in NAMES:
            key = f"{name}_log_sigma" if kind == "sigma" else name
            if key not in values:
                continue
            v = np.asarray(values[key], np.float32).reshape(len(values[key]), -1)
            if kind == "sigma":
                v = np.exp(v)
            parts = ("u", "v", "w") if name == "uvw" else (name,)
            for i, part in enumerate(parts):
                out[f"{kind}_{part}"] = v[:, i]
    return out


def profile(name: str, pred: np.ndarray, true: np.ndarray, bins: int = 10) -> dict:
    """Resolution of one task in bins of its true value (energy, timing; uvw: the true depth w):
    {"variable", "centers", "n", "res68" (68th percentile of |residual|, uvw: of the distance),
    "bias" (median residual, uvw: of w)} with arrays [bins] (NaN in empty bins)."""
    pred = np.asarray(pred, np.float64).reshape(len(pred), -1)
    true = np.asarray(true, np.float64).reshape(len(true), -1)
    d = pred - true
    if name == "uvw":
        var, size, signed, label = true[:, 2], np.linalg.norm(d, axis=1), d[:, 2], "true w (cm)"
    else:
        var, size, signed = true[:, 0], np.abs(d[:, 0]), d[:, 0]
        label = f"true {name} ({UNIT[name]})"
    out = {k: np.full(bins, np.nan) for k in ("n", "res68", "bias")}
    out["variable"] = label
    if len(var) == 0:
        out["centers"] = np.full(bins, np.nan)
        return out
    edges = np.quantile(var, np.linspace(0, 1, bins + 1))  # equal-population bins
    idx = np.clip(np.searchsorted(edges, var, side="right") - 1, 0, bins - 1)
    for b in range(bins):
        sel = idx == b
        out["n"][b] = sel.sum()
        if sel.any():
            out["res68"][b] = np.percentile(size[sel], 68)
            out["bias"][b] = np.median(signed[sel])
    out["centers"] = (edges[:-1] + edges[1:]) / 2
    return out
