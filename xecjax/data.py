"""ROOT files -> normalised batches: the streaming Loader (shuffling, prefetch, weights).

Its parts live beside it and are re-exported here: file discovery and checked reading in
`xecjax.rootio`, the train/validation/test split in `xecjax.split`, sample reweighting in
`xecjax.reweight`, the Normaliser in `xecjax.normalise`.

Inputs follow DESIGN.md section 4 (tree `tree`, per-sensor float[4760] branches, per-event truth).
The pipeline, per epoch:
  plan     the sources are cut into chunks (~chunk_size events, snapped to basket boundaries);
           the chunk order is shuffled with (seed, epoch) and a shuffle buffer of
           `shuffle_buffer` events is simulated on event positions only, which fixes the order of
           every event of the epoch before any data is read. The same (seed, epoch) therefore
           gives the same batches, and `epoch(e, skip_batches=k)` resumes exactly, reading only
           the chunks that still hold events of batches >= k.
  read     `workers` threads read chunks with uproot (only the needed branches, library="np",
           parallel decompression) and normalise them with the Normaliser (NumPy), _BLOCK
           events at a time, straight into their slots of a fixed pool (with channel dropout),
           so each event's input is written once before its batch; sample weights are applied.
  batch    a background thread gathers batches from the pool into a bounded queue of
           `prefetch` batches, so reading overlaps the consumer's compute. The plan also gives
           every event its pool slot: slots are handed to a read when it is submitted and
           return when their batch is emitted, so the pool holds at most ~shuffle_buffer +
           batch_size + (workers + 2) * chunk_size events (`Loader.pool_events`).
Memory is set by chunk_size, shuffle_buffer, batch_size, workers and prefetch, not by file sizes
(the epoch plan and its slot schedule hold ~40 bytes per event). Events are checked once, when
the Loader is built: non-finite truth and, optionally, the fiducial cut on uvwTruth remove
events; empty files are skipped with a warning; every event is accounted for in
`Loader.summary`.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from xecjax.geometry import N_SENSORS, in_fiducial
from xecjax.normalise import Normaliser
from xecjax.reweight import Reweighter
from xecjax.rootio import (
    DataError,
    check_branches,
    check_entries,
    discover_files,
    num_entries,
    open_tree,
    read_arrays,
    read_per_event,
)
from xecjax.split import Source, Split, make_split

# the pipeline's public names in one place (defined in rootio, split, reweight, normalise)
__all__ = [
    "DataError",
    "Loader",
    "Normaliser",
    "Reweighter",
    "Source",
    "Split",
    "discover_files",
    "make_split",
    "num_entries",
    "open_tree",
]

# batch key -> (branch, per-event shape); the truth set is optional (real data has none)
TRUTH = {
    "angles": ("emiAng", (2,)),
    "emiVec": ("emiVec", (3,)),
    "xyzVTX": ("xyzVTX", (3,)),
    "xyzTruth": ("xyzTruth", (3,)),
    "energy": ("energyTruth", ()),
}
IDS = {"run": ("run", ()), "event": ("event", ())}
# the targets of the tasks beside the angle (xecjax.tasks) that TRUTH does not already hold
TASK_TARGETS = {"timing": ("timeTruth", ()), "uvw": ("uvwTruth", (3,))}
_BLOCK = 32  # events normalised and copied into the pool at a time (~1.2 MB, stays in cache)


# ----------------------------------------------------------------------------------------------
# Streaming loader
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Chunk:
    part: int  # index of the source
    start: int  # entries [start, stop) of the file
    stop: int
    rows: np.ndarray | None  # used entries relative to start; None: all

    @property
    def n(self) -> int:
        return self.stop - self.start if self.rows is None else len(self.rows)


def _chunk_bounds(start: int, stop: int, size: int, baskets: Sequence[int]) -> list[int]:
    """Boundaries every ~size entries of [start, stop), moved onto a basket boundary within
    size/2 (a boundary inside a basket makes both neighbouring chunks decompress it)."""
    baskets = np.asarray(baskets, np.int64)
    out = [start]
    while out[-1] < stop:
        nxt = out[-1] + size
        near = baskets[(baskets > out[-1]) & (np.abs(baskets - nxt) <= size // 2)]
        if len(near):
            nxt = int(near[np.argmin(np.abs(near - nxt))])
        out.append(min(nxt, stop))
    return out


def _shuffle_buffer_order(sizes: np.ndarray, capacity: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a shuffle buffer on stream positions.

    Chunks of `sizes` events enter in turn; once more than `capacity` events are held, a random
    excess leaves in random order. Returns (order [N]: positions in emission order,
    emitted [len(sizes)]: events emitted after each chunk; the rest leave in a final flush).
    """
    buf, out, emitted, pos = np.zeros(0, np.int64), [], [], 0
    for m in sizes:
        pool = np.concatenate([buf, np.arange(pos, pos + m)])
        pos += m
        excess = len(pool) - capacity
        if excess > 0:
            p = rng.permutation(len(pool))
            out.append(pool[p[:excess]])
            buf = pool[p[excess:]]
        else:
            buf = pool
        emitted.append(pos - len(buf))
    out.append(rng.permutation(buf))
    return np.concatenate(out), np.asarray(emitted, np.int64)


class _Trees:
    """Open trees per (reader thread, path), a few per thread, all closed at the epoch's end."""

    def __init__(self, tree: str, per_thread: int = 8):
        self.tree, self.per_thread = tree, per_thread
        self._open: dict[tuple[int, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, path: str):
        key = (threading.get_ident(), path)
        with self._lock:
            t = self._open.get(key)
        if t is None:
            t = open_tree(path, self.tree)
            with self._lock:
                mine = [k for k in self._open if k[0] == key[0]]
                if len(mine) >= self.per_thread:
                    self._open.pop(mine[0]).file.close()
                self._open[key] = t
        return t

    def close(self) -> None:
        with self._lock:
            for t in self._open.values():
                t.file.close()
            self._open.clear()


_END = object()


class Loader:
    """Batches of normalised events from `sources`, shuffled per epoch, prefetched.

    A batch is a dict of NumPy arrays (B = batch_size): "x" float32 [B, 4760, 2] (Normaliser
    output); with truth=True "angles" float32 [B, 2] (theta, phi in degrees, from emiAng),
    "emiVec" [B, 3], "xyzVTX" [B, 3] cm, "xyzTruth" [B, 3] cm, "energy" [B] GeV (energyTruth);
    with `targets` (tasks beside the angle, xecjax.tasks) also "timing" [B] ns (timeTruth) and
    "uvw" [B, 3] cm (uvwTruth), float32, filtered for finite values like the truth;
    always "run", "event" int32 [B], "weight" float32 [B] (1 unless reweighting, 0 on padding),
    "valid" bool [B]; plus `extra_branches` (e.g. reconstructed quantities of real data) under
    their own names. With drop_remainder=False the last batch is padded to B rows (valid False,
    x = sentinels) so shapes never change. With process_count > 1, batch_size is the global
    batch: every process plans the same epoch and yields its own contiguous slice of
    batch_size / process_count rows of every global batch (reading only the rows it needs),
    so N processes see exactly the batches of one. Events with non-finite truth and, with
    fiducial=True, events outside the fiducial volume (uvwTruth) are removed when the Loader is
    built; epochs and `num_batches` count the remaining events.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        normaliser: Normaliser,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 4096,
        chunk_size: int = 1000,
        drop_remainder: bool = True,
        reweighter: Reweighter | None = None,
        fiducial: bool = False,
        channel_dropout: float = 0.0,
        prefetch: int = 2,
        workers: int = 2,
        truth: bool = True,
        extra_branches: Sequence[str] = (),
        targets: Sequence[str] = (),
        tree: str = "tree",
        process_index: int = 0,
        process_count: int = 1,
    ):
        for name, v, lo in (
            ("batch_size", batch_size, 1),
            ("chunk_size", chunk_size, 1),
            ("shuffle_buffer", shuffle_buffer, 0),
            ("prefetch", prefetch, 1),
            ("workers", workers, 1),
        ):
            if int(v) < lo:
                raise ValueError(f"Loader {name} must be >= {lo}, got {v}")
        if not 0.0 <= channel_dropout < 1.0:
            raise ValueError(f"channel_dropout must be in [0, 1), got {channel_dropout}")
        if (fiducial or reweighter is not None) and not truth:
            raise ValueError("fiducial cut and reweighting need the truth branches (truth=True)")
        if not sources:
            raise ValueError("Loader needs at least one Source")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"Loader process {process_index} of {process_count}: out of range")
        if batch_size % process_count:
            raise ValueError(
                f"Loader batch_size {batch_size} is not a multiple of {process_count} processes"
            )
        self.rank, self.local_batch = int(process_index), int(batch_size) // int(process_count)
        self.normaliser, self.batch_size = normaliser, int(batch_size)
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, int(seed), int(shuffle_buffer)
        self.chunk_size, self.drop_remainder = int(chunk_size), drop_remainder
        self.reweighter, self.fiducial, self.channel_dropout = reweighter, fiducial, channel_dropout
        self.prefetch, self.workers = int(prefetch), int(workers)
        self.truth, self.tree = truth, tree
        unknown = [t for t in targets if t not in TASK_TARGETS and t not in TRUTH]
        if unknown or (targets and not truth):
            raise ValueError(f"Loader targets {list(targets)}: need truth=True and names of "
                             f"{list(TRUTH) + list(TASK_TARGETS)}")  # fmt: skip
        self._targets = {t: TASK_TARGETS[t] for t in targets if t in TASK_TARGETS}
        self._fields = {**IDS, **(TRUTH if truth else {}), **self._targets,
                        **{b: (b, None) for b in extra_branches}}  # fmt: skip
        self._sources = list(sources)
        self._records: list[dict[str, Any]] = []
        self._chunks: list[_Chunk] = []
        for i, src in enumerate(self._sources):
            self._add(i, src)
        self._n = sum(c.n for c in self._chunks)
        if self.num_batches() == 0:
            warnings.warn(f"Loader: {self._n} events give no batch of {batch_size}", stacklevel=2)

    def _add(self, i: int, src: Source) -> None:
        rec = {**dataclasses.asdict(src), "events": src.n_events, "used": 0, "skipped": {}}
        self._records.append(rec)
        t = open_tree(src.path, self.tree)
        if t is None or t.num_entries == 0 or src.n_events == 0:
            warnings.warn(f"{src.path!r}: no events in {src}; skipped", stacklevel=3)
            rec["skipped"]["empty"] = src.n_events
            if t is not None:
                t.file.close()
            return
        try:
            shapes = {b: (N_SENSORS,) for b in self.normaliser.branches}
            shapes.update(self._fields.values())
            check_branches(src.path, t, shapes)
            check_entries(src.path, t, src.start, src.stop)
            baskets = t[self.normaliser.npho_branch].entry_offsets
        finally:
            t.file.close()
        keep = self._keep(src, rec) if self.truth else None
        rec["used"] = src.n_events - sum(rec["skipped"].values())
        bounds = _chunk_bounds(src.start, src.stop, self.chunk_size, baskets)
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            rows = None
            if keep is not None:
                rows = keep[np.searchsorted(keep, a) : np.searchsorted(keep, b)] - a
                if len(rows) == 0:
                    continue
            self._chunks.append(_Chunk(i, a, b, rows))

    def _keep(self, src: Source, rec: dict) -> np.ndarray | None:
        """Entries of src with finite truth (and inside the fiducial volume); None: all."""
        shapes = {b: s for b, s in (*TRUTH.values(), *self._targets.values())}
        shapes |= {"uvwTruth": (3,)} if self.fiducial else {}
        masks = []
        for arrs in read_per_event(src.path, src.start, src.stop, shapes, self.tree):
            n = len(arrs["emiAng"])
            finite = np.ones(n, bool)
            for v in arrs.values():
                finite &= np.isfinite(v.reshape(n, -1)).all(axis=1)
            fid = in_fiducial(arrs["uvwTruth"]) | ~finite if self.fiducial else np.ones(n, bool)
            for reason, bad in (("nonfinite_truth", ~finite), ("outside_fiducial", ~fid)):
                if bad.any():
                    rec["skipped"][reason] = rec["skipped"].get(reason, 0) + int(bad.sum())
            masks.append(finite & fid)
        mask = np.concatenate(masks)
        return None if mask.all() else src.start + np.flatnonzero(mask)

    # ------------------------------------------------------------------------------------------
    def num_batches(self) -> int:
        """Batches per epoch (exact: the event cuts are applied when the Loader is built)."""
        return self._n // self.batch_size if self.drop_remainder else -(-self._n // self.batch_size)

    @property
    def summary(self) -> dict[str, Any]:
        """Per file: events, used, skipped by reason; totals; what an epoch delivers."""
        skipped: dict[str, int] = collections.Counter()
        for r in self._records:
            skipped.update(r["skipped"])
        nb, b = self.num_batches(), self.batch_size
        return {
            "files": [dict(r, skipped=dict(r["skipped"])) for r in self._records],
            "events": sum(r["events"] for r in self._records),
            "used": self._n,
            "skipped": dict(skipped),
            "batches_per_epoch": nb,
            "dropped_per_epoch": self._n - nb * b if self.drop_remainder else 0,
            "padding_per_epoch": 0 if self.drop_remainder else nb * b - self._n,
        }

    def _plan(self, epoch: int):
        """(order [N] stream positions in delivery order, offsets [S+1] of the chunk steps,
        chunk index per step [S], step after which each batch is complete [num_batches])."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        perm = rng.permutation(len(self._chunks)) if self.shuffle else np.arange(len(self._chunks))
        sizes = np.array([self._chunks[i].n for i in perm], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        if self.shuffle:
            order, emitted = _shuffle_buffer_order(sizes, self.shuffle_buffer, rng)
        else:
            order, emitted = np.arange(self._n), offsets[1:]
        ends = np.minimum(np.arange(1, self.num_batches() + 1) * self.batch_size, self._n)
        return order, offsets, perm, np.searchsorted(emitted, ends, side="left")

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of one epoch, from batch `skip_batches` on (exact resume)."""
        if not 0 <= skip_batches <= self.num_batches():
            raise ValueError(f"skip_batches {skip_batches} not in [0, {self.num_batches()}]")
        q: queue.Queue = queue.Queue(self.prefetch)
        stop = threading.Event()
        th = threading.Thread(
            target=self._produce,
            args=(epoch, skip_batches, q, stop),
            name=f"xecjax-loader-{epoch}",
            daemon=True,
        )
        th.start()
        try:
            while (item := q.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while th.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            th.join()

    def _produce(self, epoch: int, skip: int, q: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            self._run(epoch, skip, put, stop)
            put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    def _schedule(self, epoch: int, skip: int):
        """The producer's steps for one epoch and the pool slot of every event it reads.

        Returns (reads: (chunk, needed rows among the chunk's used events, their pool slots),
        actions: ("read", k) submit read k, ("place", k) take read k's small fields, ("emit", j)
        batch j, in the order the producer does them; batch_slots: the pool slots of batch j's
        rows; the pool size). Slots are given out when a read is submitted, because the reader
        writes its normalised events straight into them, and return when their batch is emitted
        (copied out); the producer performs the actions in this order, so a slot is never
        written while an earlier event still needs it.
        """
        b, nb, lb = self.batch_size, self.num_batches(), self.local_batch
        order, offsets, perm, ready = self._plan(epoch)
        need = np.zeros(self._n, bool)
        pos = np.arange(skip * b, min(nb * b, self._n))
        need[order[pos[(pos % b) // lb == self.rank]]] = True  # this process's slices
        tasks = []
        for s, ci in enumerate(perm):
            rows = np.flatnonzero(need[offsets[s] : offsets[s + 1]])
            if len(rows):
                tasks.append((s, ci, rows))
        if not tasks and skip < nb:  # only padding for this process: one row as a template
            tasks.append((0, perm[0], np.zeros(1, np.int64)))
        ahead = min(self.workers + 1, len(tasks))  # bounded read-ahead: memory stays fixed
        actions = [("read", k) for k in range(ahead)]
        placed, j = 0, skip
        for s in range(len(perm)):
            if placed < len(tasks) and tasks[placed][0] == s:
                if ahead < len(tasks):
                    actions.append(("read", ahead))
                    ahead += 1
                actions.append(("place", placed))
                placed += 1
            while j < nb and ready[j] <= s:
                actions.append(("emit", j))
                j += 1
        actions += [("emit", j) for j in range(j, nb)]

        slot_of = np.full(self._n, -1, np.int64)
        task_slots: list[np.ndarray] = [np.zeros(0, np.int64)] * len(tasks)
        batch_slots: dict[int, np.ndarray] = {}
        free, size = np.zeros(0, np.int64), 0  # stack of free slots; slots given out so far
        for what, k in actions:
            if what == "read":
                s, _, rows = tasks[k]
                reuse = min(len(rows), len(free))
                slots = np.concatenate(
                    [free[len(free) - reuse :], np.arange(size, size + len(rows) - reuse)]
                )
                free, size = free[: len(free) - reuse], size + len(rows) - reuse
                slot_of[offsets[s] + rows] = task_slots[k] = slots
            elif what == "emit":
                lo = k * b + self.rank * lb
                batch_slots[k] = slot_of[order[lo : max(lo, min(lo + lb, self._n))]]
                free = np.concatenate([free, batch_slots[k]])
        reads = [(ci, rows, slots) for (_, ci, rows), slots in zip(tasks, task_slots, strict=True)]
        return reads, actions, batch_slots, size

    def pool_events(self, epoch: int = 0) -> int:
        """Events the pool of an epoch holds (its memory: ~38 kB of input per event)."""
        return self._schedule(epoch, 0)[3]

    def _run(self, epoch: int, skip: int, put, stop: threading.Event) -> None:
        reads, actions, batch_slots, size = self._schedule(epoch, skip)
        lb = self.local_batch
        pool: dict[str, np.ndarray] = {"x": np.empty((size, N_SENSORS, 2), np.float32)}
        trees = _Trees(self.tree)
        with (
            ThreadPoolExecutor(self.workers, "xecjax-read") as ex,
            ThreadPoolExecutor(self.workers, "xecjax-unzip") as unzip,
        ):
            pending: dict[int, Any] = {}
            try:
                for what, k in actions:
                    if stop.is_set():
                        return
                    if what == "read":
                        ci, rows, slots = reads[k]
                        pending[k] = ex.submit(
                            self._read, trees, unzip, epoch, ci, rows, pool["x"], slots
                        )
                    elif what == "place":
                        data = pending.pop(k).result()
                        slots = reads[k][2]
                        for key, v in data.items():
                            if key not in pool:
                                pool[key] = np.empty((size, *v.shape[1:]), v.dtype)
                            pool[key][slots] = v
                    else:
                        slots = batch_slots.pop(k)
                        batch = {key: v[slots] for key, v in pool.items()}
                        batch["valid"] = np.arange(lb) < len(slots)
                        if len(slots) < lb:
                            batch = {key: self._pad(key, v, lb) for key, v in batch.items()}
                        if not put(batch):
                            return
            finally:
                for fut in pending.values():
                    fut.cancel()
                ex.shutdown(wait=True)
                trees.close()

    def _pad(self, key: str, v: np.ndarray, b: int) -> np.ndarray:
        pad = np.zeros((b - len(v), *v.shape[1:]), v.dtype)
        if key == "x":
            pad[..., 0], pad[..., 1] = self.normaliser.sentinel_npho, self.normaliser.sentinel_time
        elif key == "valid":
            return v
        return np.concatenate([v, pad])

    def _read(
        self,
        trees: _Trees,
        unzip,
        epoch: int,
        ci: int,
        rows: np.ndarray,
        pool_x: np.ndarray,
        slots: np.ndarray,
    ) -> dict:
        """Read one chunk (reader thread); normalise its needed events straight into their pool
        slots, _BLOCK events at a time (the block stays in cache between the normalisation and
        the copy into the pool); return the other fields as a dict of arrays [len(rows), ...]."""
        c = self._chunks[ci]
        t = trees.get(self._sources[c.part].path)
        big = list(self.normaliser.branches)
        arrs = read_arrays(t, big + [br for br, _ in self._fields.values()], c.start, c.stop, unzip)
        sel = rows if c.rows is None else c.rows[rows]
        whole = len(sel) == c.stop - c.start  # then sel is arange: slices instead of copies
        drop = None
        if self.channel_dropout > 0:
            # drawn for the whole chunk, so a resumed epoch drops the same channels
            rng = np.random.default_rng([self.seed, int(epoch), int(ci), 1])
            drop = rng.random((c.stop - c.start, N_SENSORS), np.float32) < self.channel_dropout
        buf = np.empty((_BLOCK, N_SENSORS, 2), np.float32)
        for i in range(0, len(sel), _BLOCK):
            part = slice(i, i + _BLOCK) if whole else sel[i : i + _BLOCK]
            x = buf[: len(slots[i : i + _BLOCK])]
            self.normaliser.into(arrs[big[0]][part], arrs[big[1]][part], x)
            if drop is not None:
                d = drop[part]
                x[..., 0][d] = self.normaliser.sentinel_npho
                x[..., 1][d] = self.normaliser.sentinel_time
            pool_x[slots[i : i + _BLOCK]] = x
        out = {}
        for key, (br, _) in self._fields.items():
            v = arrs[br] if whole else arrs[br][sel]
            out[key] = v.astype(
                np.int32
                if key in IDS
                else np.float32
                if key in TRUTH or key in self._targets
                else v.dtype.newbyteorder("=")
            )
        w = self.reweighter(out["angles"]) if self.reweighter is not None else None
        out["weight"] = np.ones(len(sel), np.float32) if w is None else w
        return out
