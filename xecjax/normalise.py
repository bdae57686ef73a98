"""The one normalisation of the network input (DESIGN.md section 5).

Raw per-sensor branches -> network input x [..., 4760, 2] float32:
  channel 0, npho feature: log1p `log1p(n/s)/s2`, sqrt `sqrt(n)/sqrt(s)`,
    anscombe `2 sqrt(n + 3/8) / (2 sqrt(s + 3/8))`, linear `n/s`; values below the scheme's
    domain (n/s <= -1, n < 0, n < -3/8; linear has none) give 0; invalid npho (|n| > 9e9, Inf or
    NaN: the 1e10 dead-channel marker) gives `sentinel_npho`.
  channel 1, time feature (time in seconds): `t/time_scale - time_shift`; `sentinel_time` where
    the npho is invalid or below `npho_threshold` (the timing of a few photons is noise) or the
    time itself is invalid (|t| > 9e9 or NaN).

The parameters are a frozen dataclass that travels with every checkpoint and ONNX file
(`to_dict`/`from_dict`), so evaluation, export and real-data inference cannot disagree with
training. The same code runs on NumPy arrays (the data loader; NumPy in, NumPy out) and on jax
arrays (jit-able; jax in, jax out). Both evaluate the same float32 expressions; in particular
log1p(n/s) is computed as log((n + s) / s), because NumPy's float32 log1p is scalar code
about 5x slower than its vectorised log; the difference from an exact log1p is below 1e-7 in
feature units, and the sum is exact near the domain edge n = -s.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xecjax.geometry import N_SENSORS

SCHEMES = ("log1p", "sqrt", "anscombe", "linear")
INVALID = 9e9  # |value| above this (the 1e10 marker of dead channels) is invalid
# The measured positron vertex (xyzVTX, cm) as a model input (model.vertex_input) is divided
# by this: the slanted target's spread (sigma_z ~ 3.7 cm) becomes order 1. A constant of the
# code, the same for every model (the ONNX input `vertex` takes cm).
VERTEX_SCALE_CM = 5.0
_F = np.float32
_BLOCK = 32  # events per block of the NumPy path: ~0.6 MB per float32 array, fits in L2


@dataclasses.dataclass(frozen=True)
class Normaliser:
    """Parameters of the input normalisation; call it on (npho, time) [..., 4760] arrays."""

    npho_branch: str = "npho"
    time_branch: str = "relative_time"
    npho_scheme: str = "log1p"  # log1p | sqrt | anscombe | linear
    npho_scale: float = 1000.0  # s (photons, or the unit of npho_branch)
    npho_scale2: float = 4.08  # s2, log1p only
    time_scale: float = 1.14e-7  # seconds
    time_shift: float = -0.46
    npho_threshold: float = 100.0  # below it the time feature is sentinel_time
    sentinel_npho: float = -1.0
    sentinel_time: float = -1.0

    def __post_init__(self) -> None:
        if self.npho_scheme not in SCHEMES:
            raise ValueError(f"npho_scheme {self.npho_scheme!r}: expected one of {SCHEMES}")
        for name in ("npho_scale", "npho_scale2", "time_scale"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"Normaliser.{name} must be > 0, got {getattr(self, name)!r}")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> Normaliser:
        """'default' (npho + relative_time) or 'relative_npho' (npho / max npho of the event)."""
        if name == "default":
            return cls()
        if name == "relative_npho":
            # relative_npho is in [0, 1]; s = 0.03 puts ~100 photons of a typical 3000-photon
            # brightest sensor at the knee of log1p, s2 = log1p(1/0.03) maps the maximum to ~1,
            # and the time threshold is the same ~100 photons expressed relatively.
            return cls(
                npho_branch="relative_npho", npho_scale=0.03, npho_scale2=3.54, npho_threshold=0.03
            )
        raise ValueError(
            f"unknown Normaliser preset {name!r}: expected 'default' or 'relative_npho'"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the parameters (JSON / checkpoint / ONNX metadata)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normaliser:
        """Inverse of to_dict; unknown keys are an error (a newer or foreign parameter set)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown Normaliser parameters {unknown}; known: {sorted(known)}")
        return cls(**d)

    @property
    def branches(self) -> tuple[str, str]:
        """The two per-sensor ROOT branches read: (npho branch, time branch)."""
        return (self.npho_branch, self.time_branch)

    # ------------------------------------------------------------------------------------------
    def __call__(self, npho, time):
        """(npho, time) [..., 4760] -> x [..., 4760, 2] float32 (NumPy or jax, following input)."""
        if npho.shape != time.shape or npho.shape[-1:] != (N_SENSORS,):
            raise ValueError(
                f"npho {tuple(npho.shape)} and time {tuple(time.shape)}: expected the same "
                f"shape [..., {N_SENSORS}]"
            )
        if isinstance(npho, jax.Array) or isinstance(time, jax.Array):
            return self._jax(jnp.asarray(npho, jnp.float32), jnp.asarray(time, jnp.float32))
        out = np.empty((*npho.shape, 2), np.float32)
        self.into(np.asarray(npho, np.float32), np.asarray(time, np.float32), out)
        return out

    def inverse(self, x):
        """Features x [..., 2] -> (npho, time) [...] float32 in the units of the branches
        (photons or npho_branch's unit; seconds): the inverse of __call__ where that is one.

        npho: log1p `s * expm1(f * s2)`, sqrt `s * f^2`, anscombe `(s + 3/8) f^2 - 3/8`, linear
        `f * s`; the sqrt and anscombe schemes take f < 0 as 0 (their features are never
        negative). time: `(g + time_shift) * time_scale`. Pure arithmetic on every value, for
        a model's predictions: a feature equal to a sentinel is not special here (mask dead
        channels and sentinel times yourself). Round trip: inverse(self(n, t)) gives back n
        where n is valid and inside the scheme's domain (n > -s for log1p, n >= 0 for sqrt,
        n >= -3/8 for anscombe), and t where the time feature is not the sentinel (float32
        rounding: ~1e-6 relative). NumPy in, NumPy out; jax in, jax out (jit-able).
        """
        xp = jnp if isinstance(x, jax.Array) else np
        x = xp.asarray(x, xp.float32)
        if x.shape[-1:] != (2,):
            raise ValueError(f"features {tuple(x.shape)}: expected [..., 2] (npho, time)")
        f, g = x[..., 0], x[..., 1]
        s = _F(self.npho_scale)
        with np.errstate(over="ignore", invalid="ignore"):
            if self.npho_scheme == "log1p":
                n = s * xp.expm1(f * _F(self.npho_scale2))
            elif self.npho_scheme == "sqrt":
                n = s * xp.square(xp.maximum(f, _F(0)))
            elif self.npho_scheme == "anscombe":
                n = (s + _F(0.375)) * xp.square(xp.maximum(f, _F(0))) - _F(0.375)
            else:
                n = f * s
            t = (g + _F(self.time_shift)) * _F(self.time_scale)
        return n.astype(xp.float32), t.astype(xp.float32)

    def _consts(self) -> dict[str, np.float32]:
        # mul: the scale factor; lo: the lowest npho inside the domain of sqrt / anscombe
        s = float(self.npho_scale)
        mul, lo = 1.0 / s, -np.inf  # log1p: log(1 + n/s) / s2 for 1 + n/s > 0; linear: n/s
        if self.npho_scheme == "sqrt":
            mul, lo = 1.0 / np.sqrt(s), 0.0  # sqrt(n) / sqrt(s) for n >= 0
        elif self.npho_scheme == "anscombe":
            mul, lo = 1.0 / np.sqrt(s + 0.375), -0.375  # sqrt(n + 3/8) / sqrt(s + 3/8)
        return {
            "s": _F(s),
            "mul": _F(mul),
            "lo": _F(lo),
            "inv_s2": _F(1.0 / float(self.npho_scale2)),
            "inv_ts": _F(1.0 / float(self.time_scale)),
            "shift": _F(self.time_shift),
            "thr": _F(self.npho_threshold),
            "sn": _F(self.sentinel_npho),
            "st": _F(self.sentinel_time),
        }

    def _jax(self, n: jax.Array, t: jax.Array) -> jax.Array:
        c, scheme = self._consts(), self.npho_scheme
        ok = jnp.abs(n) <= _F(INVALID)  # False for |n| > 9e9, +-Inf and NaN
        n0 = jnp.where(ok, n, _F(0))
        if scheme == "log1p":
            u = (n0 + c["s"]) / c["s"]  # = 1 + n/s; exact near n = -s, exactly 1 at n = 0
            in_domain = u > 0
            f = jnp.log(jnp.where(in_domain, u, _F(1))) * c["inv_s2"]
        else:
            in_domain = n0 >= c["lo"]
            safe = jnp.where(in_domain, n0, _F(0))
            if scheme == "sqrt":
                f = jnp.sqrt(safe) * c["mul"]
            elif scheme == "anscombe":
                f = jnp.sqrt(safe + _F(0.375)) * c["mul"]
            else:
                f = safe * c["mul"]
        f = jnp.where(ok, jnp.where(in_domain, f, _F(0)), c["sn"])
        t_ok = ok & (n >= c["thr"]) & (jnp.abs(t) <= _F(INVALID))
        g = jnp.where(t_ok, jnp.where(t_ok, t, _F(0)) * c["inv_ts"] - c["shift"], c["st"])
        return jnp.stack([f, g], axis=-1)

    def into(self, npho: np.ndarray, time: np.ndarray, out: np.ndarray) -> np.ndarray:
        """NumPy path writing into out [..., 4760, 2] float32; in-place ops keep it fast.

        Evaluates the float32 expressions of the jax path. Works through blocks of _BLOCK
        events, so that its ~15 passes run in cache instead of memory (~1.5x faster).
        """
        if not out.flags.c_contiguous or out.shape != (*npho.shape, 2) or out.dtype != _F:
            raise ValueError(f"out must be a C-contiguous float32 array {(*npho.shape, 2)}")
        n2, t2 = npho.reshape(-1, N_SENSORS), time.reshape(-1, N_SENSORS)
        o2, c = out.reshape(-1, N_SENSORS, 2), self._consts()
        for i in range(0, len(n2), _BLOCK):
            self._block(c, n2[i : i + _BLOCK], t2[i : i + _BLOCK], o2[i : i + _BLOCK])
        return out

    def _block(self, c: dict, npho: np.ndarray, time: np.ndarray, out: np.ndarray) -> None:
        # Invalid inputs run through the arithmetic (warnings silenced) and are overwritten
        # afterwards, which saves a pass.
        scheme = self.npho_scheme
        ok = np.abs(npho) <= _F(INVALID)
        f = np.empty(npho.shape, np.float32)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if scheme in ("log1p", "linear"):
                below = None
                if scheme == "log1p":
                    np.add(npho, c["s"], out=f)
                    f /= c["s"]
                    below = f <= 0
                    np.log(f, out=f)
                    f *= c["inv_s2"]
                else:
                    np.multiply(npho, c["mul"], out=f)
            else:
                below = npho < c["lo"]
                if scheme == "sqrt":
                    np.sqrt(npho, out=f)
                else:
                    np.add(npho, _F(0.375), out=f)
                    np.sqrt(f, out=f)
                f *= c["mul"]
            if below is not None and below.any():
                np.copyto(f, _F(0), where=below)
            np.copyto(f, c["sn"], where=~ok)
            out[..., 0] = f
            # time feature, reusing f as scratch
            np.multiply(time, c["inv_ts"], out=f)
            f -= c["shift"]
        t_ok = npho >= c["thr"]
        t_ok &= ok
        t_ok &= np.abs(time) <= _F(INVALID)
        np.copyto(f, c["st"], where=~t_ok)
        out[..., 1] = f
