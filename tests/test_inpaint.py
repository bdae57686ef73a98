"""Conventional inpainting baselines, the face-grid neighbour table, the dead-channel list per
run (text and ROOT) and the toy simulation's dead_channels.txt."""

import numpy as np
import pytest
import uproot

from xecjax import baseline, deadchannels, geometry, inpaint, simulate
from xecjax.deadchannels import DeadChannelError
from xecjax.simulate import SimConfig

N = geometry.N_SENSORS
INNER = 45  # i_phi 1, i_z 1: an inner SiPM with all 8 neighbours
INNER_NB = [0, 1, 2, 44, 46, 88, 89, 90]
LXE_S_PER_CM = baseline.LIGHT_SLOWNESS_NS_PER_CM * 1e-9


def event(n: int = 1, seed: int = 0):
    """Random but plausible raw arrays: npho 0..1000 photons, times ~10 ns (seconds)."""
    rng = np.random.default_rng(seed)
    npho = rng.uniform(0, 1000, (n, N)).astype(np.float32)
    time = rng.uniform(5e-9, 15e-9, (n, N)).astype(np.float32)
    return npho, time


def only(*ids, n: int = 1) -> np.ndarray:
    mask = np.zeros((n, N), bool)
    mask[:, list(ids)] = True
    return mask


# ----------------------------------------------------------------------------------------------
# Neighbour tables.
# ----------------------------------------------------------------------------------------------
def test_face_neighbors_follow_the_grids():
    ids, mask = geometry.face_neighbors()
    assert ids.shape == mask.shape == (N, geometry.FACE_MAX_DEGREE)

    def nb(i):
        return sorted(ids[i][mask[i]].tolist())

    assert nb(INNER) == INNER_NB
    assert nb(0) == [1, 44, 45]  # a corner of the inner face
    assert nb(4091) == [4046, 4047, 4090]
    # an outer coarse PMT away from the centre patch: its 8 coarse neighbours (id 4092+9j+k)
    c = 4092 + 9 * 2 + 2
    assert nb(c) == sorted(c + dj * 9 + dk for dj in (-1, 0, 1) for dk in (-1, 0, 1) if dj or dk)
    # the centre patch joins the coarse PMTs around it: 4186 (patch row 0, middle) touches the
    # coarse PMT 4177 (j_phi 9, k_z 4) and the patch cells next to it
    assert nb(4186) == [4177, 4742, 4743, 4745, 4746, 4747]
    assert 4186 in nb(4177)
    # US: 8-connected in the 24 x 6 map
    assert nb(4308 + 6 * 5 + 2) == sorted(
        4308 + 6 * (5 + dj) + 2 + dk for dj in (-1, 0, 1) for dk in (-1, 0, 1) if dj or dk
    )
    # hex faces: the hex table, in global ids
    for face_ids in (geometry.TOP_IDS, geometry.BOTTOM_IDS):
        for i in range(geometry.N_HEX):
            want = face_ids[geometry.HEX_NEIGHBORS[i][geometry.HEX_NEIGHBOR_MASK[i] > 0]]
            assert nb(face_ids[i]) == sorted(want.tolist())
    # symmetric, never across faces, padding points at the sensor itself
    rows = np.repeat(np.arange(N), mask.sum(1))
    pairs = set(zip(rows.tolist(), ids[mask].tolist(), strict=True))
    assert all((j, i) in pairs for i, j in pairs)
    assert (geometry.FACE_OF[rows] == geometry.FACE_OF[ids[mask]]).all()
    assert (ids[~mask] == np.repeat(np.arange(N), (~mask).sum(1))).all()
    # every neighbour is close: at most a diagonal of the face's cells
    dist = np.linalg.norm(geometry.POSITIONS[rows] - geometry.POSITIONS[ids[mask]], axis=1)
    assert dist.max() < 15.0


def test_second_ring_is_the_neighbours_of_the_neighbours():
    (ids1, m1), (ids2, m2) = inpaint.neighbour_rings()
    for i in (INNER, 0, 4186, 4596, 4700):
        first = set(ids1[i][m1[i]].tolist())
        two = set()
        for j in first:
            two |= set(ids1[j][m1[j]].tolist())
        assert set(ids2[i][m2[i]].tolist()) == two - first - {i}
    assert set(ids2[INNER][m2[INNER]].tolist()) == {
        44 * r + c for r in range(4) for c in range(4) if r == 3 or c == 3
    }  # the 3 x 3 block around 45 is rows/columns 0..2: the second ring is row 3 and column 3


# ----------------------------------------------------------------------------------------------
# Neighbour average.
# ----------------------------------------------------------------------------------------------
def test_neighbour_average_by_hand():
    npho, time = event()
    npho[0, INNER_NB] = [100, 200, 300, 400, 500, 600, 700, 800]
    time[0, INNER_NB] = np.array([10, 11, 12, 13, 14, 15, 16, 17]) * 1e-9
    n, t = inpaint.neighbour_average(npho, time, only(INNER))
    assert n[0, INNER] == pytest.approx(450.0)
    assert t[0, INNER] == pytest.approx(13.5e-9, rel=1e-6)
    # unmasked sensors are returned as they are
    keep = ~only(INNER)
    np.testing.assert_array_equal(n[keep], npho[keep])
    np.testing.assert_array_equal(t[keep], time[keep])
    assert n.dtype == t.dtype == np.float32

    # a dead neighbour (1e10 or NaN) and a masked neighbour are skipped
    npho[0, 2], npho[0, 46] = 1e10, np.nan
    n, t = inpaint.neighbour_average(npho, time, only(INNER, 90))
    assert n[0, INNER] == pytest.approx((100 + 200 + 400 + 600 + 700) / 5)
    assert t[0, INNER] == pytest.approx((10 + 11 + 13 + 15 + 16) / 5 * 1e-9, rel=1e-6)


def test_neighbour_average_time_rule():
    npho, time = event()
    npho[0, INNER_NB] = [50, 150, 99, 250, 10, 20, 30, 40]
    time[0, INNER_NB] = np.array([1, 2, 3, 4, 5, 6, 7, 8]) * 1e-9
    # only neighbours with >= 100 photons give a time while there are such
    _, t = inpaint.neighbour_average(npho, time, only(INNER))
    assert t[0, INNER] == pytest.approx(3e-9, rel=1e-6)  # (2 + 4) / 2
    _, t = inpaint.neighbour_average(npho, time, only(INNER), time_min_npho=45)
    assert t[0, INNER] == pytest.approx((1 + 2 + 3 + 4) / 4 * 1e-9, rel=1e-6)
    # a bright neighbour without a time (1e10) does not count; none bright: all timed ones
    time[0, [1, 44]] = 1e10
    _, t = inpaint.neighbour_average(npho, time, only(INNER))
    assert t[0, INNER] == pytest.approx((1 + 3 + 5 + 6 + 7 + 8) / 6 * 1e-9, rel=1e-6)


def test_second_ring_when_the_first_is_unusable():
    """A top-face corner PMT with all its neighbours masked: the second ring fills it."""
    (ids1, m1), (ids2, m2) = inpaint.neighbour_rings()
    i = int(geometry.TOP_IDS[0])
    first, second = ids1[i][m1[i]], ids2[i][m2[i]]
    npho, time = event()
    npho[0, geometry.TOP_IDS] = 1000.0
    npho[0, second] = 50.0
    time[0, second] = 7e-9
    n, t = inpaint.neighbour_average(npho, time, only(i, *first))
    assert n[0, i] == pytest.approx(50.0)
    assert t[0, i] == pytest.approx(7e-9)  # no bright second-ring sensor: all timed ones
    # a whole face masked: nothing to go on, NaN
    n, t = inpaint.neighbour_average(npho, time, only(*geometry.TOP_IDS))
    assert np.isnan(n[0, geometry.TOP_IDS]).all() and np.isnan(t[0, geometry.TOP_IDS]).all()
    assert np.isfinite(n[0, geometry.BOTTOM_IDS]).all()


# ----------------------------------------------------------------------------------------------
# Solid-angle weighting.
# ----------------------------------------------------------------------------------------------
POINT_UVW = np.array([3.0, -5.0, 8.0])  # cm: 8 cm deep below the inner face


def point_source(uvw=POINT_UVW, photons=5e6, t0=2e-9):
    """npho and time of every sensor for a point source without noise: the light model."""
    xyz = geometry.uvw_to_xyz(uvw)
    shape = np.asarray(
        baseline.light_shape(
            np.asarray(uvw, np.float32),
            geometry.POSITIONS.astype(np.float32),
            geometry.NORMALS.astype(np.float32),
            geometry.AREAS.astype(np.float32),
        ),
        np.float64,
    )
    dist = np.linalg.norm(geometry.POSITIONS - xyz, axis=1)
    npho = (photons * shape)[None].astype(np.float32)
    time = (t0 + LXE_S_PER_CM * dist)[None].astype(np.float32)
    return npho, time, xyz


def test_solid_angle_by_hand():
    """A masked SiPM right above a point 4 cm deep, its neighbours at 100 photons each:
    npho_i = mean_j 100 * Omega_i / Omega_j with Omega = area cos / (4 pi d^2) exp(-d/lambda)
    written out here from the positions; the time adds the flight-path difference."""
    p = geometry.POSITIONS[INNER]
    xyz = p * (1 + 4.0 / np.linalg.norm(p[:2]) * np.array([1, 1, 0]))  # 4 cm radially out
    npho, time = event()
    npho[0, INNER_NB] = 100.0
    time[0, INNER_NB] = 10e-9

    def omega(k):
        rel = xyz - geometry.POSITIONS[k]
        d = np.linalg.norm(rel)
        cos = rel @ geometry.NORMALS[k] / d
        return geometry.AREAS[k] * cos / (4 * np.pi * d**2) * np.exp(-d / baseline.ATTENUATION_CM)

    d = {k: np.linalg.norm(xyz - geometry.POSITIONS[k]) for k in [INNER, *INNER_NB]}
    want_n = np.mean([100.0 * omega(INNER) / omega(j) for j in INNER_NB])
    want_sum = omega(INNER) * 800.0 / sum(omega(j) for j in INNER_NB)
    want_t = np.mean([10e-9 + LXE_S_PER_CM * (d[INNER] - d[j]) for j in INNER_NB])
    n, t = inpaint.solid_angle_weighted(npho, time, only(INNER), point=xyz, combine="mean")
    assert n[0, INNER] == pytest.approx(want_n, rel=1e-5)
    assert t[0, INNER] == pytest.approx(want_t, rel=1e-6)
    assert 100 < n[0, INNER] < 150  # right above the point: brighter than its neighbours
    assert t[0, INNER] < 10e-9  # and closer
    n, _ = inpaint.solid_angle_weighted(npho, time, only(INNER), point=xyz[None])
    assert n[0, INNER] == pytest.approx(want_sum, rel=1e-5)
    # the plain average knows nothing of the point
    n, t = inpaint.neighbour_average(npho, time, only(INNER))
    assert n[0, INNER] == pytest.approx(100.0) and t[0, INNER] == pytest.approx(10e-9)


@pytest.mark.parametrize("combine", inpaint.COMBINE)
def test_solid_angle_reproduces_a_point_source(combine):
    npho, time, xyz = point_source()
    # per face, sensors near the light spot (steep light, where the plain average is off)
    ranked = np.argsort(-npho[0])
    picks = [int(ranked[geometry.FACE_OF[ranked] == f][3]) for f in range(6)]
    # the brightest SiPM, and a patch / coarse PMT pair of the outer face
    mask = only(*picks, int(ranked[0]), 4186, 4177)
    n, t = inpaint.solid_angle_weighted(npho, time, mask, point=xyz, combine=combine)
    np.testing.assert_allclose(n[mask], npho[mask], rtol=2e-4)
    np.testing.assert_allclose(t[mask], time[mask], rtol=0, atol=2e-14)
    avg, _ = inpaint.neighbour_average(npho, time, mask)
    assert np.abs(avg[mask] / npho[mask] - 1).max() > 0.05  # the test is sensitive


def test_solid_angle_falls_back_where_the_light_model_is_blind():
    """Sensors that do not face the point get the plain neighbour average."""
    npho, time, xyz = point_source()
    far = int(geometry.INNER_MAP[2, 20])  # phi_d ~ +60 deg: behind the point's tangent plane
    behind = baseline.light_shape(
        geometry.xyz_to_uvw(xyz).astype(np.float32),
        geometry.POSITIONS[[far]].astype(np.float32),
        geometry.NORMALS[[far]].astype(np.float32),
        geometry.AREAS[[far]].astype(np.float32),
    )
    assert float(behind[0]) == 0.0
    npho[0, geometry.INNER_MAP[1:4, 19:22]] = 7.0
    n, _ = inpaint.solid_angle_weighted(npho, time, only(far), point=xyz)
    assert n[0, far] == pytest.approx(7.0)


def test_baselines_never_read_the_masked_values():
    npho, time = event(n=5, seed=1)
    rng = np.random.default_rng(2)
    mask = rng.random(npho.shape) < 0.1
    mask[:, INNER] = True
    other_n, other_t = npho.copy(), time.copy()
    other_n[mask] = rng.choice([1e10, np.nan, -3.0, 1e6], mask.sum())
    other_t[mask] = rng.choice([1e10, np.nan, 0.0, 1.0], mask.sum())
    for fn in (inpaint.neighbour_average, inpaint.solid_angle_weighted):  # the latter fits
        a = fn(npho, time, mask)
        b = fn(other_n, other_t, mask)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x[mask], y[mask])
            assert np.isfinite(x[mask]).all()
        # and the unmasked sensors are the input
        np.testing.assert_array_equal(b[0][~mask], npho[~mask])


def test_chunks_do_not_change_the_result():
    npho, time = event(n=7, seed=3)
    mask = np.random.default_rng(4).random(npho.shape) < 0.2
    point = np.random.default_rng(5).normal(0, 5, (7, 3)) + geometry.uvw_to_xyz(
        np.array([0, 0, 8.0])
    )
    for fn, kw in (
        (inpaint.neighbour_average, {}),
        (inpaint.solid_angle_weighted, {"point": point}),
    ):
        a = fn(npho, time, mask, **kw)
        b = fn(npho, time, mask, chunk=3, **kw)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    n, t = inpaint.neighbour_average(npho[:0], time[:0], mask[:0])
    assert n.shape == t.shape == (0, N)


def test_bad_inputs_are_clear_errors():
    npho, time = event(n=2)
    mask = only(INNER, n=2)
    fn = inpaint.neighbour_average
    with pytest.raises(ValueError, match=r"npho must have shape \[N, 4760\], got \[2, 4759\]"):
        fn(npho[:, 1:], time[:, 1:], mask[:, 1:])
    with pytest.raises(ValueError, match="time must have the shape of npho"):
        fn(npho, time[:1], mask)
    with pytest.raises(ValueError, match="mask must have the shape of npho"):
        fn(npho, time, mask[0])
    with pytest.raises(ValueError, match="mask must be a bool array"):
        fn(npho, time, mask.astype(np.int8))
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        fn(npho, time, mask, chunk=0)
    with pytest.raises(ValueError, match=r"point must have shape \[3\] or \[2, 3\]"):
        inpaint.solid_angle_weighted(npho, time, mask, point=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="combine must be one of"):
        inpaint.solid_angle_weighted(npho, time, mask, point=np.zeros(3), combine="median")
    with pytest.raises(ValueError, match="npho_pred must have the shape"):
        inpaint.score(npho[:1], time, npho, time, mask)


# ----------------------------------------------------------------------------------------------
# Scores.
# ----------------------------------------------------------------------------------------------
def test_score_by_hand():
    truth_n = np.full((1, N), 500.0, np.float32)
    truth_t = np.full((1, N), 10e-9, np.float32)
    pred_n, pred_t = truth_n.copy(), truth_t.copy()
    inner = [0, 1, 2, 3]
    pred_n[0, inner] += [1, -2, 3, -4]
    pred_t[0, inner] += np.array([0.1, -0.2, 0.3, -0.4], np.float32) * 1e-9
    top = [int(geometry.TOP_IDS[0]), int(geometry.TOP_IDS[1]), int(geometry.TOP_IDS[2])]
    pred_n[0, top] += [10, np.nan, 0]  # one unfilled
    truth_n[0, top[2]] = 1e10  # a dead channel has no truth: not scored
    truth_n[0, 3] = 50  # below 100 photons: its time is not scored (its npho is)
    pred_n[0, 3] = 50 - 4
    pred_n[0, 4000] += 1000  # not masked: not scored
    mask = only(*inner, *top)
    s = inpaint.score(pred_n, pred_t, truth_n, truth_t, mask)
    assert set(s) == {*geometry.FACE_NAMES, "all"}
    inn = s["inner"]
    assert inn["n_npho"] == 4 and inn["n_npho_unfilled"] == 0
    assert inn["npho_bias"] == pytest.approx(-0.5)
    assert inn["npho_mae"] == pytest.approx(2.5)
    assert inn["npho_abs68"] == pytest.approx(3.04)  # linear interpolation in |e| = 1, 2, 3, 4
    assert inn["n_time"] == 3
    assert inn["time_bias_ns"] == pytest.approx(0.2 / 3, abs=1e-4)
    assert inn["time_mae_ns"] == pytest.approx(0.2, abs=1e-4)
    assert s["top"]["n_npho"] == 2 and s["top"]["n_npho_unfilled"] == 1
    assert s["top"]["npho_mae"] == pytest.approx(10.0)
    assert s["all"]["n_npho"] == 6 and s["all"]["npho_mae"] == pytest.approx(20 / 5)
    assert s["us"]["n_npho"] == 0 and np.isnan(s["us"]["npho_mae"])
    for face in s.values():  # plain Python numbers
        assert all(type(v) in (int, float) for v in face.values())


# ----------------------------------------------------------------------------------------------
# Dead-channel lists.
# ----------------------------------------------------------------------------------------------
TABLE = {430000: [4759, 0, 17], 5: [], 12: np.array([4091, 4092], np.int64)}


def same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["dead.txt", "dead.root"])
def test_dead_channel_round_trip(tmp_path, name):
    path = deadchannels.write(tmp_path / name, TABLE)
    got = deadchannels.read(path)
    want = {5: [], 12: [4091, 4092], 430000: [0, 17, 4759]}
    assert same(got, {k: np.array(v, np.int32) for k, v in want.items()})
    assert all(v.dtype == np.int32 for v in got.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary left
    empty = deadchannels.write(tmp_path / f"empty_{name}", {})
    assert deadchannels.read(empty) == {}


def test_dead_channel_text_format(tmp_path):
    path = tmp_path / "dead.txt"
    deadchannels.write_text(path, TABLE, header="made by a test\nsecond line")
    assert path.read_text() == (
        "# made by a test\n# second line\n5\n12 4091 4092\n430000 0 17 4759\n"
    )
    path.write_text("# run channels\n\n  7  3 1   2  # trailing comment\n\t\n8\n9 4759\n")
    assert same(
        deadchannels.read_text(path),
        {7: np.array([1, 2, 3]), 8: np.array([]), 9: np.array([4759])},
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 2 3\n\n2 4 x5\n", r"line 3: 'x5' is not an integer"),
        ("1 2.0\n", r"line 1: '2.0' is not an integer"),
        ("# c\n1 4760\n", r"line 2: channel 4760 outside 0..4759"),
        ("1 -1\n", r"line 1: channel -1 outside 0..4759"),
        ("1 2\n3 4\n1 5\n", r"line 3: run 1 listed twice \(first on line 1\)"),
        ("1 2 2\n", r"line 1: channel 2 listed twice"),
        ("-4 2\n", r"line 1: run -4 outside 0..2147483647"),
    ],
)
def test_dead_channel_text_errors(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DeadChannelError, match=message) as e:
        deadchannels.read(path)
    assert str(path) in str(e.value)


def test_dead_channel_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        deadchannels.read(tmp_path / "missing.root")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        deadchannels.read(tmp_path / "missing.txt")
    path = tmp_path / "other.root"
    with uproot.recreate(path) as f:
        f.mktree("tree", {"run": np.int32}).extend({"run": np.arange(2, dtype=np.int32)})
    with pytest.raises(DeadChannelError, match=f"{path}.*has no tree 'dead'"):
        deadchannels.read(path)
    with uproot.recreate(path) as f:
        f.mktree("dead", {"run": np.int32}).extend({"run": np.arange(2, dtype=np.int32)})
    with pytest.raises(DeadChannelError, match="has no branch 'channels'"):
        deadchannels.read(path)
    import awkward as ak

    for runs, chans, message in [
        ([3, 4, 3], [[1], [2], [3]], r"entry 2: run 3 listed twice \(first in entry 0\)"),
        ([3], [[1, 4760]], r"entry 0: channel 4760 outside 0..4759"),
    ]:
        with uproot.recreate(path) as f:
            t = f.mktree("dead", {"run": np.int32, "channels": "var * int32"})
            t.extend({"run": np.array(runs, np.int32), "channels": ak.Array(chans)})
        with pytest.raises(DeadChannelError, match=message) as e:
            deadchannels.read(path)
        assert str(path) in str(e.value)
    (tmp_path / "zero.root").write_bytes(b"")
    with pytest.raises(DeadChannelError, match="empty"):
        deadchannels.read(tmp_path / "zero.root")


def test_dead_channel_writers_refuse_bad_tables(tmp_path):
    for table, message in [
        ({1: [4760]}, "run 1: channel 4760 outside"),
        ({1: [0.5]}, "channels must be integers"),
        ({"1": [2]}, "run '1' is not an integer"),
        ({1: [3, 3]}, "channel 3 listed twice"),
        ({True: [1]}, "run True is not an integer"),
        ({1: [[1, 2]]}, "channels must be a flat list"),
    ]:
        for name in ("d.txt", "d.root"):
            with pytest.raises(DeadChannelError, match=message):
                deadchannels.write(tmp_path / name, table)
    assert list(tmp_path.iterdir()) == []


def test_dead_mask(tmp_path):
    table = deadchannels.read(deadchannels.write(tmp_path / "d.txt", TABLE))
    mask = deadchannels.dead_mask(table, np.array([12, 430000, 12, 5], np.int32))
    assert mask.shape == (4, N) and mask.dtype == bool
    assert [np.flatnonzero(m).tolist() for m in mask] == [[4091, 4092], [0, 17, 4759],
                                                          [4091, 4092], []]  # fmt: skip
    with pytest.raises(DeadChannelError, match=r"2 run\(s\) not in the dead-channel list: 6, 99"):
        deadchannels.dead_mask(table, [5, 99, 6])
    mask = deadchannels.dead_mask(table, [5, 99, 12], unknown="empty")
    assert mask.sum(1).tolist() == [0, 0, 2]
    assert deadchannels.dead_mask(table, np.zeros(0, int)).shape == (0, N)
    with pytest.raises(ValueError, match="unknown must be one of"):
        deadchannels.dead_mask(table, [5], unknown="ignore")
    with pytest.raises(ValueError, match=r"runs must have shape \[N\]"):
        deadchannels.dead_mask(table, [[5]])


# ----------------------------------------------------------------------------------------------
# The toy simulation's list.
# ----------------------------------------------------------------------------------------------
def test_toy_writes_its_dead_channels(tmp_path):
    cfg = SimConfig(dead_fraction=0.02)
    paths = simulate.write_toy_files(tmp_path, 40, n_files=2, seed=3, cfg=cfg)
    listed = tmp_path / simulate.DEAD_CHANNELS_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [listed.name, *(p.name for p in paths)]
    )
    assert listed.read_text().startswith("# dead channels of the toy files toy_3_<run>.root")
    table = deadchannels.read(listed)
    assert list(table) == [0, 1]
    for path in paths:
        with uproot.open(path) as f:
            data = f["tree"].arrays(["npho", "time", "run"], library="np")
        (run,) = set(data["run"].tolist())
        marked = data["npho"] == np.float32(1e10)
        np.testing.assert_array_equal(np.flatnonzero(marked.all(0)), table[run])
        assert (marked == marked[0]).all()  # a run's dead channels are dead in every event
        assert len(table[run]) > 30  # 2 % of 4760
        mask = deadchannels.dead_mask(table, data["run"])
        np.testing.assert_array_equal(mask, marked)
        # and the baselines fill them
        for fn in (inpaint.neighbour_average, inpaint.solid_angle_weighted):
            n, t = fn(data["npho"], data["time"], mask)
            assert np.isfinite(n[mask]).all() and (np.abs(n[mask]) < 1e9).all()
    # the ROOT files do not depend on the list: the same as without a dead-channel file
    again = simulate.simulate(3, 20, cfg, run=1)
    with uproot.open(paths[1]) as f:
        np.testing.assert_array_equal(f["tree"]["npho"].array(library="np"), again["npho"])
