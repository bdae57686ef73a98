"""XECRegressor: faces -> shared CNN / hex encoder -> tokens -> fusion transformer -> angles.

The reference architecture of DESIGN.md section 6, layer for layer (27,314,950 parameters in
the default finegrid configuration). Input: the normalised sensor array [B, 4760, 2]
(channel 0 npho feature, channel 1 time feature). Output: [B, 2] = (theta, phi) in degrees,
or [B, 4] = (theta, phi, log_sigma_theta, log_sigma_phi) with `model.uncertainty`.

Faces are gathered with the geometry image maps (constants, not state):
  inner 93 x 44; US, DS 24 x 6; outer, by `model.outer_mode`:
    "finegrid": coarse PMTs upsampled x(5, 3) with npho / 15, centre patch x(3, 2) with
      npho / 6 pasted in (45 x 72), average-pooled 3 x 3 -> 15 x 24; one token.
    "split": outer coarse 9 x 24 and centre patch 5 x 6 (z x phi) as two tokens.
  top, bottom: 73 hex nodes each.
Tokens: [inner, us, ds, outer | outer_coarse, outer_center, top, bottom].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from xecjax import geometry
from xecjax.models.convnext import FaceBackbone
from xecjax.models.hexnext import HexEncoder
from xecjax.models.layers import (
    LN_EPS_TORCH,
    TransformerEncoderLayer,
    dense,
    dropout,
    gelu,
    layer_norm,
    split_rng,
)

OUTER_MODES = ("finegrid", "split")


def compute_dtype(cfg: ml_collections.ConfigDict):
    """float32: the modules always compute in float32.

    bfloat16 compute has one switch, config.train.bf16 (training casts parameters and inputs);
    the model config, which travels into checkpoints and ONNX files, does not carry one. A
    config that still names another model.dtype is refused rather than silently ignored.
    """
    dtype = cfg.get("dtype", "float32")
    if dtype != "float32":
        raise ValueError(
            f"model.dtype = {dtype!r}: bfloat16 compute is set by config.train.bf16 only "
            "(the model itself computes in float32, for evaluation and ONNX export)"
        )
    return jnp.float32


def output_dim(cfg: ml_collections.ConfigDict) -> int:
    """2 (theta, phi) or 4 with the log-sigma outputs of model.uncertainty."""
    return 4 if cfg.get("uncertainty", False) else 2


def token_names(outer_mode: str) -> tuple[str, ...]:
    """Token order of the fusion transformer for an outer mode."""
    if outer_mode == "finegrid":
        return ("inner", "us", "ds", "outer", "top", "bottom")
    if outer_mode == "split":
        return ("inner", "us", "ds", "outer_coarse", "outer_center", "top", "bottom")
    raise ValueError(f"model.outer_mode must be one of {OUTER_MODES}, got {outer_mode!r}")


def gather_faces(x: jax.Array, outer_mode: str) -> dict[str, jax.Array]:
    """Sensor array [B, 4760, 2] -> face images [B, H, W, 2] and hex faces [B, 73, 2]."""
    faces = {
        "inner": x[:, geometry.INNER_MAP],
        "us": x[:, geometry.US_MAP],
        "ds": x[:, geometry.DS_MAP],
        "top": x[:, geometry.TOP_IDS],
        "bottom": x[:, geometry.BOTTOM_IDS],
    }
    if outer_mode == "finegrid":
        fine = x[:, geometry.OUTER_FINE_MAP]  # [B, 45, 72, 2]
        # npho shared out over the fine cells of a PMT; time copied unchanged
        scale = np.stack([geometry.OUTER_FINE_SCALE, np.ones_like(geometry.OUTER_FINE_SCALE)], -1)
        fine = fine * jnp.asarray(scale, x.dtype)
        pz, pp = geometry.OUTER_FINE_POOL
        b, h, w, c = fine.shape
        faces["outer"] = fine.reshape(b, h // pz, pz, w // pp, pp, c).mean(axis=(2, 4))
    elif outer_mode == "split":
        faces["outer_coarse"] = x[:, geometry.OUTER_COARSE_MAP]  # [B, 9, 24, 2]
        faces["outer_center"] = x[:, geometry.OUTER_CENTER_MAP.T]  # [B, 5, 6, 2] (z x phi)
    else:
        token_names(outer_mode)  # raises with the valid modes
    return faces


class XECRegressor(nnx.Module):
    """The reference regressor; every architectural option comes from the model config."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        dtype = compute_dtype(cfg)
        self.outer_mode = str(cfg.outer_mode)
        self.tokens = token_names(self.outer_mode)
        d = int(cfg.d_model)
        self.backbone = FaceBackbone(
            cfg.cnn_dims,
            cfg.cnn_depths,
            face_grid=cfg.face_grid,
            drop_path=float(cfg.drop_path),
            dwconv=str(cfg.dwconv),
            dtype=dtype,
            rngs=rngs,
        )
        if self.backbone.out_features != d:
            raise ValueError(
                f"model.cnn_dims[-1] * prod(model.face_grid) = {self.backbone.out_features} "
                f"must equal model.d_model = {d} (one CNN face is one token)"
            )
        self.hex_encoder = HexEncoder(
            int(cfg.hex_dim),
            int(cfg.hex_depth),
            d,
            drop_path=float(cfg.drop_path),
            dtype=dtype,
            rngs=rngs,
        )
        self.pos_embed = nnx.Param(
            nnx.initializers.truncated_normal(0.02)(rngs.params(), (len(self.tokens), d))
        )
        self.fusion = nnx.List(
            TransformerEncoderLayer(
                d,
                int(cfg.num_heads),
                int(cfg.ffn_dim),
                dropout=float(cfg.dropout),
                dtype=dtype,
                rngs=rngs,
            )
            for _ in range(int(cfg.num_layers))
        )
        self.head = RegressionHead.from_config(len(self.tokens) * d, cfg, dtype=dtype, rngs=rngs)
        self.dtype = dtype

    def __call__(
        self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        """x [B, 4760, 2] normalised -> [B, 2 | 4] float32 (degrees; log sigma in log-degrees)."""
        check_input(x)
        r_cnn, r_hex, r_fusion, r_head = split_rng(rng, 4)
        faces = gather_faces(x.astype(self.dtype), self.outer_mode)
        # One backbone / hex-encoder call per face. (Batch-concatenating equal-shape faces
        # exports with wrong symbolic batch sizes in jax2onnx 0.17 and ONNX Runtime rejects it.)
        names = [n for n in self.tokens if n not in ("top", "bottom")]
        feats = {
            n: self.backbone(faces[n], train=train, rng=key)
            for n, key in zip(names, split_rng(r_cnn, len(names)), strict=True)
        }
        for n, key in zip(("top", "bottom"), split_rng(r_hex, 2), strict=True):
            feats[n] = self.hex_encoder(faces[n], train=train, rng=key)
        tokens = jnp.stack([feats[n] for n in self.tokens], axis=1)
        tokens = tokens + self.pos_embed[...].astype(tokens.dtype)
        for layer, key in zip(self.fusion, split_rng(r_fusion, len(self.fusion)), strict=True):
            tokens = layer(tokens, train=train, rng=key)
        out = self.head(tokens.reshape(tokens.shape[0], -1), train=train, rng=r_head)
        return out.astype(jnp.float32)


def check_input(x: jax.Array) -> None:
    """Every model takes the normalised detector input [B, 4760, 2]; anything else is an error."""
    if x.ndim != 3 or x.shape[1:] != (geometry.N_SENSORS, 2):
        raise ValueError(f"model input must be [B, {geometry.N_SENSORS}, 2], got {x.shape}")


class RegressionHead(nnx.Module):
    """Dense hidden -> LN -> GELU -> Dropout -> Dense out (the reference head)."""

    def __init__(self, din: int, hidden: int, dout: int, *, dropout: float, dtype, rngs: nnx.Rngs):
        self.fc1 = dense(din, hidden, dtype, rngs)
        self.norm = layer_norm(hidden, LN_EPS_TORCH, dtype, rngs)
        self.fc2 = dense(hidden, dout, dtype, rngs)
        # Start at the centre of the acceptance rather than at (0, 0): the angles are regressed
        # in degrees (theta ~ 90), which a zero bias would take thousands of steps to reach.
        bias = np.zeros(dout, np.float32)
        bias[:2] = geometry.ACCEPTANCE_CENTER_DEG
        self.fc2.bias[...] = jnp.asarray(bias, self.fc2.bias[...].dtype)
        self.dropout = dropout

    @classmethod
    def from_config(
        cls, din: int, cfg: ml_collections.ConfigDict, *, dtype, rngs: nnx.Rngs
    ) -> RegressionHead:
        """The head every model family ends in: sizes from model.head_hidden / head_dropout."""
        return cls(
            din,
            int(cfg.head_hidden),
            output_dim(cfg),
            dropout=float(cfg.head_dropout),
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, *, train: bool, rng: jax.Array | None) -> jax.Array:
        h = gelu(self.norm(self.fc1(x)))
        return self.fc2(dropout(h, self.dropout, train=train, rng=rng))


def build(cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> XECRegressor:
    """Entry point used by xecjax.models.build_model for model.name == "regressor"."""
    return XECRegressor(cfg, rngs=rngs)
