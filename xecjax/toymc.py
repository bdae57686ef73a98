"""The toy Monte Carlo physics in JAX: one jitted call simulates a block of events.

The files, the command line and the host side are in `xecjax.simulate`.

Physics (DESIGN.md section 10; cm, ns, MeV unless stated). A gamma leaves a vertex on the target
(`slanted` foil: beam spot sigma_x = sigma_y = 1 cm, foil at 15 deg to the beam, so
sigma_z = sigma_x / tan 15 deg ~ 3.7 cm; `flat` foil perpendicular to the beam, z = 0; `point`:
the origin) with a direction uniform in cos(theta) and phi inside the inner-face acceptance. It
flies straight to the inner LXe surface (r = 64.84) and converts at an exponential depth (mean
9/7 X0) beyond it: that point is the first interaction `xyzTruth`. The shower deposits its energy
at 8 points along a gamma-function longitudinal profile (peak 1.1 X0) with a Gaussian lateral
spread. Each deposit emits 4e4 photons/MeV; a sensor facing it receives N * Omega/(4 pi) *
exp(-d/lambda), with Omega the solid angle of its sensitive area (geometry.AREAS) times the
facing factor cos = normal . (deposit - sensor) / d, and lambda combining absorption (100 cm)
and Rayleigh scattering (40 cm); a small diffuse (scattered) part is spread over all sensors by
area. Photoelectrons = Poisson(photons * efficiency * channel spread); npho = nphe /
nominal efficiency + electronic noise. Times: emission jitter + flight + n d / c + 2 ns/sqrt(Npe)
(+) 50 ps; channels without photoelectrons have no time (1e10). Dead channels (fixed per run) carry
1e10 in every per-sensor branch.

Randomness is keyed per event (fold_in(run key, event number)), so the contents do not depend
on how the events are chunked; the same seed always gives the same files.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from xecjax import geometry

INVALID = 1e10  # marks dead channels / missing values in every per-sensor branch
C_LIGHT = 29.9792458  # cm/ns
X0 = 2.77  # LXe radiation length, cm
THETA_RANGE_DEG = (62.7, 117.3)  # inner-face acceptance seen from the origin
PHI_RANGE_DEG = (-62.8, 62.8)
N_DEPOSITS = 8
MAP_BATCH = 8  # events per vectorised step inside a block

PER_SENSOR = ("npho", "nphe", "time", "relative_npho", "relative_time")
SIM_BRANCHES = (
    "run", "event", "npho", "nphe", "time", "relative_npho", "relative_time",
    "emiAng", "emiVec", "xyzVTX", "xyzTruth", "uvwTruth", "xyzRecoFI", "uvwRecoFI",
    "energyTruth", "timeTruth", "energyReco", "timeReco",
)  # fmt: skip
# Exactly the output of macro/PrepareRealData.C (no nphe, no truth).
REAL_DATA_BRANCHES = (
    "run", "event", "xyzRecoFI", "xyzRecoLC", "xyzVTX", "emiVec", "emiAng", "uvwRecoFI",
    "uvwRecoLC", "energyReco", "timeReco", "npho", "time", "relative_npho", "relative_time",
    "ch_npho_max", "ch_time_min", "npho_max_used", "time_min_used",
)  # fmt: skip
BRANCH_DTYPES = {
    **{b: np.dtype(np.float32) for b in SIM_BRANCHES + REAL_DATA_BRANCHES},
    "run": np.dtype(np.int32),
    "event": np.dtype(np.int32),
    "ch_npho_max": np.dtype(np.int16),  # Short_t in PrepareRealData.C
    "ch_time_min": np.dtype(np.int16),
}


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Options of the toy Monte Carlo (hashable: it is a static argument of the jitted core)."""

    vertex: str = "slanted"  # "slanted" target foil | "flat" foil (z = 0) | "point" (origin)
    energy_mev: float | tuple[float, float] = 52.8  # a line, or (lo, hi) uniform, MeV
    dead_fraction: float = 0.005  # fraction of channels dead (1e10), drawn once per run (file)
    noise_sigma: float = 5.0  # electronic noise, photons (npho units), Gaussian
    pileup_fraction: float = 0.0  # fraction of events with a second (pile-up) gamma
    pileup_window_ns: float = 20.0  # pile-up gamma time offset, uniform in +-window, ns
    beam_sigma_cm: float = 1.0  # beam spot sigma in x and y, cm
    target_angle_deg: float = 15.0  # slanted foil angle to the beam axis, degrees
    photons_per_mev: float = 4.0e4  # scintillation yield
    conversion_depth_x0: float = 9.0 / 7.0  # mean conversion depth beyond the inner face, X0
    shower_peak_x0: float = 1.1  # longitudinal profile maximum after conversion, X0
    shower_b: float = 0.5  # gamma-profile slope b (per X0); shape a = 1 + b * peak
    lateral_sigma_cm: float = 1.0  # lateral spread of each deposit, cm
    absorption_cm: float = 100.0  # absorption length, cm
    rayleigh_cm: float = 40.0  # Rayleigh scattering length (removes direct light), cm
    diffuse_fraction: float = 0.05  # fraction of all photons reaching sensors diffusely
    sipm_pde: float = 0.15  # SiPM photon detection efficiency
    pmt_qe: float = 0.30  # PMT quantum efficiency
    efficiency_spread: float = 0.10  # relative channel-efficiency spread (per run), unknown to npho
    refractive_index: float = 1.61
    time_jitter_ns: float = 1.0  # emission-time spread (trigger jitter), ns
    time_sigma_1pe_ns: float = 2.0  # single-photoelectron time resolution, ns (/sqrt(Npe))
    time_sigma_floor_ns: float = 0.05  # constant term, ns
    reco_uvw_sigma_cm: tuple[float, float, float] = (0.25, 0.25, 0.5)  # FI position resolution
    reco_lc_sigma_cm: tuple[float, float, float] = (0.8, 0.8, 1.5)  # light-centre resolution
    reco_energy_rel: float = 0.02  # sigma_E / E
    reco_time_sigma_ns: float = 0.06  # gamma time resolution, ns
    vertex_sigma_cm: float = 0.15  # positron vertex resolution (real-data mode), cm
    exact_poisson_below: float = 3.0  # exact Poisson below this mean (Npe), normal above

    def __post_init__(self):
        if self.vertex not in ("slanted", "flat", "point"):
            raise ValueError(f"vertex {self.vertex!r}: expected 'slanted', 'flat' or 'point'")
        lo, hi = self.energy_range
        if not 0 < lo <= hi:
            raise ValueError(f"energy_mev {self.energy_mev!r}: expected > 0 MeV and lo <= hi")
        for name in ("dead_fraction", "pileup_fraction", "diffuse_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} = {getattr(self, name)!r}: expected in [0, 1)")
        if self.noise_sigma < 0:
            raise ValueError(f"noise_sigma = {self.noise_sigma!r}: expected >= 0 photons")

    @property
    def energy_range(self) -> tuple[float, float]:
        """(lo, hi) in MeV; lo == hi for a line."""
        e = self.energy_mev
        return (float(e), float(e)) if np.isscalar(e) else (float(e[0]), float(e[1]))


# ----------------------------------------------------------------------------------------------
# Detector constants as float32 device arrays (closed over by the jitted core).
# ----------------------------------------------------------------------------------------------
_POS_T = geometry.POSITIONS.T.astype(np.float32)  # [3, 4760] cm
_NRM_T = geometry.NORMALS.T.astype(np.float32)  # [3, 4760], pointing into the LXe
_AREA = geometry.AREAS.astype(np.float32)  # [4760] cm^2
_AREA_4PI = (_AREA / (4 * np.pi)).astype(np.float32)
_IOTA = np.arange(geometry.N_SENSORS, dtype=np.int32)


def params_of(cfg: SimConfig) -> dict[str, np.ndarray]:
    """The numeric options as (traced) arrays: changing them does not recompile."""
    p = {
        f.name: np.asarray(getattr(cfg, f.name), np.float32)
        for f in dataclasses.fields(cfg)
        if f.name not in ("vertex", "energy_mev", "exact_poisson_below")
    }
    p["energy_lo"], p["energy_hi"] = (np.float32(e) for e in cfg.energy_range)
    # point: no spread; flat: foil at z = 0; slanted: the beam crosses the foil at z = x/tan(a).
    p["beam_sigma_cm"] = np.float32(0.0 if cfg.vertex == "point" else cfg.beam_sigma_cm)
    slope = 1.0 / math.tan(math.radians(cfg.target_angle_deg)) if cfg.vertex == "slanted" else 0
    p["z_per_x"] = np.float32(slope)
    p["efficiency"] = np.where(geometry.IS_SIPM, cfg.sipm_pde, cfg.pmt_qe).astype(np.float32)
    return p


# ----------------------------------------------------------------------------------------------
# Random numbers. jax.random's threefry costs ~40 ns a word on this CPU (> 1 ms an event for
# the per-sensor draws) and ~1 s of compilation per call site; a counter-based integer hash
# (lowbias32, 2 rounds) of (64-bit event seed, draw, index) is ~50x cheaper and fuses with the
# arithmetic around it. The event seed itself comes from jax.random (fold_in of the run key).
# ----------------------------------------------------------------------------------------------
def _lowbias32(x):
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


class _Rng:
    """Per-event generator; each call is a new draw (a fixed sequence while tracing)."""

    def __init__(self, seed_words, salt: int):
        self.a, self.b = seed_words[0], seed_words[1]
        self.draws = salt << 16  # separate sequences for the stages of an event

    def bits(self, shape) -> jax.Array:
        self.draws += 1
        s = _lowbias32(self.a ^ jnp.uint32((self.draws * 0x9E3779B9) & 0xFFFFFFFF))
        ctr = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
        return _lowbias32(_lowbias32(ctr ^ s) + self.b)

    def uniform(self, shape=(), lo: float = 0.0, hi: float = 1.0) -> jax.Array:
        """Uniform in the open interval (lo, hi), 24-bit resolution."""
        u = ((self.bits(shape) >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))
        return lo + (hi - lo) * u

    def normal_pair(self, shape=(), bits=None) -> tuple[jax.Array, jax.Array]:
        """Two independent standard normals from one 32-bit word each (Box-Muller on its two
        16-bit halves: tails reach 4.8 sigma, enough for detector noise)."""
        bits = self.bits(shape) if bits is None else bits
        u1 = ((bits >> 16).astype(jnp.float32) + 0.5) * (1.0 / (1 << 16))
        u2 = ((bits & 0xFFFF).astype(jnp.float32) + 0.5) * (1.0 / (1 << 16))
        r = jnp.sqrt(-2.0 * jnp.log(u1))
        return r * _cos_2pi(u2), r * _cos_2pi(u2 - 0.25)

    def normal(self, shape=(), bits=None) -> jax.Array:
        return self.normal_pair(shape, bits)[0]


def _cos_2pi(u):
    """cos(2 pi u) for u in [-1, 1] to ~1e-7, as a polynomial (XLA's cos is ~10x slower)."""
    v = jnp.abs(u - jnp.round(u))  # [0, 1/2]
    flip = v > 0.25
    x = 2.0 * np.pi * jnp.where(flip, 0.5 - v, v)  # [0, pi/2]
    x2 = x * x
    c = 1.0 + x2 * (
        -1 / 2 + x2 * (1 / 24 + x2 * (-1 / 720 + x2 * (1 / 40320 + x2 * (-1 / 3628800))))
    )
    return jnp.where(flip, -c, c)


# ----------------------------------------------------------------------------------------------
# One event (vmapped over event seeds).
# ----------------------------------------------------------------------------------------------
def _sample_vertex(rng: _Rng, p):
    xy = p["beam_sigma_cm"] * rng.normal((2,))
    return jnp.stack([xy[0], xy[1], xy[0] * p["z_per_x"]])


def _gamma_variates(rng: _Rng, shape, n: int, tries: int = 4):
    """n Gamma(shape >= 1) variates by Marsaglia-Tsang with a fixed number of tries.

    With shape 1.55 a try is rejected with probability ~3 %, so 4 tries leave ~1e-6 of the
    draws on their last candidate (jax.random.gamma's while loop costs ~10 s to compile).
    """
    d = shape - 1.0 / 3.0
    c = jax.lax.rsqrt(9.0 * d)
    x = rng.normal((tries, n))
    log_u = jnp.log(rng.uniform((tries, n)))
    v = jnp.maximum(1.0 + c * x, 1e-6) ** 3
    ok = (1.0 + c * x > 0) & (log_u < 0.5 * x * x + d - d * v + d * jnp.log(v))
    first = jnp.argmax(ok.at[-1].set(True), axis=0)  # first accepted try (last as fallback)
    return d * jnp.take_along_axis(v, first[None], axis=0)[0]


def _shower(rng: _Rng, p):
    """Vertex, direction, first interaction and the deposits of one gamma.

    Returns vtx [3], (theta, phi) [2] deg, u [3], xyz_fi [3], t_fi (ns, from emission),
    deposits [8, 3] cm, arrival times of the shower front at them [8] ns.
    """
    vtx = _sample_vertex(rng, p)
    c_lo, c_hi = (math.cos(math.radians(t)) for t in THETA_RANGE_DEG[::-1])
    theta = jnp.rad2deg(jnp.arccos(rng.uniform((), c_lo, c_hi)))
    phi = rng.uniform((), *PHI_RANGE_DEG)
    u = geometry.angles_to_vec(theta, phi)
    # Path length s to the inner LXe cylinder r = XERIN: |vtx_xy + s u_xy| = XERIN.
    a = u[0] ** 2 + u[1] ** 2
    b = 2 * (vtx[0] * u[0] + vtx[1] * u[1])
    c = vtx[0] ** 2 + vtx[1] ** 2 - geometry.XERIN**2
    s = (-b + jnp.sqrt(b * b - 4 * a * c)) / (2 * a)
    depth = jnp.minimum(-jnp.log(rng.uniform()) * p["conversion_depth_x0"] * X0, 30.0)
    xyz_fi = vtx + (s + depth) * u
    shape = 1.0 + p["shower_b"] * p["shower_peak_x0"]
    t_long = _gamma_variates(rng, shape, N_DEPOSITS) / p["shower_b"] * X0  # cm after conversion
    lat = p["lateral_sigma_cm"] * rng.normal((N_DEPOSITS, 3))
    lat = lat - (lat @ u)[:, None] * u  # perpendicular to the shower axis
    deposits = xyz_fi + t_long[:, None] * u + lat
    t_dep = (s + depth + t_long) / C_LIGHT
    return vtx, jnp.stack([theta, phi]), u, xyz_fi, (s + depth) / C_LIGHT, deposits, t_dep


def _light(p, deposits, t_dep, photons):
    """Expected photons [4760] and first-arrival times [4760] (ns) from deposits [8, 3].

    The deposit loop is unrolled so XLA emits one fused loop over the sensors with no
    [8, 4760] intermediates: ~2x faster on CPU than the |p|^2 - 2 p.d + |d|^2 matrix-product
    form (which also loses ~1e-3 to cancellation), and ~4x faster than a [8, 4760, 3] tensor.
    """
    inv_lambda = 1.0 / p["absorption_cm"] + 1.0 / p["rayleigh_cm"]
    slowness = p["refractive_index"] / C_LIGHT  # ns/cm
    mu, t = 0.0, jnp.inf
    for k in range(N_DEPOSITS):
        r = [deposits[k, i] - _POS_T[i] for i in range(3)]  # sensor -> deposit, [4760] each
        d2 = jnp.maximum(r[0] * r[0] + r[1] * r[1] + r[2] * r[2], 1e-4)
        inv_d = jax.lax.rsqrt(d2)
        dist = d2 * inv_d
        cos = jnp.maximum((_NRM_T[0] * r[0] + _NRM_T[1] * r[1] + _NRM_T[2] * r[2]) * inv_d, 0.0)
        # Omega/4pi of a small area, A cos / (4 pi d^2), capped at 1/4 for a deposit at contact.
        frac = jnp.minimum(_AREA_4PI * cos * (inv_d * inv_d), 0.25)
        mu = mu + frac * jnp.exp(-dist * inv_lambda)
        t = jnp.minimum(t, t_dep[k] + slowness * dist)
    diffuse = p["diffuse_fraction"] * photons * (_AREA / _AREA.sum())
    return mu * (photons / N_DEPOSITS) + diffuse, t


def _poisson(rng: _Rng, mu, threshold: float):
    """Poisson counts: inverse CDF (unrolled) below `threshold`, else a normal with skew term.

    The Cornish-Fisher term (z^2 - 1)/6 makes the rounded normal accurate from mu ~ 4 on.
    """
    bits = rng.bits(mu.shape)  # one word serves either branch
    uni = ((bits >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))
    small = jnp.minimum(mu, threshold)
    p = jnp.exp(-small)
    cdf, k = p, jnp.zeros_like(mu)
    for i in range(1, int(3 * threshold + 5)):  # P(N >= 3 mu + 5) < 1e-5 for mu <= threshold
        k = k + (uni > cdf)
        p = p * small * (1.0 / i)
        cdf = cdf + p
    z = rng.normal(mu.shape, bits)
    big = jnp.floor(mu + jnp.sqrt(mu) * z + (z * z - 1.0) / 6.0 + 0.5)
    return jnp.where(mu < threshold, k, jnp.maximum(big, 0.0))


# Stages of an event. Each runs under its own lax.map over the block: the loop boundaries make
# XLA materialise the [4760] arrays between stages; fused across stages, it re-computes the
# light and Poisson chains inside every consumer (measured ~2.5x slower; optimization_barrier
# does not help: XLA:CPU expands it before fusion).
_KINEMATICS, _PILEUP, _SENSORS = 1, 2, 3  # rng salts


def _kinematics(seed_words, p, pileup: bool) -> dict:
    """Per-event truth, reconstructed quantities and shower deposits (small arrays)."""
    rng = _Rng(seed_words, _KINEMATICS)
    energy = rng.uniform((), p["energy_lo"], p["energy_hi"])  # MeV
    t_emit = p["time_jitter_ns"] * rng.normal()
    vtx, ang, u, xyz_fi, t_fi, dep, t_dep = _shower(rng, p)
    uvw_fi = geometry.xyz_to_uvw(xyz_fi)
    reco = rng.normal((5, 3))
    # Reconstructed quantities: truth + resolution (FI in uvw, where resolutions are quoted).
    uvw_reco = uvw_fi + p["reco_uvw_sigma_cm"] * reco[0]
    uvw_lc = uvw_fi + p["reco_lc_sigma_cm"] * reco[3]
    k = {
        "energy": energy, "t_emit": t_emit, "vtx": vtx, "ang": ang, "u": u, "xyz_fi": xyz_fi,
        "uvw_fi": uvw_fi, "t_fi": t_emit + t_fi, "deposits": dep, "t_dep": t_dep + t_emit,
        "photons": energy * p["photons_per_mev"], "uvw_reco": uvw_reco, "uvw_lc": uvw_lc,
        "energy_reco": energy * (1 + p["reco_energy_rel"] * reco[1, 0]),
        "time_reco": t_emit + p["reco_time_sigma_ns"] * reco[1, 1],  # at the vertex, ns
        "vtx_reco": vtx + p["vertex_sigma_cm"] * reco[2],
    }  # fmt: skip
    if pileup:
        pu = _Rng(seed_words, _PILEUP)
        on = pu.uniform() < p["pileup_fraction"]
        e_pu = jnp.where(on, energy * pu.uniform((), 0.2, 1.0), 0.0)
        dt_pu = pu.uniform((), -p["pileup_window_ns"], p["pileup_window_ns"])
        *_, dep_pu, t_dep_pu = _shower(pu, p)
        k |= {"pu_deposits": dep_pu, "pu_t_dep": t_dep_pu + t_emit + dt_pu}
        k["pu_photons"] = e_pu * p["photons_per_mev"]
    return k


def _light_total(k: dict, p, pileup: bool):
    """Expected photons and first-arrival times (ns, incl. emission time) [4760] each."""
    mu, t = _light(p, k["deposits"], k["t_dep"], k["photons"])
    if pileup:
        mu_pu, t_pu = _light(p, k["pu_deposits"], k["pu_t_dep"], k["pu_photons"])
        t = jnp.where(mu_pu > mu, t_pu, t)  # the brighter source sets the time
        mu = mu + mu_pu
    return mu, t


def _counts(seed_words, mu, alive, chan_eff, p, exact_below: float):
    """Photoelectrons [4760] and two standard normals [4760] (noise, time) of one event."""
    rng = _Rng(seed_words, _SENSORS)
    npe = _poisson(rng, mu * p["efficiency"] * chan_eff, exact_below)
    return (npe, *rng.normal_pair(mu.shape))


def _sensors(npe, z_noise, z_time, t_arr, alive, p):
    """npho, nphe (1e10 if dead), time (s; 1e10 if dead or no photoelectron) [4760] each."""
    eff = p["efficiency"]
    npho = npe / eff + p["noise_sigma"] * z_noise
    t_sigma2 = p["time_sigma_1pe_ns"] ** 2 / jnp.maximum(npe, 1.0) + p["time_sigma_floor_ns"] ** 2
    time_ns = t_arr + jnp.sqrt(t_sigma2) * z_time
    has_time = alive & (npe > 0)
    return (
        jnp.where(alive, npho, INVALID),
        jnp.where(alive, npho * eff, INVALID),
        jnp.where(has_time, time_ns * 1e-9, INVALID),
    )


def _relative(npho, nphe, time):
    """relative_npho, relative_time [4760] and the channel/value used, as PrepareRealData.C.

    Plain max/min plus an iota trick for the channel: XLA's variadic argmax is ~4x slower.
    """
    alive, has_time = npho < 1e9, time < 1e9
    npho_ok = jnp.where(alive & (npho >= 0), npho, -jnp.inf)
    npho_max = jnp.max(npho_ok)
    cand = has_time & (nphe > 50)
    cand = jnp.where(cand.any(), cand, has_time)  # fallback: never in practice
    time_ok = jnp.where(cand, time, jnp.inf)
    time_min = jnp.min(time_ok)
    return {
        "relative_npho": jnp.where(alive, npho / npho_max, INVALID),
        "relative_time": jnp.where(has_time, time - time_min, INVALID),
        "ch_npho_max": jnp.min(jnp.where(npho_ok == npho_max, _IOTA, 32767)),
        "ch_time_min": jnp.min(jnp.where(time_ok == time_min, _IOTA, 32767)),
        "npho_max_used": npho_max,
        "time_min_used": time_min,
    }


@functools.partial(jax.jit, static_argnames=("pileup", "exact_below"))
def simulate_block(run_key, event_ids, alive, chan_eff, p, pileup, exact_below):
    """Every branch of both file kinds but run/event, for a block of events (ids [B] uint32).

    Real-data values that differ from the truth carry a "real:" prefix.
    """
    seeds = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(run_key, i), (2,)))(event_ids)
    k = jax.vmap(lambda s: _kinematics(s, p, pileup))(seeds)

    # lax.map vmaps MAP_BATCH events at a time so that their intermediates stay in cache (a
    # vmap over the whole block is memory bound, several times slower on CPU).
    def smap(f, xs):
        return jax.lax.map(lambda x: f(*x), xs, batch_size=MAP_BATCH)

    mu, t_arr = smap(lambda kk: _light_total(kk, p, pileup), (k,))
    npe, z_noise, z_time = smap(
        lambda s, m: _counts(s, m, alive, chan_eff, p, exact_below), (seeds, mu)
    )

    def finish(*args):
        npho, nphe, time = _sensors(*args, alive, p)
        return npho, nphe, time, _relative(npho, nphe, time)

    npho, nphe, time, rel = smap(finish, (npe, z_noise, z_time, t_arr))
    xyz_reco = geometry.uvw_to_xyz(k["uvw_reco"])
    # The real-data view (direction from the reconstructed points, as PrepareRealData.C) is
    # computed always: a few numbers per event, and one compilation serves both file kinds.
    emi = xyz_reco - k["vtx_reco"]
    emi = emi / jnp.linalg.norm(emi, axis=-1, keepdims=True)
    out = rel | {
        "npho": npho, "nphe": nphe, "time": time, "xyzRecoFI": xyz_reco,
        "uvwRecoFI": k["uvw_reco"], "energyReco": k["energy_reco"] * 1e-3,
        "timeReco": k["time_reco"], "emiAng": k["ang"], "emiVec": k["u"], "xyzVTX": k["vtx"],
        "xyzTruth": k["xyz_fi"], "uvwTruth": k["uvw_fi"], "energyTruth": k["energy"] * 1e-3,
        "timeTruth": k["t_fi"], "uvwRecoLC": k["uvw_lc"],
        "xyzRecoLC": geometry.uvw_to_xyz(k["uvw_lc"]), "real:xyzVTX": k["vtx_reco"],
        "real:emiVec": emi, "real:emiAng": geometry.vec_to_angles(emi),
    }  # fmt: skip
    return {name: v.astype(BRANCH_DTYPES[name.removeprefix("real:")]) for name, v in out.items()}


@jax.jit
def run_channels(run_key, dead_fraction, efficiency_spread):
    """Per-run detector state: alive mask [4760] bool, channel efficiency factor [4760]."""
    kd, ke = jax.random.split(jax.random.fold_in(run_key, 0xFFFFFFFF))
    alive = jax.random.uniform(kd, (geometry.N_SENSORS,)) >= dead_fraction
    spread = efficiency_spread * jax.random.normal(ke, (geometry.N_SENSORS,))
    return alive, jnp.clip(1.0 + spread, 0.3, 2.0)
