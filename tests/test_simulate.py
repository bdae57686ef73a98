"""Toy simulation: ROOT branches, physics of the light spot, nuisances, reproducibility, CLI.

Every test reads real ROOT files written by write_toy_files (uproot), a few hundred events.
"""

import numpy as np
import pytest
import uproot

from xecjax import geometry, simulate
from xecjax.simulate import REAL_DATA_BRANCHES, SIM_BRANCHES, SimConfig

N_EVENTS = 400  # two files of 200: one jitted block each
DEAD = 0.05  # raised from 0.5 % so the dead-fraction check is statistically tight


def read(path) -> dict[str, np.ndarray]:
    with uproot.open(path) as f:
        return f["tree"].arrays(library="np")


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    # chunk_size 150 exercises chunked, pipelined writing across block boundaries
    paths = simulate.write_toy_files(
        out, N_EVENTS, n_files=2, seed=7, cfg=SimConfig(dead_fraction=DEAD), chunk_size=150
    )
    return out, paths


@pytest.fixture(scope="module")
def sim(sim_dir):
    return [read(p) for p in sim_dir[1]]


def test_files_branches_dtypes_shapes(sim_dir, sim):
    out, paths = sim_dir
    assert [p.name for p in paths] == ["toy_7_0.root", "toy_7_1.root"]
    listing = sorted(q.name for q in out.iterdir())  # no temporaries
    assert listing == [simulate.DEAD_CHANNELS_FILE, "toy_7_0.root", "toy_7_1.root"]
    for k, data in enumerate(sim):
        assert list(data) == list(SIM_BRANCHES)
        n = len(data["event"])
        assert n == N_EVENTS // 2
        np.testing.assert_array_equal(data["event"], np.arange(n))
        assert (data["run"] == k).all()
        for name, arr in data.items():
            assert arr.dtype == simulate.BRANCH_DTYPES[name], name
        for name in simulate.PER_SENSOR:
            assert data[name].shape == (n, geometry.N_SENSORS)
        assert data["emiAng"].shape == (n, 2)
        for name in ("emiVec", "xyzVTX", "xyzTruth", "uvwTruth", "xyzRecoFI", "uvwRecoFI"):
            assert data[name].shape == (n, 3)
        np.testing.assert_allclose(data["energyTruth"], 0.0528, rtol=1e-6)  # GeV
        assert abs(np.median(data["energyReco"] / data["energyTruth"]) - 1) < 0.01


def test_relative_branches_match_definition(sim):
    for data in sim:
        npho, nphe, time = data["npho"], data["nphe"], data["time"]
        valid = npho < 1e9
        npho_max = np.where(valid & (npho >= 0), npho, -np.inf).max(axis=1, keepdims=True)
        rel = np.where(valid, npho / npho_max, 1e10)
        np.testing.assert_allclose(data["relative_npho"], rel, rtol=1e-6)
        has_time = time < 1e9
        t_min = np.where(has_time & (nphe > 50), time, np.inf).min(axis=1, keepdims=True)
        rel_t = np.where(has_time, time - t_min, 1e10)
        np.testing.assert_allclose(data["relative_time"], rel_t, rtol=1e-6, atol=1e-15)
        assert (data["relative_npho"][valid] <= 1).all()
        assert (rel_t[has_time] >= -1e-15).sum() > 0.5 * has_time.sum()  # most after the earliest
        # times are seconds: the light arrives within ~10 ns of the emission
        assert 0 < np.median(time[has_time]) < 1e-8


def test_dead_channels(sim):
    for data in sim:
        dead = data["npho"] > 9e9
        # dead channels are a per-run detector property: the same ones in every event
        assert (dead == dead[0]).all()
        assert abs(dead[0].mean() - DEAD) < 4 * np.sqrt(DEAD * (1 - DEAD) / geometry.N_SENSORS)
        for name in simulate.PER_SENSOR:
            assert (data[name][dead] == np.float32(1e10)).all(), name
        assert (data["npho"][~dead] < 1e9).all()
    # different runs have different dead channels
    assert not np.array_equal(sim[0]["npho"][0] > 9e9, sim[1]["npho"][0] > 9e9)


def test_light_level(sim):
    npho = sim[0]["npho"]
    ok = npho < 1e9
    total = np.where(ok, npho, 0).sum(1)
    brightest_sipm = np.where(ok[:, : geometry.N_SIPM], npho[:, : geometry.N_SIPM], 0).max(1)
    assert 2e5 < np.median(total) < 1.5e6  # DESIGN: ~6e5
    assert 1e3 < np.median(brightest_sipm) < 1e4  # DESIGN: ~3e3
    assert npho[ok].min() < 0  # electronic noise can make npho slightly negative


def test_light_spot_at_conversion_point(sim):
    """npho-weighted centroid of the hottest 5x5 inner region vs the first interaction (u, v)."""
    data = sim[0]
    uvw = data["uvwTruth"]
    inner = data["npho"][:, geometry.INNER_MAP]  # [N, 93, 44] (phi row, z column)
    pos = geometry.xyz_to_uvw(geometry.POSITIONS[geometry.INNER_MAP])  # [93, 44, 3]
    sel = (uvw[:, 2] < 2.0) & (np.abs(uvw[:, 0]) < 25) & (np.abs(uvw[:, 1]) < 60)
    assert sel.sum() > 40
    dist, control = [], []
    for i in np.nonzero(sel)[0]:
        img = np.where(inner[i] < 1e9, inner[i], 0)
        r, c = np.unravel_index(np.argmax(img), img.shape)
        r0, c0 = np.clip(r, 2, img.shape[0] - 3), np.clip(c, 2, img.shape[1] - 3)
        w = img[r0 - 2 : r0 + 3, c0 - 2 : c0 + 3]
        uv = (w[..., None] * pos[r0 - 2 : r0 + 3, c0 - 2 : c0 + 3, :2]).sum((0, 1)) / w.sum()
        dist.append(np.hypot(*(uv - uvw[i, :2])))
        control.append(np.hypot(*(uv - uvw[i - 1, :2])))  # another event's conversion
    dist, control = np.array(dist), np.array(control)
    # SiPM pitch 1.5 cm; the shower maximum lies ~3 cm beyond the conversion point along the
    # (up to ~30 deg oblique) direction, which moves the centroid by ~1 cm.
    assert np.median(dist) < 1.8, np.median(dist)
    assert np.quantile(dist, 0.9) < 3.5, np.quantile(dist, 0.9)
    assert np.median(control) > 10, np.median(control)


def test_angles_vertex_and_truth_consistent(sim):
    for data in sim:
        ang, vec = data["emiAng"], data["emiVec"]
        np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(geometry.angles_to_vec(ang[:, 0], ang[:, 1]), vec, atol=1e-5)
        np.testing.assert_allclose(geometry.vec_to_angles(vec), ang, atol=2e-3)
        d = (data["xyzTruth"] - data["xyzVTX"]).astype(np.float64)  # float64: arccos near 1
        assert geometry.opening_angle_deg(d, vec.astype(np.float64)).max() < 0.005  # degrees
        # inside the acceptance, converting beyond the inner face
        assert (ang[:, 0] >= 62.7).all() and (ang[:, 0] <= 117.3).all()
        assert (np.abs(ang[:, 1]) <= 62.8).all()
        assert (data["uvwTruth"][:, 2] >= geometry.XERIN - geometry.R_INNER - 1e-3).all()
        np.testing.assert_allclose(
            geometry.xyz_to_uvw(data["xyzTruth"]), data["uvwTruth"], atol=1e-3
        )
        reco_err = np.abs(data["uvwRecoFI"] - data["uvwTruth"])
        assert 0.1 < np.median(reco_err[:, 0]) < 0.5  # 2.5 mm resolution, smeared


def test_vertex_models(sim):
    vtx = np.concatenate([d["xyzVTX"] for d in sim])
    # slanted target: beam spot 1 cm, foil at 15 deg -> sigma_z = 1 / tan 15 deg = 3.73 cm
    np.testing.assert_allclose(vtx[:, :2].std(0), 1.0, rtol=0.15)
    assert abs(vtx[:, 2].std() - 3.73) < 0.5
    np.testing.assert_allclose(vtx[:, 2], vtx[:, 0] / np.tan(np.radians(15)), atol=1e-4)
    point = simulate.simulate(1, 64, SimConfig(vertex="point"))
    assert (point["xyzVTX"] == 0).all()
    flat = simulate.simulate(1, 64, SimConfig(vertex="flat"))
    assert (flat["xyzVTX"][:, 2] == 0).all() and flat["xyzVTX"][:, 0].std() > 0.5


def test_reproducible_and_chunk_independent(sim_dir, sim, tmp_path):
    again = simulate.write_toy_files(
        tmp_path / "a", N_EVENTS, n_files=2, seed=7, cfg=SimConfig(dead_fraction=DEAD)
    )  # default chunking this time
    for p, ref in zip(again, sim, strict=True):
        data = read(p)
        assert all(np.array_equal(data[k], ref[k]) for k in SIM_BRANCHES)
    # one event of run 1 alone, as simulate() computes it
    single = simulate.simulate(7, 1, SimConfig(dead_fraction=DEAD), run=1, first_event=123)
    assert np.array_equal(single["npho"][0], sim[1]["npho"][123])
    other = read(simulate.write_toy_files(tmp_path / "b", 200, seed=8)[0])
    assert not np.array_equal(other["npho"], sim[0]["npho"])
    assert not np.array_equal(other["emiAng"], sim[0]["emiAng"])


def test_parallel_writers_write_the_files_of_one(sim, tmp_path, monkeypatch):
    """The fixture wrote its 2 files with simulate.WRITERS (2) threads; one writer must give the
    same files, and every file is complete and named as expected."""
    assert simulate.WRITERS >= 2
    monkeypatch.setattr(simulate, "WRITERS", 1)
    paths = simulate.write_toy_files(
        tmp_path, N_EVENTS, n_files=2, seed=7, cfg=SimConfig(dead_fraction=DEAD)
    )
    assert [p.name for p in paths] == ["toy_7_0.root", "toy_7_1.root"]
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert listing == [simulate.DEAD_CHANNELS_FILE, "toy_7_0.root", "toy_7_1.root"]
    for p, ref in zip(paths, sim, strict=True):
        data = read(p)
        assert all(np.array_equal(data[k], ref[k]) for k in SIM_BRANCHES)


def test_a_failing_writer_stops_the_others_without_partial_files(tmp_path, monkeypatch):
    collect = simulate._collect

    def failing(blocks, meta):
        if meta[0] == 1 and meta[1] >= 100:  # run 1 fails at its third chunk
            raise RuntimeError("disk full (test)")
        return collect(blocks, meta)

    monkeypatch.setattr(simulate, "_collect", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate.write_toy_files(tmp_path, 900, n_files=3, seed=7, chunk_size=50)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "toy_7_1.root" not in left and not [n for n in left if "tmp" in n]
    assert simulate.DEAD_CHANNELS_FILE not in left  # written only once every file is complete
    for name in left:  # whatever remains is complete
        assert read(tmp_path / name)["event"].tolist() == list(range(300))


def test_real_data_shape(tmp_path):
    (path,) = simulate.write_toy_files(tmp_path, 200, seed=3, real_data=True)
    data = read(path)
    assert tuple(data) == REAL_DATA_BRANCHES
    with uproot.open(path) as f:
        assert set(f["tree"].keys()) == set(REAL_DATA_BRANCHES)
    for name, arr in data.items():
        assert arr.dtype == simulate.BRANCH_DTYPES[name], name
    rows = np.arange(len(data["event"]))
    npho, time = data["npho"], data["time"]
    np.testing.assert_array_equal(npho[rows, data["ch_npho_max"]], data["npho_max_used"])
    np.testing.assert_array_equal(time[rows, data["ch_time_min"]], data["time_min_used"])
    np.testing.assert_allclose(data["relative_npho"][rows, data["ch_npho_max"]], 1.0)
    # emission direction from the reconstructed points, as PrepareRealData.C computes it
    d = (data["xyzRecoFI"] - data["xyzVTX"]).astype(np.float64)
    assert geometry.opening_angle_deg(d, data["emiVec"].astype(np.float64)).max() < 0.005
    np.testing.assert_allclose(geometry.vec_to_angles(data["emiVec"]), data["emiAng"], atol=2e-3)
    lc = data["uvwRecoLC"] - data["uvwRecoFI"]
    assert 0.3 < np.std(lc[:, 0]) < 2.0  # light centre: a second, coarser estimate


@pytest.mark.parametrize(
    "args, message",
    [
        (["--events", "-5"], "events = -5"),
        (["--events", "0"], "events = 0"),
        (["--events", "10", "--files", "11"], "files = 11"),
    ],
)
def test_cli_rejects_bad_counts(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert simulate.main(["--out", str(out), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_impossible_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = blocker / "sub"
    assert simulate.main(["--out", str(out), "--events", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "output directory" in err and str(out) in err
    assert list(tmp_path.iterdir()) == [blocker]


def test_cli_writes_files(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--events", "30", "--files", "2", "--seed", "5", "--no-progress"]
    assert simulate.main([*argv, "--compression", "zlib"]) == 0
    listing = sorted(p.name for p in out.iterdir())
    assert listing == [simulate.DEAD_CHANNELS_FILE, "toy_5_0.root", "toy_5_1.root"]
    assert [len(read(out / f"toy_5_{k}.root")["event"]) for k in (0, 1)] == [15, 15]


def test_config_validation():
    with pytest.raises(ValueError, match="vertex"):
        SimConfig(vertex="cone")
    with pytest.raises(ValueError, match="dead_fraction"):
        SimConfig(dead_fraction=1.5)
    with pytest.raises(ValueError, match="energy_mev"):
        SimConfig(energy_mev=(60.0, 40.0))
    e = simulate.simulate(0, 50, SimConfig(energy_mev=(40.0, 60.0)))["energyTruth"]
    assert 0.040 <= e.min() and e.max() <= 0.060 and e.std() > 0.003
