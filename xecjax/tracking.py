"""Experiment tracking: MLflow (SQLite store), TensorBoard (tensorboardX) and system metrics.

Only process 0 writes; on other processes a Tracker is a no-op, so the training loop calls it
unconditionally. MLflow uses the SQLite store (the reference's file store locked up under
concurrent runs): default `sqlite:///mlruns.db` in the working directory, artifacts in the
`mlruns/` folder beside the database, experiment `gamma_angle`. The run id is kept in the
checkpoint, so a resumed run logs into the same MLflow run. Metric names are those of the
reference: train_loss, val_loss, theta_bias, theta_rms, theta_skew, phi_bias, phi_rms, phi_skew,
val_resolution_deg, val_smooth_l1, val_l1, val_mse, val_cos_res, lr and system/* (memory,
epoch duration, throughput, data-loading share), besides names of ours (epoch_time,
events_per_s, system/rss_mb ...). TensorBoard gets every name, plus the reference's tags
loss/train and loss/val (per epoch, TB_ALIASES); the per-step values are train/step_loss and
train/step_lr (global step).

Browse: `mlflow ui --backend-store-uri sqlite:///mlruns.db` ; `tensorboard --logdir runs`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import psutil

# The reference's TensorBoard tags of per-epoch metrics (its "lr" is ours too); each metric is
# also written under its own name.
TB_ALIASES = {"train_loss": "loss/train", "val_loss": "loss/val"}

# MLflow limits: 100 params and 1000 metrics per log_batch call, 6000 characters a param value.
_MAX_PARAMS, _MAX_METRICS, _MAX_PARAM_CHARS = 100, 1000, 6000


def default_mlflow_uri(directory: str | Path | None = None) -> str:
    """sqlite:///<directory or cwd>/mlruns.db (absolute, so a later cwd change does not matter)."""
    base = Path(directory) if directory else Path.cwd()
    return f"sqlite:///{(base / 'mlruns.db').resolve()}"


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config (dict or ConfigDict) -> {"optim.lr": "0.0008", ...} for MLflow params."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "items"):
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = str(value)[:_MAX_PARAM_CHARS]
    return out


def system_metrics() -> dict[str, float]:
    """Host memory of this process and of the node and, where the backend reports it (GPUs),
    device memory: the reference's names (system/ram_used_gb, system/ram_percent,
    system/process_ram_gb; system/memory_allocated_GB, memory_reserved_GB, memory_peak_GB,
    gpu_utilization_pct (allocated / total, a fraction as the reference logs it),
    memory_fragmentation) and ours (system/rss_mb, ram_used_percent, cpu_percent,
    device_mem_mb, device_peak_mem_mb)."""
    proc = psutil.Process()
    rss, vm = proc.memory_info().rss, psutil.virtual_memory()
    out = {
        "system/rss_mb": rss / 2**20,
        "system/ram_used_percent": vm.percent,
        "system/cpu_percent": psutil.cpu_percent(interval=None),
        "system/ram_used_gb": vm.used / 1e9,
        "system/ram_percent": vm.percent,
        "system/process_ram_gb": rss / 1e9,
    }
    stats = jax.local_devices()[0].memory_stats()  # None on CPU
    if stats:
        used, peak = stats.get("bytes_in_use", 0), stats.get("peak_bytes_in_use", 0)
        total = stats.get("bytes_limit", 0)
        reserved = stats.get("pool_bytes") or stats.get("bytes_reserved") or total
        out["system/device_mem_mb"] = used / 2**20
        out["system/device_peak_mem_mb"] = peak / 2**20
        out["system/memory_allocated_GB"] = used / 1e9
        out["system/memory_reserved_GB"] = reserved / 1e9
        out["system/memory_peak_GB"] = peak / 1e9
        out["system/gpu_utilization_pct"] = used / max(total, 1)
        out["system/memory_fragmentation"] = (reserved - used) / max(reserved, 1)
    return out


def throughput_metrics(
    events: int, load_s: list[float], batch_s: list[float], epoch_s: float
) -> dict[str, float]:
    """The reference's per-epoch speed metrics from per-batch timings (seconds): time waiting
    for the data loader, whole step time (loader wait included) and the epoch's wall time.

    system/throughput_events_per_sec (events / sum of step times), avg_data_load_sec,
    avg_batch_process_sec, compute_efficiency (1 - load / step: the share of a step not spent
    waiting for data), epoch_duration_sec.
    """
    out = {"system/epoch_duration_sec": float(epoch_s)}
    if batch_s:
        load, step = float(sum(load_s) / len(load_s)), float(sum(batch_s) / len(batch_s))
        out["system/throughput_events_per_sec"] = events / max(sum(batch_s), 1e-12)
        out["system/avg_data_load_sec"] = load
        out["system/avg_batch_process_sec"] = step
        out["system/compute_efficiency"] = 1.0 - load / step if step > 0 else float("nan")
    return out


class Tracker:
    """MLflow run + TensorBoard writer of one training run (no-op unless `enabled`).

    Args:
      workdir: run directory; TensorBoard events go to <workdir>/tb.
      config: the full config, logged flattened as MLflow params.
      mlflow_uri: tracking URI ("" = default_mlflow_uri()).
      experiment: MLflow experiment name.
      run_id: an existing MLflow run to continue (resume), or None for a new run.
      tensorboard: write TensorBoard events.
      enabled: False on processes other than 0.
    """

    def __init__(
        self,
        workdir: str | Path,
        config: Mapping[str, Any],
        *,
        mlflow_uri: str = "",
        experiment: str = "gamma_angle",
        run_id: str | None = None,
        tensorboard: bool = True,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        self._client = None
        self._tb = None
        if not enabled:
            return
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = mlflow_uri or default_mlflow_uri()
        self._client = MlflowClient(tracking_uri=uri)
        exp = self._client.get_experiment_by_name(experiment)
        if exp is None:
            artifacts = None
            if uri.startswith("sqlite:///"):
                # keep artifacts beside the database, not in whatever cwd the run started in
                artifacts = (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
            exp_id = self._client.create_experiment(experiment, artifact_location=artifacts)
        else:
            exp_id = exp.experiment_id
        if run_id:
            self.run_id = run_id
            self._client.update_run(run_id, status="RUNNING")
        else:
            run = self._client.create_run(exp_id, run_name=Path(workdir).name)
            self.run_id = run.info.run_id
            params = [Param(k, v) for k, v in sorted(flatten_config(config).items())]
            params.append(Param("workdir", str(Path(workdir).resolve())))
            for i in range(0, len(params), _MAX_PARAMS):
                self._client.log_batch(self.run_id, params=params[i : i + _MAX_PARAMS])
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tb"))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalars at `step` (epoch for per-epoch metrics, global step for per-step ones).

        An MLflow error (e.g. "database is locked" when scan jobs share one SQLite file) warns
        and the run goes on: tracking never stops training (TensorBoard still gets the values).
        """
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        try:
            for i in range(0, len(items), _MAX_METRICS):
                self._client.log_batch(self.run_id, metrics=items[i : i + _MAX_METRICS])
        except Exception as e:
            warnings.warn(f"MLflow logging failed at step {step} ({e}); training goes on",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), int(step))
                if k in TB_ALIASES:  # the reference's TensorBoard tags too
                    self._tb.add_scalar(TB_ALIASES[k], float(v), int(step))
            self._tb.flush()

    def log_scalars_tb(self, metrics: Mapping[str, float], step: int) -> None:
        """TensorBoard only (frequent per-step values that would bloat the MLflow store)."""
        if self.enabled and self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), int(step))

    def log_artifact(self, path: str | Path) -> None:
        """Copy a file (plot, summary, config) into the MLflow run's artifacts."""
        if self.enabled and Path(path).exists():
            try:
                self._client.log_artifact(self.run_id, str(path))
            except Exception as e:
                warnings.warn(f"MLflow could not store {path} ({e})", RuntimeWarning, stacklevel=2)

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run (FINISHED, FAILED or KILLED) and close TensorBoard."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._client is not None and self.run_id:
            try:
                self._client.set_terminated(self.run_id, status=status)
            except Exception as e:
                warnings.warn(f"MLflow could not end run {self.run_id} ({e})", RuntimeWarning,
                              stacklevel=2)  # fmt: skip
            self._client = None


def plot_history(history: list[Mapping[str, float]], path: str | Path) -> Path:
    """Training curves (losses, 68 % opening angle vs epoch) as a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_res) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        ax_loss.plot(epochs, [h.get(key, float("nan")) for h in history], "o-", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log")
    ax_loss.legend()
    ax_res.plot(epochs, [h.get("val_resolution_deg", float("nan")) for h in history], "o-")
    ax_res.set(xlabel="epoch", ylabel="68% opening angle (deg)")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
