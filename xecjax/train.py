"""Training: ROOT events -> a direction regressor, data-parallel over devices and processes.

  python -m xecjax.train --config configs/convnext.py:toy [--workdir runs/toy]
      [--config.optim.lr=8e-4 ...]

With no data path configured the embedded toy data set is generated once (xecjax.simulate) into
the git-ignored cache config.data.toy_dir and reused. config.objective = "mae" (configs/mae.py)
pretrains the encoder as a masked autoencoder instead (xecjax.mae; unlabelled files work, `best`
by the validation total loss); `--config.init_from=W_mae` starts a regression run from that
run's encoder (xecjax.finetune). config.objective = "inpainter" (configs/inpainter.py) trains
the MAE's model at a small mask ratio from an MAE run's encoder and decoders, to fill dead
channels (xecjax.inpainter). The story of `train_and_evaluate` follows
the banner comments: mesh, data, model + optimizer, update step, restore, evaluation, loop.

Resume order (`--config.resume`): "" starts fresh and refuses a workdir that already has
checkpoints; "auto" continues from <workdir>/checkpoints/last when it exists (fresh otherwise;
what Slurm resubmissions use); a PATH (workdir or checkpoint dir) continues from that run. A
resumed run restores parameters, EMA, optimiser state (hence the schedule), step, RNG, data
split, normaliser, reweighter and data position (epoch, batch), so it continues exactly: 2
epochs + resume 2 gives the parameters of 4 epochs in one go.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from xecjax import finetune, losses, tasks
from xecjax import mae as mae_objective
from xecjax.checkpoint import Checkpointer, read_meta, resolve_checkpoint_dir
from xecjax.config import parse_command_line
from xecjax.distributed import (
    Preemption,
    keep_freed_host_memory,
    make_mesh,
    maybe_initialize_distributed,
    params_digest,
    to_global,
)
from xecjax.optim import make_optimizer, make_schedule
from xecjax.steps import evaluate, init_state, make_eval_step, make_train_step
from xecjax.tracking import (
    Tracker,
    flatten_config,
    plot_history,
    system_metrics,
    throughput_metrics,
)

# Steps between the processes' agreement on a stop request (SIGTERM) in multi-process runs.
# Slurm signals 120 s before the time limit: 20 steps are seconds on a GPU.
STOP_CHECK_STEPS = 20


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient under nan_policy='stop'."""


# ----------------------------------------------------------------------------------------------
# Data: files, split, normaliser, loaders.
# ----------------------------------------------------------------------------------------------
def toy_data_files(cfg: ml_collections.ConfigDict) -> list[str]:
    """The embedded toy data set: generated once into a cache folder named by its parameters."""
    from xecjax.simulate import SimConfig, write_toy_files

    name = f"{cfg.toy_vertex}_{cfg.toy_events}ev_{cfg.toy_files}f_seed{cfg.toy_seed}"
    lo, hi = (float(e) for e in cfg.get("toy_energy_mev", (52.8, 52.8)))
    if (lo, hi) != (52.8, 52.8):  # the default line keeps the names of existing caches
        name += f"_E{lo:g}-{hi:g}MeV"
    out = Path(cfg.toy_dir) / name
    if jax.process_index() == 0 and not out.is_dir():
        tmp = out.with_name(f"{name}.tmp-{os.getpid()}")
        print(f"generating the toy data set ({cfg.toy_events} events) into {out}", flush=True)
        write_toy_files(
            tmp,
            cfg.toy_events,
            cfg.toy_files,
            seed=cfg.toy_seed,
            cfg=SimConfig(vertex=cfg.toy_vertex, energy_mev=(lo, hi)),
            progress=True,
        )
        try:
            tmp.rename(out)  # atomic: a half-written cache is never mistaken for a complete one
        except OSError:
            if not out.is_dir():
                raise
            # another job generated the same set meanwhile (same name = same parameters): use
            # theirs, drop ours
            shutil.rmtree(tmp, ignore_errors=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("toy data")
    return sorted(str(p) for p in out.glob("*.root"))


# Config keys (or whole sections) that may differ on resume: they change neither the model,
# the data, the batch plan nor the schedule. Every other key must equal the checkpoint's
# unless config.resume_override names it (or its section).
RESUME_SAFE = (
    "resume",
    "resume_override",
    "variant",
    "tracking",
    "data.toy_dir",
    "data.prefetch",
    "data.workers",
    "train.stop_after_epoch",
    "train.eval_every",
    "train.log_every",
    "train.checkpoint_every_steps",
    "train.nan_policy",
    "train.export_onnx",
    "train.progress",
)


def _covered(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def check_resume_config(saved: dict, config: ml_collections.ConfigDict, where) -> None:
    """Refuse to resume with a config that differs from the checkpoint's (`saved`) in a
    resume-critical key: the model, the data and its split, normalisation, batch size, chunk
    size, shuffle buffer, seed, epochs, the optimiser and the schedule would otherwise change
    silently mid-run. Keys in RESUME_SAFE and in config.resume_override are not compared;
    keys that exist on one side only (options added since the checkpoint) are not either.
    """
    allowed = RESUME_SAFE + tuple(
        k.strip() for k in str(config.get("resume_override", "")).split(",") if k.strip()
    )
    now = flatten_config(json.loads(json.dumps(config.to_dict())))  # tuples -> lists, as saved
    before = flatten_config(saved)
    diff = sorted(k for k in now.keys() & before.keys()
                  if now[k] != before[k] and not _covered(k, allowed))  # fmt: skip
    if diff:
        raise ValueError(
            f"resume from {where}: the config differs from the checkpoint's in "
            + ", ".join(f"{k} ({before[k]} -> {now[k]})" for k in diff)
            + ". Resume with the checkpoint's values, or name the keys that may change in "
            f"--config.resume_override={','.join(diff)} (the batch plan or the schedule then "
            "changes from the resumed step on)"
        )


def make_data(config: ml_collections.ConfigDict, meta: dict[str, Any] | None) -> dict[str, Any]:
    """Split, normaliser, reweighter and the per-process train/val loaders.

    On resume (meta given) split, normaliser and reweighter come from the checkpoint. The test
    part of the split is recorded but never read here: `best` is chosen on validation only.
    Explicit config.data.train / val / test without config.data.path must name both train and
    val (a ValueError otherwise, rather than taking the missing part from the toy data set).
    """
    from xecjax.data import Loader, Normaliser, Reweighter, Split, discover_files, make_split

    d = config.data
    if meta is not None:
        split = Split.from_dict(meta["split"])
        split.verify("the split recorded in the checkpoint")
        normaliser = Normaliser.from_dict(meta["normaliser"])
        reweighter = Reweighter.from_dict(meta["reweighter"]) if meta["reweighter"] else None
    else:
        explicit = {k: d[k] for k in ("train", "val", "test") if d[k]}
        if explicit and not d.path and not (d.train and d.val):
            # the missing side would otherwise silently become the generated toy data set
            raise ValueError(
                f"config.data.{' and config.data.'.join(explicit)} set without config.data.path:"
                " set both config.data.train and config.data.val (config.data.test optional),"
                " or config.data.path (the files the missing parts are taken from)"
            )
        files = discover_files(d.path) if d.path else ([] if explicit else toy_data_files(d))
        split = make_split(files, val_fraction=d.val_fraction, seed=d.split_seed,
                           train=d.train or None, val=d.val or None,
                           test_fraction=d.test_fraction, test=d.test or None)  # fmt: skip
        normaliser = make_normaliser(config.norm)
        reweighter = None
        if d.reweight != "none":
            reweighter = Reweighter.fit(split.train, mode=d.reweight, bins=d.reweight_bins)
    n_proc, rank = jax.process_count(), jax.process_index()
    if d.batch_size % jax.device_count():
        raise ValueError(
            f"config.data.batch_size = {d.batch_size} is not a multiple of the "
            f"{jax.device_count()} devices"
        )
    # Every process plans the same global batches and takes its slice of each, so N processes
    # train on exactly the batches of one.
    common = dict(
        targets=tasks.enabled(config),  # the targets of the tasks beside the angle
        chunk_size=d.chunk_size,
        reweighter=reweighter,
        fiducial=d.fiducial,
        prefetch=d.prefetch,
        workers=d.workers,
        process_index=rank,
        process_count=n_proc,
    )
    if mae_objective.objective(config) in mae_objective.RECONSTRUCTION:
        common["truth"] = False  # the MAE reads npho, time, run and event: unlabelled files
    train = Loader(
        split.train,
        normaliser,
        d.batch_size,
        shuffle=True,
        seed=config.train.seed,
        shuffle_buffer=d.shuffle_buffer,
        channel_dropout=d.channel_dropout,
        **common,
    )
    val = Loader(
        split.val,
        normaliser,
        d.batch_size,
        shuffle=False,
        drop_remainder=False,
        **common,
    )
    return dict(split=split, normaliser=normaliser, reweighter=reweighter, train=train, val=val)


def baseline_reference(
    data: dict[str, Any], batch_size: int, fiducial: bool = False
) -> dict[str, float]:
    """psi 68 % (deg) of the conventional reconstructions on the validation events, computed
    once per run: the reference line of every validation resolution curve.

    Keys baseline_fit_resolution_deg, baseline_centroid_resolution_deg,
    baseline_fit_vertex_resolution_deg (xecjax.evaluate.BASELINES, xecjax.baseline).
    """
    from xecjax.data import Loader
    from xecjax.evaluate import BASELINES, baseline_angles
    from xecjax.metrics import angle_metrics

    loader = Loader(data["split"].val, data["normaliser"], batch_size, shuffle=False,
                    drop_remainder=False, fiducial=fiducial, extra_branches=("npho",))  # fmt: skip
    angles: dict[str, list] = {k: [] for k in (*BASELINES, "true")}
    for batch in loader.epoch(0):
        ok = batch["valid"].astype(bool)
        for k, v in baseline_angles(batch["npho"], batch["xyzVTX"]).items():
            angles[k].append(v[ok])
        angles["true"].append(batch["angles"][ok])
    true = np.concatenate(angles.pop("true"))
    return {
        f"{k}_resolution_deg": angle_metrics(np.concatenate(v), true)["val_resolution_deg"]
        for k, v in angles.items()
    }


def make_normaliser(norm_cfg: ml_collections.ConfigDict):
    """Normaliser preset plus the fields of config.norm that are not None."""
    from xecjax.data import Normaliser

    base = Normaliser.preset(norm_cfg.preset)
    overrides = {k: v for k, v in norm_cfg.items() if k != "preset" and v is not None}
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"config.norm: unknown Normaliser fields {unknown}; known: {sorted(fields)}"
        )
    return dataclasses.replace(base, **overrides)


# ----------------------------------------------------------------------------------------------
# The whole run.
# ----------------------------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Train, validate every eval_every epochs with the EMA parameters, checkpoint, track.

    Returns the run summary (also written to <workdir>/summary.json). Raises NonFiniteError
    under nan_policy='stop' after a non-finite loss or gradient (the last checkpoint is kept).
    """
    from flax import nnx

    from xecjax.models import build_model, count_params, make_apply, needs_vertex, training_dtype

    t_start = time.time()
    tasks.configure_model(config)  # the enabled tasks' heads and target scales into config.model
    objective = mae_objective.objective(config)  # "regression" | "mae" | "inpainter"
    reconstruction = objective in mae_objective.RECONSTRUCTION  # sensors, not angles
    if reconstruction:
        mae_objective.check_config(config)
    finetune.check_config(config)
    # the validation metric that chooses `best` (smaller is better)
    best_key = "val_total_loss" if reconstruction else "val_resolution_deg"
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if config.train.nan_policy not in ("stop", "skip"):
        raise ValueError(f"config.train.nan_policy = {config.train.nan_policy!r}: stop|skip")

    # --- mesh --------------------------------------------------------------------------------
    mesh = make_mesh()
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    # --- restore point -----------------------------------------------------------------------
    ckpt = Checkpointer(workdir)
    source = None  # the Checkpointer to resume from
    resume = config.resume
    if resume == "":
        if ckpt.latest_step("last") is not None:
            raise FileExistsError(
                f"{workdir} already holds checkpoints: resume with "
                f"--config.resume=auto or choose another --workdir"
            )
    elif resume == "auto":
        source = ckpt if ckpt.latest_step("last") is not None else None
    else:
        source = Checkpointer(
            resolve_checkpoint_dir(resume, "last").parent.parent, async_save=False
        )

    # --- data --------------------------------------------------------------------------------
    meta = None
    if source is not None:
        _, meta = read_meta(source.root / "last", "last")
        check_resume_config(meta["config"], config, source.root)
    data = make_data(config, meta)
    if objective in mae_objective.RECONSTRUCTION:
        mae_objective.check_sentinels(config.model, data["normaliser"])
    steps_per_epoch = data["train"].num_batches()  # the same on every process
    if steps_per_epoch == 0:
        raise ValueError(f"fewer training events than one batch ({config.data.batch_size})")

    # --- model + optimizer -------------------------------------------------------------------
    # bf16: layers compute in bfloat16; params, optimiser, EMA and loss float32 (same init)
    dtype = training_dtype(config.train.bf16)
    model = build_model(config.model, rngs=nnx.Rngs(config.train.seed), dtype=dtype)
    params, apply_fn = make_apply(model)
    if config.get("init_from", "") and source is None:
        # fine-tuning: the pretrained encoder, once, at a fresh start (a resumed run restores
        # its own parameters below and never reloads it); an inpainter takes the decoders too
        decoders = objective == "inpainter" and bool(config.inpainter.init_decoders)
        params, info = finetune.load_encoder(
            params, config.init_from, data["normaliser"], decoders=decoders,
            decoder_residual=config.model.get("decoder_residual", "none"),
        )  # fmt: skip
        if is_main:
            print(f"{'encoder and decoders' if decoders else 'encoder'} initialised from "
                  f"{info['checkpoint']} (step {info['step']}, {info['leaves']} parameter "
                  "arrays)", flush=True)  # fmt: skip
    schedule = make_schedule(config.optim, steps_per_epoch, config.train.epochs)
    tx = make_optimizer(config.optim, schedule)
    loss_fn = losses.get_loss(config.optim.loss, config.optim.beta)
    state = init_state(params, tx, config.train.seed + 1)
    state = jax.device_put(state, replicated)
    state_sharding = jax.tree.map(lambda a: a.sharding, state)
    start_epoch, start_batch, history, best = 0, 0, [], {best_key: float("inf")}
    run_id, skipped = None, 0
    if source is not None:
        state, meta = source.restore("last", state)
        if source is not ckpt:
            source.close()
        start_epoch, start_batch = meta["position"]["epoch"], meta["position"]["batch"]
        history, best = meta["history"], meta["best"]
        run_id, skipped = meta.get("mlflow_run_id"), meta.get("nonfinite_skipped", 0)
        print(
            f"resumed from {source.root}/last at step {int(state['step'])}, epoch "
            f"{start_epoch} batch {start_batch}",
            flush=True,
        )

    # --- update step -------------------------------------------------------------------------
    batch_keys = None  # what a step reads of a batch (to_global); None: the regression's
    # fine-tuning with init_freeze_epochs: no encoder updates before that step (an inpainter's
    # freeze_encoder: never)
    freeze = finetune.freeze_encoder_updates(finetune.freeze_steps(config, steps_per_epoch))
    if reconstruction:
        batch_keys = mae_objective.BATCH_KEYS
        step_fn = mae_objective.make_train_step(apply_fn, tx, config, data["normaliser"], freeze)
        eval_fn = mae_objective.make_eval_step(apply_fn, config, data["normaliser"])
        eval_out = replicated  # sums over the global batch
    else:
        step_fn = make_train_step(apply_fn, tx, loss_fn, config, freeze)
        task_loss, vertex_input = tasks.make_loss(config), needs_vertex(config.model)
        eval_fn = make_eval_step(
            apply_fn, loss_fn, config.optim.point_weight, task_loss, vertex_input
        )
        eval_out = (batch_sharding, batch_sharding, batch_sharding)
    train_step = jax.jit(
        step_fn,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(
        eval_fn, in_shardings=(state_sharding["ema"], batch_sharding), out_shardings=eval_out
    )

    tracker = Tracker(
        workdir,
        config.to_dict(),
        mlflow_uri=config.tracking.mlflow_uri,
        experiment=config.tracking.experiment,
        run_id=run_id,
        tensorboard=config.tracking.tensorboard,
        enabled=is_main,
    )

    def save(which: str, epoch: int, batch: int) -> None:
        ckpt.save(
            which,
            state,
            {
                "config": config.to_dict(),
                "normaliser": data["normaliser"].to_dict(),
                "split": data["split"].to_dict(),
                "reweighter": data["reweighter"].to_dict() if data["reweighter"] else None,
                "position": {"epoch": epoch, "batch": batch},
                "history": history,
                "best": best,
                "mlflow_run_id": tracker.run_id,
                "nonfinite_skipped": skipped,
            },
        )

    n_params = count_params(params)
    if is_main:
        print(
            f"{config.model.name}: {n_params:,} parameters; {jax.device_count()} devices; "
            f"{steps_per_epoch} steps/epoch of {config.data.batch_size} events",
            flush=True,
        )
        tracker.log_metrics({"n_params": n_params, "steps_per_epoch": steps_per_epoch}, 0)
    # the conventional reconstruction on the same validation events, once per run (process 0)
    baselines = {}
    if is_main and objective == "regression":  # (an MAE or inpainter run has no angles)
        baselines = baseline_reference(data, config.data.batch_size, config.data.fiducial)
    if baselines:
        print("validation baselines (psi 68 %): " + ", ".join(
            f"{k.removesuffix('_resolution_deg')} {v:.3f} deg" for k, v in baselines.items()
        ), flush=True)  # fmt: skip

    # --- loop ----------------------------------------------------------------------------------
    status, preempted, stop_epoch = "FINISHED", False, config.train.epochs
    if config.train.stop_after_epoch > 0:
        stop_epoch = min(stop_epoch, config.train.stop_after_epoch)
    pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet looked at

    def check(epoch: int) -> list[float]:
        """Host look at pending step metrics: the NaN guard; returns their finite losses."""
        nonlocal skipped
        got = jax.device_get(pending)
        pending.clear()
        bad = [s for s, m in got if not m["finite"]]
        if bad and config.train.nan_policy == "stop":
            last = ckpt.latest_step("last")
            raise NonFiniteError(
                f"non-finite loss or gradient at step(s) {bad[0]}..{bad[-1]} ({len(bad)} of "
                f"steps {got[0][0]}..{got[-1][0]}, epoch {epoch}); stopped. Last good "
                f"checkpoint: step {last} in {ckpt.root / 'last'}"
            )
        skipped += len(bad)
        return [float(m["loss"]) for s, m in got if m["finite"]]

    host_step = int(state["step"])  # mirrors state["step"] without waiting for the device
    n_proc = jax.process_count()
    try:
        with Preemption() as preemption:
            for epoch in range(start_epoch, stop_epoch):
                t_epoch, epoch_losses = time.time(), []
                load_s, batch_s = [], []  # per step: waiting for the loader, the whole step
                first = start_batch if epoch == start_epoch else 0
                bar = _progress(config, is_main, epoch, steps_per_epoch, first)
                batches = data["train"].epoch(epoch, skip_batches=first)
                t_batch = time.perf_counter()
                for b in range(first, steps_per_epoch):
                    local = next(batches)
                    load_s.append(time.perf_counter() - t_batch)
                    step_no, host_step = host_step, host_step + 1
                    state, m = train_step(state, to_global(local, batch_sharding, batch_keys))
                    pending.append((step_no, m))
                    if len(pending) >= 2:
                        # at most 2 steps in flight: the bar shows computed (not queued) steps
                        # and a preemption checkpoint never waits for a long queue to drain
                        pending[-2][1]["loss"].block_until_ready()
                    if len(pending) >= config.train.log_every or b == steps_per_epoch - 1:
                        window = check(epoch)
                        epoch_losses += window
                        if window:
                            tracker.log_scalars_tb(
                                {
                                    "train/step_loss": np.mean(window),
                                    "train/step_lr": float(schedule(step_no)),
                                },
                                step_no,
                            )
                        if bar is not None:
                            bar.set_postfix(loss=f"{np.mean(window):.4g}" if window else "nan")
                    if bar is not None:
                        bar.update(1)
                    batch_s.append(time.perf_counter() - t_batch)
                    t_batch = time.perf_counter()
                    every = config.train.checkpoint_every_steps
                    # several processes agree on the flag with a collective (a host-device
                    # sync): only every STOP_CHECK_STEPS steps, the same steps everywhere
                    if n_proc == 1 or (step_no + 1) % STOP_CHECK_STEPS == 0:
                        preempted = preemption.requested
                    # an extra save on the epoch's last batch would take the step number of
                    # the epoch-end save below (history row, best), which would then be skipped
                    extra = every > 0 and (step_no + 1) % every == 0 and b < steps_per_epoch - 1
                    if preempted or extra:
                        epoch_losses += check(epoch)
                        save("last", epoch, b + 1)
                        if preempted:
                            status = "KILLED"
                            break
                if bar is not None:
                    bar.close()
                if preempted:
                    break
                n_events = (steps_per_epoch - first) * config.data.batch_size
                row = {
                    "epoch": epoch,
                    "train_loss": float(np.mean(epoch_losses or [np.nan])),
                    "lr": float(schedule(int(state["step"]))),
                    "epoch_time": time.time() - t_epoch,
                    "events_per_s": n_events / (time.time() - t_epoch),
                    "nonfinite_skipped": skipped,
                }
                last_epoch = epoch + 1 == config.train.epochs
                row.update(throughput_metrics(
                    n_events, load_s, batch_s, row["epoch_time"]))  # fmt: skip
                if (epoch + 1) % config.train.eval_every == 0 or last_epoch:
                    if reconstruction:
                        val = mae_objective.evaluate(
                            eval_step, state["ema"], data["val"], batch_sharding, config
                        )
                        row.update(val)
                    else:
                        row.update(evaluate(eval_step, state["ema"], data["val"], batch_sharding,
                                            beta=config.optim.beta))  # fmt: skip
                row.update(system_metrics())
                history.append(row)
                # checkpoints first: a tracking failure must never cost the epoch's checkpoint
                if row.get(best_key, np.inf) < best[best_key]:
                    best = {k: row[k] for k in ("epoch", best_key, "val_loss")}
                    save("best", epoch + 1, 0)
                save("last", epoch + 1, 0)
                tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, epoch)
                if "val_resolution_deg" in row:  # a flat reference line beside every point
                    tracker.log_metrics(baselines, epoch)
                if is_main:
                    print(_epoch_line(row), flush=True)
    except BaseException:
        status = "FAILED"
        raise
    finally:
        ckpt.wait()
        ckpt.close()
        summary = _summary(
            config,
            workdir,
            host_step,
            history,
            best,
            skipped,
            preempted,
            status,
            time.time() - t_start,
            n_params,
        )
        summary["baselines"] = baselines
        if is_main:
            _write_json(workdir / "summary.json", summary)
            _write_json(workdir / "config.json", config.to_dict())
            tracker.log_artifact(workdir / "summary.json")
            tracker.log_artifact(workdir / "config.json")
            if history:
                tracker.log_artifact(plot_history(history, workdir / "training_curves.png"))
        tracker.close(status)
    if config.train.export_onnx and not preempted and is_main:
        from xecjax.export import export_run

        export_run(workdir, workdir / "model.onnx", which="best", ema=True)
    if is_main:
        print("summary: " + json.dumps(summary, indent=1), flush=True)
    if jax.process_count() > 1:  # each process's own copy: replicas must agree bit for bit
        print(
            f"process {jax.process_index()}/{jax.process_count()}: parameters sha256 "
            f"{params_digest(state['params'])}",
            flush=True,
        )
    return summary


def _progress(config, is_main: bool, epoch: int, total: int, first: int):
    """tqdm bar over the steps of an epoch, counting events (rate in events/s)."""
    if not (is_main and config.train.progress):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=first, desc=f"epoch {epoch}", unit="ev",
                unit_scale=config.data.batch_size, dynamic_ncols=True, leave=False)  # fmt: skip


def _epoch_line(row: dict[str, float]) -> str:
    text = f"epoch {row['epoch']}: train_loss {row['train_loss']:.4g}"
    if "val_total_loss" in row:  # an MAE run (xecjax.mae)
        text += (
            f"  val_total_loss {row['val_total_loss']:.4g}  npho {row['val_loss_npho']:.4g}  "
            f"time {row['val_loss_time']:.4g}  masked {row['val_actual_mask_ratio']:.3f}"
        )
    elif "val_loss" in row:
        text += (
            f"  val_loss {row['val_loss']:.4g}  68% opening angle "
            f"{row['val_resolution_deg']:.3f} deg  theta rms {row['theta_rms']:.3f}  "
            f"phi rms {row['phi_rms']:.3f}"
        )
    return text + f"  {row['events_per_s']:.0f} events/s  {row['epoch_time']:.1f} s"


def _summary(
    config, workdir, step, history, best, skipped, preempted, status, wall_s, n_params
) -> dict[str, Any]:
    last = history[-1] if history else {}
    evals = [h for h in history if "val_resolution_deg" in h]
    return {
        "workdir": str(Path(workdir).resolve()),
        "model": config.model.name,
        "variant": config.get("variant", ""),
        "status": status,
        "preempted": preempted,
        "n_params": int(n_params),
        "step": int(step),
        "epochs_done": (last.get("epoch", -1) + 1),
        "best": best,
        "final": {
            k: last[k]
            for k in (
                "train_loss",
                "val_loss",
                "val_resolution_deg",
                "theta_bias",
                "theta_rms",
                "phi_bias",
                "phi_rms",
                "val_total_loss",
                "val_loss_npho",
                "val_loss_time",
            )
            if k in last
        },
        "val_resolution_deg": evals[-1]["val_resolution_deg"] if evals else None,
        "events_per_s": float(np.mean([h["events_per_s"] for h in history])) if history else None,
        "epoch_events_per_s": [round(h["events_per_s"], 1) for h in history],
        "nonfinite_skipped": skipped,
        "wall_time_s": round(wall_s, 1),
    }


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    tmp.replace(path)


# Exit status of a run stopped by SIGTERM / SIGINT (Slurm time limit or preemption) after its
# checkpoint: not 0, so that Slurm does not mark an unfinished run COMPLETED and `afterok`
# dependencies wait; the job script of tools/submit_job.sh requeues itself on it. (75 is
# EX_TEMPFAIL of sysexits.h: "try again later".)
EXIT_INTERRUPTED = 75


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 when the run finished (or reached train.stop_after_epoch),
    1 after a non-finite loss, EXIT_INTERRUPTED (75) after a preemption checkpoint."""
    keep_freed_host_memory()  # before JAX's first computation
    config, workdir = parse_command_line(sys.argv[1:] if argv is None else argv)
    maybe_initialize_distributed()
    try:
        summary = train_and_evaluate(config, workdir)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if summary["preempted"]:
        print(
            f"interrupted: checkpoint saved in {workdir}; continue with --config.resume=auto "
            f"(exit status {EXIT_INTERRUPTED})",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
