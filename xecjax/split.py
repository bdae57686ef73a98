"""Train / validation split by file (>= 2 files) or by event range (one file), disjoint by
construction; the Split is recorded with every run (`to_dict`) so it can be audited and reused.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from xecjax.rootio import DataError, discover_files, num_entries


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


@dataclasses.dataclass
class Split:
    """Training and validation sources; record `to_dict()` with every run."""

    train: list[Source]
    val: list[Source]

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {k: [dataclasses.asdict(s) for s in getattr(self, k)] for k in ("train", "val")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        return cls(*([Source(**s) for s in d[k]] for k in ("train", "val")))


def _whole(files: Sequence[str], tree: str) -> list[Source]:
    return [Source(f, 0, num_entries(f, tree)) for f in files]


def make_split(
    files: str | os.PathLike | Sequence[str | os.PathLike],
    val_fraction: float = 0.2,
    seed: int = 0,
    train=None,
    val=None,
    tree: str = "tree",
) -> Split:
    """Split into disjoint train/val sources.

    >= 2 files: whole files, val = round(val_fraction * n) (at least 1) chosen with `seed`.
    1 file: by event range, the last val_fraction of its events for validation.
    `train` / `val` (file specs, see discover_files) override: both given -> used as they are;
    one given -> the other is the remaining files. Overlap is an error.
    """
    if train is not None or val is not None:
        all_files = discover_files(files) if files else []
        if train is not None:
            tr = discover_files(train)
        else:
            tr = [f for f in all_files if f not in set(discover_files(val))]
        va = discover_files(val) if val is not None else [f for f in all_files if f not in set(tr)]
        both = sorted(set(map(os.path.realpath, tr)) & set(map(os.path.realpath, va)))
        if both:
            raise ValueError(f"files in both train and val: {both}")
        if not tr or not va:
            raise ValueError(f"explicit split leaves {'train' if not tr else 'val'} empty")
        return Split(_whole(tr, tree), _whole(va, tree))
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    files = discover_files(files)
    if len(files) >= 2:
        n_val = min(len(files) - 1, max(1, round(val_fraction * len(files))))
        perm = np.random.default_rng(seed).permutation(len(files))
        va = sorted(files[i] for i in perm[:n_val])
        return Split(_whole([f for f in files if f not in set(va)], tree), _whole(va, tree))
    n = num_entries(files[0], tree)
    if n < 2:
        raise DataError(f"{files[0]!r}: {n} events, cannot split one file into train and val")
    cut = n - min(n - 1, max(1, round(val_fraction * n)))
    return Split([Source(files[0], 0, cut)], [Source(files[0], cut, n)])
