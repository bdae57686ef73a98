"""Train / validation / test split by whole files (enough files) or by event ranges (too few),
disjoint by construction; the Split is recorded with every run (`to_dict`) so it can be audited
and reused. Training reads only `train` and chooses `best` on `val`; `test` is held out for the
final evaluation (xecjax.evaluate reports it by default).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from xecjax.rootio import DataError, discover_files, num_entries

PARTS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Source:
    """Events [start, stop) of one ROOT file."""

    path: str
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop:
            raise ValueError(f"Source {self.path!r}: need 0 <= start <= stop, got {self}")

    @property
    def n_events(self) -> int:
        return self.stop - self.start


def fingerprint(path: str) -> list[int]:
    """[size in bytes, modification time in ns] of a file: what `Split.verify` compares."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


@dataclasses.dataclass
class Split:
    """Training, validation and test sources; record `to_dict()` with every run.

    `test` is empty when no test part was asked for (test_fraction 0) and in runs recorded
    before the test split existed. `files` maps every file of the split to its fingerprint
    (size, modification time) when the split was made; `verify` refuses a file that changed
    since (empty in runs recorded before fingerprints existed: nothing to compare).
    """

    train: list[Source]
    val: list[Source]
    test: list[Source] = dataclasses.field(default_factory=list)
    files: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def paths(self) -> list[str]:
        """Every file of the split once, in order of appearance."""
        return list(dict.fromkeys(s.path for k in PARTS for s in getattr(self, k)))

    def with_fingerprints(self) -> Split:
        """This split with the current size and modification time of each of its files."""
        return dataclasses.replace(self, files={f: fingerprint(f) for f in self.paths()})

    def verify(self, what: str = "the recorded split") -> None:
        """Raise DataError naming the file when one recorded in `files` is gone or changed
        (size or modification time) since the split was made: resuming or evaluating on other
        events than the run recorded would be silent otherwise."""
        for path, recorded in self.files.items():
            if not os.path.exists(path):
                raise DataError(f"{path}: file of {what} is gone")
            now = fingerprint(path)
            if now != list(recorded):
                raise DataError(
                    f"{path}: file of {what} changed since the split was made (size, mtime ns "
                    f"{recorded[0]}, {recorded[1]} then, {now[0]}, {now[1]} now): the events "
                    "may differ; restore the file, or start a new run on the new data"
                )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: [dataclasses.asdict(s) for s in getattr(self, k)] for k in PARTS}
        out["files"] = {f: list(v) for f, v in self.files.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        """The inverse of to_dict; a dict without "test" (an older run) gives an empty test,
        one without "files" no fingerprints."""
        parts = ([Source(**s) for s in d.get(k, [])] for k in PARTS)
        return cls(*parts, files={f: list(v) for f, v in d.get("files", {}).items()})


def _whole(files: Sequence[str], tree: str) -> list[Source]:
    return [Source(f, 0, num_entries(f, tree)) for f in files]


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) of n items: each max(1, round(fraction * n)) (test 0 when its fraction
    is 0), reduced so that at least one item is left for training."""
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n))
    n_val = min(n_val, n - 1 - (n_test > 0))
    n_test = min(n_test, n - 1 - n_val)
    return n_val, n_test


def _explicit(files, train, val, test, val_fraction, seed, tree) -> Split:
    """The split of explicit file specs; a missing part is made of the remaining files."""
    given = {
        k: discover_files(v)
        for k, v in zip(PARTS, (train, val, test), strict=True)
        if v is not None
    }
    names = list(given)
    for i, a in enumerate(names):  # overlap between any two given parts
        for b in names[i + 1 :]:
            both = sorted(
                set(map(os.path.realpath, given[a])) & set(map(os.path.realpath, given[b]))
            )
            if both:
                raise ValueError(f"files in both {a} and {b}: {both}")
    used = {os.path.realpath(f) for fs in given.values() for f in fs}
    rest = [f for f in (discover_files(files) if files else []) if os.path.realpath(f) not in used]
    if "train" not in given and "val" not in given:  # only test given: split the rest train/val
        if not rest:
            raise ValueError("explicit split: test files given, no other files to train on")
        sp = make_split(rest, val_fraction, seed, test_fraction=0.0, tree=tree)
        return Split(sp.train, sp.val, _whole(given["test"], tree))
    parts = {k: given.get(k) for k in PARTS}
    for k in ("train", "val"):
        if parts[k] is None:
            parts[k] = rest
    if parts["test"] is None:  # the rest of `files` when train and val are both given
        parts["test"] = rest if "train" in given and "val" in given else []
    for k in ("train", "val"):
        if not parts[k]:
            raise ValueError(f"explicit split leaves {k} empty")
    return Split(*(_whole(parts[k], tree) for k in PARTS))


def make_split(
    files: str | os.PathLike | Sequence[str | os.PathLike] | None,
    val_fraction: float = 0.2,
    seed: int = 0,
    train=None,
    val=None,
    test_fraction: float = 0.2,
    test=None,
    tree: str = "tree",
) -> Split:
    """Split into disjoint train / val / test sources.

    Enough files (>= 3 with a test part, >= 2 without): whole files, n_val =
    max(1, round(val_fraction * n)) and n_test = max(1, round(test_fraction * n)) chosen with
    `seed`, at least one file left for training. Fewer files: every file by event range, the
    same counts of its events, in the order train, val, test (test at the end of each file).
    test_fraction 0: no test part (empty list).

    `train` / `val` / `test` (file specs, see discover_files) override: a part given is used as
    it is; a missing train or val is the remaining files of `files`; a missing test is the
    remaining files when train and val are both given (else empty); test given alone: the
    remaining files are split into train and val as above. Overlap between parts is an error.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"test_fraction must be in [0, 1) with val_fraction + test_fraction < 1, got "
            f"val_fraction {val_fraction}, test_fraction {test_fraction}"
        )
    if train is not None or val is not None or test is not None:
        return _explicit(files, train, val, test, val_fraction, seed, tree).with_fingerprints()
    files = discover_files(files)
    n_parts = 3 if test_fraction > 0 else 2
    if len(files) >= n_parts:
        n_val, n_test = _counts(len(files), val_fraction, test_fraction)
        perm = np.random.default_rng(seed).permutation(len(files))
        va = sorted(files[i] for i in perm[:n_val])  # as before the test part existed
        te = sorted(files[i] for i in perm[n_val : n_val + n_test])
        tr = [f for f in files if f not in set(va) | set(te)]
        return Split(_whole(tr, tree), _whole(va, tree), _whole(te, tree)).with_fingerprints()
    split = Split([], [], [])
    for f in files:  # too few files: every file by event range
        n = num_entries(f, tree)
        if n < n_parts:
            raise DataError(f"{f!r}: {n} events, cannot split it into {n_parts} event ranges")
        n_val, n_test = _counts(n, val_fraction, test_fraction)
        cut_val, cut_test = n - n_val - n_test, n - n_test
        split.train.append(Source(f, 0, cut_val))
        split.val.append(Source(f, cut_val, cut_test))
        if n_test:
            split.test.append(Source(f, cut_test, n))
    return split.with_fingerprints()
