"""Command line of the training run: config files with variants and dotted overrides.

--config configs/convnext.py:toy   get_config("toy") of that file (ml_collections ConfigDict)
--config.optim.lr=8e-4             override one key (also `--config.optim.lr 8e-4`); the value
                                   is parsed to the type of the current value; unknown keys
                                   and wrong types are errors naming the key
--workdir runs/x                   run directory (default runs/<file>_<variant>_<time>)
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import time
from pathlib import Path
from typing import Any

import ml_collections


# ----------------------------------------------------------------------------------------------
def load_config(spec: str) -> ml_collections.ConfigDict:
    """get_config(variant) of a config file given as 'configs/convnext.py[:variant]'."""
    path, _, variant = spec.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--config {spec}: no config file {path}")
    module_spec = importlib.util.spec_from_file_location(f"xecjax_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant or None)


def _parse_value(text: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--config.{key}={text}: expected a boolean (true/false)")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise ValueError(f"--config.{key}={text}: expected a {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if current is not None and not isinstance(value, type(current)):
        raise ValueError(
            f"--config.{key}={text}: expected a {type(current).__name__}, "
            f"got {type(value).__name__}"
        )
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set config.<key> (dotted) from its command-line text; unknown keys are an error."""
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            where = ".".join(parents[:i]) or "config"
            sections = sorted(k for k in node if isinstance(node[k], ml_collections.ConfigDict))
            raise KeyError(f"--config.{key}: no section {name!r} in {where} (sections: {sections})")
        node = node[name]
    if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
        raise KeyError(
            f"--config.{key}: unknown key {leaf!r} in config.{'.'.join(parents)} "
            f"(known: {sorted(node.keys())})"
        )
    node[leaf] = _parse_value(text, node[leaf], key)


def parse_command_line(argv: list[str]) -> tuple[ml_collections.ConfigDict, Path]:
    """(config, workdir) from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m xecjax.train", description="Train a direction regressor (xecjax.train)."
    )
    parser.add_argument(
        "--config", required=True, help="config file[:variant], e.g. configs/convnext.py:toy"
    )
    parser.add_argument(
        "--workdir", default=None, help="run directory (default runs/<name>_<time>)"
    )
    args, rest = parser.parse_known_args(argv)
    config = load_config(args.config)
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--config."):
            parser.error(
                f"unrecognised argument {arg!r} (overrides look like --config.optim.lr=8e-4)"
            )
        key, eq, value = arg[len("--config.") :].partition("=")
        if not eq:
            if i + 1 >= len(rest):
                parser.error(f"{arg}: missing value")
            value, i = rest[i + 1], i + 1
        try:
            apply_override(config, key, value)
        except (KeyError, ValueError) as e:
            parser.error(str(e.args[0]))
        i += 1
    if args.workdir is None:
        stem = Path(args.config.partition(":")[0]).stem
        args.workdir = (
            f"runs/{stem}_{config.get('variant', 'default')}_{time.strftime('%Y%m%d-%H%M%S')}"
        )
    return config, Path(args.workdir)
