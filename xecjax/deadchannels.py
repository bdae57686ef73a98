"""The dead-channel list per run: read, write, check, and turn into per-event masks.

A table maps run numbers to the ids (0..4759) of the channels dead in that run:
{run: np.ndarray int32, sorted, no duplicates}. Two file formats:

* text (any name but *.root): one line per run, `<run> <ch> <ch> ...` separated by blanks;
  `#` starts a comment (whole line or the rest of a line); blank lines are ignored; a run
  without dead channels is a line with the run number alone.
* ROOT (*.root): a TTree `dead` with one entry per run, `run` (int32) and `channels` (a
  variable-length int32 array), written with uproot mktree + extend.

Both are written to a temporary file beside the target and renamed into place, so a reader
never sees half a file. Every problem of a file (not an integer, a channel outside 0..4759, a
run or channel listed twice, a missing tree or branch) is a DeadChannelError that names the
file, the line (text) or entry (ROOT), and what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from xecjax.geometry import N_SENSORS
from xecjax.rootio import DataError, compression_of, open_tree

TREE = "dead"
RUN_MAX = 2**31 - 1  # runs are int32 in the data files (branch `run`)
UNKNOWN = ("error", "empty")
_INT = re.compile(r"[+-]?\d+\Z")


class DeadChannelError(ValueError):
    """A dead-channel file or table that cannot be used; the message says where and why."""


def _check_run(run, where: str) -> int:
    if isinstance(run, (bool, np.bool_)) or not isinstance(run, (int, np.integer)):
        raise DeadChannelError(f"{where}: run {run!r} is not an integer")
    if not 0 <= int(run) <= RUN_MAX:
        raise DeadChannelError(f"{where}: run {run} outside 0..{RUN_MAX}")
    return int(run)


def _check_channels(channels, where: str) -> np.ndarray:
    """Sorted int32 channel ids of one run; errors for non-integers, range, duplicates."""
    a = np.asarray(channels)
    if a.size == 0:
        return np.zeros(0, np.int32)
    if a.ndim != 1:
        raise DeadChannelError(f"{where}: channels must be a flat list, got shape {list(a.shape)}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise DeadChannelError(f"{where}: channels must be integers, got {a.dtype} {a[:5]}")
    bad = a[(a < 0) | (a >= N_SENSORS)]
    if len(bad):
        raise DeadChannelError(
            f"{where}: channel {int(bad[0])} outside 0..{N_SENSORS - 1} (the detector's ids)"
        )
    a = np.sort(a.astype(np.int32))
    dup = a[1:][a[1:] == a[:-1]]
    if len(dup):
        raise DeadChannelError(f"{where}: channel {int(dup[0])} listed twice")
    return a


def validate(table: Mapping, source: str = "dead-channel table") -> dict[int, np.ndarray]:
    """A checked copy of {run: channels}: int runs 0..2^31-1, sorted int32 ids 0..4759."""
    if not isinstance(table, Mapping):
        raise DeadChannelError(f"{source}: expected a mapping run -> channels, got {type(table)}")
    out = {}
    for run, channels in table.items():
        r = _check_run(run, source)
        if r in out:  # e.g. 5 and np.int64(5)
            raise DeadChannelError(f"{source}: run {r} listed twice")
        out[r] = _check_channels(channels, f"{source}, run {r}")
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------
# Text files.
# ----------------------------------------------------------------------------------------------
def read_text(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """{run: channels} from a text file (module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"dead-channel file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as e:
        raise DeadChannelError(f"{str(path)!r} is not a text file ({e})") from None
    out: dict[int, np.ndarray] = {}
    first_line: dict[int, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        where = f"{str(path)!r} line {lineno}"
        for tok in tokens:
            if not _INT.match(tok):
                raise DeadChannelError(
                    f"{where}: {tok!r} is not an integer; expected `<run> <channel> ...` "
                    "(decimal integers)"
                )
        run = _check_run(int(tokens[0]), where)
        if run in out:
            raise DeadChannelError(
                f"{where}: run {run} listed twice (first on line {first_line[run]}); "
                "expected one line per run"
            )
        out[run] = _check_channels(np.array([int(t) for t in tokens[1:]], np.int64), where)
        first_line[run] = lineno
    return dict(sorted(out.items()))


def _replace_atomically(path: Path, write) -> Path:
    """write(tmp_path) then rename into place; the temporary file never outlives a failure."""
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"output directory {str(parent)!r} does not exist")
    tmp = parent / f".{path.name}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(
    path: str | os.PathLike, table: Mapping, header: str | Iterable[str] | None = None
) -> Path:
    """Write {run: channels} as text, one line per run in run order; header lines as comments."""
    table = validate(table)
    lines = [header] if isinstance(header, str) else list(header or [])
    text = "".join(f"# {h}\n" for h in "\n".join(lines).splitlines()) if lines else ""
    text += "".join(" ".join(map(str, [run, *ch.tolist()])) + "\n" for run, ch in table.items())
    return _replace_atomically(Path(path), lambda tmp: tmp.write_text(text))


# ----------------------------------------------------------------------------------------------
# ROOT files.
# ----------------------------------------------------------------------------------------------
def write_root(path: str | os.PathLike, table: Mapping, compression: str = "lz4") -> Path:
    """Write {run: channels} as TTree `dead` (run int32, channels var * int32)."""
    table = validate(table)
    comp = compression_of(compression)

    def write(tmp: Path) -> None:
        with uproot.recreate(tmp, compression=comp) as f:
            tree = f.mktree(TREE, {"run": np.int32, "channels": "var * int32"})
            if table:
                tree.extend(
                    {
                        "run": np.fromiter(table, np.int32, len(table)),
                        "channels": ak.unflatten(
                            np.concatenate(list(table.values())).astype(np.int32),
                            np.fromiter(map(len, table.values()), np.int64, len(table)),
                        ),
                    }
                )

    return _replace_atomically(Path(path), write)


def read_root(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """{run: channels} from the TTree `dead` of a ROOT file (module docstring)."""
    path = os.fspath(path)
    try:
        t = open_tree(path, TREE)
    except DataError as e:
        raise DeadChannelError(str(e)) from None
    if t is None:
        raise DeadChannelError(f"{path!r} is empty (0 bytes); expected a ROOT file")
    try:
        have = set(t.keys())
        for b in ("run", "channels"):
            if b not in have:
                raise DeadChannelError(
                    f"{path!r}: tree {TREE!r} has no branch {b!r}; expected `run` (int) and "
                    f"`channels` (variable-length int array), it has {sorted(have)}"
                )
        try:
            runs = t["run"].array(library="np")
            chans = t["channels"].array(library="ak")
        except Exception as e:
            raise DeadChannelError(
                f"{path!r}: cannot read tree {TREE!r} ({type(e).__name__}: {e})"
            ) from e
    finally:
        t.file.close()
    if runs.ndim != 1 or not np.issubdtype(runs.dtype, np.integer):
        raise DeadChannelError(
            f"{path!r}: branch 'run' holds {runs.dtype} {list(runs.shape[1:])} per entry; "
            "expected one integer per entry"
        )
    if chans.ndim != 2:
        raise DeadChannelError(
            f"{path!r}: branch 'channels' is {ak.type(chans)}; expected a variable-length "
            "int array per entry"
        )
    flat = ak.to_numpy(ak.flatten(chans))
    counts = ak.to_numpy(ak.num(chans))
    parts = np.split(flat, np.cumsum(counts)[:-1]) if len(counts) else []
    out: dict[int, np.ndarray] = {}
    first: dict[int, int] = {}
    for entry, (run, ch) in enumerate(zip(runs.tolist(), parts, strict=True)):
        where = f"{path!r} entry {entry}"
        run = _check_run(run, where)
        if run in out:
            raise DeadChannelError(
                f"{where}: run {run} listed twice (first in entry {first[run]}); "
                "expected one entry per run"
            )
        out[run] = _check_channels(ch, where)
        first[run] = entry
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------
# Either format, and masks.
# ----------------------------------------------------------------------------------------------
def _is_root(path) -> bool:
    return os.fspath(path).lower().endswith(".root")


def read(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """{run: channels} from a ROOT (*.root) or text file (anything else)."""
    return read_root(path) if _is_root(path) else read_text(path)


def write(path: str | os.PathLike, table: Mapping, **kwargs) -> Path:
    """Write {run: channels} as ROOT (*.root) or text (anything else); kwargs go to
    write_root (compression) or write_text (header)."""
    return (
        write_root(path, table, **kwargs) if _is_root(path) else write_text(path, table, **kwargs)
    )


def dead_mask(table: Mapping, runs, unknown: str = "error") -> np.ndarray:
    """Per-event mask [N, 4760] bool, True on the channels dead in each event's run.

    Args:
      table: {run: channels} (read / read_text / read_root).
      runs: [N] run number of every event (the `run` branch).
      unknown: what a run missing from the table means: "error" (default: a DeadChannelError
        naming the runs; a missing run is more likely a wrong list than a perfect detector) or
        "empty" (no dead channels).
    """
    if unknown not in UNKNOWN:
        raise ValueError(f"unknown must be one of {UNKNOWN}, got {unknown!r}")
    runs = np.asarray(runs)
    if runs.ndim != 1:
        raise ValueError(f"runs must have shape [N], got {list(runs.shape)}")
    if len(runs) and not np.issubdtype(runs.dtype, np.integer):
        raise ValueError(f"runs must be integers, got {runs.dtype}")
    table = validate(table)
    out = np.zeros((len(runs), N_SENSORS), bool)
    uniq, inv = np.unique(runs, return_inverse=True)
    missing = [int(r) for r in uniq if int(r) not in table]
    if missing and unknown == "error":
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise DeadChannelError(
            f"{len(missing)} run(s) not in the dead-channel list: {shown} "
            f"(it covers {len(table)} run(s); pass unknown='empty' to treat them as fully alive)"
        )
    rows = np.zeros((len(uniq), N_SENSORS), bool)
    for k, r in enumerate(uniq.tolist()):
        if r in table:
            rows[k, table[r]] = True
    out[:] = rows[inv.reshape(-1)]
    return out
