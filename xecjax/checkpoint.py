"""Checkpoints of a training run (the only module that imports Orbax).

Layout: `<workdir>/checkpoints/last/<step>/` and `<workdir>/checkpoints/best/<step>/`, one Orbax
CheckpointManager each, keeping one step. `best` is the EMA model with the smallest validation
68 % opening angle so far. Each step directory holds four items:
  params     the trained parameters (nnx.Param pytree)
  ema        their exponential moving average (validation, best selection and export use it)
  train      {"opt_state", "step", "rng"}: optimiser state (schedule count included), global
             step, raw uint32 PRNG key
  meta       JSON: the full config, the Normaliser dict, the data split, the reweighter, the
             data position {"epoch", "batch"} (next batch to run), metric history
Orbax writes each step into a temporary directory and renames it when complete; the previous
step is deleted only after that, so a failed or interrupted write never damages the last good
checkpoint. Restores go against an abstract target (shapes, dtypes, shardings), otherwise
optax's NamedTuple states would come back as lists.

`load_for_inference` is what evaluation, saliency and ONNX export use: architecture and
normaliser come from the checkpoint, never from command-line flags.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

WHICH = ("last", "best")
ITEMS = ("params", "ema", "train", "meta")


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStruct pytree (shardings kept) of a concrete or abstract pytree."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """The `last` and `best` checkpoint managers of one workdir."""

    def __init__(self, workdir: str | Path, *, async_save: bool = True) -> None:
        self.root = Path(workdir).resolve() / "checkpoints"

        def options(which: str) -> ocp.CheckpointManagerOptions:
            # Multi-process saves synchronise on barriers named by step: `last` and `best` of
            # the same step need their own names.
            return ocp.CheckpointManagerOptions(
                max_to_keep=1,
                create=True,
                enable_async_checkpointing=async_save,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=which
                ),
            )

        self.managers = {
            which: ocp.CheckpointManager(
                self.root / which, options=options(which), item_names=ITEMS
            )
            for which in WHICH
        }

    def latest_step(self, which: str = "last") -> int | None:
        """Step of the newest complete checkpoint of `which`, None if there is none."""
        return self.managers[which].latest_step()

    def save(self, which: str, state: dict[str, Any], meta: dict[str, Any]) -> bool:
        """Save state {"params", "ema", "opt_state", "step", "rng"} and JSON meta as `which`.

        Returns False (nothing written) when this step is already saved there. Asynchronous:
        the arrays are copied to host memory before this returns, so the caller may donate them.
        """
        manager = self.managers[which]
        step = int(jax.device_get(state["step"]))
        if step in manager.all_steps():
            return False
        train = {"opt_state": state["opt_state"], "step": state["step"], "rng": state["rng"]}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            ema=ocp.args.StandardSave(state["ema"]),
            train=ocp.args.StandardSave(train),
            meta=ocp.args.JsonSave(meta),
        )
        return manager.save(step, args=args, force=True)

    def restore(
        self, which: str, target: dict[str, Any], step: int | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore (state, meta) of `which` against `target`, a state pytree (concrete or abstract).

        Shardings of the restored arrays follow those of `target`.
        """
        manager = self.managers[which]
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.root / which}")
        train = {"opt_state": target["opt_state"], "step": target["step"], "rng": target["rng"]}
        out = manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(target["params"])),
                ema=ocp.args.StandardRestore(_abstract(target["ema"])),
                train=ocp.args.StandardRestore(_abstract(train)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        state = {"params": out["params"], "ema": out["ema"], **out["train"]}
        return state, dict(out["meta"])

    def wait(self) -> None:
        """Block until asynchronous saves are on disk."""
        for manager in self.managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()


def resolve_checkpoint_dir(path_or_workdir: str | Path, which: str = "last") -> Path:
    """Directory of the manager holding `which`, from a workdir or a checkpoints path.

    Accepts `<workdir>`, `<workdir>/checkpoints` or `<workdir>/checkpoints/<which>`.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    p = Path(path_or_workdir).resolve()
    for candidate in (p / "checkpoints" / which, p / which, p):
        if candidate.name == which and candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no '{which}' checkpoint under {p} (expected <workdir>/checkpoints/{which}/<step>/)"
    )


def _manager_for_reading(directory: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(create=False)
    return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def read_meta(path_or_workdir: str | Path, which: str = "last") -> tuple[int, dict[str, Any]]:
    """(step, meta dict) of the newest `which` checkpoint, without touching the arrays."""
    directory = resolve_checkpoint_dir(path_or_workdir, which)
    manager = _manager_for_reading(directory)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {directory}")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    manager.close()
    return step, dict(meta)


def load_for_inference(
    path_or_workdir: str | Path, which: str = "best", ema: bool = True
) -> tuple[ml_collections.ConfigDict, Any, Any, Callable[..., jax.Array]]:
    """Model config, Normaliser, parameters and apply function of a trained run.

    Args:
      path_or_workdir: a training workdir or its checkpoints/<which> directory.
      which: "best" (default; smallest validation 68 % opening angle) or "last".
      ema: the EMA parameters (default, what validation used) or the raw trained ones.
    Returns:
      (model_cfg, normaliser, params, apply_fn) with
      apply_fn(params, x [B, 4760, 2], train=False, rng=None) -> [B, 2] (theta, phi deg), or
      [B, 4] with log sigmas for an uncertainty model. Parameters live on this process's first
      device.
    """
    from flax import nnx

    from xecjax.data import Normaliser
    from xecjax.models import build_model, make_apply

    directory = resolve_checkpoint_dir(path_or_workdir, which)
    step, meta = read_meta(directory, which)
    model_cfg = ml_collections.ConfigDict(meta["config"]["model"])
    normaliser = Normaliser.from_dict(meta["normaliser"])
    abstract_model = nnx.eval_shape(lambda: build_model(model_cfg, rngs=nnx.Rngs(0)))
    abstract_params, apply_fn = make_apply(abstract_model)
    # this process's first device: with several processes jax.devices()[0] belongs to process 0
    # and the others could not restore onto it (fine-tuning loads its encoder on every process)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_params
    )
    item = "ema" if ema else "params"
    manager = _manager_for_reading(directory)
    restored = manager.restore(
        step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)})
    )
    manager.close()
    return model_cfg, normaliser, restored[item], apply_fn
