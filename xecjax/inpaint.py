"""Conventional inpainting of masked or dead sensors: the yardstick for the inpainter (issue 25).

Two estimates of the photon count (npho) and time of the masked sensors of each event, on raw
per-sensor arrays (npho [N, 4760] photons, time [N, 4760] s; dead channels carry the 1e10
marker, xecjax.baseline.alive):

* `neighbour_average`: the mean over the sensor's neighbours on its face grid
  (geometry.face_neighbors: 8-connected inner SiPMs, outer / US / DS PMT grids, hex neighbours
  on top and bottom).
* `solid_angle_weighted`: the neighbours' npho rescaled by the light each sensor receives from
  the shower position (the solid-angle light model of baseline.light_shape, attenuation
  included), and their times corrected for the light's flight from that position.

Rules shared by both:
* A masked sensor's own values are never read. Its neighbours count when they are alive
  (finite npho below 9e9) and not masked themselves ("usable").
* If no neighbour is usable, the second ring (neighbours of neighbours on the same face, not
  the sensor itself) is used instead; if that has none either, the estimate is NaN.
* Time: the time of a few photons is noise (the Normaliser gives sensors below its
  npho_threshold, 100 photons, the sentinel time), so a masked sensor's time is the mean over
  the usable neighbours with a valid time (finite, |t| < 9e9) and npho >= time_min_npho
  (default 100); if none of them is that bright, over the usable neighbours with any valid
  time; then the second ring the same way; NaN if no neighbour has a valid time. The time may
  be absolute (`time`) or relative (`relative_time`): only differences of seconds enter.

Both return the completed arrays: (npho, time) float32 [N, 4760] equal to the input outside
the mask and holding the estimates (NaN where none is possible) on it. `score` compares
estimates (these or a model's) with the truth on the masked sensors, per face.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import scipy.sparse

from xecjax import baseline
from xecjax.geometry import (
    AREAS,
    FACE_NAMES,
    FACE_OF,
    N_SENSORS,
    NORMALS,
    POSITIONS,
    face_neighbors,
    xyz_to_uvw,
)

INVALID = 9e9  # |value| above this (the 1e10 marker) or NaN is no measurement
TIME_MIN_NPHO = 100.0  # photons: the Normaliser's default npho_threshold for the time feature
CHUNK = 1024  # events per block (bounds the memory of the index arrays of the masked sensors)
COMBINE = ("sum", "mean")
_S_PER_CM = baseline.LIGHT_SLOWNESS_NS_PER_CM * 1e-9  # light's flight time in LXe, s/cm


# ----------------------------------------------------------------------------------------------
# Neighbour rings and input checks.
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def neighbour_rings() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((ids [4760, 8], mask), (ids [4760, K2], mask)): geometry.face_neighbors and the second
    ring (neighbours of neighbours, neither the sensor nor a first-ring neighbour), each padded
    with the sensor itself under mask False."""
    ids1, m1 = face_neighbors()
    rows = np.repeat(np.arange(N_SENSORS), m1.sum(1))
    adj = scipy.sparse.csr_matrix(
        (np.ones(len(rows), np.int32), (rows, ids1[m1])), shape=(N_SENSORS, N_SENSORS)
    )
    two = ((adj @ adj) > 0).tolil()
    out = []
    for i in range(N_SENSORS):
        out.append(sorted(set(two.rows[i]) - set(ids1[i][m1[i]]) - {i}))
    k2 = max(map(len, out))
    ids2 = np.repeat(np.arange(N_SENSORS, dtype=np.int32)[:, None], k2, axis=1)
    m2 = np.zeros((N_SENSORS, k2), bool)
    for i, nb in enumerate(out):
        ids2[i, : len(nb)] = nb
        m2[i, : len(nb)] = True
    for a in (ids2, m2):
        a.flags.writeable = False
    return (ids1, m1), (ids2, m2)


def valid(x: np.ndarray) -> np.ndarray:
    """Whether values are measurements / estimates: finite and not the 1e10 dead marker."""
    return np.isfinite(x) & (np.abs(x) < INVALID)


_valid = valid


def _check(npho, time, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    npho, time, mask = np.asarray(npho), np.asarray(time), np.asarray(mask)
    if npho.ndim != 2 or npho.shape[1] != N_SENSORS:
        raise ValueError(f"npho must have shape [N, {N_SENSORS}], got {list(npho.shape)}")
    if time.shape != npho.shape:
        raise ValueError(
            f"time must have the shape of npho {list(npho.shape)}, got {list(time.shape)}"
        )
    if mask.shape != npho.shape:
        raise ValueError(
            f"mask must have the shape of npho {list(npho.shape)}, got {list(mask.shape)}"
        )
    if mask.dtype != bool:
        raise ValueError(
            f"mask must be a bool array (True = estimate this sensor), got {mask.dtype}"
        )
    return npho, time, mask


def _check_chunk(chunk: int) -> int:
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return int(chunk)


# ----------------------------------------------------------------------------------------------
# The estimates, on the (event, sensor) pairs of the mask.
# ----------------------------------------------------------------------------------------------
def _gather(npho, time, mask, ev, nb):
    """Neighbour values [P, K] of the pairs (ev [P], neighbour ids nb [P, K]) and usability."""
    e = ev[:, None]
    n = npho[e, nb].astype(np.float64)
    t = time[e, nb].astype(np.float64)
    usable = _valid(n) & ~mask[e, nb]
    return n, t, usable


def _time_weights(n, t, usable, time_min_npho):
    """0/1 weights [P, K] of the neighbours whose times enter (the module's time rule)."""
    timed = usable & _valid(t)
    bright = timed & (n >= time_min_npho)
    return np.where(bright.any(1, keepdims=True), bright, timed)


def _mean(x, w):
    """Weighted mean over axis 1 (w 0/1 or >= 0), NaN where the weights sum to 0."""
    s = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s > 0, (np.where(w > 0, x, 0.0) * w).sum(1) / np.where(s > 0, s, 1), np.nan)


def _solid_angles(xyz: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """baseline.light_shape of sensors ids [P, K] seen from points xyz [P, 3] cm -> [P, K]."""
    p = len(ids)
    size = max(256, 1 << (max(p, 1) - 1).bit_length())  # few compiled shapes
    uvw = np.zeros((size, 3), np.float32)
    uvw[:p] = xyz_to_uvw(xyz)
    sel = np.zeros((size, ids.shape[1]), np.int64)
    sel[:p] = ids
    args = (POSITIONS[sel], NORMALS[sel], AREAS[sel])
    shape = _light_shapes(uvw, *(a.astype(np.float32) for a in args))
    return np.asarray(shape, np.float64)[:p]


_light_shapes = jax.jit(jax.vmap(baseline.light_shape))


def _estimate_ring(npho, time, mask, ev, s, nb, nbm, xyz, time_min_npho, combine):
    """(npho [P], time [P]) of the masked pairs (ev, s) from neighbours nb [P, K] (mask nbm);
    NaN where no neighbour is usable (npho) or has a valid time (time)."""
    n, t, usable = _gather(npho, time, mask, ev, nb)
    usable &= nbm
    wt = _time_weights(n, t, usable, time_min_npho)
    plain_n = _mean(n, usable.astype(np.float64))
    if xyz is None:
        return plain_n, _mean(t, wt.astype(np.float64))
    pts = xyz[ev]
    both = np.concatenate([s[:, None], nb], axis=1)
    omega = _solid_angles(pts, both)
    om_i, om_j = omega[:, :1], omega[:, 1:]
    seen = usable & (om_j > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if combine == "sum":  # Omega_i * sum n_j / sum Omega_j: the Poisson maximum likelihood
            den = np.where(seen, om_j, 0.0).sum(1)
            est = om_i[:, 0] * np.where(seen, n, 0.0).sum(1) / np.where(den > 0, den, 1.0)
        else:  # mean_j n_j * Omega_i / Omega_j
            est = _mean(n * om_i / np.where(seen, om_j, 1.0), seen.astype(np.float64))
    # the light model says nothing where the sensor does not face the point or no usable
    # neighbour does: the plain average there
    est = np.where((om_i[:, 0] > 0) & seen.any(1), est, plain_n)
    dist = np.linalg.norm(POSITIONS[both] - pts[:, None, :], axis=-1)
    t_corr = t - _S_PER_CM * dist[:, 1:] + _S_PER_CM * dist[:, :1]
    return est, _mean(t_corr, wt.astype(np.float64))


def _inpaint(npho, time, mask, xyz, time_min_npho, combine, chunk):
    npho, time, mask = _check(npho, time, mask)
    chunk = _check_chunk(chunk)
    (ids1, m1), (ids2, m2) = neighbour_rings()
    out_n = np.array(npho, np.float32, copy=True)
    out_t = np.array(time, np.float32, copy=True)
    for a in range(0, len(npho), chunk):
        b = min(a + chunk, len(npho))
        ev, s = np.nonzero(mask[a:b])
        pts = None if xyz is None else xyz[a:b]
        args = (npho[a:b], time[a:b], mask[a:b])
        est_n, est_t = _estimate_ring(*args, ev, s, ids1[s], m1[s], pts, time_min_npho, combine)
        # second ring where the first had nothing usable (npho) or nothing timed (time)
        redo = np.isnan(est_n) | np.isnan(est_t)
        if redo.any():
            r = np.nonzero(redo)[0]
            n2, t2 = _estimate_ring(
                *args, ev[r], s[r], ids2[s[r]], m2[s[r]], pts, time_min_npho, combine
            )
            est_n[r] = np.where(np.isnan(est_n[r]), n2, est_n[r])
            est_t[r] = np.where(np.isnan(est_t[r]), t2, est_t[r])
        out_n[a + ev, s] = est_n
        out_t[a + ev, s] = est_t
    return out_n, out_t


def neighbour_average(
    npho, time, mask, time_min_npho: float = TIME_MIN_NPHO, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Masked sensors filled with the mean of their usable neighbours on the same face.

    Args:
      npho: [N, 4760] photons (dead channels 1e10 or NaN).
      time: [N, 4760] seconds (absolute or relative; 1e10 or NaN = no time).
      mask: [N, 4760] bool, True where an estimate is wanted (masked or dead sensors); these
        sensors' own values are never read.
      time_min_npho: neighbours below this many photons give a time only if no brighter one
        does (module docstring).
      chunk: events per block.
    Returns:
      (npho, time) float32 [N, 4760]: the input outside the mask, the estimates (NaN where no
      neighbour in two rings is usable / timed) on it.
    """
    return _inpaint(npho, time, mask, None, float(time_min_npho), "sum", chunk)


def solid_angle_weighted(
    npho,
    time,
    mask,
    point=None,
    time_min_npho: float = TIME_MIN_NPHO,
    combine: str = "sum",
    chunk: int = CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Masked sensors filled from their neighbours, rescaled with the light model of a point.

    npho_i = Omega_i * sum_j npho_j / sum_j Omega_j (combine="sum", the Poisson maximum
    likelihood of the point's brightness from the neighbours) or mean_j npho_j Omega_i / Omega_j
    (combine="mean"), over the usable neighbours j (module docstring) that face the point;
    Omega = baseline.light_shape (area * cos / (4 pi d^2) * exp(-d / lambda)). A sensor that does
    not face the point, or whose usable neighbours do not, gets the plain neighbour average. Both
    reproduce a point source's light exactly without noise; "sum" weights the neighbours by the
    light they see, so a dim neighbour's noise is not magnified.
    time_i = mean_j (t_j - d_j / c_LXe) + d_i / c_LXe with d the distance from the point and
    c_LXe = c / 1.61 (baseline.LIGHT_SLOWNESS_NS_PER_CM), over the neighbours of the time rule.

    Args:
      npho, time, mask, time_min_npho, chunk: as neighbour_average.
      point: xyz [N, 3] or [3] cm of the light centre (baseline.fit_point_source or centroid
        return this), or None: baseline.fit_point_source of each event with its masked sensors
        treated as dead (their values are not read).
      combine: "sum" or "mean" (above).
    Returns:
      (npho, time) float32 [N, 4760] as neighbour_average.
    """
    npho, time, mask = _check(npho, time, mask)
    chunk = _check_chunk(chunk)
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    if point is None:
        parts = []
        for a in range(0, len(npho), chunk):
            hidden = np.where(mask[a : a + chunk], np.float32(1e10), npho[a : a + chunk])
            parts.append(baseline.fit_point_source(hidden, chunk=chunk))
        xyz = np.concatenate(parts) if parts else np.zeros((0, 3))
    else:
        xyz = np.asarray(point, np.float64)
        if xyz.shape == (3,):
            xyz = np.broadcast_to(xyz, (len(npho), 3))
        if xyz.shape != (len(npho), 3):
            raise ValueError(f"point must have shape [3] or [{len(npho)}, 3] (xyz cm), got "
                             f"{list(xyz.shape)}")  # fmt: skip
    xyz = np.asarray(xyz, np.float64)
    return _inpaint(npho, time, mask, xyz, float(time_min_npho), combine, chunk)


METHODS = {"neighbour_average": neighbour_average, "solid_angle_weighted": solid_angle_weighted}


# ----------------------------------------------------------------------------------------------
# Scores.
# ----------------------------------------------------------------------------------------------
def score(
    npho_pred,
    time_pred,
    npho_true,
    time_true,
    mask,
    time_min_npho: float = TIME_MIN_NPHO,
    chunk: int = 4 * CHUNK,
) -> dict[str, dict[str, float]]:
    """Errors of estimates (pred - true) on the masked sensors, per face and over all.

    npho (photons) counts on masked sensors with a valid true npho; time (reported in ns) on
    masked sensors with a valid true time and a true npho >= time_min_npho (the time of fewer
    photons is noise and the network's time feature ignores it). Estimates that are NaN or
    carry the 1e10 marker are "unfilled": counted, left out of the errors.

    Args:
      npho_pred, time_pred: [N, 4760] estimates (only the masked entries are read).
      npho_true, time_true: [N, 4760] truth (photons, seconds).
      mask: [N, 4760] bool, the sensors that were estimated.
    Returns:
      {face: {...}} for each of geometry.FACE_NAMES and "all", each with n_npho,
      n_npho_unfilled, npho_bias, npho_mae, npho_abs68 (68 % quantile of |error|), n_time,
      n_time_unfilled,
      time_bias_ns, time_mae_ns, time_abs68_ns; counts int, the rest float (NaN without
      entries).
    """
    npho_true, time_true, mask = _check(npho_true, time_true, mask)
    for name, a in (("npho_pred", npho_pred), ("time_pred", time_pred)):
        if np.shape(a) != npho_true.shape:
            raise ValueError(f"{name} must have the shape of npho_true {list(npho_true.shape)}, "
                             f"got {list(np.shape(a))}")  # fmt: skip
    npho_pred, time_pred = np.asarray(npho_pred), np.asarray(time_pred)
    chunk = _check_chunk(chunk)
    parts: dict[str, list] = {k: [] for k in ("s", "np", "tp", "nt", "tt")}
    for a in range(0, len(mask), chunk):
        ev, s = np.nonzero(mask[a : a + chunk])
        ev = ev + a
        for k, arr in (("np", npho_pred), ("tp", time_pred), ("nt", npho_true), ("tt", time_true)):
            parts[k].append(arr[ev, s])
        parts["s"].append(s)
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    return score_sensors(cat["s"].astype(np.int64), cat["np"], cat["tp"], cat["nt"], cat["tt"],
                         time_min_npho)  # fmt: skip


def score_sensors(
    sensor, npho_pred, time_pred, npho_true, time_true, time_min_npho: float = TIME_MIN_NPHO
) -> dict[str, dict[str, float]]:
    """`score` on a flat list of estimated sensors (e.g. the rows of a sensor-level tree):
    sensor [P] ids, npho_pred, time_pred, npho_true, time_true [P] (photons, seconds). The same
    rules and the same result as score on the [N, 4760] arrays that hold these values under a
    mask of exactly these (event, sensor) pairs."""
    sensor = np.asarray(sensor)
    arrays = [np.asarray(a).astype(np.float64) for a in (npho_pred, time_pred, npho_true,
                                                          time_true)]  # fmt: skip
    if sensor.ndim != 1 or any(a.shape != sensor.shape for a in arrays):
        shapes = [list(np.shape(a)) for a in (sensor, *arrays)]
        raise ValueError(f"score_sensors: sensor, npho_pred, time_pred, npho_true, time_true "
                         f"must be [P] arrays, got shapes {shapes}")  # fmt: skip
    np_, tp, nt, tt = arrays
    face = FACE_OF[sensor.astype(np.int64)]
    ok_n = _valid(nt)
    fill_n = _valid(np_)
    ok_t = ok_n & (nt >= time_min_npho) & _valid(tt)
    fill_t = _valid(tp)
    cat = {
        "face_n": face[ok_n], "miss_n": ~fill_n[ok_n], "err_n": (np_ - nt)[ok_n],
        "face_t": face[ok_t], "miss_t": ~fill_t[ok_t], "err_t": ((tp - tt) * 1e9)[ok_t],
    }  # fmt: skip

    def stats(err: np.ndarray, miss: np.ndarray, name: str, unit: str) -> dict[str, float]:
        e = err[~miss.astype(bool)]
        nan = float("nan")
        return {
            f"n_{name}": int(len(err)),
            f"n_{name}_unfilled": int(miss.sum()),
            f"{name}_bias{unit}": float(e.mean()) if len(e) else nan,
            f"{name}_mae{unit}": float(np.abs(e).mean()) if len(e) else nan,
            f"{name}_abs68{unit}": float(np.quantile(np.abs(e), 0.68)) if len(e) else nan,
        }

    out = {}
    for f, face_name in [*enumerate(FACE_NAMES), (None, "all")]:
        sel_n = np.ones(len(cat["face_n"]), bool) if f is None else cat["face_n"] == f
        sel_t = np.ones(len(cat["face_t"]), bool) if f is None else cat["face_t"] == f
        out[face_name] = stats(cat["err_n"][sel_n], cat["miss_n"][sel_n], "npho", "") | stats(
            cat["err_t"][sel_t], cat["miss_t"][sel_t], "time", "_ns"
        )
    return out
