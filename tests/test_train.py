"""Training end to end on the smoke config and a few hundred toy events (CPU).

One module fixture trains the runs that most tests look at: A (4 epochs in one go) and B
(stopped after 2 epochs, then resumed with resume=auto). A injects one NaN step under
nan_policy='skip', so the skip path is exercised by the same run. Runs share a toy data cache,
an MLflow store and a persistent compilation cache (identical configs compile once).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

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
    config = load_config(CONFIG)
    config.resume = resume
    config.data.toy_dir = str(base / "toy")
    config.tracking.mlflow_uri = f"sqlite:///{base / 'mlruns.db'}"
    config.train.progress = False
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


def restore_last(path, like=None):
    """(params, meta) of the `last` checkpoint of a run, onto this process's first device.

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
    args = ocp.args.Composite(params=ocp.args.StandardRestore(target))
    out = ckpt.managers["last"].restore(step, args=args)
    ckpt.close()
    return out["params"], meta


def max_diff(a, b) -> float:
    return max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


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
    assert list((work / "tb").glob("events.out.tfevents.*"))

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
    params_a, meta_a = restore_last(base / "A")
    params_b, meta_b = restore_last(base / "B")
    assert meta_b["position"] == meta_a["position"]
    assert max_diff(params_a, params_b) < 1e-6
    assert meta_b["nonfinite_skipped"] == 1
    # the resumed part logged into the MLflow run of the first part
    assert (
        meta_b["mlflow_run_id"] == read_meta(base / "B_after_2_epochs", "last")[1]["mlflow_run_id"]
    )


def test_load_for_inference_gives_the_best_ema_model(base, runs):
    model_cfg, normaliser, params, apply_fn = load_for_inference(base / "A", "best")
    assert model_cfg.name == "regressor"
    assert normaliser.to_dict() == read_meta(base / "A", "best")[1]["normaliser"]
    ema = load_for_inference(base / "A", "best", ema=True)[2]
    raw = load_for_inference(base / "A", "best", ema=False)[2]
    assert max_diff(params, ema) == 0 and max_diff(params, raw) > 0
    x = jax.ShapeDtypeStruct((3, 4760, 2), np.float32)
    assert jax.eval_shape(lambda p, x: apply_fn(p, x, False, None), params, x).shape == (3, 2)


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
    env = subprocess_env(base, XLA_FLAGS="--xla_force_host_platform_device_count=2")
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
    # resumable (here on 1 device): continue from that exact position to the end of its epoch
    config = smoke_config(base, resume="auto", stop_after_epoch=epoch + 1)
    resumed = train_and_evaluate(config, work)
    assert resumed["status"] == "FINISHED" and resumed["step"] > step
    assert read_meta(work, "last")[1]["position"] == {"epoch": epoch + 1, "batch": 0}
    del batch


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
