"""The data pipeline on real toy ROOT files: discovery, split, epochs, resume, reweighting,
fiducial cut, channel dropout and every kind of bad input."""

import json
import os
import shutil

import numpy as np
import pytest
import uproot

from xecjax.data import (
    DataError,
    Loader,
    Normaliser,
    Reweighter,
    Source,
    Split,
    discover_files,
    make_split,
)
from xecjax.geometry import in_fiducial
from xecjax.rootio import write_tree
from xecjax.simulate import write_toy_files

EVENTS_PER_FILE = 160


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("toy")
    return [
        str(p) for p in write_toy_files(out, 3 * EVENTS_PER_FILE, n_files=3, seed=5, chunk_size=64)
    ]


def _events(path: str, n: int | None = None) -> dict[str, np.ndarray]:
    with uproot.open(path) as f:
        return f["tree"].arrays(library="np", entry_stop=n)


def _ids(batches, valid_only: bool = True) -> np.ndarray:
    """run * 1e6 + event of the delivered events (padding rows dropped unless valid_only=False)."""
    ids = [(b["run"].astype(np.int64) * 10**6 + b["event"]) for b in batches]
    return np.concatenate(
        [i[b["valid"]] if valid_only else i for i, b in zip(ids, batches, strict=True)]
    )


def _loader(sources, **kw) -> Loader:
    kw = {"chunk_size": 50, "shuffle_buffer": 100, "workers": 2, **kw}
    return Loader(sources, Normaliser(), kw.pop("batch_size", 32), **kw)


def _whole(files) -> list[Source]:
    sp = make_split(files, val_fraction=0.5, test_fraction=0.0)
    return sp.train + sp.val


# ----------------------------------------------------------------------------------------------
def test_discover_files(toy, tmp_path):
    d = os.path.dirname(toy[0])
    assert discover_files(d) == sorted(toy)
    assert discover_files(toy[1]) == [toy[1]]
    assert discover_files(os.path.join(d, "toy_5_[01].root")) == sorted(toy)[:2]
    assert discover_files([toy[2], d]) == [toy[2]] + sorted(toy)[:2]  # duplicates removed
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_files(str(tmp_path / "missing.root"))
    with pytest.raises(FileNotFoundError, match="no files match"):
        discover_files(str(tmp_path / "*.root"))
    with pytest.raises(FileNotFoundError, match="holds no"):
        discover_files(tmp_path)


def _paths(sources) -> list[str]:
    return [s.path for s in sources]


def test_split_by_file(toy):
    a, b = make_split(toy, seed=3), make_split(toy, seed=3)
    assert a == b  # reproducible
    assert len(a.train) == len(a.val) == len(a.test) == 1  # default val and test 0.2 each
    assert sorted(_paths(a.train + a.val + a.test)) == sorted(toy)  # disjoint, all files
    assert all(s.start == 0 and s.stop == EVENTS_PER_FILE for s in a.train + a.val + a.test)
    assert len({make_split(toy, seed=s).val[0].path for s in range(12)}) > 1  # seed matters
    assert len({make_split(toy, seed=s).test[0].path for s in range(12)}) > 1
    recorded = json.loads(json.dumps(a.to_dict()))
    assert set(recorded) == {"train", "val", "test", "files"} and Split.from_dict(recorded) == a
    # every file's fingerprint (size, mtime), checked by verify
    assert recorded["files"] == {
        f: [os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in _paths(a.train + a.val + a.test)
    }
    a.verify()
    old = {k: v for k, v in recorded.items() if k != "files"}  # recorded before fingerprints
    assert Split.from_dict(old).files == {}
    Split.from_dict(old).verify()  # nothing to compare
    two = make_split(toy, seed=3, test_fraction=0.0)  # no test part: the split of before
    assert len(two.val) == 1 and len(two.train) == 2 and two.test == []
    assert two.val == a.val  # the same validation file with and without a test part


def test_split_three_parts_by_whole_file(toy, tmp_path):
    files = []
    for k in range(10):  # 10 files: copies of the toy files under other names
        files.append(str(tmp_path / f"f{k}.root"))
        shutil.copy(toy[k % 3], files[-1])
    sp = make_split(files, val_fraction=0.2, test_fraction=0.3, seed=1)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (5, 2, 3)
    assert sorted(_paths(sp.train + sp.val + sp.test)) == sorted(files)
    four = make_split(files[:4], val_fraction=0.4, test_fraction=0.4)  # 2 + 2 > 3: 1 train left
    assert (len(four.train), len(four.val), len(four.test)) == (1, 2, 1)
    with pytest.raises(ValueError, match="test_fraction"):
        make_split(files, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="test_fraction"):
        make_split(files, test_fraction=-0.1)


@pytest.mark.parametrize("n_files", [1, 2])
def test_split_few_files_by_event_range(toy, n_files):
    """Too few files for whole-file parts: every file is cut into train, val, test ranges."""
    files = toy[:n_files]
    sp = make_split(files, val_fraction=0.2, test_fraction=0.25)
    assert len(sp.train) == len(sp.val) == len(sp.test) == n_files
    for tr, va, te in zip(sp.train, sp.val, sp.test, strict=True):
        assert tr.path == va.path == te.path
        assert (tr.start, tr.stop, va.stop, te.stop) == (0, va.start, te.start, EVENTS_PER_FILE)
        assert (va.n_events, te.n_events) == (32, 40)  # round(0.2 * 160), round(0.25 * 160)
    ids = {
        part: _ids(list(_loader(getattr(sp, part), shuffle=False, drop_remainder=False).epoch(0)))
        for part in ("train", "val", "test")
    }
    everything = np.concatenate(list(ids.values()))
    assert len(everything) == n_files * EVENTS_PER_FILE == len(set(everything))  # no event twice
    assert sum(s.n_events for s in sp.train + sp.val + sp.test) == n_files * EVENTS_PER_FILE


def test_split_single_file_by_range(toy, tmp_path):
    sp = make_split(toy[0], val_fraction=0.25, test_fraction=0.0)  # two parts, as before
    (tr,), (va,) = sp.train, sp.val
    assert sp.test == []
    assert (tr.start, tr.stop, va.start, va.stop) == (0, 120, 120, EVENTS_PER_FILE)
    ids = lambda s: _ids(list(_loader([s], shuffle=False, drop_remainder=False).epoch(0)))  # noqa: E731
    assert not set(ids(tr)) & set(ids(va))
    two_events = str(write_tree(tmp_path / "two.root", _events(toy[0], 2)))
    assert make_split(two_events, test_fraction=0.0).val == [Source(two_events, 1, 2)]
    with pytest.raises(DataError, match="cannot split it into 3 event ranges"):
        make_split(two_events, test_fraction=0.2)


def test_split_explicit_files(toy):
    explicit = make_split(None, train=toy[:2], val=toy[2])
    assert _paths(explicit.val) == [toy[2]] and len(explicit.train) == 2
    assert explicit.test == []  # nothing left over
    assert _paths(make_split(toy, val=toy[0]).train) == sorted(toy[1:])
    three = make_split(None, train=toy[0], val=toy[1], test=toy[2])
    assert [_paths(p) for p in (three.train, three.val, three.test)] == [[t] for t in toy]
    rest = make_split(toy, train=toy[0], val=toy[1])  # test: the rest of files
    assert _paths(rest.test) == [toy[2]]
    only_test = make_split(toy, test=toy[2], test_fraction=0.2)  # rest split into train/val
    assert _paths(only_test.test) == [toy[2]]
    assert sorted(_paths(only_test.train + only_test.val)) == sorted(toy[:2])
    no_val = make_split(toy, train=toy[0], test=toy[2])  # val: the rest
    assert _paths(no_val.val) == [toy[1]]
    with pytest.raises(ValueError, match="both train and val"):
        make_split(None, train=toy, val=toy[0])
    with pytest.raises(ValueError, match=r"both train and test: \[.*toy_5_2"):
        make_split(None, train=toy[1:], val=toy[0], test=toy[2])
    with pytest.raises(ValueError, match="both val and test"):
        make_split(None, train=toy[0], val=toy[1:], test=toy[2])
    with pytest.raises(ValueError, match="leaves val empty"):
        make_split(toy, train=toy[:2], test=toy[2])


def test_split_from_an_old_dict_has_no_test_part(toy):
    old = {"train": [{"path": toy[0], "start": 0, "stop": 100}],
           "val": [{"path": toy[0], "start": 100, "stop": 160}]}  # fmt: skip
    sp = Split.from_dict(old)
    assert sp.test == [] and sp.val == [Source(toy[0], 100, 160)]
    assert Split.from_dict(sp.to_dict()) == sp


def test_epoch_delivers_every_event_once(toy):
    srcs = _whole(toy)
    loader = _loader(srcs, drop_remainder=False, batch_size=50)
    batches = list(loader.epoch(0))
    assert len(batches) == loader.num_batches() == 10
    assert all(b["x"].shape == (50, 4760, 2) and b["x"].dtype == np.float32 for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == 3 * EVENTS_PER_FILE and valid[:-20].all() and not valid[-20:].any()
    ids = _ids(batches)
    assert np.array_equal(ids, _ids(batches, valid_only=False)[valid])
    expected = np.concatenate(
        [_events(p)["run"].astype(np.int64) * 10**6 + _events(p)["event"] for p in toy]
    )
    assert len(ids) == len(set(ids)) and set(ids) == set(expected)
    last = batches[-1]
    assert np.all(last["x"][~last["valid"]] == -1.0) and np.all(last["weight"][~last["valid"]] == 0)
    x = np.concatenate([b["x"] for b in batches])
    assert np.isfinite(x).all()
    # content: every batch row equals the Normaliser applied to its event (the readers write
    # into pool slots planned ahead: a slot reused too early would show here)
    x_of = {}
    for p in toy:
        ev = _events(p)
        keys = ev["run"].astype(np.int64) * 10**6 + ev["event"]
        x_of.update(zip(keys.tolist(), Normaliser()(ev["npho"], ev["relative_time"]), strict=True))
    np.testing.assert_array_equal(x[valid], np.stack([x_of[int(i)] for i in ids]))
    ev = _events(toy[0], 5)
    row = np.flatnonzero(_ids(batches, False) == ev["run"][3] * 10**6 + ev["event"][3])[0]
    flat = {k: np.concatenate([b[k] for b in batches]) for k in ("x", "angles", "xyzVTX", "energy")}
    np.testing.assert_array_equal(flat["angles"][row], ev["emiAng"][3])
    np.testing.assert_array_equal(flat["xyzVTX"][row], ev["xyzVTX"][3])
    assert flat["energy"][row] == ev["energyTruth"][3]
    summary = loader.summary
    assert summary["events"] == summary["used"] == 3 * EVENTS_PER_FILE
    assert summary["padding_per_epoch"] == 20


def test_shuffling_and_determinism(toy):
    srcs = _whole(toy)
    e0 = _ids(list(_loader(srcs, seed=1).epoch(0)))
    assert np.array_equal(e0, _ids(list(_loader(srcs, seed=1).epoch(0))))  # same seed, same order
    assert not np.array_equal(e0, _ids(list(_loader(srcs, seed=1).epoch(1))))
    assert not np.array_equal(e0, _ids(list(_loader(srcs, seed=2).epoch(0))))
    # the shuffle mixes files and breaks the file order within a batch
    first = _ids(list(_loader(srcs, seed=1, batch_size=64).epoch(0))[:1])
    assert len(np.unique(first // 10**6)) >= 2
    ordered = _ids(list(_loader(srcs, shuffle=False).epoch(0)))
    assert np.all(np.diff(ordered[:EVENTS_PER_FILE]) > 0)


@pytest.mark.parametrize(
    ("n_events", "batch", "shuffle"), [(None, 100, True), (None, 200, False), (30, 64, True)]
)
def test_process_slices_make_up_the_single_process_batches(toy, n_events, batch, shuffle):
    """Each of 2 processes yields its half of every global batch; together: one process's.

    480 events in batches of 100: the last holds 80 (50 + 30); of 200: 80 (80 + 0, all padding
    for process 1); 30 events in a batch of 64: process 1 gets nothing at all in the epoch.
    """
    import dataclasses

    srcs = _whole(toy)
    if n_events is not None:
        srcs = [dataclasses.replace(srcs[0], stop=srcs[0].start + n_events)]
    kw = dict(batch_size=batch, seed=3, shuffle=shuffle, drop_remainder=False, channel_dropout=0.1)
    one = list(_loader(srcs, **kw).epoch(1))
    parts = [list(_loader(srcs, process_index=r, process_count=2, **kw).epoch(1)) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == len(one) > 0
    for whole, a, b in zip(one, *parts, strict=True):
        assert a["x"].shape == b["x"].shape == (batch // 2, 4760, 2)
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), whole[key], key)
    with pytest.raises(ValueError, match="multiple of 2 processes"):
        _loader(srcs, batch_size=33, process_count=2)


def test_resume_equals_tail(toy):
    rw = Reweighter.fit(_whole(toy), "theta", bins=10)
    loader = _loader(_whole(toy), seed=4, channel_dropout=0.1, reweighter=rw)
    full = list(loader.epoch(2))
    for k in (0, 3, len(full) - 1, len(full)):
        tail = list(loader.epoch(2, skip_batches=k))
        assert len(tail) == len(full) - k
        for a, b in zip(full[k:], tail, strict=True):
            assert a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)
    with pytest.raises(ValueError, match="skip_batches"):
        next(loader.epoch(2, skip_batches=len(full) + 1))
    # abandoning an epoch early stops its threads cleanly
    it = loader.epoch(3)
    next(it)
    it.close()


def test_channel_dropout_writes_sentinels(toy):
    srcs = [Source(toy[0], 0, 100)]
    plain = list(_loader(srcs, shuffle=False, batch_size=100).epoch(0))[0]["x"]
    drop = list(_loader(srcs, shuffle=False, batch_size=100, channel_dropout=0.2).epoch(0))[0]["x"]
    changed = np.any(plain != drop, axis=-1)
    assert 0.15 < changed.mean() < 0.25
    assert np.all(drop[changed] == [-1.0, -1.0])
    sentinel_pairs = np.all(drop == -1.0, axis=-1)
    assert 0.18 < sentinel_pairs.mean() < 0.3  # dropout plus dead channels (never 0-filled)


def test_reweighting_flattens_skewed_sample(toy, tmp_path):
    ang = np.concatenate([_events(p)["emiAng"] for p in toy])
    rng = np.random.default_rng(0)
    t = ang[:, 0]
    skew = ang[rng.random(len(ang)) < 0.15 + 0.85 * (t - t.min()) / np.ptp(t)]  # rising with theta
    path = write_tree(tmp_path / "skew.root", {"emiAng": skew.astype(np.float32)})
    src = [Source(str(path), 0, len(skew))]
    rw = Reweighter.fit(src, "theta", bins=50, cache_dir=tmp_path / "cache")
    w = rw(skew)
    assert w.dtype == np.float32 and w.mean() == pytest.approx(1.0, rel=1e-5)
    counts = np.histogram(skew[:, 0], bins=rw.edges[0])[0]
    weighted = np.histogram(skew[:, 0], bins=rw.edges[0], weights=w)[0]
    k = len(skew) / np.count_nonzero(counts)
    np.testing.assert_allclose(weighted[counts > 0], k, rtol=1e-4)  # exactly flat
    # with every bin filled (10 bins for this small sample) the whole distribution is flat
    rw10 = Reweighter.fit(src, "theta", bins=10)
    coarse = rw10.edges[0][::2]
    raw = np.histogram(skew[:, 0], bins=coarse)[0]
    flat = np.histogram(skew[:, 0], bins=coarse, weights=rw10(skew))[0]
    assert raw.max() / raw.min() > 2.5
    np.testing.assert_allclose(flat, len(skew) / 5, rtol=1e-4)
    # cached: the second fit reads the file written by the first
    (cached,) = list((tmp_path / "cache").iterdir())
    again = Reweighter.fit(src, "theta", bins=50, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.table, rw.table)
    assert Reweighter.from_dict(json.loads(cached.read_text())).mode == "theta"
    both = Reweighter.fit(src, "theta_phi", bins=10)
    assert both.table.shape == (10, 10) and both(skew).mean() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="mode"):
        Reweighter.fit(src, "energy")
    # in the loader, weights follow the angles
    batch = next(_loader(_whole(toy), reweighter=rw).epoch(0))
    np.testing.assert_array_equal(batch["weight"], rw(batch["angles"]))


def test_fiducial_cut(toy):
    uvw = _events(toy[0])["uvwTruth"]
    inside = int(in_fiducial(uvw).sum())
    assert 0 < inside < EVENTS_PER_FILE
    loader = _loader([Source(toy[0], 0, EVENTS_PER_FILE)], fiducial=True, drop_remainder=False)
    valid = np.concatenate([b["valid"] for b in loader.epoch(0)])
    assert valid.sum() == inside == loader.summary["used"]
    assert loader.summary["skipped"] == {"outside_fiducial": EVENTS_PER_FILE - inside}


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def _copy(toy, path, n=40, drop=(), **replace) -> str:
    ev = {k: v for k, v in _events(toy[0], n).items() if k not in drop}
    ev.update(replace)
    return str(write_tree(path, ev))


def test_missing_and_broken_files(toy, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.root"):
        _loader([Source(str(tmp_path / "missing.root"), 0, 10)])
    text = tmp_path / "text.root"
    text.write_text("this is not a ROOT file\n" * 100)
    with pytest.raises(DataError, match="text.root.*not a readable ROOT file"):
        _loader([Source(str(text), 0, 10)])
    cut = tmp_path / "cut.root"
    data = open(toy[0], "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.root"):
        list(_loader([Source(str(cut), 0, EVENTS_PER_FILE)]).epoch(0))


def test_missing_tree_and_branches(toy, tmp_path):
    ev = _events(toy[0], 10)
    other = write_tree(tmp_path / "other.root", ev, tree="events")
    with pytest.raises(DataError, match="other.root.*no tree 'tree'.*events"):
        _loader([Source(str(other), 0, 10)])
    nobranch = _copy(toy, tmp_path / "nobranch.root", drop=("relative_time",))
    with pytest.raises(DataError, match="nobranch.root.*no branch 'relative_time'.*'npho'"):
        _loader([Source(nobranch, 0, 40)])
    notruth = _copy(toy, tmp_path / "notruth.root", drop=("emiAng",))
    with pytest.raises(DataError, match="notruth.root.*'emiAng'"):
        _loader([Source(notruth, 0, 40)])
    short = _copy(toy, tmp_path / "short.root", npho=ev["npho"][:1].repeat(40, 0)[:, :4000])
    with pytest.raises(DataError, match=r"short.root.*'npho'.*\(4000,\).*4760"):
        _loader([Source(short, 0, 40)])
    with pytest.raises(DataError, match="only 40 events"):
        _loader([Source(notruth, 0, 50)], truth=False)


def test_invalid_values_become_sentinels(toy, tmp_path):
    ev = _events(toy[0], 40)
    npho, time, ang = ev["npho"].copy(), ev["relative_time"].copy(), ev["emiAng"].copy()
    npho[:, :4] = [np.nan, np.inf, -np.inf, 1e10]
    time[:, 4:7] = [np.nan, np.inf, 1e10]
    npho[:, 4:7] = 500.0
    ang[[3, 7]] = np.nan
    path = _copy(toy, tmp_path / "bad.root", npho=npho, relative_time=time, emiAng=ang)
    loader = _loader([Source(path, 0, 40)], drop_remainder=False, batch_size=16)
    batches = list(loader.epoch(0))
    x = np.concatenate([b["x"][b["valid"]] for b in batches])
    assert len(x) == 38 and np.isfinite(x).all()
    assert np.all(x[:, :4] == -1.0) and np.all(x[:, 4:7, 1] == -1.0) and np.all(x[:, 4:7, 0] > 0)
    assert not np.isin(ev["event"][[3, 7]], np.concatenate([b["event"] for b in batches])).any()
    (rec,) = loader.summary["files"]
    assert rec["skipped"] == {"nonfinite_truth": 2} and rec["used"] + 2 == rec["events"] == 40


def test_empty_files_are_skipped_and_counted(toy, tmp_path):
    zero = tmp_path / "zero.root"
    zero.touch()
    empty = _copy(toy, tmp_path / "empty.root", n=40)
    with uproot.recreate(empty) as f:  # a valid ROOT file whose tree has no entries
        f.mktree(
            "tree",
            {
                k: v.dtype if v.ndim == 1 else np.dtype((v.dtype, v.shape[1:]))
                for k, v in _events(toy[0], 1).items()
            },
        )
    srcs = [Source(str(zero), 0, 0), Source(empty, 0, 0), Source(toy[0], 0, 50)]
    with pytest.warns(UserWarning, match="no events"):
        loader = _loader(srcs, drop_remainder=False)
    batches = list(loader.epoch(0))  # 50 events padded to 2 batches of 32
    assert len(batches) == 2 and _ids(batches).size == 50
    s = loader.summary
    assert [r["skipped"] for r in s["files"][:2]] == [{"empty": 0}, {"empty": 0}]
    assert s["used"] == 50 and all(
        r["used"] + sum(r["skipped"].values()) == r["events"] for r in s["files"]
    )


def test_real_data_without_truth(toy, tmp_path):
    truth = ("emiAng", "emiVec", "xyzVTX", "xyzTruth", "uvwTruth", "energyTruth", "timeTruth")
    path = _copy(toy, tmp_path / "real.root", drop=truth)
    loader = _loader(
        [Source(path, 0, 40)],
        truth=False,
        shuffle=False,
        drop_remainder=False,
        extra_branches=["energyReco"],
    )
    batch = next(loader.epoch(0))
    assert set(batch) == {"x", "run", "event", "weight", "valid", "energyReco"}
    np.testing.assert_array_equal(batch["energyReco"], _events(toy[0], 32)["energyReco"])
    with pytest.raises(DataError, match="real.root.*no branch 'emiAng'"):
        _loader([Source(path, 0, 40)])
    shutil.rmtree(tmp_path)


def test_large_chunks_are_written_as_bounded_baskets(tmp_path, monkeypatch):
    import xecjax.rootio as rootio

    rng = np.random.default_rng(3)
    ev = {
        "npho": rng.normal(size=(25, 4760)).astype(np.float32),
        "run": np.arange(25, dtype=np.int32),
    }
    monkeypatch.setattr(rootio, "BASKET_BYTES", 4 * 4760 * 4)  # four events of npho
    path = write_tree(tmp_path / "b.root", ev)
    with uproot.open(path) as f:
        t = f["tree"]
        assert t["npho"].num_baskets == 7  # 25 events in baskets of 4
        assert t["run"].num_baskets == 7  # every branch flushed together
        got = t.arrays(["npho", "run"], library="np")
    np.testing.assert_array_equal(got["npho"], ev["npho"])
    np.testing.assert_array_equal(got["run"], ev["run"])
    with pytest.raises(ValueError, match="unequal length"):
        write_tree(tmp_path / "bad.root", {"npho": ev["npho"], "run": ev["run"][:3]})
    assert not list(tmp_path.glob("*bad*"))  # nothing left behind


def test_zlib_baskets_are_inflated_with_libdeflate(tmp_path, monkeypatch):
    """ZLIB baskets are inflated by libdeflate (a dependency, faster than zlib), with the same
    result as uproot's own decompressor (the standard library's zlib)."""
    import deflate

    import xecjax.rootio as rootio

    assert rootio.zlib_inflate() == "libdeflate"
    rng = np.random.default_rng(4)
    ev = {"npho": rng.gamma(2.0, 50.0, size=(40, 4760)).astype(np.float32)}
    path = write_tree(tmp_path / "z.root", ev, compression="zlib")

    def read() -> np.ndarray:
        with uproot.open(path) as f:
            assert f.file.compression.name == "ZLIB"
            return f["tree"]["npho"].array(library="np")

    calls = []
    inflate = deflate.zlib_decompress
    monkeypatch.setattr(
        deflate, "zlib_decompress", lambda *a, **k: calls.append(1) or inflate(*a, **k)
    )
    np.testing.assert_array_equal(read(), ev["npho"])
    n_deflate = len(calls)
    assert n_deflate > 0  # uproot really inflated through libdeflate
    monkeypatch.setattr(
        uproot.compression, "_decompress_ZLIB", uproot.compression._DecompressZLIB()
    )
    np.testing.assert_array_equal(read(), ev["npho"])
    assert len(calls) == n_deflate  # ... and uproot's zlib gives the same arrays
    # a corrupt basket is an error naming the file, not garbage
    monkeypatch.undo()
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(64)
    bad = tmp_path / "corrupt.root"
    bad.write_bytes(bytes(raw))
    t = rootio.open_tree(str(bad), "tree")
    try:
        with pytest.raises(DataError, match="corrupt.root"):
            rootio.read_arrays(t, ["npho"], 0, 40)
    finally:
        t.file.close()


def test_tree_writer_leaves_nothing_when_close_fails(tmp_path):
    """A failing close (e.g. disk full while the header is written) must not rename the
    half-written temporary file into place."""
    from xecjax.rootio import TreeWriter

    path = tmp_path / "out.root"
    with pytest.raises(OSError, match="disk full"):
        with TreeWriter(path, "tree") as w:
            w.extend({"a": np.arange(10, dtype=np.float32)})
            real_close = w._file.close

            def failing_close():
                real_close()
                raise OSError("disk full")

            w._file.close = failing_close
    assert not path.exists()
    assert not list(tmp_path.iterdir())


def test_discover_files_accepts_a_comma_separated_list(tmp_path):
    from xecjax.rootio import discover_files

    for name in ("a.root", "b.root", "c,d.root"):
        (tmp_path / name).touch()
    a, b, cd = (str(tmp_path / n) for n in ("a.root", "b.root", "c,d.root"))
    assert discover_files(f"{a}, {b}") == [a, b]
    assert discover_files(f"{tmp_path}/b.root,{tmp_path}/a.root") == [b, a]
    assert discover_files(cd) == [cd]  # an existing name is never split
    with pytest.raises(FileNotFoundError, match="nothere"):
        discover_files(f"{a},{tmp_path}/nothere.root")
