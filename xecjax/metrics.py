"""Resolution metrics of a direction reconstruction (NumPy, on the host).

The reference metric names, shared by training (per-epoch validation) and evaluation:
  theta_bias, theta_rms, theta_skew   of d_theta = pred - true (degrees)
  phi_bias, phi_rms, phi_skew         of d_phi = wrap(pred - true) into [-180, 180) (degrees)
  val_resolution_deg                  68th percentile of the opening angle (degrees)
  val_smooth_l1, val_l1, val_mse      the reference's losses of (theta, phi) in degrees,
  val_cos_res                         and 1 - cos(psi), whatever the training loss is
                                      (`reference_losses`)
`rms` is the standard deviation around the bias (ROOT's TH1::GetRMS convention), `skew` the
standardised third moment. All statistics are weighted by optional per-event weights, so that a
padded last batch (weight 0) or a reweighted sample can be passed as is. The evaluation adds
psi_50 / psi_68 / psi_90 (opening-angle percentiles, `evaluation_metrics`) and resolution
profiles in bins of the true theta and phi (`resolution_profile`, `profiles_of`).

A predicted uncertainty (Gaussian sigmas of theta, phi: width 4; von Mises-Fisher kappa: 6 or 9)
counts only with its coverage measured: `uncertainty_metrics` gives the coverage of the predicted
68 % / 90 % regions, a calibration curve (observed vs nominal coverage), the pulls (Gaussian) and
the 68 % opening angle in bins of the predicted one; `uncertainty_columns` the per-event values
of the val_tree.
"""

from __future__ import annotations

import numpy as np

from xecjax.geometry import angles_to_vec, opening_angle_deg, wrap_deg

RESOLUTION_QUANTILE = 0.68
PERCENTILES = (50, 68, 90)  # opening-angle percentiles of the evaluation (psi_50 ...)
PROFILE_BINS = 20  # bins of the resolution profiles vs true theta / phi


def weighted_moments(x: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float, float]:
    """(mean, standard deviation, skewness) of x [N] with weights w [N] (default 1)."""
    x = np.asarray(x, np.float64)
    w = np.ones_like(x) if w is None else np.asarray(w, np.float64)
    if x.size == 0 or w.sum() <= 0:
        return float("nan"), float("nan"), float("nan")
    mean = np.average(x, weights=w)
    var = np.average((x - mean) ** 2, weights=w)
    std = np.sqrt(var)
    skew = np.average((x - mean) ** 3, weights=w) / std**3 if std > 0 else 0.0
    return float(mean), float(std), float(skew)


def weighted_quantile(x: np.ndarray, q: float, w: np.ndarray | None = None) -> float:
    """Quantile q in [0, 1] of x [N] with weights w [N]; equals np.quantile for unit weights."""
    x = np.asarray(x, np.float64)
    if w is None:
        return float(np.quantile(x, q)) if x.size else float("nan")
    w = np.asarray(w, np.float64)
    keep = w > 0
    x, w = x[keep], w[keep]
    if x.size == 0:
        return float("nan")
    order = np.argsort(x)
    x, w = x[order], w[order]
    # Positions of the samples on [0, 1] as np.quantile's default (linear) does for equal weights.
    cum = np.cumsum(w) - w
    pos = cum / max(cum[-1], 1e-300) if x.size > 1 else np.zeros(1)
    return float(np.interp(q, pos, x))


def opening_angles(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Opening angle (degrees) between predicted and true directions, [N, >=2] -> [N]."""
    pred = np.asarray(pred, np.float64)
    true = np.asarray(true, np.float64)
    v_pred = angles_to_vec(pred[:, 0], pred[:, 1])
    v_true = angles_to_vec(true[:, 0], true[:, 1])
    return opening_angle_deg(v_pred, v_true)


def angle_metrics(
    pred: np.ndarray, true: np.ndarray, weight: np.ndarray | None = None
) -> dict[str, float]:
    """Bias, RMS and skewness of d_theta and d_phi, and the 68 % opening angle.

    Args:
      pred: [N, >=2] predicted (theta, phi) in degrees (extra columns, e.g. log sigma, ignored).
      true: [N, 2] true (theta, phi) in degrees.
      weight: [N] optional event weights; 0 excludes an event.
    Returns:
      dict with theta_bias, theta_rms, theta_skew, phi_bias, phi_rms, phi_skew,
      val_resolution_deg (all degrees except the dimensionless skews) and n_events.
    """
    pred = np.asarray(pred, np.float64)
    true = np.asarray(true, np.float64)
    if pred.ndim != 2 or pred.shape[1] < 2 or true.shape[:1] != pred.shape[:1]:
        raise ValueError(
            f"angle_metrics: expected pred [N, >=2], true [N, 2]; got {pred.shape}, {true.shape}"
        )
    d_theta = pred[:, 0] - true[:, 0]
    d_phi = wrap_deg(pred[:, 1] - true[:, 1])
    out: dict[str, float] = {}
    for name, d in (("theta", d_theta), ("phi", d_phi)):
        out[f"{name}_bias"], out[f"{name}_rms"], out[f"{name}_skew"] = weighted_moments(d, weight)
    psi = opening_angles(pred, true)
    out["val_resolution_deg"] = weighted_quantile(psi, RESOLUTION_QUANTILE, weight)
    n = pred.shape[0] if weight is None else int(np.count_nonzero(np.asarray(weight) > 0))
    out["n_events"] = float(n)
    return out


def reference_losses(pred: np.ndarray, true: np.ndarray, beta: float = 1.0) -> dict[str, float]:
    """The reference's validation losses, unweighted means over events (degrees as given):
    smooth_l1 (transition beta) / l1 / mse of (theta, phi), each the mean of its two columns
    (torch's elementwise losses, mean over dim 1), and cos = 1 - cos(opening angle).

    pred [N, >=2], true [N, 2] (theta, phi) in degrees. Keys are the reference's metric names
    val_smooth_l1, val_l1, val_mse, val_cos_res. phi is not wrapped (neither is the reference).
    """
    pred = np.asarray(pred, np.float64)[:, :2]
    true = np.asarray(true, np.float64)[:, :2]
    if len(pred) == 0:
        return dict.fromkeys(("val_smooth_l1", "val_l1", "val_mse", "val_cos_res"), float("nan"))
    d = np.abs(pred - true)
    smooth = np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta) if beta > 0 else d
    cos = np.sum(
        angles_to_vec(pred[:, 0], pred[:, 1]) * angles_to_vec(true[:, 0], true[:, 1]), axis=-1
    )
    return {
        "val_smooth_l1": float(smooth.mean()),
        "val_l1": float(d.mean()),
        "val_mse": float((d * d).mean()),
        "val_cos_res": float((1.0 - np.clip(cos, -1.0, 1.0)).mean()),
    }


def evaluation_metrics(pred: np.ndarray, true: np.ndarray, weight=None) -> dict[str, float]:
    """metrics.angle_metrics plus psi_50, psi_68, psi_90: opening-angle percentiles (deg).

    pred [N, >=2], true [N, 2] (theta, phi) in degrees; weight [N] optional (0 excludes).
    """
    out = angle_metrics(pred, true, weight)
    psi = opening_angles(pred, true)
    for q in PERCENTILES:
        out[f"psi_{q}"] = weighted_quantile(psi, q / 100, weight)
    return out


def width68(d: np.ndarray) -> float:
    """Half the distance between the 16th and 84th percentiles (sigma for a Gaussian)."""
    if len(d) == 0:
        return float("nan")
    lo, hi = np.percentile(d, [16, 84])
    return float(hi - lo) / 2


def resolution_profile(
    var: np.ndarray, pred: np.ndarray, true: np.ndarray, edges: np.ndarray
) -> dict[str, np.ndarray]:
    """Resolution in bins of a true quantity var [N] (e.g. true theta), bin edges [M + 1].

    Returns arrays [M]: centers, n, theta_width68 / phi_width68 (width68 of d_theta and wrapped
    d_phi), psi68 (68th percentile of the opening angle), theta_bias / phi_bias (medians);
    NaN in empty bins. Events outside the edges are ignored.
    """
    d_theta = pred[:, 0] - true[:, 0]
    d_phi = wrap_deg(pred[:, 1] - true[:, 1])
    psi = opening_angles(pred, true)
    idx = np.digitize(var, edges) - 1
    idx[var == edges[-1]] = len(edges) - 2  # the last edge belongs to the last bin
    keys = ("n", "theta_width68", "phi_width68", "psi68", "theta_bias", "phi_bias")
    out = {k: np.full(len(edges) - 1, np.nan) for k in keys}
    for b in range(len(edges) - 1):
        sel = idx == b
        out["n"][b] = sel.sum()
        if sel.any():
            out["theta_width68"][b] = width68(d_theta[sel])
            out["phi_width68"][b] = width68(d_phi[sel])
            out["psi68"][b] = np.percentile(psi[sel], 68)
            out["theta_bias"][b] = np.median(d_theta[sel])
            out["phi_bias"][b] = np.median(d_phi[sel])
    out["centers"] = (edges[:-1] + edges[1:]) / 2
    return out


def profiles_of(pred: np.ndarray, true: np.ndarray, bins: int = PROFILE_BINS) -> dict:
    """{"theta": profile vs true theta, "phi": profile vs true phi}, [bins] over the data range."""
    out = {}
    for k, var in enumerate(("theta", "phi")):
        lo, hi = (float(np.min(true[:, k])), float(np.max(true[:, k]))) if len(true) else (0, 1)
        edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
        out[var] = resolution_profile(true[:, k], pred, true, edges)
    return out


# ----------------------------------------------------------------------------------------------
# Predicted uncertainties and their coverage.
# ----------------------------------------------------------------------------------------------
# Output widths that carry an uncertainty (xecjax.models.regressor.output_dim): Gaussian sigmas
# of (theta, phi) with model.uncertainty, a von Mises-Fisher log kappa with model.kappa.
GAUSSIAN_WIDTH, VMF_WIDTHS = 4, (6, 9)  # 9: a "point" model's (..., log kappa, u, v, w)
SIGMA_MIN_DEG = 1e-3  # = sqrt(losses.NLL_MIN_VAR): the sigma floor of the Gaussian NLL
COVERAGE_LEVELS = (0.68, 0.90)
CALIBRATION_LEVELS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))  # 0.05 ... 0.95
UNCERTAINTY_BINS = 10  # quantile bins of the predicted uncertainty (fewer for small samples)


def uncertainty_kind(width: int) -> str | None:
    """Uncertainty of a prediction of this width: "gaussian" (4), "vmf" (6, 9) or None."""
    if int(width) == GAUSSIAN_WIDTH:
        return "gaussian"
    return "vmf" if int(width) in VMF_WIDTHS else None


def gaussian_sigmas(pred: np.ndarray) -> np.ndarray:
    """[N, 4] predictions -> [N, 2] (sigma_theta, sigma_phi) deg, floored as the NLL does."""
    return np.maximum(np.exp(np.asarray(pred, np.float64)[:, 2:4]), SIGMA_MIN_DEG)


def vmf_kappa(pred: np.ndarray) -> np.ndarray:
    """[N, 6 | 9] predictions -> [N] concentration kappa (1/rad^2) = exp(column 5)."""
    return np.exp(np.asarray(pred, np.float64)[:, 5])


def vmf_content(kappa: np.ndarray, one_minus_cos: np.ndarray) -> np.ndarray:
    """Predicted probability P(psi' <= psi) of the vMF cap out to the observed psi, [N].

    (1 - exp(-kappa (1 - cos psi))) / (1 - exp(-2 kappa)), with expm1 (exact at small kappa,
    where it tends to the uniform sphere's (1 - cos psi) / 2). Uniform in [0, 1] when the
    predicted kappa is right.
    """
    kappa = np.maximum(np.asarray(kappa, np.float64), 1e-300)
    return np.expm1(-kappa * one_minus_cos) / np.expm1(-2.0 * kappa)


def vmf_psi_deg(kappa: np.ndarray, q: float = RESOLUTION_QUANTILE) -> np.ndarray:
    """Opening angle (deg) of the vMF cap containing probability q, [N] (psi68 for q = 0.68).

    1 - cos psi_q = -log(1 - q (1 - exp(-2 kappa))) / kappa; psi = 2 arcsin(sqrt((1 - cos) / 2))
    (no arccos near 1 at large kappa). Tends to the uniform sphere's cap (111 deg for 68 %) as
    kappa -> 0, to sqrt(-2 log(1 - q) / kappa) rad at large kappa.
    """
    kappa = np.maximum(np.asarray(kappa, np.float64), 1e-300)
    one_minus_cos = -np.log1p(q * np.expm1(-2.0 * kappa)) / kappa
    return np.rad2deg(2.0 * np.arcsin(np.sqrt(np.clip(one_minus_cos / 2.0, 0.0, 1.0))))


def gaussian_psi_deg(pred: np.ndarray, q: float = RESOLUTION_QUANTILE) -> np.ndarray:
    """Approximate opening angle (deg) containing probability q under the predicted Gaussian.

    sqrt(-2 log(1 - q)) * sigma_eff with sigma_eff^2 = (sigma_theta^2 + (sin theta
    sigma_phi)^2) / 2: exact for a circular Gaussian on the sphere (small angles), a mean width
    otherwise. Used to bin events by their predicted uncertainty on the scale of psi68.
    """
    pred = np.asarray(pred, np.float64)
    sig = gaussian_sigmas(pred)
    s_phi = np.abs(np.sin(np.deg2rad(pred[:, 0]))) * sig[:, 1]
    return np.sqrt(-2.0 * np.log1p(-q)) * np.sqrt((sig[:, 0] ** 2 + s_phi**2) / 2.0)


def uncertainty_columns(pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-event predicted uncertainty (float32) for the val_tree; {} without one.

    Gaussian (width 4): pred_sigma_theta, pred_sigma_phi (deg). vMF (width 6, 9): pred_kappa
    (1/rad^2) and pred_psi68 (deg, the predicted 68 % opening angle).
    """
    pred = np.asarray(pred)
    kind = uncertainty_kind(pred.shape[1])
    if kind == "gaussian":
        sig = gaussian_sigmas(pred)
        return {"pred_sigma_theta": sig[:, 0], "pred_sigma_phi": sig[:, 1]}
    if kind == "vmf":
        kappa = vmf_kappa(pred)
        return {"pred_kappa": kappa, "pred_psi68": vmf_psi_deg(kappa)}
    return {}


def _content_and_width(pred: np.ndarray, true: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """(kind, per-event predicted probability content at the truth [N], predicted psi68 [N])."""
    kind = uncertainty_kind(pred.shape[1])
    if kind == "gaussian":
        sig = gaussian_sigmas(pred)
        d = np.stack([pred[:, 0] - true[:, 0], wrap_deg(pred[:, 1] - true[:, 1])], 1)
        chi2 = ((d / sig) ** 2).sum(1)
        return kind, -np.expm1(-chi2 / 2.0), gaussian_psi_deg(pred)  # chi2 CDF of 2 dof
    v_pred = pred[:, 2:5] / np.linalg.norm(pred[:, 2:5], axis=1, keepdims=True)
    v_true = angles_to_vec(true[:, 0], true[:, 1])
    one_minus_cos = 0.5 * ((v_pred - v_true) ** 2).sum(1)
    kappa = vmf_kappa(pred)
    return kind, vmf_content(kappa, one_minus_cos), vmf_psi_deg(kappa)


def uncertainty_metrics(
    pred: np.ndarray, true: np.ndarray, weight: np.ndarray | None = None, bins: int | None = None
) -> dict | None:
    """Coverage and calibration of a predicted uncertainty; None when pred carries none.

    The layout is told by the width (xecjax.losses): 4 = Gaussian sigmas of (theta, phi), 6 =
    vMF concentration; 2 and 5 have no uncertainty. Per event, the predicted probability
    content of the region out to the truth: for the Gaussian the chi2 CDF of 2 dof at
    pull_theta^2 + pull_phi^2 (pull = d / sigma, d_phi wrapped), for vMF P(psi' <= psi). With a
    calibrated uncertainty it is uniform, so the coverage of the q region (fraction of events
    with content <= q) equals q.

    Args:
      pred: [N, 4 | 6] model output; true: [N, 2] (theta, phi) deg; weight: [N] optional.
      bins: quantile bins of the predicted psi68 (default UNCERTAINTY_BINS, fewer with < 50
        events per bin).
    Returns:
      {kind, n_events, coverage_68, coverage_90, predicted_psi68_median (deg),
       calibration: {nominal [19], observed [19]} (q = 0.05 ... 0.95),
       resolution_vs_uncertainty: {edges [M + 1], predicted_psi68 [M] (median), psi68 [M]
         (observed 68 % opening angle), n [M]} in bins of the predicted psi68 (deg),
       and pulls {theta_mean, theta_std, phi_mean, phi_std} (Gaussian) or kappa_median (vMF)}.
    """
    pred = np.asarray(pred, np.float64)
    true = np.asarray(true, np.float64)
    kind = uncertainty_kind(pred.shape[1]) if pred.ndim == 2 else None
    if kind is None:
        return None
    w = np.ones(len(pred)) if weight is None else np.asarray(weight, np.float64)
    keep = w > 0
    pred, true, w = pred[keep], true[keep], w[keep]
    if len(pred) == 0:
        return None
    kind, content, width = _content_and_width(pred, true)

    def coverage(q):
        return float(np.average(content <= q, weights=w))

    out: dict = {"kind": kind, "n_events": int(len(pred))}
    for q in COVERAGE_LEVELS:
        out[f"coverage_{round(100 * q)}"] = coverage(q)
    out["predicted_psi68_median"] = weighted_quantile(width, 0.5, w)
    out["calibration"] = {
        "nominal": [float(q) for q in CALIBRATION_LEVELS],
        "observed": [coverage(q) for q in CALIBRATION_LEVELS],
    }
    if kind == "gaussian":
        sig = gaussian_sigmas(pred)
        pulls = {
            "theta": (pred[:, 0] - true[:, 0]) / sig[:, 0],
            "phi": wrap_deg(pred[:, 1] - true[:, 1]) / sig[:, 1],
        }
        out["pulls"] = {}
        for k, p in pulls.items():
            mean, std, _ = weighted_moments(p, w)
            out["pulls"][f"{k}_mean"], out["pulls"][f"{k}_std"] = mean, std
        out["sigma_theta_median"] = weighted_quantile(sig[:, 0], 0.5, w)
        out["sigma_phi_median"] = weighted_quantile(sig[:, 1], 0.5, w)
    else:
        out["kappa_median"] = weighted_quantile(vmf_kappa(pred), 0.5, w)
    n_bins = int(bins or max(1, min(UNCERTAINTY_BINS, len(pred) // 50)))
    edges = np.quantile(width, np.linspace(0.0, 1.0, n_bins + 1))
    idx = np.clip(np.searchsorted(edges, width, side="right") - 1, 0, n_bins - 1)
    psi = opening_angles(pred, true)
    res = {"edges": edges.tolist(), "predicted_psi68": [], "psi68": [], "n": []}
    for b in range(n_bins):
        sel = idx == b
        res["n"].append(int(sel.sum()))
        res["predicted_psi68"].append(weighted_quantile(width[sel], 0.5, w[sel]))
        res["psi68"].append(weighted_quantile(psi[sel], RESOLUTION_QUANTILE, w[sel]))
    out["resolution_vs_uncertainty"] = res
    return out
