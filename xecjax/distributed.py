"""Processes and devices: host memory, jax.distributed start-up, the data mesh, cross-process
agreement, global batches, preemption signals.

One process per node or per GPU (Slurm `srun`), or several on one machine for tests; the
training loop is the same for one process and for many. Every process holds a replicated copy
of the parameters (`params_digest` proves they agree) and feeds its slice of each global batch.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import signal
import sys
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

_DISTRIBUTED = False
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc mallopt parameters (malloc.h)


# JAX's accelerator plugins (pip packages); any of them importable: a GPU/TPU may be the default
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")


def cpu_default_backend() -> bool:
    """Whether JAX's default backend will be the CPU, decided before JAX starts a backend:
    JAX_PLATFORMS when set (its first entry), else no accelerator plugin installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def keep_freed_host_memory() -> bool:
    """glibc malloc: one arena, no mmap, freed memory kept for reuse. Returns True if applied.

    XLA:CPU allocates the temporaries of each execution as one block (548 MB for a toy training
    step) and glibc serves a block that size from a thread arena with a fresh mmap, unmapped
    again when it is freed: every step page-faults the whole block back in (134,000 faults and
    0.45 s of kernel time per toy step, a third of the CPU). The Loader's chunk arrays (38 MB
    per 1000 events) go the same way. With one arena, no mmap and no trimming the blocks stay
    in the heap and are reused. Measured on the 2-core machine, train / infer events/s: toy
    61 / 123 against 42 / 95, reference size 11.3-11.9 / 22.1 against 8.6-9.7 / 20.5, the same
    peak RSS; data bench 14,300-19,200 against 10,900-13,600 events/s (LZ4). Freed memory is
    not given back to the system (the process keeps its peak), which suits a job process. The
    entry points (train, evaluate, the tools, the bench) call this first, before JAX starts its
    CPU client: threads created later share the one arena.
    XECJAX_SYSTEM_MALLOC=1 leaves malloc as it is; not glibc (macOS, musl): nothing is done.
    Only where the default backend will be the CPU (cpu_default_backend): it was measured on
    CPU jobs only, and GPU jobs (many-core nodes, pinned host buffers) keep the system malloc.
    """
    if os.environ.get("XECJAX_SYSTEM_MALLOC", "0") not in ("", "0") or sys.platform != "linux":
        return False
    if not cpu_default_backend():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never
    return all([mallopt(param, value) == 1 for param, value in settings])


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() when launched as one of several processes, else nothing.

    Under Slurm (srun with several tasks) JAX reads Slurm's variables. Elsewhere set
    JAX_COORDINATOR_ADDRESS=host:port, XECJAX_NUM_PROCESSES and XECJAX_PROCESS_ID (e.g. two
    processes on one machine). CPU devices talk over gloo; GPUs use NCCL.
    """
    global _DISTRIBUTED
    if _DISTRIBUTED:
        return
    explicit = "XECJAX_NUM_PROCESSES" in os.environ
    if not explicit and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        try:
            n_proc = int(os.environ["XECJAX_NUM_PROCESSES"])
            rank = int(os.environ["XECJAX_PROCESS_ID"])
            address = os.environ["JAX_COORDINATOR_ADDRESS"]
        except (KeyError, ValueError) as e:
            raise ValueError(
                "XECJAX_NUM_PROCESSES needs integer XECJAX_PROCESS_ID and "
                f"JAX_COORDINATOR_ADDRESS=host:port in the environment ({e})"
            ) from None
        jax.distributed.initialize(address, num_processes=n_proc, process_id=rank)
    else:
        jax.distributed.initialize()
    _DISTRIBUTED = True


def make_mesh() -> jax.sharding.Mesh:
    """1-D mesh over all devices of all processes, axis 'data' (Auto: scatters allowed)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def agree(value: int, reduce=min) -> int:
    """The same integer on every process (min or max over processes)."""
    if jax.process_count() == 1:
        return int(value)
    return int(reduce(multihost_utils.process_allgather(np.asarray(value))))


def to_global(
    local: dict[str, np.ndarray], sharding: NamedSharding, keys: tuple[str, ...] | None = None
) -> dict[str, jax.Array]:
    """Per-process batch -> global arrays sharded on 'data' (batch axis): the input, the targets
    (angles; xyzTruth, the conversion point of losses.point_loss; energy, timing, uvw of the
    tasks beside the angle, xecjax.tasks), the positron vertex xyzVTX (an input of models with
    model.vertex_input) and the weights; or exactly `keys` (the unlabelled batches of an MAE
    run: xecjax.mae.BATCH_KEYS)."""
    if keys is None:
        keys = ("x", "angles", "xyzTruth", "weight", "valid")
        keys += tuple(k for k in ("energy", "timing", "uvw", "xyzVTX") if k in local)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k])) for k in keys}


class Preemption:
    """Sets a flag on SIGTERM/SIGINT; a second signal gets the default behaviour.

    Slurm sends SIGTERM before a time limit or preemption, Ctrl-C is SIGINT: the training loop
    checks `requested` (agreed over processes) after every step, saves and leaves.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Preemption:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        self.signal = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def requested(self) -> bool:
        return (
            agree(self.signal is not None, max) > 0
            if jax.process_count() > 1
            else (self.signal is not None)
        )


def params_digest(params: Any) -> str:
    """sha256 of this process's local copy of replicated parameters (leaves in tree order)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(leaf.addressable_shards[0].data).tobytes())
    return h.hexdigest()
