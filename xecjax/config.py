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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from xecjax.tasks import task_config


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


def override_pairs(rest: list[str], error: Callable[[str], Any]) -> list[tuple[str, str]]:
    """(dotted key, value text) of `--config.key=value` / `--config.key value` arguments;
    anything else is passed to `error` (argparse's parser.error, which exits)."""
    pairs, i = [], 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--config."):
            error(f"unrecognised argument {arg!r} (overrides look like --config.optim.lr=8e-4)")
        key, eq, value = arg[len("--config.") :].partition("=")
        if not eq:
            if i + 1 >= len(rest):
                error(f"{arg}: missing value")
            value, i = rest[i + 1], i + 1
        pairs.append((key, value))
        i += 1
    return pairs


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
    for key, value in override_pairs(rest, parser.error):
        try:
            apply_override(config, key, value)
        except (KeyError, ValueError) as e:
            parser.error(str(e.args[0]))
    if args.workdir is None:
        stem = Path(args.config.partition(":")[0]).stem
        args.workdir = (
            f"runs/{stem}_{config.get('variant', 'default')}_{time.strftime('%Y%m%d-%H%M%S')}"
        )
    return config, Path(args.workdir)


# ----------------------------------------------------------------------------------------------
# The experiment sections every config file shares (data, norm, optim, train, tracking).
# ----------------------------------------------------------------------------------------------
VARIANTS = ("default", "toy", "smoke")
# Per variant: (toy events, toy files, batch size, epochs, peak lr).
SIZES = {
    "default": (20000, 4, 256, 60, 5e-4),
    "toy": (20000, 20, 32, 4, 2e-3),
    "smoke": (320, 1, 16, 2, 2e-3),
}


def experiment_config(
    config_file: str,
    variant: str | None,
    get_model_config: Callable[[str], ml_collections.ConfigDict],
    lr: dict[str, float] | None = None,
) -> ml_collections.ConfigDict:
    """Full config of a model family: its model section for `variant` plus the shared sections.

    `lr` overrides the peak learning rate per variant (e.g. {"smoke": 1e-2}).
    """
    variant = variant or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of {config_file}: {'|'.join(VARIANTS)}")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.model = get_model_config(variant)
    # Heads of the tasks beside the angle: set from config.tasks when training starts
    # (xecjax.tasks.configure_model), so that they travel with the model config.
    c.model.tasks = ()
    c.model.task_norm = ml_collections.ConfigDict()
    c.tasks = task_config()
    c.resume = ""  # "" = fresh (refuses a workdir with checkpoints) | auto | PATH
    # Resume refuses a config that differs from the checkpoint's in a key that changes the
    # model, the data, the batch plan or the schedule (xecjax.train.RESUME_SAFE lists those it
    # ignores). Comma-separated keys or sections allowed to differ anyway, e.g.
    # "train.epochs,optim.lr": the schedule then changes from the resumed step on.
    c.resume_override = ""
    # "regression" (the angle and the tasks beside it) | "mae" (masked-autoencoder
    # pretraining, configs/mae.py: its own model family and config.mae section, xecjax.mae) |
    # "inpainter" (dead-channel inpainting, configs/inpainter.py: the MAE's model family and
    # config.inpainter section, xecjax.inpainter)
    c.objective = "regression"
    # Fine-tuning: a pretraining (MAE) run's workdir whose best EMA encoder (backbone,
    # hex_encoder, pos_embed, fusion) initialises this run's encoder when it starts fresh (an
    # inpainter: and the decoders); strict about names and shapes (xecjax.finetune). "" =
    # random initialisation.
    c.init_from = ""
    c.init_freeze_epochs = 0  # with init_from: the encoder gets no updates for N epochs
    events, files, batch, epochs, peak_lr = SIZES[variant]
    lr = (lr or {}).get(variant, peak_lr)

    c.data = ml_collections.ConfigDict()
    # ROOT file(s), directory or glob; comma-separated list allowed. "" = the embedded toy data
    # set, generated once by xecjax.simulate into toy_dir/<vertex>_<events>ev_<files>f_seed<seed>.
    c.data.path = ""
    c.data.toy_dir = "data/toy"  # git-ignored cache folder of the toy data set
    c.data.toy_events = events
    c.data.toy_files = files
    c.data.toy_seed = 0
    c.data.toy_vertex = "point"  # point | slanted | flat (see xecjax.simulate)
    c.data.toy_energy_mev = (52.8, 52.8)  # gamma energy, uniform in [lo, hi] MeV
    # Explicit files (file specs as for path). Set: used as they are; a missing train or val is
    # the rest of path; a missing test is the rest of path when train and val are both set (else
    # none); test alone: the rest of path split into train and val. Without path, set both train
    # and val (a ValueError otherwise). They override val_fraction / test_fraction.
    c.data.train = ""  # explicit training files
    c.data.val = ""  # explicit validation files (choose `best`)
    c.data.test = ""  # explicit test files (reported by xecjax.evaluate, never seen in training)
    # Fractions held out (whole files when there are >= 3 files, >= 2 without test, else event
    # ranges at the end of every file): validation chooses `best`; test (0 = none) is for the
    # final evaluation only (xecjax.evaluate --split test, the default).
    # toy: 20 files of 1000 events -> 16 train, 2 val, 2 test
    c.data.val_fraction = 0.1 if variant == "toy" else 0.2
    c.data.test_fraction = 0.1 if variant == "toy" else 0.2
    c.data.split_seed = 0
    c.data.batch_size = batch  # global batch (events), split over all devices and processes
    c.data.chunk_size = 1000  # events read from ROOT at a time
    c.data.shuffle_buffer = 4 * 1000  # events mixed across files before batching
    c.data.reweight = "none"  # none | theta | phi | theta_phi (flatten the angle histogram)
    c.data.reweight_bins = 50
    c.data.fiducial = False  # keep only events in the fiducial volume (truth uvw)
    c.data.channel_dropout = 0.0  # probability of masking a sensor in training batches
    c.data.prefetch = 2  # batches prepared ahead of the device
    c.data.workers = 2  # reader threads (ROOT decompression + normalisation)

    c.norm = ml_collections.ConfigDict()
    c.norm.preset = "default"  # default | relative_npho (xecjax.data.Normaliser presets)
    # Overrides of single preset fields (None = the preset's value); DESIGN.md section 5.
    c.norm.npho_branch = None  # e.g. "relative_npho"
    c.norm.time_branch = None  # e.g. "relative_time"
    c.norm.npho_scheme = None  # log1p | sqrt | anscombe | linear
    c.norm.npho_scale = None  # s (photons)
    c.norm.npho_scale2 = None  # s2 (log1p only)
    c.norm.time_scale = None  # seconds
    c.norm.time_shift = None
    c.norm.npho_threshold = None  # photons; below it the time feature is the sentinel
    c.norm.sentinel_npho = None
    c.norm.sentinel_time = None

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = lr  # peak learning rate
    c.optim.weight_decay = 0.05  # AdamW, not applied to biases, norms, GRN, position embeddings
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.schedule = "warmup_cosine"  # warmup_cosine | onecycle | constant (per step)
    c.optim.warmup_epochs = 1.0 if variant == "default" else 0.5  # linear warmup (epochs)
    c.optim.final_lr_ratio = 0.01  # lr at the end of the cosine / onecycle, relative to lr
    c.optim.grad_clip = 1.0  # global gradient-norm clip; <= 0 disables
    # EMA of the parameters (validation, best, export); < 0 disables. Its averaging window,
    # 1 / (1 - decay) steps, must be short against the run: toy and smoke runs are short.
    c.optim.ema_decay = {"default": 0.999, "toy": 0.99, "smoke": 0.9}[variant]
    # smooth_l1 | l1 | mse | angular | opening_angle | gaussian_nll | vmf (xecjax.losses)
    c.optim.loss = "smooth_l1"
    c.optim.beta = 1.0  # smooth_l1 transition (degrees)
    # model.output = "point": weight of the conversion-point loss (smooth_l1 in cm on the
    # predicted u, v, w against xyzTruth; xecjax.losses.point_loss); 0 = angle loss only
    c.optim.point_weight = 0.0

    c.train = ml_collections.ConfigDict()
    c.train.epochs = epochs  # length of the schedule
    c.train.stop_after_epoch = 0  # end this process after N epochs (checkpointed); 0 = all
    c.train.eval_every = 1  # validate (EMA parameters) every N epochs and at the end
    c.train.log_every = 50  # steps between TensorBoard train-loss points
    c.train.checkpoint_every_steps = 0  # extra `last` checkpoints within an epoch; 0 = epoch ends
    c.train.bf16 = False  # bfloat16 compute, the one switch (parameters, optimiser, export f32)
    c.train.nan_policy = "stop"  # stop (keep the last good checkpoint) | skip (drop the batch)
    c.train.debug_nan_step = -1  # tests: make the loss NaN at this global step; -1 = off
    c.train.export_onnx = False  # export the best EMA model to <workdir>/model.onnx at the end
    c.train.seed = 0  # parameter init, dropout, data order
    c.train.progress = True  # tqdm progress bar

    c.tracking = ml_collections.ConfigDict()
    c.tracking.mlflow_uri = ""  # "" = sqlite:///mlruns.db in the working directory
    c.tracking.experiment = "gamma_angle"
    c.tracking.tensorboard = True  # <workdir>/tb
    return c
