"""Geometry invariants: positions, face maps, neighbour tables, angle convention."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from xecjax import geometry as g

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.mark.skipif(
    not (REFERENCE / "sensor_positions.txt").exists(), reason="reference table absent"
)
def test_positions_match_reference_table():
    ref = np.loadtxt(REFERENCE / "sensor_positions.txt")
    assert ref.shape == (g.N_SENSORS, 4)
    np.testing.assert_array_equal(ref[:, 0], np.arange(g.N_SENSORS))
    assert np.abs(g.POSITIONS - ref[:, 1:]).max() < 0.01


@pytest.mark.skipif(
    not (REFERENCE / "sensor_directions.txt").exists(), reason="reference table absent"
)
def test_normals_match_reference_directions():
    ref = np.loadtxt(REFERENCE / "sensor_directions.txt")
    cos = (g.NORMALS * ref[:, 1:4]).sum(-1)
    assert cos.min() > 0.999
    np.testing.assert_array_equal(g.FACE_OF, ref[:, 7].astype(int))


def test_id_ranges_and_faces():
    assert g.INNER_MAP.shape == (93, 44) and g.INNER_MAP[3, 5] == 44 * 3 + 5
    assert g.OUTER_COARSE_MAP.shape == (9, 24)
    assert g.OUTER_COARSE_MAP[2, 7] == 4092 + 9 * 7 + 2  # [k_z, j_phi]
    assert g.US_MAP.shape == (24, 6) and g.US_MAP[5, 4] == 4308 + 6 * 5 + 4
    assert g.DS_MAP[0, 0] == 4452 and g.DS_MAP[-1, -1] == 4595
    assert list(g.TOP_IDS[[0, -1]]) == [4596, 4668]
    assert list(g.BOTTOM_IDS[[0, -1]]) == [4669, 4741]
    assert sum(g.HEX_ROW_LENGTHS) == g.N_HEX == 73
    # every id exactly once over the disjoint maps; the patch re-uses 12 coarse ids
    maps = [g.INNER_MAP, g.OUTER_COARSE_MAP, g.US_MAP, g.DS_MAP, g.TOP_IDS, g.BOTTOM_IDS]
    all_ids = np.concatenate([m.ravel() for m in maps] + [g.OUTER_CENTER_EXTRA_IDS])
    np.testing.assert_array_equal(np.sort(all_ids), np.arange(g.N_SENSORS))
    patch = g.OUTER_CENTER_MAP.ravel()
    assert len(set(patch)) == 30
    assert np.isin(patch, g.OUTER_COARSE_IDS).sum() == 12
    assert set(patch[~np.isin(patch, g.OUTER_COARSE_IDS)]) == set(g.OUTER_CENTER_EXTRA_IDS)
    assert np.bincount(g.FACE_OF).tolist() == [4092, 234, 144, 144, 73, 73]


def test_image_maps_follow_physical_layout():
    """Neighbouring cells are neighbouring sensors, in decreasing phi_d / increasing z."""
    pos = g.POSITIONS
    inner = pos[g.INNER_MAP]
    step_phi = np.linalg.norm(np.diff(inner, axis=0), axis=-1)
    step_z = np.linalg.norm(np.diff(inner, axis=1), axis=-1)
    assert 1.4 < step_phi.min() and step_phi.max() < 1.6
    assert np.allclose(step_z, g.INNER_DZ)
    assert np.all(np.diff(g.phi_d_deg(inner), axis=0) < 0)

    coarse = pos[g.OUTER_COARSE_MAP]
    coarse_phi = g.phi_d_deg(coarse)
    # away from the centre patch, rows are z and columns are decreasing phi
    outside = np.ones((9, 24), bool)
    outside[3:6, 10:14] = False
    assert np.all(np.diff(coarse[..., 2], axis=0)[outside[1:] & outside[:-1]] > 10)
    assert np.all(np.diff(coarse_phi, axis=1)[outside[:, 1:] & outside[:, :-1]] < -5)

    center = pos[g.OUTER_CENTER_MAP]
    assert np.allclose(np.diff(center[..., 2], axis=1), g.CENTER_DZ)
    assert np.allclose(np.diff(g.phi_d_deg(center), axis=0), -g.CENTER_DPHI_DEG, atol=1e-3)

    for emap in (g.US_MAP, g.DS_MAP):
        e = pos[emap]
        r = np.hypot(e[..., 0], e[..., 1])
        assert np.allclose(np.diff(r, axis=1), g.ENDCAP_DR)
        assert np.all(np.diff(g.phi_d_deg(e), axis=0) < -5)


def test_outer_fine_grid():
    assert g.OUTER_FINE_MAP.shape == g.OUTER_FINE_SHAPE == (45, 72)
    # every coarse-only cell covers 5 x 3 fine cells at 1/15, every patch cell 3 x 2 at 1/6
    ids, counts = np.unique(g.OUTER_FINE_MAP, return_counts=True)
    expected = set(g.OUTER_COARSE_IDS) | set(g.OUTER_CENTER_EXTRA_IDS)
    assert set(ids) == expected
    per_id = dict(zip(ids, counts, strict=True))
    patch = set(g.OUTER_CENTER_MAP.ravel())
    assert all(per_id[i] == (6 if i in patch else 15) for i in ids)
    np.testing.assert_allclose(
        g.OUTER_FINE_SCALE, np.where(np.isin(g.OUTER_FINE_MAP, list(patch)), 1 / 6, 1 / 15)
    )
    # the fine cells are physically ordered: z of each fine row's sensors is non-decreasing
    fine_z = g.POSITIONS[g.OUTER_FINE_MAP][..., 2]
    assert np.all(np.diff(fine_z, axis=0) >= -1e-9)
    fine_phi = g.phi_d_deg(g.POSITIONS[g.OUTER_FINE_MAP])
    assert np.all(np.diff(fine_phi, axis=1) <= 1e-9)
    # sum of npho over the fine grid equals the outer-face total
    npho = np.random.default_rng(0).uniform(0, 100, g.N_SENSORS)
    fine = (npho[g.OUTER_FINE_MAP] * g.OUTER_FINE_SCALE).sum()
    assert np.isclose(fine, npho[g.FACE_OF == 1].sum())


def test_hex_neighbours():
    idx, mask = g.HEX_NEIGHBORS, g.HEX_NEIGHBOR_MASK
    assert idx.shape == mask.shape == (73, 6)
    pairs = {(i, int(j)) for i in range(73) for j, m in zip(idx[i], mask[i], strict=True) if m}
    assert all((j, i) in pairs for i, j in pairs)  # symmetric
    assert all(i != j for i, j in pairs)
    deg = mask.sum(1)
    assert deg.min() >= 2 and deg.max() == 6 and (deg == 6).sum() >= 30
    for face_ids in (g.TOP_IDS, g.BOTTOM_IDS):
        p = g.POSITIONS[face_ids]
        d = np.linalg.norm(p[:, None] - p[idx], axis=-1)
        assert np.all(d[mask > 0] < 8.0) and np.all(d[mask > 0] > 6.0)
        # every true pair < 8 cm is in the table
        full = np.linalg.norm(p[:, None] - p[None], axis=-1)
        assert ((full < 8.0).sum() - 73) == len(pairs)


def test_sensor_neighbors_same_face_and_close():
    nb = g.sensor_neighbors(6)
    assert nb.shape == (4760, 6)
    assert np.all(g.FACE_OF[nb] == g.FACE_OF[:, None])
    assert np.all(nb != np.arange(4760)[:, None])
    d = np.linalg.norm(g.POSITIONS[nb] - g.POSITIONS[:, None], axis=-1)
    assert np.median(d[: g.N_SIPM]) < 2.0


def test_normals_point_into_the_xenon():
    # one cm in front of every sensor lies inside the xenon volume
    p = g.POSITIONS + 1.0 * g.NORMALS
    r = np.hypot(p[:, 0], p[:, 1])
    assert np.all((r > g.R_INNER) & (r < g.XEROUT))
    assert np.all(np.abs(g.phi_d_deg(p)) < g.PHI_EDGE_DEG)
    z_end = g.ENDCAP_Z0 + (r - g.XERIN) * g.ENDCAP_SLOPE
    assert np.all(np.abs(p[:, 2]) < z_end)
    assert np.allclose(np.linalg.norm(g.NORMALS, axis=-1), 1)
    assert np.isclose(g.AREAS[0], 1.392, atol=1e-3) and np.isclose(g.AREAS[-1], 15.904, atol=1e-3)


@pytest.mark.parametrize("xp", [np, jnp])
def test_angle_round_trip(xp):
    rng = np.random.default_rng(1)
    theta = xp.asarray(rng.uniform(1, 179, 1000))
    phi = xp.asarray(rng.uniform(-179, 179, 1000))
    v = g.angles_to_vec(theta, phi)
    assert isinstance(v, type(theta))
    back = g.vec_to_angles(3.0 * v)
    np.testing.assert_allclose(np.asarray(back[:, 0]), np.asarray(theta), atol=1e-3)
    np.testing.assert_allclose(np.asarray(back[:, 1]), np.asarray(phi), atol=1e-3)
    # the convention: theta = 90, phi = 0 points at the detector centre (-x)
    np.testing.assert_allclose(np.asarray(g.angles_to_vec(90.0, 0.0)), [-1, 0, 0], atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(g.opening_angle_deg(g.angles_to_vec(90.0, 0.0), g.angles_to_vec(90.0, 30.0))),
        30.0,
        atol=1e-3,
    )


def test_uvw_round_trip_and_fiducial():
    xyz = g.POSITIONS[:100]
    uvw = g.xyz_to_uvw(xyz)
    np.testing.assert_allclose(uvw[:, 2], 0, atol=1e-9)  # SiPM surfaces are w = 0
    np.testing.assert_allclose(g.uvw_to_xyz(uvw), xyz, atol=1e-9)
    assert g.in_fiducial(np.array([0.0, 0.0, 1.0])) and not g.in_fiducial(np.array([30.0, 0, 1]))
    assert np.allclose(g.wrap_deg(np.array([359.0, -181.0, 10.0])), [-1.0, 179.0, 10.0])


def _xyz(r: float, phi_deg: float, z: float) -> np.ndarray:
    """DESIGN.md section 3 coordinates written out: x = -r cos phi_d, y = r sin phi_d."""
    p = np.deg2rad(phi_deg)
    return np.array([-r * np.cos(p), r * np.sin(p), z])


# (sensor id, (r, phi_d deg, z) cm) worked out by hand from the construction constants of
# DESIGN.md section 3 - independent of the geometry module and of the (unshipped) position table.
HAND_DERIVED = [
    # inner: id = 44 i_phi + i_z; r 64.97, phi_d = 62.76 - (i_phi + 1/2) 125.52/93,
    # z = (i_z - 21.5) 1.509772
    (0, (64.97, 62.76 - 0.5 * 125.52 / 93, -21.5 * 1.509772)),
    (44 * 46 + 21, (64.97, 62.76 - 46.5 * 125.52 / 93, -0.5 * 1.509772)),
    (4091, (64.97, 62.76 - 92.5 * 125.52 / 93, 21.5 * 1.509772)),
    # outer coarse: id = 4092 + 9 j + k; r 106.27, phi_d = 62.76 - (j + 1/2) 5.23,
    # z = (k - 4) 10.356
    (4092, (106.27, 62.76 - 0.5 * 5.23, -4 * 10.356)),
    (4092 + 9 * 23 + 8, (106.27, 62.76 - 23.5 * 5.23, 4 * 10.356)),
    # US: id = 4308 + 6 j + k; r = 69.53 + 6.684 k, z = -(33.515 + (r - 64.84) 0.34963)
    (
        4308 + 6 * 5 + 3,
        (69.53 + 3 * 6.684, 62.76 - 5.5 * 5.23, -(33.515 + (69.53 + 3 * 6.684 - 64.84) * 0.34963)),
    ),
    # DS: id = 4452 + 6 j + k, z = +(...)
    (4452 + 6 * 20, (69.53, 62.76 - 20.5 * 5.23, 33.515 + (69.53 - 64.84) * 0.34963)),
    # top: plane phi_d = +62.76, row 0 (11 sensors): r 68.27, z = (i - 5) 6.12
    (4596 + 3, (68.27, 62.76, (3 - 5) * 6.12)),
    # bottom: plane phi_d = -62.76, last row (5, 14 sensors): r = 68.27 + 5 6.91,
    # z = (i - 6.5) 6.12; it starts after 11 + 12 + 11 + 12 + 13 = 59 sensors
    (4669 + 59 + 13, (68.27 + 5 * 6.91, -62.76, 6.5 * 6.12)),
    # outer centre patch: id 4745 is row m = 1, column l = 1: phi_d = (2.5 - 1) 3.48667,
    # z = (1 - 2) 6.2, r 106.27
    (4745, (106.27, 1.5 * 3.48667, -6.2)),
    (4759, (106.27, -2.5 * 3.48667, 1 * 6.2)),
]


@pytest.mark.parametrize("sensor, cyl", HAND_DERIVED)
def test_positions_from_the_construction_constants(sensor, cyl):
    """Runs everywhere (the reference-table check skips without the table): a few sensors of
    every face against positions derived by hand from the construction constants."""
    np.testing.assert_allclose(g.POSITIONS[sensor], _xyz(*cyl), atol=1e-6)
