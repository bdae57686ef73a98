"""ROOT files with uproot: finding, opening and checking inputs; writing TTrees atomically.

Reading: `discover_files` (file, directory, glob or list), `open_tree`, `check_branches` and
`read_arrays` turn every problem of an input file (missing, not ROOT, truncated, no tree, a
missing branch or a wrong per-event shape) into a FileNotFoundError or DataError that names
the file and what was expected. The data pipeline and the inference tools read through them.

Writing: every ROOT file the project writes (toy simulation, validation results, real-data
inference) goes through `TreeWriter`: it writes to a temporary file beside the target and
renames it into place only when the tree is complete, so an interrupted job never leaves a
half-written file.
uproot >= 5.7 writes an RNTuple for `f[name] = {...}`; `mktree` + `extend` gives a TTree.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import deflate
import numpy as np
import uproot

from xecjax.geometry import N_SENSORS

_OPEN = {
    "handler": uproot.source.file.MultithreadedFileSource,
    "array_cache": None,
    "object_cache": None,
}
_STEP = 200_000  # events per read of the small per-event branches


class _LibdeflateZLIB(uproot.compression._DecompressZLIB):
    """uproot's ZLIB basket decompressor, inflating with libdeflate (the `deflate` package)."""

    library = "libdeflate"

    def decompress(self, data: bytes, uncompressed_bytes=None) -> bytes:
        if uncompressed_bytes is None:  # ROOT's block headers always give it
            raise ValueError("zlib decompression requires the number of uncompressed bytes")
        # checks the zlib header and the adler32 of the output like zlib.decompress
        return deflate.zlib_decompress(data, uncompressed_bytes)


def _inflate_with_libdeflate() -> None:
    """ZLIB baskets are inflated with libdeflate (the `deflate` package, a dependency).

    Inflating a 4 MB basket of the toy relative_time branch: zlib 103, ISA-L 101, libdeflate
    56 us of CPU per event, and libdeflate releases the GIL, so the reader threads inflate in
    parallel. uproot reads through a module-level instance of its private _DecompressZLIB:
    its documented `uproot.ZLIB.library` only affects writing (which stays with zlib), and
    its own "deflate" choice passes an argument deflate 0.9 does not take. Importing
    xecjax.rootio therefore replaces that instance for the whole process (uproot is pinned).
    """
    uproot.compression._decompress_ZLIB = _LibdeflateZLIB()


def zlib_inflate() -> str:
    """The library uproot inflates ZLIB baskets with now ("libdeflate" or "zlib")."""
    return uproot.compression._decompress_ZLIB.library


_inflate_with_libdeflate()


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
class DataError(ValueError):
    """A ROOT input that cannot be used; the message names the file and what was expected."""


def discover_files(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Absolute paths of the ROOT files named by a file, a directory (its *.root), a glob
    (`**` recursive), a comma-separated list of these in one string (as config.data.path
    accepts; a name that exists as it is is never split) or a list; sorted per entry,
    duplicates removed."""
    if isinstance(spec, str) and "," in spec and not os.path.exists(os.path.expanduser(spec)):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise FileNotFoundError("no input files given (empty list)")
    out = []
    for s in map(os.fspath, specs):
        p = os.path.expanduser(s)
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(glob.escape(p), "*.root")))
            if not found:
                raise FileNotFoundError(f"directory {s!r} holds no *.root files")
        elif glob.has_magic(p):
            found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
            if not found:
                raise FileNotFoundError(f"no files match the pattern {s!r}")
        elif os.path.isfile(p):
            found = [p]
        else:
            raise FileNotFoundError(f"input file {s!r} does not exist")
        out.extend(os.path.abspath(f) for f in found)
    return list(dict.fromkeys(out))


def open_tree(path: str, tree: str = "tree"):
    """The TTree `tree` of a ROOT file (close with `.file.close()`), or None for a 0-byte file.

    Raises FileNotFoundError for a missing file and DataError for a file that is not ROOT, is
    truncated, or has no such TTree (listing what it holds).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ROOT file {path!r} does not exist")
    if os.path.getsize(path) == 0:
        return None
    try:
        f = uproot.open(path, **_OPEN)
    except Exception as e:
        raise DataError(f"{path!r} is not a readable ROOT file ({type(e).__name__}: {e})") from e
    try:
        names = f.keys(cycle=False)
        if tree not in names:
            raise DataError(f"{path!r} has no tree {tree!r}; it holds {names}")
        t = f[tree]
    except DataError:
        f.close()
        raise
    except Exception as e:
        f.close()
        raise DataError(
            f"{path!r} is truncated or corrupt: cannot read {tree!r} ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(t, uproot.behaviors.TTree.TTree):
        f.close()
        raise DataError(f"{path!r}: {tree!r} is a {type(t).__name__}, not a TTree")
    return t


def num_entries(path: str, tree: str = "tree") -> int:
    """Number of events in a file (0 for a 0-byte file)."""
    t = open_tree(path, tree)
    if t is None:
        return 0
    try:
        return int(t.num_entries)
    finally:
        t.file.close()


def check_branches(path: str, t, shapes: dict[str, tuple[int, ...] | None]) -> None:
    """DataError unless every branch exists with the given per-event shape (None: any)."""
    have = set(t.keys())
    for b, shape in shapes.items():
        if b not in have:
            raise DataError(f"{path!r}: tree {t.name!r} has no branch {b!r}; it has {sorted(have)}")
        got = getattr(t[b].interpretation, "inner_shape", None)
        if got is None:
            raise DataError(
                f"{path!r}: branch {b!r} is {t[b].typename} ({t[b].interpretation}); "
                "expected a fixed-size numeric branch"
            )
        if shape is not None and tuple(got) != tuple(shape):
            what = f" (one value per sensor: {N_SENSORS})" if shape == (N_SENSORS,) else ""
            raise DataError(
                f"{path!r}: branch {b!r} holds shape {tuple(got)} per event; "
                f"expected {tuple(shape)}{what}"
            )


def check_entries(path: str, t, start: int, stop: int) -> None:
    """DataError unless the tree holds entries [start, stop)."""
    if stop > t.num_entries:
        raise DataError(
            f"{path!r}: entries [{start}, {stop}) asked for, "
            f"the file has only {t.num_entries} events"
        )


def read_arrays(t, branches: Sequence[str], start: int, stop: int, executor=None) -> dict:
    """Branches of entries [start, stop) as NumPy arrays; read errors name file and range."""
    try:
        return t.arrays(
            list(branches),
            entry_start=start,
            entry_stop=stop,
            library="np",
            decompression_executor=executor,
            interpretation_executor=executor,
        )
    except Exception as e:
        raise DataError(
            f"{t.file.file_path!r}: cannot read entries [{start}, {stop}) of {list(branches)} "
            f"(truncated or corrupt file? {type(e).__name__}: {e})"
        ) from e


def read_per_event(
    path: str, start: int, stop: int, shapes: dict[str, tuple], tree: str = "tree"
) -> Iterator[dict]:
    """Small per-event branches of entries [start, stop), in steps of _STEP events.

    The branches and the entry range are checked first (DataError naming the file).
    """
    t = open_tree(path, tree)
    if t is None:
        return
    try:
        check_branches(path, t, shapes)
        check_entries(path, t, start, stop)
        for a in range(start, stop, _STEP):
            yield read_arrays(t, list(shapes), a, min(a + _STEP, stop))
    finally:
        t.file.close()


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
COMPRESSIONS = {"lz4": lambda: uproot.LZ4(1), "zlib": lambda: uproot.ZLIB(1)}
# Largest basket written, bytes of one branch: each extend() becomes baskets of at most this
# size. uproot byte-swaps, copies, compresses, checksums and joins every basket in memory (six
# passes); a 19 MB basket (1000 toy events of one per-sensor branch) makes each pass a trip to
# DRAM: toy writing costs 650 us of CPU per event in 19 MB baskets, 250-300 in 2-4 MB ones
# (4 MB = 220 toy events; the simulation writes chunks of 200 events, one basket each).
# Fewer baskets read faster: each costs uproot ~0.1 ms of Python.
BASKET_BYTES = 4 << 20


def compression_of(name: str):
    """uproot compression object for 'lz4' (default, ~8x faster to write) or 'zlib'."""
    try:
        return COMPRESSIONS[name.lower()]()
    except KeyError:
        raise ValueError(
            f"unknown compression {name!r}: expected one of {sorted(COMPRESSIONS)}"
        ) from None


def branch_types(chunk: Mapping[str, np.ndarray]) -> dict[str, np.dtype | str]:
    """uproot branch types for a dict of arrays: [N] scalars, [N, k] fixed-size arrays."""
    out = {}
    for name, arr in chunk.items():
        arr = np.asarray(arr)
        out[name] = arr.dtype if arr.ndim == 1 else np.dtype((arr.dtype, arr.shape[1:]))
    return out


class TreeWriter:
    """Context manager writing one TTree chunk by chunk, renamed into place on success.

    >>> with TreeWriter("out.root", "tree") as w:
    ...     w.extend({"npho": np.zeros((10, 4760), np.float32), "run": np.zeros(10, np.int32)})

    extend(chunk, tree="other") writes another tree of the same file (created by its first
    chunk, which may have no entries); `entries` counts those of the main tree.
    """

    def __init__(self, path: str | os.PathLike, tree: str = "tree", compression: str = "lz4"):
        self.path = Path(path)
        self.tree_name = tree
        self.compression = compression_of(compression)
        parent = self.path.parent
        if not parent.is_dir():
            raise FileNotFoundError(f"output directory {str(parent)!r} does not exist")
        if not os.access(parent, os.W_OK):
            raise PermissionError(f"output directory {str(parent)!r} is not writable")
        self._tmp = parent / f".{self.path.name}.tmp{os.getpid()}"
        self._file = None
        self._trees = {}  # name -> uproot WritableTree
        self.entries = 0

    def __enter__(self) -> TreeWriter:
        self._file = uproot.recreate(self._tmp, compression=self.compression)
        return self

    def extend(self, chunk: Mapping[str, np.ndarray], tree: str | None = None) -> None:
        name = self.tree_name if tree is None else tree
        chunk = {k: np.ascontiguousarray(v) for k, v in chunk.items()}
        if name not in self._trees:
            self._trees[name] = self._file.mktree(name, branch_types(chunk))
        target = self._trees[name]
        lengths = {k: len(v) for k, v in chunk.items()}
        n = next(iter(lengths.values()))
        if any(m != n for m in lengths.values()):
            raise ValueError(f"{str(self.path)!r}: branches of unequal length {lengths}")
        widest = max(v.itemsize * math.prod(v.shape[1:]) for v in chunk.values())  # per entry
        step = max(1, BASKET_BYTES // max(widest, 1))
        for a in range(0, n, step):
            target.extend({k: v[a : a + step] for k, v in chunk.items()})
        if name == self.tree_name:
            self.entries += n

    def __exit__(self, exc_type, exc, tb) -> None:
        # renamed into place only after a successful close (which writes the ROOT header):
        # a failed block or a failed close (disk full) leaves no file behind
        try:
            self._file.close()
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def write_tree(
    path: str | os.PathLike,
    chunks: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]],
    tree: str = "tree",
    compression: str = "lz4",
) -> Path:
    """Write a dict of arrays (or an iterable of such chunks) as a TTree, atomically."""
    if isinstance(chunks, Mapping):
        chunks = [chunks]
    with TreeWriter(path, tree, compression) as w:
        for chunk in chunks:
            w.extend(chunk)
    return Path(path)
