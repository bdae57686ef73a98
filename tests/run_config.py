"""A config of the tests' training runs: its own toy-data cache and MLflow store, no bar."""

from pathlib import Path

from xecjax.config import load_config


def isolated_config(spec: str, base: Path):
    """load_config(spec) with the toy data cache in base/toy, the MLflow SQLite store
    base/mlruns.db and no progress bar."""
    config = load_config(spec)
    config.data.toy_dir = str(base / "toy")
    config.tracking.mlflow_uri = f"sqlite:///{base / 'mlruns.db'}"
    config.train.progress = False
    return config
