"""Masked-autoencoder pretraining of the XECRegressor's encoder (xecjax.mae).

The encoder of configs/convnext.py (the same variants, the same encoder options) plus light face
decoders (xecjax.models.mae); a share config.mae.mask_ratio of each event's valid sensors is
set to the dead-channel sentinels and reconstructed. Reads only npho, time, run and event, so
unlabelled (or real) files work: `--config.data.path=...`.
  python -m xecjax.train --config configs/mae.py:smoke --workdir runs/mae_smoke
Variants: default (reference size, GPU), `:toy` (CPU), `:smoke` (tests, seconds).
Fine-tune a regressor of the same variant from it (only the encoder is copied; strict about
names and shapes; optionally frozen for the first epochs):
  python -m xecjax.train --config configs/convnext.py:toy --workdir runs/ft \
      --config.init_from=runs/mae_toy [--config.init_freeze_epochs=1]
`best` is the epoch with the smallest validation total loss (val_total_loss). Options:
`--config.mae.mask_ratio=0.5`, `--config.mae.npho_weight=npho`, `--config.mae.loss=mse`.
"""

from pathlib import Path

import ml_collections

from xecjax.config import load_config


def get_config(arg: str | None = None):
    c = load_config(f"{Path(__file__).with_name('convnext.py')}:{arg or ''}")
    c.objective = "mae"
    m = c.model
    m.name = "mae"
    # the encoder options stay those of convnext.py's variant (a fine-tuning run of that variant
    # loads them); the regressor's head is not part of the MAE
    m.output, m.kappa, m.uncertainty = "angles", False, False
    # decoder width (channels per pixel / hex node; small, so that the encoder has to learn)
    # and the HexNeXt blocks of the top / bottom decoders
    m.decoder_dim = {"default": 128, "toy": 32, "smoke": 8}[c.variant]
    m.decoder_hex_depth = {"default": 2, "toy": 1, "smoke": 1}[c.variant]
    # "none": the decoders reconstruct every sensor; "neighbours": they correct the average of
    # its observed face neighbours (xecjax.models.mae; the inpainter's default). The model
    # tells observed sensors by the Normaliser's sentinels, repeated here (checked in training)
    m.decoder_residual = "none"
    m.sentinel_npho, m.sentinel_time = -1.0, -1.0
    c.optim.loss, c.optim.point_weight = "smooth_l1", 0.0  # unused: the MAE loss is config.mae

    c.mae = ml_collections.ConfigDict()
    c.mae.mask_ratio = 0.65  # share of each event's valid sensors masked (exactly, rounded)
    c.mae.loss = "smooth_l1"  # smooth_l1 | l1 | mse, on the normalised features
    c.mae.beta = 1.0  # smooth_l1 transition (feature units)
    # "none": every masked sensor counts once; "npho": weighted by its true npho feature
    # (clipped at 0) + npho_weight_floor, so bright sensors count most
    c.mae.npho_weight = "none"
    c.mae.npho_weight_floor = 0.1  # feature units (log1p default: ~500 photons)
    c.mae.channel_weights = (1.0, 1.0)  # (npho, time) in the total loss
    return c
