"""Resolution metrics of a direction reconstruction (NumPy, on the host).

The reference metric names, shared by training (per-epoch validation) and evaluation:
  theta_bias, theta_rms, theta_skew   of d_theta = pred - true (degrees)
  phi_bias, phi_rms, phi_skew         of d_phi = wrap(pred - true) into [-180, 180) (degrees)
  val_resolution_deg                  68th percentile of the opening angle (degrees)
`rms` is the standard deviation around the bias (ROOT's TH1::GetRMS convention), `skew` the
standardised third moment. All statistics are weighted by optional per-event weights, so that a
padded last batch (weight 0) or a reweighted sample can be passed as is. The evaluation adds
psi_50 / psi_68 / psi_90 (opening-angle percentiles, `evaluation_metrics`) and resolution
profiles in bins of the true theta and phi (`resolution_profile`, `profiles_of`).
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
