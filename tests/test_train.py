"""Training end to end on the smoke config and a few hundred toy events (CPU).

One module fixture trains the runs that most tests look at: A (4 epochs in one go) and B
(stopped after 2 epochs, then resumed with resume=auto). A injects one NaN step under
nan_policy='skip', so the skip path is exercised by the same run. Runs share a toy data cache,
an MLflow store and a persistent compilation cache (identical configs compile once).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from run_config import isolated_config

from xecjax.checkpoint import Checkpointer, load_for_inference, read_meta
from xecjax.config import load_config, parse_command_line
from xecjax.train import EXIT_INTERRUPTED, NonFiniteError, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
CONFIG = f"{ROOT / 'configs' / 'convnext.py'}:smoke"
METRICS = (
    "train_loss",
    "val_loss",
    "theta_bias",
    "theta_rms",
    "theta_skew",
    "phi_bias",
    "phi_rms",
    "phi_skew",
    "val_resolution_deg",
    "lr",
    "epoch_time",
    "events_per_s",
    "system/rss_mb",
    # the reference's names
    "val_smooth_l1",
    "val_l1",
    "val_mse",
    "val_cos_res",
    "system/ram_used_gb",
    "system/ram_percent",
    "system/process_ram_gb",
    "system/epoch_duration_sec",
    "system/throughput_events_per_sec",
    "system/avg_data_load_sec",
    "system/avg_batch_process_sec",
    "system/compute_efficiency",
)
NAN_STEP = 5


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    jax.config.update("jax_compilation_cache_dir", str(base / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield base
    jax.config.update("jax_compilation_cache_dir", None)


def smoke_config(base: Path, resume: str = "", **train):
    config = isolated_config(CONFIG, base)
    config.resume = resume
    config.train.epochs = 4
    config.train.nan_policy = "skip"
    config.train.debug_nan_step = NAN_STEP
    for key, value in train.items():
        config.train[key] = value
    return config


def overrides(base: Path, **train) -> list[str]:
    """The same smoke config as command-line arguments (for subprocesses)."""
    out = [
        "--config",
        CONFIG,
        f"--config.data.toy_dir={base / 'toy'}",
        f"--config.tracking.mlflow_uri=sqlite:///{base / 'mlruns.db'}",
        "--config.train.progress=false",
        "--config.train.epochs=4",
        "--config.train.nan_policy=skip",
        f"--config.train.debug_nan_step={NAN_STEP}",
    ]
    return out + [f"--config.train.{k}={v}" for k, v in train.items()]


@pytest.fixture(scope="module")
def runs(base):
    summary_a = train_and_evaluate(smoke_config(base), base / "A")
    train_and_evaluate(smoke_config(base, stop_after_epoch=2), base / "B")
    shutil.copytree(base / "B" / "checkpoints", base / "B_after_2_epochs" / "checkpoints")
    summary_b = train_and_evaluate(smoke_config(base, resume="auto"), base / "B")
    return {"A": summary_a, "B": summary_b}


def train_command(base: Path, workdir: Path, **train) -> list[str]:
    """`python -m xecjax.train` on the smoke config (for subprocesses)."""
    return [
        sys.executable,
        "-m",
        "xecjax.train",
        "--workdir",
        str(workdir),
        *overrides(base, **train),
    ]


def subprocess_env(base: Path, **extra) -> dict:
    """Environment of a training subprocess sharing the compilation cache of this module."""
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(base / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        **extra,
    )


def restore_last(path, like=None, items=("params",)):
    """(params, meta) of the `last` checkpoint of a run, onto this process's first device;
    with several `items` ("params", "ema", "train": optimiser state, step, rng) a dict of them
    instead of params.

    `like`: a params pytree giving the structure (needed when the checkpoint was written on
    other devices than the current ones).
    """
    import orbax.checkpoint as ocp

    step, meta = read_meta(path, "last")
    ckpt = Checkpointer(path)
    target = None
    if like is not None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                              like)  # fmt: skip
    args = ocp.args.Composite(
        **{k: ocp.args.StandardRestore(target if k != "train" else None) for k in items}
    )
    out = ckpt.managers["last"].restore(step, args=args)
    ckpt.close()
    if items == ("params",):
        return out["params"], meta
    return {k: out[k] for k in items}, meta


EVERYTHING = ("params", "ema", "train")  # the whole training state of a checkpoint


def max_diff(a, b) -> float:
    return max(
        float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def tensorboard_tags(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the scalars in the TensorBoard event files of a directory
    (TFRecord: length u64, crc u32, payload, crc u32; payloads are tensorboard Event protos)."""
    import struct

    from tensorboardX.proto import event_pb2

    tags: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        i = 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i : i + 8])
            event = event_pb2.Event.FromString(raw[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                tags.setdefault(v.tag, []).append((event.step, v.simple_value))
    return tags


def test_smoke_run_lowers_the_loss_and_writes_everything(base, runs):
    summary = runs["A"]
    work = base / "A"
    history = json.loads((work / "summary.json").read_text())
    assert history["status"] == "FINISHED" and history["epochs_done"] == 4
    step, meta = read_meta(work, "last")
    losses = [h["train_loss"] for h in meta["history"]]
    assert losses[-1] < losses[0], losses
    assert np.isfinite(summary["val_resolution_deg"]) and summary["val_resolution_deg"] > 0
    assert summary["nonfinite_skipped"] == 1  # the injected NaN step, skipped
    assert meta["position"] == {"epoch": 4, "batch": 0}
    assert read_meta(work, "best")[1]["best"]["val_resolution_deg"] == pytest.approx(
        min(h["val_resolution_deg"] for h in meta["history"])
    )
    tags = tensorboard_tags(work / "tb")
    # the reference's tags (per epoch) beside ours; the per-step values under train/
    for tag in ("loss/train", "loss/val", "lr", "train_loss", "val_loss", "val_cos_res"):
        assert [e for e, _ in tags[tag]] == [0, 1, 2, 3], tag
    assert [v for _, v in tags["loss/val"]] == pytest.approx(
        [h["val_loss"] for h in meta["history"]]
    )
    assert "train/step_loss" in tags and "train/step_lr" in tags
    last = meta["history"][-1]
    # 1 - cos psi <= 1 - cos of the 68 % opening angle for 68 % of the events
    assert 0 < last["val_cos_res"] < 1 and last["val_l1"] > 0
    assert last["val_mse"] >= last["val_l1"] ** 2 - 1e-9  # Jensen, mean of squares >= square
    assert last["val_smooth_l1"] <= last["val_l1"]  # beta 1: smooth_l1 <= l1 elementwise
    assert 0 <= last["system/compute_efficiency"] <= 1
    assert last["system/throughput_events_per_sec"] > 0

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{base / 'mlruns.db'}")
    exp = client.get_experiment_by_name("gamma_angle")
    (run,) = client.search_runs([exp.experiment_id], "tags.mlflow.runName = 'A'")
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.loss"] == "smooth_l1"
    for name in METRICS:
        assert len(client.get_metric_history(run.info.run_id, name)) == 4, name
    assert client.get_metric_history(run.info.run_id, "train_loss")[-1].value == pytest.approx(
        losses[-1]
    )
    # the conventional baselines on the same validation events, once per run, logged as a
    # flat reference line beside every validation point
    baselines = history["baselines"]
    assert set(baselines) == {
        "baseline_fit_resolution_deg",
        "baseline_centroid_resolution_deg",
        "baseline_fit_vertex_resolution_deg",
    }
    assert all(0 < v < 3 for v in baselines.values()), baselines  # point-vertex toy data
    fit = client.get_metric_history(run.info.run_id, "baseline_fit_resolution_deg")
    assert len(fit) == 4
    assert all(m.value == pytest.approx(baselines["baseline_fit_resolution_deg"]) for m in fit)


def test_resume_two_plus_two_epochs_equals_four(base, runs):
    state_a, meta_a = restore_last(base / "A", items=EVERYTHING)
    state_b, meta_b = restore_last(base / "B", items=EVERYTHING)
    assert meta_b["position"] == meta_a["position"]
    for item in EVERYTHING:  # parameters, EMA, optimiser state, step and rng
        assert max_diff(state_a[item], state_b[item]) < 1e-6, item
    assert max_diff(state_a["params"], state_a["ema"]) > 1e-4  # EMA is not the parameters
    assert meta_b["nonfinite_skipped"] == 1
    # the resumed part logged into the MLflow run of the first part
    assert (
        meta_b["mlflow_run_id"] == read_meta(base / "B_after_2_epochs", "last")[1]["mlflow_run_id"]
    )


def test_a_workdir_with_checkpoints_is_refused_without_resume(base, runs):
    step = read_meta(base / "A", "last")[0]
    with pytest.raises(FileExistsError, match="already holds checkpoints.*resume=auto"):
        train_and_evaluate(smoke_config(base), base / "A")
    assert read_meta(base / "A", "last")[0] == step  # untouched


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.cnn_dims", (8, 16)),  # another model
        ("optim.lr", 1e-3),  # the schedule
        ("data.batch_size", 8),  # the batch plan
        ("data.shuffle_buffer", 100),
        ("train.seed", 7),
        ("train.epochs", 6),
        ("norm.npho_scale", 123.0),
    ],
)
def test_resume_refuses_a_changed_config_naming_the_key(base, runs, tmp_path, key, value):
    shutil.copytree(base / "B_after_2_epochs" / "checkpoints", tmp_path / "checkpoints")
    config = smoke_config(base, resume="auto")
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=rf"differs from the checkpoint's in {re.escape(key)} \("):
        train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_resume_override_and_safe_keys_let_a_changed_config_resume(base, runs, tmp_path):
    shutil.copytree(base / "B_after_2_epochs" / "checkpoints", tmp_path / "checkpoints")
    # stop_after_epoch 2: nothing left to train, the resume itself is what is tested
    config = smoke_config(base, resume="auto", stop_after_epoch=2, log_every=7)
    config.optim.lr, config.train.epochs = 1e-3, 6
    with pytest.raises(ValueError, match=r"in optim\.lr .*, train\.epochs .*resume_override="):
        train_and_evaluate(config, tmp_path)
    config.resume_override = "optim.lr, train"  # a key and a whole section
    config.tracking.experiment = "another"  # never compared
    summary = train_and_evaluate(config, tmp_path)
    assert summary["status"] == "FINISHED" and summary["epochs_done"] == 2


def test_resume_refuses_a_data_file_that_changed(base, runs, tmp_path):
    """The recorded split keeps size and mtime of every file: resuming (or evaluating) on a
    file rewritten since would silently read other events."""
    from xecjax.evaluate import evaluation_sources
    from xecjax.rootio import DataError
    from xecjax.simulate import write_toy_files

    write_toy_files(tmp_path / "d", 3 * 24, n_files=3, seed=5)
    config = smoke_config(base, stop_after_epoch=1)
    config.data.path = str(tmp_path / "d")
    config.data.batch_size = 8
    work = tmp_path / "run"
    train_and_evaluate(config, work)
    meta = read_meta(work, "last")[1]
    assert sorted(meta["split"]["files"]) == sorted(str(f) for f in (tmp_path / "d").glob("*.root"))
    changed = meta["split"]["test"][0]["path"]
    os.utime(changed, ns=(0, 10**18))  # same bytes, another modification time
    config.resume = "auto"
    with pytest.raises(DataError, match=rf"{changed}: file of the split recorded .* changed"):
        train_and_evaluate(config, work)
    with pytest.raises(DataError, match=rf"{changed}: file of the split recorded in"):
        evaluation_sources(meta, split="test", workdir=work)
    os.unlink(changed)
    with pytest.raises(DataError, match=rf"{changed}: file of .* is gone"):
        evaluation_sources(meta, split="val", workdir=work)


def test_resume_from_another_runs_checkpoint_path(base, runs):
    """resume=PATH: a new workdir continues from another run's `last` and ends where the run
    that resumed in place (B) did."""
    work = base / "from_path"
    summary = train_and_evaluate(
        smoke_config(base, resume=str(base / "B_after_2_epochs" / "checkpoints" / "last")), work
    )
    assert summary["status"] == "FINISHED"
    state, meta = restore_last(work, items=EVERYTHING)
    state_b, meta_b = restore_last(base / "B", items=EVERYTHING)
    assert meta["position"] == meta_b["position"] == {"epoch": 4, "batch": 0}
    for item in EVERYTHING:
        assert max_diff(state[item], state_b[item]) < 1e-6, item
    assert [h["epoch"] for h in meta["history"]] == [0, 1, 2, 3]  # the history came along
    assert read_meta(base / "B_after_2_epochs", "last")[1]["position"]["epoch"] == 2  # untouched


def test_load_for_inference_gives_the_best_ema_model(base, runs):
    """`best` holds the EMA model of the epoch with the lowest validation psi 68: validating
    what load_for_inference returns reproduces that epoch's recorded value; its default is
    the checkpoint's EMA item, ema=False its raw parameters."""
    import orbax.checkpoint as ocp

    from xecjax import losses
    from xecjax.steps import evaluate, make_eval_step
    from xecjax.train import make_data

    model_cfg, normaliser, params, apply_fn = load_for_inference(base / "A", "best")
    assert model_cfg.name == "regressor"
    step, meta = read_meta(base / "A", "best")
    assert normaliser.to_dict() == meta["normaliser"]
    raw = load_for_inference(base / "A", "best", ema=False)[2]
    ckpt = Checkpointer(base / "A")
    stored = ckpt.managers["best"].restore(step, args=ocp.args.Composite(
        ema=ocp.args.StandardRestore(None), params=ocp.args.StandardRestore(None)))  # fmt: skip
    ckpt.close()
    assert max_diff(params, stored["ema"]) == 0 and max_diff(raw, stored["params"]) == 0
    assert max_diff(params, raw) > 1e-4
    history = read_meta(base / "A", "last")[1]["history"]
    best_epoch = min(history, key=lambda h: h["val_resolution_deg"])
    assert meta["best"]["epoch"] == best_epoch["epoch"]
    assert step == (best_epoch["epoch"] + 1) * (runs["A"]["step"] // 4)
    config = smoke_config(base)
    data = make_data(config, meta)
    sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), jax.sharding.PartitionSpec()
    )
    loss_fn = losses.get_loss(config.optim.loss, config.optim.beta)
    eval_step = jax.jit(make_eval_step(apply_fn, loss_fn))
    again = evaluate(eval_step, params, data["val"], sharding)
    assert again["val_resolution_deg"] == pytest.approx(best_epoch["val_resolution_deg"], 1e-5)
    assert again["val_loss"] == pytest.approx(best_epoch["val_loss"], 1e-5)


def test_nan_guard_stops_with_the_step_range_and_keeps_the_checkpoint(base, runs):
    work = base / "nan"
    config = smoke_config(base, nan_policy="stop", checkpoint_every_steps=3)
    with pytest.raises(NonFiniteError, match=rf"step\(s\) {NAN_STEP}\.\.{NAN_STEP}"):
        train_and_evaluate(config, work)
    # the checkpoint of step 3 is kept; the poisoned step 5 never reached one
    step, meta = read_meta(work, "last")
    assert step == 3 and meta["position"] == {"epoch": 0, "batch": 3}
    assert json.loads((work / "summary.json").read_text())["status"] == "FAILED"


def test_two_fake_devices_give_the_parameters_of_one(base, runs):
    # also the one training of the suite under the system allocator (the entry points and the
    # other tests keep freed memory in the heap, xecjax.distributed.keep_freed_host_memory)
    env = subprocess_env(
        base, XLA_FLAGS="--xla_force_host_platform_device_count=2", XECJAX_SYSTEM_MALLOC="1"
    )
    cmd = train_command(base, base / "two_devices", stop_after_epoch=2)
    done = subprocess.run(cmd, env=env, cwd=base, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 devices" in done.stdout
    params_1, _ = restore_last(base / "B_after_2_epochs")
    params_2, _ = restore_last(base / "two_devices", like=params_1)
    assert max_diff(params_1, params_2) < 1e-4


def test_two_processes_give_the_parameters_of_one(base, runs):
    """Two Python processes (jax.distributed, coordinator on 127.0.0.1, one CPU device each,
    gloo collectives) train on the same global batches as the single-process run B."""
    import re
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = train_command(base, base / "two_processes", stop_after_epoch=2)
    procs = []
    for rank in range(2):
        env = subprocess_env(
            base,
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            XECJAX_NUM_PROCESSES="2",
            XECJAX_PROCESS_ID=str(rank),
            XLA_FLAGS="",
        )
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )  # fmt: skip
        )
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert "2 devices" in outputs[0]
    digests = [
        re.findall(rf"process {r}/2: parameters sha256 (\w+)", out) for r, out in enumerate(outputs)
    ]
    assert len(digests[0]) == 1 and digests[0] == digests[1]  # both replicas bit-identical
    params_1, _ = restore_last(base / "B_after_2_epochs")
    params_2, meta = restore_last(base / "two_processes", like=params_1)
    assert meta["position"] == {"epoch": 2, "batch": 0}
    assert max_diff(params_1, params_2) < 1e-4


def test_sigterm_saves_a_resumable_checkpoint_and_exits_75(base, runs):
    work = base / "preempted"
    # on 2 devices, so that it reuses the compilation of the test above
    env = subprocess_env(base, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    cmd = train_command(base, work, checkpoint_every_steps=3)
    proc = subprocess.Popen(
        cmd, env=env, cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 600
        while not list((work / "checkpoints" / "last").glob("[0-9]*")):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        t_signal = time.time()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # not 0: Slurm must not mark the unfinished run COMPLETED (afterok dependencies wait)
    assert proc.returncode == EXIT_INTERRUPTED == 75, err[-3000:]
    assert time.time() - t_signal < 30
    summary = json.loads((work / "summary.json").read_text())
    assert summary["preempted"] and summary["status"] == "KILLED"
    step, meta = read_meta(work, "last")
    assert step == summary["step"] > 0
    epoch, batch = meta["position"]["epoch"], meta["position"]["batch"]
    # resumable (here on 1 device) from that exact position, mid-epoch as a rule: to the end,
    # it gives the state of the uninterrupted run A (2 devices then 1: float32 reductions in
    # another order, hence not bit for bit)
    print(f"preempted at epoch {epoch}, batch {batch}")
    resumed = train_and_evaluate(smoke_config(base, resume="auto"), work)
    assert resumed["status"] == "FINISHED" and resumed["step"] == runs["A"]["step"]
    assert read_meta(work, "last")[1]["position"] == {"epoch": 4, "batch": 0}
    state, _ = restore_last(work, items=EVERYTHING)
    state_a, _ = restore_last(base / "A", items=EVERYTHING)
    for item in EVERYTHING:
        assert max_diff(state_a[item], state[item]) < 1e-4, item


def test_config_overrides_parse_and_unknown_keys_are_rejected(capsys):
    config, workdir = parse_command_line(
        [
            "--config",
            CONFIG,
            "--workdir",
            "runs/x",
            "--config.optim.lr=8e-4",
            "--config.train.bf16",
            "true",
            "--config.data.batch_size=32",
            "--config.norm.npho_branch=relative_npho",
            "--config.optim.loss=angular",
        ]
    )
    assert config.optim.lr == 8e-4 and config.train.bf16 is True
    assert config.data.batch_size == 32 and config.norm.npho_branch == "relative_npho"
    assert config.optim.loss == "angular" and workdir == Path("runs/x")
    for bad, message in (
        ("--config.optim.lrr=1", "unknown key 'lrr'"),
        ("--config.optimizer.lr=1", "no section 'optimizer'"),
        ("--config.data.batch_size=abc", "expected a int"),
        ("--config.train.bf16=maybe", "expected a boolean"),
        ("--lr=1", "unrecognised argument"),
    ):
        with pytest.raises(SystemExit):
            parse_command_line(["--config", CONFIG, bad])
        assert message in capsys.readouterr().err, bad
    with pytest.raises(ValueError, match="unknown variant"):
        load_config(f"{ROOT / 'configs' / 'convnext.py'}:huge")


@pytest.mark.parametrize("key", ["train", "val", "test"])
def test_one_explicit_side_without_path_is_refused(tmp_path, key):
    """Without data.path the missing side used to become the generated toy data set, silently."""
    from xecjax.simulate import write_toy_files
    from xecjax.train import make_data

    (path,) = write_toy_files(tmp_path / "mine", 24, seed=3)
    config = load_config(CONFIG)
    config.data.toy_dir = str(tmp_path / "toy")
    config.data[key] = str(path)
    with pytest.raises(ValueError, match=rf"config\.data\.{key} set without config\.data\.path"):
        make_data(config, None)
    assert not (tmp_path / "toy").exists()  # no toy data generated either


def test_make_data_records_a_test_part_and_never_loads_it(tmp_path):
    from xecjax.simulate import write_toy_files
    from xecjax.train import make_data

    write_toy_files(tmp_path / "d", 5 * 24, n_files=5, seed=2)
    config = load_config(CONFIG)
    config.data.path = str(tmp_path / "d")
    data = make_data(config, None)
    split = data["split"]
    assert (len(split.train), len(split.val), len(split.test)) == (3, 1, 1)
    test_files = {s.path for s in split.test}
    for part in ("train", "val"):
        assert not {s.path for s in data[part]._sources} & test_files
    # train and val named explicitly: the test part is the rest of data.path
    config.data.train, config.data.val = split.train[0].path, split.val[0].path
    rest = sorted(s.path for s in split.train[1:] + split.test)
    assert [s.path for s in make_data(config, None)["split"].test] == rest


def test_decay_mask_excludes_biases_norms_grn_and_position_embeddings():
    from flax import nnx

    from xecjax.models import build_model, make_apply
    from xecjax.optim import decay_mask

    params, _ = make_apply(build_model(load_config(CONFIG).model, rngs=nnx.Rngs(0)))
    flat = jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]
    names = {jax.tree_util.keystr(path).lower(): bool(v) for path, v in flat}
    decayed = [n for n, v in names.items() if v]
    assert decayed and all("kernel" in n or "weight" in n or "embedding" in n for n in decayed)
    for token in ("bias", "norm", "grn", "pos"):
        hits = [n for n in names if token in n]
        assert hits and not any(names[n] for n in hits), (token, hits)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings")
def test_freed_host_memory_is_reused_not_faulted_in_again():
    """keep_freed_host_memory: a 50 MB block freed by a thread comes back without page faults.

    (malloc from a worker thread, as XLA's CPU runtime does; glibc would serve it from a thread
    arena with a fresh mmap every time.)
    """
    code = (
        "import ctypes, resource, threading\n"
        "from xecjax.distributed import keep_freed_host_memory\n"
        "applied = keep_freed_host_memory()\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)\n"
        "libc.free.argtypes = (ctypes.c_void_p,)\n"
        "def use(n=50_000_000):\n"
        "    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)\n"
        "def in_thread():\n"
        "    t = threading.Thread(target=use); t.start(); t.join()\n"
        "in_thread()\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "in_thread()\n"
        "print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    )
    for env, want in (
        ({"XECJAX_SYSTEM_MALLOC": "0", "JAX_PLATFORMS": "cpu"}, True),
        ({"XECJAX_SYSTEM_MALLOC": "1", "JAX_PLATFORMS": "cpu"}, False),
        # a GPU job keeps the system malloc (the setting was measured on CPU jobs only)
        ({"XECJAX_SYSTEM_MALLOC": "0", "JAX_PLATFORMS": "cuda"}, False),
    ):
        out = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **env},
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        applied, faults = out[0] == "True", int(out[1])
        assert applied is want
        if applied:
            assert faults < 1000  # the block stayed in the heap
        else:
            assert faults > 10000  # 50 MB of fresh pages (4 kB each) faulted in again


def test_toy_cache_written_by_another_job_meanwhile_is_used(tmp_path, monkeypatch):
    """Two jobs generating the same toy set: the one that renames second uses the set that is
    there and leaves no temporary folder (it used to die on the rename)."""
    import xecjax.simulate
    from xecjax.train import toy_data_files

    d = load_config(CONFIG).data
    d.toy_dir, d.toy_events, d.toy_files = str(tmp_path / "toy"), 8, 2
    out = Path(d.toy_dir) / f"{d.toy_vertex}_8ev_2f_seed{d.toy_seed}"
    real = xecjax.simulate.write_toy_files

    def racing(tmp, *args, **kwargs):
        real(out, *args, **kwargs)  # the other job finishes first
        return real(tmp, *args, **kwargs)

    monkeypatch.setattr(xecjax.simulate, "write_toy_files", racing)
    files = toy_data_files(d)
    assert files == sorted(str(p) for p in out.glob("*.root")) and len(files) == 2
    assert [p.name for p in Path(d.toy_dir).iterdir()] == [out.name]  # no temporary left


def test_an_mlflow_error_warns_and_does_not_stop_the_run(tmp_path):
    """'database is locked' (scan jobs sharing one SQLite store) is a warning: the metrics
    still reach TensorBoard and the run goes on to its checkpoints."""
    import sqlite3

    from xecjax.tracking import Tracker

    tracker = Tracker(tmp_path / "run", {"a": 1}, mlflow_uri=f"sqlite:///{tmp_path / 'm.db'}")

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    tracker._client.log_batch = locked
    tracker._client.log_artifact = locked
    tracker._client.set_terminated = locked
    with pytest.warns(RuntimeWarning, match="database is locked"):
        tracker.log_metrics({"val_loss": 1.5}, 0)
    (tmp_path / "f.txt").write_text("x")
    with pytest.warns(RuntimeWarning, match="database is locked"):
        tracker.log_artifact(tmp_path / "f.txt")
    with pytest.warns(RuntimeWarning, match="database is locked"):
        tracker.close()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_checkpoint_every_steps_on_an_epoch_end_keeps_the_epoch_save(base, runs):
    """checkpoint_every_steps equal to the epoch length: the epoch-end `last` (history row,
    position at the next epoch, `best`) is still written, not skipped as an existing step."""
    work = base / "every_epoch"
    steps = runs["A"]["step"] // 4  # steps per epoch of the smoke run
    config = smoke_config(base, checkpoint_every_steps=steps, epochs=2, debug_nan_step=-1)
    train_and_evaluate(config, work)
    step, meta = read_meta(work, "last")
    assert step == 2 * steps
    assert meta["position"] == {"epoch": 2, "batch": 0}
    assert [h["epoch"] for h in meta["history"]] == [0, 1]
