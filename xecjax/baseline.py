"""Conventional (non-ML) gamma direction reconstruction, the yardstick for the networks.

Physics: the scintillation light of the electromagnetic shower is seen mostly by the SiPMs of
the inner face. Two classic estimators of the shower position are implemented:

* `centroid`: the light-weighted mean (u, v) of the inner SiPMs in a window around the
  brightest region, placed at an estimated depth w. On a cylinder the light of a point source
  peaks at its radial projection, so (u, v) are the source's z and phi_d*64.97; the depth,
  which matters for theta (the line from the vertex meets the inner face at z * R / (R + w)),
  is estimated from the width of the light distribution (a point source at depth w seen on a
  plane gives sum / peak = 2 pi w^2 / sensor area).
* `fit_point_source`: a chi^2 fit of the solid-angle light model
      mu_i = A * area_i * cos_i / (4 pi d_i^2) * exp(-d_i / lambda) + B
  to the inner SiPMs of the same window, with position (u, v, w) fitted by Levenberg-Marquardt
  and the yield A and the flat background B profiled (weighted linear least squares at every
  step, i.e. variable projection). It is jitted and vmapped over events.

The direction is unit(position - vertex), with the vertex the target centre (origin) unless
given. Dead or invalid channels (npho > 9e9 or NaN) are masked. Units: cm, degrees.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from xecjax.geometry import (
    AREAS,
    INNER_MAP,
    N_SENSORS,
    N_SIPM,
    NORMALS,
    POSITIONS,
    uvw_to_xyz,
    vec_to_angles,
    xyz_to_uvw,
)

INVALID_NPHO = 9e9  # npho above this (the 1e10 sentinel) or NaN marks a dead channel
N_PHI, N_Z = INNER_MAP.shape  # 93 x 44

# Light-model constants (cm). The effective attenuation length combines absorption (100 cm)
# and Rayleigh scattering (40 cm); within the fit window (~15 cm) its exact value hardly matters.
ATTENUATION_CM = 1.0 / (1.0 / 100.0 + 1.0 / 40.0)
SIPM_PDE = 0.15  # npho = photoelectrons / PDE, so var(npho) ~ npho / PDE
NOISE_NPHO = 20.0  # electronic-noise floor of the variance (photons)
GAIN_SPREAD = 0.10  # channel-to-channel efficiency spread, an error proportional to npho
MIN_DEPTH_CM, MAX_DEPTH_CM = 0.2, 40.0

_INNER_UVW = xyz_to_uvw(POSITIONS[:N_SIPM]).astype(np.float32)  # [4092, 3], w = 0
_INNER_POS = POSITIONS[:N_SIPM].astype(np.float32)
_INNER_NRM = NORMALS[:N_SIPM].astype(np.float32)
_INNER_AREA = AREAS[:N_SIPM].astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Input handling and the window around the brightest region.
# ----------------------------------------------------------------------------------------------
def alive(npho) -> np.ndarray:
    """Channels with a measurement, [N, 4760] bool: finite npho below INVALID_NPHO."""
    npho = np.asarray(npho)
    return np.isfinite(npho) & (npho < INVALID_NPHO)


def _check_npho(npho) -> np.ndarray:
    npho = np.asarray(npho, np.float32)
    if npho.ndim != 2 or npho.shape[1] != N_SENSORS:
        raise ValueError(f"npho must have shape [N, {N_SENSORS}], got {list(npho.shape)}")
    return npho


def _in_chunks(fn, npho: np.ndarray, chunk: int) -> list[np.ndarray]:
    """fn over [chunk, 4760] slices of npho; outputs concatenated along events.

    Slices are padded to `chunk` events, or a short input to the next power of two (>= 16),
    so that the jitted function compiles for a handful of shapes only.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    outs = []
    for start in range(0, len(npho), chunk):
        part = npho[start : start + chunk]
        m = len(part)
        size = chunk if len(npho) > chunk else min(chunk, max(16, 1 << (m - 1).bit_length()))
        if m < size:
            part = np.concatenate([part, np.repeat(part[-1:], size - m, axis=0)])
        res = fn(part)
        outs.append([np.asarray(r)[:m] for r in (res if isinstance(res, tuple) else (res,))])
    if not outs:
        res = fn(np.zeros((16, N_SENSORS), np.float32))
        return [np.asarray(r)[:0] for r in (res if isinstance(res, tuple) else (res,))]
    return [np.concatenate(parts) for parts in zip(*outs, strict=True)]


def _inner_image(npho) -> jax.Array:
    """[N, 4760] npho -> (image [N, 93, 44] with invalid -> 0, valid mask [N, 93, 44])."""
    npho = jnp.asarray(npho, jnp.float32)
    if npho.ndim != 2 or npho.shape[1] != N_SENSORS:
        raise ValueError(f"npho must have shape [N, {N_SENSORS}], got {tuple(npho.shape)}")
    inner = npho[:, :N_SIPM]
    valid = jnp.isfinite(inner) & (inner < INVALID_NPHO)
    img = jnp.where(valid, inner, 0.0).reshape(-1, N_PHI, N_Z)
    return img, valid.reshape(-1, N_PHI, N_Z)


def _fill_dead(img: jax.Array, valid: jax.Array) -> jax.Array:
    """Dead SiPMs [N, 93, 44] replaced by the mean of their valid 3x3 neighbours.

    A sum-type estimator (centroid, light width) would otherwise see a hole, which matters when
    the dead channel is the brightest one.
    """

    def box(a):
        return jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, 3, 3), (1, 1, 1), "SAME")

    v = valid.astype(img.dtype)
    mean = box(img * v) / jnp.maximum(box(v), 1.0)
    return jnp.where(valid, img, mean)


def _seed(img: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(phi row, z column) [N] of the brightest 3x3 patch of the inner face.

    The 3x3 box sum makes the seed robust against a single noisy channel.
    """
    box = jax.lax.reduce_window(
        jnp.maximum(img, 0.0), 0.0, jax.lax.add, (1, 3, 3), (1, 1, 1), "SAME"
    )
    flat = jnp.argmax(box.reshape(img.shape[0], -1), axis=1)
    return flat // N_Z, flat % N_Z


def _window_ids(img: jax.Array, half: int, centred: bool) -> tuple[jax.Array, jax.Array]:
    """Sensor ids [N, (2h+1)^2] of the window around the brightest patch, and a mask [N, K].

    centred=False shifts the window (not crops it) at the face edges, so every event uses the
    same number of sensors: right for a fit whose model knows where the sensors are.
    centred=True keeps the window centred on the seed and masks every cell whose mirror image
    through the seed lies outside the face: a centroid over a symmetric region is not pulled
    towards the face centre by the edge.
    """
    size = 2 * half + 1
    if size > min(N_PHI, N_Z):
        raise ValueError(f"window half-size {half} too large for the {N_PHI}x{N_Z} inner face")
    i_phi, i_z = _seed(img)
    off = jnp.arange(-half, half + 1)
    if centred:
        rows = i_phi[:, None, None] + off[None, :, None]
        cols = i_z[:, None, None] + off[None, None, :]
        mirror_r = i_phi[:, None, None] - off[None, :, None]
        mirror_c = i_z[:, None, None] - off[None, None, :]
        inside = (
            (jnp.minimum(rows, mirror_r) >= 0)
            & (jnp.maximum(rows, mirror_r) < N_PHI)
            & (jnp.minimum(cols, mirror_c) >= 0)
            & (jnp.maximum(cols, mirror_c) < N_Z)
        )
        rows, cols = jnp.clip(rows, 0, N_PHI - 1), jnp.clip(cols, 0, N_Z - 1)
    else:
        rows = jnp.clip(i_phi - half, 0, N_PHI - size)[:, None, None] + (off + half)[None, :, None]
        cols = jnp.clip(i_z - half, 0, N_Z - size)[:, None, None] + (off + half)[None, None, :]
        inside = jnp.ones(rows.shape[:1] + (size, size), bool)
    n = img.shape[0]
    return (rows * N_Z + cols).reshape(n, -1), inside.reshape(n, -1)


def light_shape(uvw: jax.Array, pos: jax.Array, nrm: jax.Array, area: jax.Array) -> jax.Array:
    """Fraction of isotropic light from a point at uvw [3] (cm) reaching sensors [K].

    area * cos / (4 pi d^2) * exp(-d / lambda), zero for sensors not facing the point.
    pos, nrm [K, 3]; area [K] cm^2.
    """
    rel = uvw_to_xyz(uvw)[None, :] - pos
    d2 = (rel * rel).sum(-1)
    d = jnp.sqrt(d2)
    cos = jnp.clip((rel * nrm).sum(-1) / d, 0.0, None)
    return area * cos / (4 * jnp.pi * d2) * jnp.exp(-d / ATTENUATION_CM)


# ----------------------------------------------------------------------------------------------
# Centroid.
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _depth_table(half: int) -> tuple[np.ndarray, np.ndarray]:
    """(window sum / peak ratio [M], depth [M] cm) of the light model for a point source.

    The source sits below a SiPM in the middle of the face; the ratio grows monotonically with
    depth (~2 pi w^2 / pixel area on an infinite plane), so interpolating this table inverts it.
    Computed from the same light model as the fit, not tuned on simulated truth.
    """
    size = 2 * half + 1
    i0, j0 = N_PHI // 2 - half, N_Z // 2 - half
    ids = (np.arange(i0, i0 + size)[:, None] * N_Z + np.arange(j0, j0 + size)[None, :]).ravel()
    centre = _INNER_UVW[N_PHI // 2 * N_Z + N_Z // 2]
    depths = np.geomspace(MIN_DEPTH_CM, MAX_DEPTH_CM, 200).astype(np.float32)
    # Evaluated eagerly even when first called while tracing the jitted centroid.
    with jax.ensure_compile_time_eval():
        pos, nrm, area = (jnp.asarray(a[ids]) for a in (_INNER_POS, _INNER_NRM, _INNER_AREA))
        src = jnp.tile(jnp.asarray(centre), (len(depths), 1)).at[:, 2].set(depths)
        shape = jax.vmap(light_shape, in_axes=(0, None, None, None))(src, pos, nrm, area)
        ratios = np.asarray(shape.sum(1) / shape.max(1))
    return ratios, depths


@functools.partial(jax.jit, static_argnames=("half", "depth_cm"))
def _centroid(npho, half: int, depth_cm: float | None) -> jax.Array:
    img, valid = _inner_image(npho)
    img = _fill_dead(img, valid)
    ids, inside = _window_ids(img, half, centred=True)
    n = jnp.take_along_axis(img.reshape(img.shape[0], -1), ids, axis=1)  # [N, K]
    n = jnp.where(inside, n, 0.0)
    # Weights: light above a small fraction of the peak, which suppresses the far tails and the
    # noise that would otherwise pull the centroid towards the window centre.
    peak = n.max(axis=1, keepdims=True)
    wgt = jnp.clip(n - 0.02 * peak, 0.0, None)
    uv = jnp.asarray(_INNER_UVW[:, :2])[ids]  # [N, K, 2]
    c = (wgt[..., None] * uv).sum(1) / jnp.maximum(wgt.sum(1), 1e-9)[:, None]
    if depth_cm is None:
        ratios, depths = _depth_table(half)
        ratio = n.sum(1) / jnp.maximum(peak[:, 0], 1e-9)
        depth = jnp.interp(ratio, jnp.asarray(ratios), jnp.asarray(depths))
    else:
        depth = jnp.full(c.shape[:1], depth_cm, jnp.float32)
    depth = jnp.clip(depth, MIN_DEPTH_CM, MAX_DEPTH_CM)
    return jnp.concatenate([c, depth[:, None]], axis=1)


def centroid(npho, half: int = 8, depth_cm: float | None = None, chunk: int = 2048) -> np.ndarray:
    """Light-weighted centroid of the inner SiPMs around the brightest region.

    Args:
      npho: [N, 4760] photons per sensor (dead channels 1e10 or NaN).
      half: the window is (2*half+1)^2 inner SiPMs (phi rows x z columns).
      depth_cm: fixed depth of the light centre below the inner face; None estimates it per
        event from the width of the light distribution.
      chunk: events per jitted call (bounds memory).
    Returns:
      xyz [N, 3] cm of the estimated light centre.
    """
    (uvw,) = _in_chunks(lambda n: _centroid(n, half, depth_cm), _check_npho(npho), chunk)
    return uvw_to_xyz(uvw.astype(np.float64)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Point-source fit of the solid-angle light model.
# ----------------------------------------------------------------------------------------------
def _profiled_residuals(uvw, n, sw, pos, nrm, area):
    """Weighted residuals [K] with yield A and background B solved by linear least squares."""
    f = light_shape(uvw, pos, nrm, area)
    w = sw * sw
    s_w, s_f, s_n = w.sum(), (w * f).sum(), (w * n).sum()
    s_ff, s_fn = (w * f * f).sum(), (w * f * n).sum()
    det = s_w * s_ff - s_f * s_f
    a = (s_w * s_fn - s_f * s_n) / jnp.maximum(det, 1e-30)
    b = (s_n - a * s_f) / jnp.maximum(s_w, 1e-30)
    return sw * (n - a * f - b), a


def _solve3(h: jax.Array, g: jax.Array) -> jax.Array:
    """h^-1 g for a symmetric positive 3x3 h by cofactors (batched LAPACK is slow on CPU)."""
    cof = jnp.cross(jnp.roll(h, -1, axis=0), jnp.roll(h, -2, axis=0))  # adjugate rows (h = h^T)
    det = jnp.dot(h[0], cof[0])
    return cof @ g / jnp.where(jnp.abs(det) > 0, det, 1e-30)


def _lm_fit(uvw0, n, sw, pos, nrm, area, iterations: int):
    """Levenberg-Marquardt on (u, v, w) for one event; returns (uvw [3], chi2, yield)."""

    def resid(p):
        return _profiled_residuals(p, n, sw, pos, nrm, area)[0]

    def clamp(p):
        return p.at[2].set(jnp.clip(p[2], MIN_DEPTH_CM, MAX_DEPTH_CM))

    def step(carry, _):
        p, cost, lam = carry
        r = resid(p)
        jac = jax.jacfwd(resid)(p)  # [K, 3]
        jtj = jac.T @ jac
        g = jac.T @ r
        h = jtj + lam * jnp.diag(jnp.diag(jtj) + 1e-6)
        p_new = clamp(p - _solve3(h, g))
        r_new = resid(p_new)
        cost_new = (r_new * r_new).sum()
        ok = jnp.isfinite(cost_new) & (cost_new < cost)
        p = jnp.where(ok, p_new, p)
        cost = jnp.where(ok, cost_new, cost)
        lam = jnp.where(ok, lam * 0.3, lam * 10.0)
        return (p, cost, lam), None

    uvw0 = clamp(uvw0)
    r0 = resid(uvw0)
    carry = (uvw0, (r0 * r0).sum(), jnp.float32(1e-2))
    (p, cost, _), _ = jax.lax.scan(step, carry, None, length=iterations)
    return p, cost, _profiled_residuals(p, n, sw, pos, nrm, area)[1]


@functools.partial(jax.jit, static_argnames=("half", "iterations", "depths"))
def _fit(npho, half: int, iterations: int, depths: tuple[float, ...]):
    img, valid = _inner_image(npho)
    c_uvw = _centroid(npho, half, None)
    ids, _ = _window_ids(img, half, centred=False)
    n = jnp.take_along_axis(img.reshape(img.shape[0], -1), ids, axis=1)  # [N, K]
    ok = jnp.take_along_axis(valid.reshape(img.shape[0], -1), ids, axis=1)
    # Poisson variance of the photon count (npho = pe / PDE), the uncalibrated efficiency spread
    # (which dominates for the brightest SiPMs) and an electronic-noise floor.
    n_pos = jnp.clip(n, 0.0, None)
    var = n_pos / SIPM_PDE + (GAIN_SPREAD * n_pos) ** 2 + NOISE_NPHO**2
    sw = jnp.where(ok, jax.lax.rsqrt(var), 0.0)
    pos = jnp.asarray(_INNER_POS)[ids]
    nrm = jnp.asarray(_INNER_NRM)[ids]
    area = jnp.asarray(_INNER_AREA)[ids]
    fit = jax.vmap(functools.partial(_lm_fit, iterations=iterations))
    # A few starting depths (a coarse grid in w); the best chi^2 wins.
    best = None
    for depth in depths:
        start = c_uvw.at[:, 2].set(depth)
        p, cost, a = fit(start, n, sw, pos, nrm, area)
        if best is None:
            best = (p, cost, a)
        else:
            better = cost < best[1]
            best = (
                jnp.where(better[:, None], p, best[0]),
                jnp.where(better, cost, best[1]),
                jnp.where(better, a, best[2]),
            )
    return best


def fit_point_source(
    npho,
    half: int = 9,
    iterations: int = 6,
    depths: tuple[float, ...] = (6.0,),
    return_info: bool = False,
    chunk: int = 2048,
):
    """Fit a point source of isotropic light to the inner SiPMs around the brightest region.

    Args:
      npho: [N, 4760] photons per sensor (dead channels 1e10 or NaN are masked).
      half: the fit uses the (2*half+1)^2 inner SiPMs of the window around the brightest patch.
      iterations: Levenberg-Marquardt steps per starting point.
      depths: starting depths w (cm) below the inner face; the best chi^2 is kept.
      return_info: also return a dict with "uvw" [N, 3] cm, "chi2" [N], "yield" [N] (photons
        emitted, assuming isotropic emission).
      chunk: events per jitted call (bounds memory).
    Returns:
      xyz [N, 3] cm of the fitted light centre (and the info dict if asked).
    """
    depths = tuple(float(d) for d in depths)
    if not depths:
        raise ValueError("fit_point_source needs at least one starting depth")
    uvw, chi2, yield_ = _in_chunks(
        lambda n: _fit(n, half, iterations, depths), _check_npho(npho), chunk
    )
    xyz = uvw_to_xyz(uvw.astype(np.float64)).astype(np.float32)
    if return_info:
        return xyz, {"uvw": uvw, "chi2": chi2, "yield": yield_}
    return xyz


METHODS = ("fit", "centroid")


def direction(xyz, vertex=None) -> np.ndarray:
    """(theta, phi) [N, 2] deg of unit(xyz - vertex); vertex None (origin), [3] or [N, 3] cm."""
    xyz = np.asarray(xyz, np.float64)
    v = np.zeros(3) if vertex is None else np.asarray(vertex, np.float64)
    if v.shape not in ((3,), xyz.shape):
        raise ValueError(f"vertex must have shape [3] or {list(xyz.shape)}, got {list(v.shape)}")
    return vec_to_angles(xyz - v).astype(np.float32)


def reconstruct(npho, vertex=None, method: str = "fit", chunk: int = 2048) -> np.ndarray:
    """Conventional gamma direction: (theta, phi) [N, 2] in degrees.

    Args:
      npho: [N, 4760] photons per sensor (dead channels 1e10 or NaN).
      vertex: None (target centre), [3] or [N, 3] cm.
      method: "fit" (point-source fit) or "centroid".
      chunk: events per jitted call (bounds memory).
    """
    if method not in METHODS:
        raise ValueError(f"unknown baseline method {method!r}: expected one of {METHODS}")
    fn = fit_point_source if method == "fit" else centroid
    return direction(fn(npho, chunk=chunk), vertex)


# The speed of scintillation light in liquid xenon: refractive index 1.61 at 178 nm.
LIGHT_SLOWNESS_NS_PER_CM = 1.61 / 29.9792458


def fit_time(npho, time_s, uvw, min_npho: float = 50.0) -> np.ndarray:
    """The conventional gamma time (ns): the median over the bright sensors (npho >= min_npho,
    with a valid time) of the sensor time minus the light's flight from the fitted point.

    npho [N, 4760] photons, time_s [N, 4760] absolute sensor times (s; 1e10 = none), uvw
    [N, 3] cm a fitted light position (fit_point_source). The result is the time of the light
    at that point, with an offset from the conversion time that a calibration removes. NaN for
    an event without a bright sensor.
    """
    npho, time_s = np.asarray(npho, np.float64), np.asarray(time_s, np.float64)
    xyz = uvw_to_xyz(np.asarray(uvw, np.float64))
    dist = np.linalg.norm(POSITIONS[None].astype(np.float64) - xyz[:, None], axis=-1)
    t0 = time_s * 1e9 - LIGHT_SLOWNESS_NS_PER_CM * dist
    ok = alive(npho) & (npho >= min_npho) & (time_s < 1e9) & np.isfinite(time_s)
    with np.errstate(all="ignore"):
        return np.nanmedian(np.where(ok, t0, np.nan), axis=1)
