"""MEG II liquid-xenon detector geometry: the one place that defines it.

The detector has 4760 photo-sensors, indexed 0..4759 in the channel order of every ROOT file
and of the ONNX input. 4092 SiPMs (MPPCs) cover the inner face; 668 PMTs cover the outer,
upstream (US), downstream (DS), top and bottom faces. Everything here is computed from the
construction constants (cm, degrees); nothing is read from a table.

Coordinates: phi_d = atan2(y, -x) (detector centre at phi_d = 0), x = -r cos phi_d,
y = r sin phi_d, z along the beam. The emission-angle convention (theta, phi of the gamma)
uses the same frame: x = -sin(theta) cos(phi), y = sin(theta) sin(phi), z = cos(theta).

Tables (module constants, NumPy, built once at import):
  POSITIONS [4760, 3] cm, NORMALS [4760, 3] (unit, pointing into the LXe), AREAS [4760] cm^2,
  FACE_OF [4760] int (index into FACE_NAMES), IS_SIPM [4760] bool,
  INNER_MAP [93, 44] (phi row, z column), OUTER_COARSE_MAP [9, 24] (z row, phi column),
  US_MAP / DS_MAP [24, 6] (phi row, radial column), OUTER_CENTER_MAP [6, 5] (phi row, z column),
  OUTER_FINE_MAP / OUTER_FINE_SCALE [45, 72] (z row, phi column), TOP_IDS / BOTTOM_IDS [73],
  HEX_NEIGHBORS / HEX_NEIGHBOR_MASK [73, 6] (local indices within a hex face).
In every image map, increasing row/column index follows decreasing phi_d and increasing z/r,
i.e. neighbouring cells are neighbouring sensors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------------------------
# Construction constants (cm, degrees).
# ----------------------------------------------------------------------------------------------
N_SENSORS = 4760
N_SIPM = 4092

XERIN = 64.84  # inner LXe radius
SIPM_HEIGHT = 0.13
R_INNER = XERIN + SIPM_HEIGHT  # radius of the SiPM surfaces, 64.97
XEROUT = 106.27  # outer radius (PMT photocathodes)
INNER_Z_LENGTH = 67.03
OUTER_Z_LENGTH = 96.0
PHI_COVERAGE_DEG = 125.52
PHI_EDGE_DEG = PHI_COVERAGE_DEG / 2  # 62.76

INNER_NPHI, INNER_NZ = 93, 44
INNER_DZ = 1.509772
OUTER_NPHI, OUTER_NZ = 24, 9
OUTER_DPHI_DEG = 5.23
OUTER_DZ = 10.356
CENTER_NPHI, CENTER_NZ = 6, 5
CENTER_DPHI_DEG = 3.48667
CENTER_DZ = 6.2
ENDCAP_NR = 6
ENDCAP_R0, ENDCAP_DR = 69.53, 6.684
ENDCAP_Z0, ENDCAP_SLOPE = 33.515, 0.34963
HEX_ROW_LENGTHS = (11, 12, 11, 12, 13, 14)
HEX_R0, HEX_DR = 68.27, 6.91
HEX_DZ = 6.12
HEX_NEIGHBOR_DISTANCE = 8.0  # cm; nearest neighbours are 6.12-7.56 cm apart, next ones > 11
HEX_MAX_DEGREE = 6

SIPM_AREA = 2 * 2 * 0.590**2  # 2x2 chips of 5.90 mm: 1.392 cm^2
PMT_AREA = np.pi * 2.25**2  # photocathode radius 2.25 cm

# Acceptance of gammas from the origin (degrees): theta in [62.7, 117.3], |phi| <= 62.8.
ACCEPTANCE_CENTER_DEG = (90.0, 0.0)  # (theta, phi)

# Fiducial volume (uvw, cm) used in analyses.
FIDUCIAL_U = 23.9
FIDUCIAL_V = 67.9

# ----------------------------------------------------------------------------------------------
# Faces and id ranges.
# ----------------------------------------------------------------------------------------------
FACE_NAMES = ("inner", "outer", "us", "ds", "top", "bottom")
INNER_IDS = np.arange(0, 4092)
OUTER_COARSE_IDS = np.arange(4092, 4308)
US_IDS = np.arange(4308, 4452)
DS_IDS = np.arange(4452, 4596)
TOP_IDS = np.arange(4596, 4669)
BOTTOM_IDS = np.arange(4669, 4742)
OUTER_CENTER_EXTRA_IDS = np.arange(4742, 4760)
N_HEX = len(TOP_IDS)  # 73

# The outer centre patch: 6 (phi, phi_d from +8.7 deg down to -8.7 deg) x 5 (z, -12.4..+12.4 cm).
# Its 12 coarse ids are the coarse PMT channels that sit in the patch.
OUTER_CENTER_MAP = np.array(
    [
        [4185, 4742, 4186, 4743, 4187],
        [4744, 4745, 4746, 4747, 4748],
        [4194, 4749, 4195, 4750, 4196],
        [4203, 4751, 4204, 4752, 4205],
        [4753, 4754, 4755, 4756, 4757],
        [4212, 4758, 4213, 4759, 4214],
    ]
)

INNER_MAP = np.arange(N_SIPM).reshape(INNER_NPHI, INNER_NZ)  # id = 44 i_phi + i_z
# id = 4092 + 9 j_phi + k_z, stored as [k_z, j_phi] (the physical 9 z x 24 phi layout).
OUTER_COARSE_MAP = OUTER_COARSE_IDS.reshape(OUTER_NPHI, OUTER_NZ).T.copy()
US_MAP = US_IDS.reshape(OUTER_NPHI, ENDCAP_NR)  # id = 4308 + 6 j_phi + k_r
DS_MAP = DS_IDS.reshape(OUTER_NPHI, ENDCAP_NR)

# Outer fine grid: coarse cells split 5 (z) x 3 (phi), centre-patch cells 3 (z) x 2 (phi).
FINE_PER_COARSE = (5, 3)
FINE_PER_CENTER = (3, 2)
OUTER_FINE_SHAPE = (OUTER_NZ * FINE_PER_COARSE[0], OUTER_NPHI * FINE_PER_COARSE[1])  # 45 x 72
OUTER_FINE_POOL = (3, 3)  # average pooling -> 15 x 24
# Coarse cells covered by the centre patch: k_z 3..5 and j_phi 10..13.
CENTER_COARSE_Z0, CENTER_COARSE_PHI0 = 3, 10


def _build_fine_grid() -> tuple[np.ndarray, np.ndarray]:
    """Sensor id and npho scale of every outer fine-grid cell, [45, 72] each (z row, phi col)."""
    fz, fp = FINE_PER_COARSE
    ids = np.repeat(np.repeat(OUTER_COARSE_MAP, fz, axis=0), fp, axis=1)
    scale = np.full(ids.shape, 1.0 / (fz * fp), np.float32)
    cz, cp = FINE_PER_CENTER
    # centre patch as [z, phi], upsampled, pasted over the coarse cells it covers
    center = np.repeat(np.repeat(OUTER_CENTER_MAP.T, cz, axis=0), cp, axis=1)  # 15 x 12
    z0, p0 = CENTER_COARSE_Z0 * fz, CENTER_COARSE_PHI0 * fp
    ids[z0 : z0 + center.shape[0], p0 : p0 + center.shape[1]] = center
    scale[z0 : z0 + center.shape[0], p0 : p0 + center.shape[1]] = 1.0 / (cz * cp)
    return ids, scale


OUTER_FINE_MAP, OUTER_FINE_SCALE = _build_fine_grid()


# ----------------------------------------------------------------------------------------------
# Positions, normals, areas.
# ----------------------------------------------------------------------------------------------
def _cyl(r, phi_deg, z) -> np.ndarray:
    phi = np.deg2rad(phi_deg)
    r, phi, z = np.broadcast_arrays(r, phi, z)
    return np.stack([-r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def _radial(phi_deg) -> np.ndarray:
    return _cyl(1.0, phi_deg, 0.0)


def _phi_hat(phi_deg) -> np.ndarray:
    """Unit vector towards increasing phi_d."""
    phi = np.deg2rad(np.asarray(phi_deg, float))
    return np.stack([np.sin(phi), np.cos(phi), np.zeros_like(phi)], axis=-1)


def _hex_local() -> tuple[np.ndarray, np.ndarray]:
    """In-plane (radius, z) of the 73 sensors of a hex face, row by row."""
    r, z = [], []
    for row, length in enumerate(HEX_ROW_LENGTHS):
        i = np.arange(length)
        r.append(np.full(length, HEX_R0 + HEX_DR * row))
        z.append((i - (length - 1) / 2) * HEX_DZ)
    return np.concatenate(r), np.concatenate(z)


def _build_sensors() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.zeros((N_SENSORS, 3))
    nrm = np.zeros((N_SENSORS, 3))

    i_phi, i_z = np.divmod(INNER_IDS, INNER_NZ)
    phi = PHI_EDGE_DEG - (i_phi + 0.5) * PHI_COVERAGE_DEG / INNER_NPHI
    pos[INNER_IDS] = _cyl(R_INNER, phi, (i_z - (INNER_NZ - 1) / 2) * INNER_DZ)
    nrm[INNER_IDS] = _radial(phi)

    j_phi, k_z = np.divmod(OUTER_COARSE_IDS - 4092, OUTER_NZ)
    phi = PHI_EDGE_DEG - (j_phi + 0.5) * OUTER_DPHI_DEG
    pos[OUTER_COARSE_IDS] = _cyl(XEROUT, phi, (k_z - (OUTER_NZ - 1) / 2) * OUTER_DZ)
    nrm[OUTER_COARSE_IDS] = -_radial(phi)

    m, ll = np.meshgrid(np.arange(CENTER_NPHI), np.arange(CENTER_NZ), indexing="ij")
    phi = ((CENTER_NPHI - 1) / 2 - m) * CENTER_DPHI_DEG
    ids = OUTER_CENTER_MAP
    pos[ids] = _cyl(XEROUT, phi, (ll - (CENTER_NZ - 1) / 2) * CENTER_DZ)
    nrm[ids] = -_radial(phi)

    for ids, side in ((US_IDS, -1.0), (DS_IDS, 1.0)):
        j_phi, k_r = np.divmod(ids - ids[0], ENDCAP_NR)
        phi = PHI_EDGE_DEG - (j_phi + 0.5) * OUTER_DPHI_DEG
        r = ENDCAP_R0 + ENDCAP_DR * k_r
        pos[ids] = _cyl(r, phi, side * (ENDCAP_Z0 + (r - XERIN) * ENDCAP_SLOPE))
        n = ENDCAP_SLOPE * _radial(phi) - side * np.array([0.0, 0.0, 1.0])
        nrm[ids] = n / np.linalg.norm(n, axis=-1, keepdims=True)

    r_hex, z_hex = _hex_local()
    for ids, side in ((TOP_IDS, 1.0), (BOTTOM_IDS, -1.0)):
        pos[ids] = _cyl(r_hex, side * PHI_EDGE_DEG, z_hex)
        nrm[ids] = -side * _phi_hat(side * PHI_EDGE_DEG)

    area = np.where(np.arange(N_SENSORS) < N_SIPM, SIPM_AREA, PMT_AREA)
    return pos, nrm, area


POSITIONS, NORMALS, AREAS = _build_sensors()
IS_SIPM = np.arange(N_SENSORS) < N_SIPM

FACE_OF = np.empty(N_SENSORS, np.int32)
for _face, _ids in enumerate((INNER_IDS, OUTER_COARSE_IDS, US_IDS, DS_IDS, TOP_IDS, BOTTOM_IDS)):
    FACE_OF[_ids] = _face
FACE_OF[OUTER_CENTER_EXTRA_IDS] = FACE_NAMES.index("outer")  # the centre patch is outer face
del _face, _ids


# ----------------------------------------------------------------------------------------------
# Neighbour tables.
# ----------------------------------------------------------------------------------------------
def _build_hex_neighbors() -> tuple[np.ndarray, np.ndarray]:
    """Neighbours of each hex-face sensor (same face, distance < 8 cm), padded to degree 6.

    Returns (indices [73, 6] local to the face, mask [73, 6] float32); padded slots point at
    the node itself with mask 0. Top and bottom faces are mirror images: one table serves both.
    """
    r, z = _hex_local()
    d = np.hypot(r[:, None] - r[None, :], z[:, None] - z[None, :])
    adj = (d < HEX_NEIGHBOR_DISTANCE) & ~np.eye(N_HEX, dtype=bool)
    idx = np.repeat(np.arange(N_HEX)[:, None], HEX_MAX_DEGREE, axis=1)
    mask = np.zeros((N_HEX, HEX_MAX_DEGREE), np.float32)
    for i in range(N_HEX):
        (nb,) = np.nonzero(adj[i])
        idx[i, : len(nb)] = nb
        mask[i, : len(nb)] = 1.0
    return idx, mask


HEX_NEIGHBORS, HEX_NEIGHBOR_MASK = _build_hex_neighbors()


@functools.lru_cache(maxsize=8)
def sensor_neighbors(k: int) -> np.ndarray:
    """k nearest sensors of every sensor on the same face (itself excluded), [4760, k] int32.

    The outer coarse face and the centre patch count as one face. Built from POSITIONS.
    """
    out = np.empty((N_SENSORS, k), np.int32)
    for face in range(len(FACE_NAMES)):
        (ids,) = np.nonzero(FACE_OF == face)
        p = POSITIONS[ids]
        d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d2, np.inf)
        out[ids] = ids[np.argsort(d2, axis=1, kind="stable")[:, :k]]
    return out


FACE_MAX_DEGREE = 8  # the most grid neighbours any sensor has (face_neighbors)


@functools.lru_cache(maxsize=1)
def face_neighbors() -> tuple[np.ndarray, np.ndarray]:
    """The sensors next to each sensor on its face's grid: (ids [4760, 8] int32, mask [4760, 8]
    bool), padded slots point at the sensor itself with mask False; sorted ids.

    Inner (INNER_MAP), US and DS (US_MAP, DS_MAP): the 8-connected cells of the grid (fewer at
    its edges). Outer: sensors whose cells touch in the outer fine grid (OUTER_FINE_MAP, edges
    or corners), so the coarse PMTs next to the centre patch and the patch PMTs next to them are
    neighbours; interior coarse PMTs get their 8-connected coarse cells. Top and bottom: the hex
    neighbours (HEX_NEIGHBORS, distance < 8 cm). Symmetric; never across faces.
    """
    pairs = []
    for grid in (INNER_MAP, US_MAP, DS_MAP, OUTER_FINE_MAP):
        rows, cols = grid.shape
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr or dc:
                    a = grid[max(0, -dr) : rows - max(0, dr), max(0, -dc) : cols - max(0, dc)]
                    b = grid[max(0, dr) : rows - max(0, -dr), max(0, dc) : cols - max(0, -dc)]
                    pairs.append(np.stack([a.ravel(), b.ravel()], axis=1))
    for ids in (TOP_IDS, BOTTOM_IDS):
        k = HEX_NEIGHBOR_MASK > 0
        pairs.append(
            np.stack([np.broadcast_to(ids[:, None], k.shape)[k], ids[HEX_NEIGHBORS][k]], 1)
        )
    pairs = np.unique(np.concatenate(pairs), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]  # fine-grid cells of the same sensor
    degree = np.bincount(pairs[:, 0], minlength=N_SENSORS)
    if degree.max() > FACE_MAX_DEGREE:  # a construction constant changed
        raise AssertionError(f"a sensor has {degree.max()} > {FACE_MAX_DEGREE} grid neighbours")
    slot = np.arange(len(pairs)) - np.repeat(np.cumsum(degree) - degree, degree)
    idx = np.repeat(np.arange(N_SENSORS, dtype=np.int32)[:, None], FACE_MAX_DEGREE, axis=1)
    mask = np.zeros((N_SENSORS, FACE_MAX_DEGREE), bool)
    idx[pairs[:, 0], slot] = pairs[:, 1]
    mask[pairs[:, 0], slot] = True
    idx.flags.writeable = mask.flags.writeable = False  # cached: shared by every caller
    return idx, mask


# ----------------------------------------------------------------------------------------------
# Coordinates and the angle convention (NumPy or jax.numpy, following the input).
# ----------------------------------------------------------------------------------------------
def _xp(*arrays):
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def phi_d_deg(xyz):
    """Detector azimuth phi_d = atan2(y, -x) in degrees, [..., 3] -> [...]."""
    xp = _xp(xyz)
    return xp.rad2deg(xp.arctan2(xyz[..., 1], -xyz[..., 0]))


def xyz_to_uvw(xyz):
    """MEG 'Global' uvw (cm): u = z, v = phi_d(rad) * 64.97, w = r - 64.97. [..., 3]."""
    xp = _xp(xyz)
    r = xp.hypot(xyz[..., 0], xyz[..., 1])
    v = xp.arctan2(xyz[..., 1], -xyz[..., 0]) * R_INNER
    return xp.stack([xyz[..., 2], v, r - R_INNER], axis=-1)


def uvw_to_xyz(uvw):
    """Inverse of xyz_to_uvw. [..., 3] cm."""
    xp = _xp(uvw)
    r = uvw[..., 2] + R_INNER
    phi = uvw[..., 1] / R_INNER
    return xp.stack([-r * xp.cos(phi), r * xp.sin(phi), uvw[..., 0]], axis=-1)


def in_fiducial(uvw):
    """Boolean fiducial cut |u| < 23.9, |v| < 67.9, w >= 0 on [..., 3] uvw (cm)."""
    xp = _xp(uvw)
    return (
        (xp.abs(uvw[..., 0]) < FIDUCIAL_U) & (xp.abs(uvw[..., 1]) < FIDUCIAL_V) & (uvw[..., 2] >= 0)
    )


def angles_to_vec(theta_deg, phi_deg):
    """(theta, phi) in degrees -> unit vector [..., 3]: (-sin t cos p, sin t sin p, cos t)."""
    xp = _xp(theta_deg, phi_deg)
    t, p = xp.deg2rad(theta_deg), xp.deg2rad(phi_deg)
    return xp.stack([-xp.sin(t) * xp.cos(p), xp.sin(t) * xp.sin(p), xp.cos(t)], axis=-1)


def vec_to_angles(vec):
    """Vector [..., 3] (any length > 0) -> (theta, phi) in degrees, [..., 2]."""
    xp = _xp(vec)
    norm = xp.linalg.norm(vec, axis=-1)
    theta = xp.rad2deg(xp.arccos(xp.clip(vec[..., 2] / norm, -1.0, 1.0)))
    phi = xp.rad2deg(xp.arctan2(vec[..., 1], -vec[..., 0]))
    return xp.stack([theta, phi], axis=-1)


def opening_angle_deg(v1, v2):
    """Angle between two directions [..., 3] in degrees: arccos(clip(v1.v2, -1, 1))."""
    xp = _xp(v1, v2)
    v1 = v1 / xp.linalg.norm(v1, axis=-1, keepdims=True)
    v2 = v2 / xp.linalg.norm(v2, axis=-1, keepdims=True)
    return xp.rad2deg(xp.arccos(xp.clip((v1 * v2).sum(-1), -1.0, 1.0)))


def wrap_deg(delta):
    """Wrap an angle difference into [-180, 180) degrees."""
    xp = _xp(delta)
    return xp.mod(delta + 180.0, 360.0) - 180.0


# (u, v) of every inner SiPM in the inner-face image layout [93 (phi), 44 (z), 2], cm: the
# coordinates a network localising the shower on the inner face predicts in.
INNER_UV = xyz_to_uvw(POSITIONS[INNER_MAP])[..., :2].astype(np.float32)
