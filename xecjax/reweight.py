"""Sample reweighting: per-event weights that flatten the theta, phi or (theta, phi)
distribution of the training sample (50 bins, weight = k / count, k = events / non-empty bins),
fitted in one pass over the emiAng branch and cached by file identity.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xecjax.rootio import DataError, read_per_event
from xecjax.split import Source, fingerprint

_MODES = {"theta": (0,), "phi": (1,), "theta_phi": (0, 1)}


class Reweighter:
    """Per-event weights flattening the theta, phi or (theta, phi) distribution.

    weight = k / count(bin of the event), k = events / non-empty bins, so the mean weight over
    the fitted sample is 1 and its weighted histogram is flat.
    """

    def __init__(self, mode: str, edges: Sequence[np.ndarray], table: np.ndarray):
        if mode not in _MODES:
            raise ValueError(f"unknown reweighting mode {mode!r}: expected one of {list(_MODES)}")
        self.mode = mode
        self.edges = [np.asarray(e, np.float64) for e in edges]
        self.table = np.asarray(table, np.float32)

    @classmethod
    def fit(
        cls,
        sources: Sequence[Source],
        mode: str,
        bins: int = 50,
        cache_dir=None,
        tree: str = "tree",
    ) -> Reweighter:
        """Histogram emiAng of `sources` (one pass over a small branch); cached in cache_dir."""
        if mode not in _MODES:
            raise ValueError(f"unknown reweighting mode {mode!r}: expected one of {list(_MODES)}")
        ident = [mode, bins, tree] + [
            [s.path, s.start, s.stop, *fingerprint(s.path)] for s in sources
        ]
        key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"reweight_{mode}_{key}.json" if cache_dir else None
        if cache is not None and cache.is_file():
            return cls.from_dict(json.loads(cache.read_text()))
        angles = [
            a
            for s in sources
            for a in read_per_event(s.path, s.start, s.stop, {"emiAng": (2,)}, tree)
        ]
        ang = np.concatenate([a["emiAng"] for a in angles]) if angles else np.zeros((0, 2))
        ang = ang[np.isfinite(ang).all(axis=1)][:, list(_MODES[mode])].astype(np.float64)
        if len(ang) == 0:
            raise DataError(f"no events with finite emiAng to fit reweighting in {sources}")
        edges = [np.linspace(c.min(), c.max(), bins + 1) for c in ang.T]
        counts = np.histogramdd(ang, bins=edges)[0]
        k = counts.sum() / np.count_nonzero(counts)
        rw = cls(mode, edges, np.where(counts > 0, k / np.maximum(counts, 1), 0.0))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(rw.to_dict()))
            os.replace(tmp, cache)
        return rw

    def __call__(self, angles: np.ndarray) -> np.ndarray:
        """angles [N, 2] (theta, phi) degrees -> weights [N] float32 (edge bins extend out)."""
        angles = np.asarray(angles)
        idx = tuple(
            np.clip(np.searchsorted(e, angles[:, a], side="right") - 1, 0, len(e) - 2)
            for a, e in zip(_MODES[self.mode], self.edges, strict=True)
        )
        return self.table[idx]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "edges": [e.tolist() for e in self.edges],
            "table": self.table.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reweighter:
        return cls(d["mode"], d["edges"], np.asarray(d["table"]))
