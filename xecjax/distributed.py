"""Processes and devices: jax.distributed start-up, the data mesh, cross-process agreement,
global batches, preemption signals.

One process per node or per GPU (Slurm `srun`), or several on one machine for tests; the
training loop is the same for one process and for many. Every process holds a replicated copy
of the parameters (`params_digest` proves they agree) and feeds its slice of each global batch.
"""

from __future__ import annotations

import hashlib
import os
import signal
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

_DISTRIBUTED = False


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


def to_global(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Per-process batch -> global arrays sharded on 'data' (batch axis)."""
    keys = ("x", "angles", "weight", "valid")
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
