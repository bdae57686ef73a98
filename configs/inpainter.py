"""Dead-channel inpainting (config.objective = "inpainter"; xecjax.inpainter).

The model of configs/mae.py (the XECRegressor's encoder and the MAE's light face decoders,
model.name = "mae", the same variants) with model.decoder_residual = "neighbours": each
sensor's reconstruction is the average of its observed face neighbours (feature space) plus
the decoders' learned correction, zero at the start (xecjax.models.mae). Started from an MAE
run's best EMA encoder (init_from; strict about names and shapes); the decoders start fresh
(inpainter.init_decoders = False: the MAE's decoders reconstruct, they do not correct; with
--config.model.decoder_residual=none and init_decoders=true the MAE's decoders are copied too),
trained on a small share of each event's valid sensors set to the dead-channel sentinels:
config.inpainter.mask_ratio, default 0.05. The
file's real dead channels (the 1e10 marker) are sentinels in the input already: they stay
missing, are never masked and never scored (they have no truth), so the loss covers only the
artificially masked valid sensors. The completed array is the input where a sensor was observed
and the reconstruction where it was masked or dead (xecjax.inpainter.complete).
  python -m xecjax.train --config configs/mae.py:smoke --workdir runs/mae_smoke
  python -m xecjax.train --config configs/inpainter.py:smoke --workdir runs/inp_smoke \
      --config.init_from=runs/mae_smoke [--config.inpainter.freeze_encoder=true]
  python -m xecjax.evaluate --workdir runs/inp_smoke        # sensor tree, baselines, plots
  python tools/export_onnx.py runs/inp_smoke --output inp.onnx   # input + mask -> completed
Variants: default (reference size, GPU), `:toy` (CPU), `:smoke` (tests, seconds); use the MAE
of the same variant. Without init_from the inpainter trains from a random initialisation.
`best` is the epoch with the smallest validation total loss (val_total_loss, on fixed masks
per event). Metrics as the MAE's (xecjax.mae): val_loss_{npho,time}[_<face>], val_rmse_*.
Options: `--config.inpainter.mask_ratio=0.1`, `--config.inpainter.freeze_encoder=true`,
`--config.model.decoder_residual=none --config.inpainter.init_decoders=true` (the MAE's
decoders, no neighbour average),
`--config.init_freeze_epochs=1` (frozen for the first epoch only), and the MAE's loss options
(`--config.inpainter.loss=l1`, `npho_weight`, `channel_weights`).
"""

from pathlib import Path

from xecjax.config import load_config


def get_config(arg: str | None = None):
    # the MAE's model (the same variant: init_from loads it) and loss
    c = load_config(f"{Path(__file__).with_name('mae.py')}:{arg or ''}")
    c.objective = "inpainter"
    c.inpainter = c.mae  # the masking and loss settings (xecjax.mae.settings), then:
    del c["mae"]
    i = c.inpainter
    i.mask_ratio = 0.05  # share of each event's valid sensors masked (exactly, rounded)
    # the encoder gets no update for the whole run (needs init_from); init_freeze_epochs=N
    # freezes it for the first N epochs only
    i.freeze_encoder = False
    c.model.decoder_residual = "neighbours"  # decoders correct the neighbour average
    # with init_from: the MAE's decoders too, not only its encoder (only with a checkpoint of
    # the same decoder_residual: an MAE's decoders ("none") do not fit "neighbours")
    i.init_decoders = False
    return c
