"""The hex-face encoder of the XECRegressor, shared by the top and bottom PMT faces.

Dense 2 -> d + LN + GELU -> depth HexNeXt blocks (gated neighbour mixing over the hexagonal
neighbour table of xecjax.geometry) -> mean over the 73 nodes -> LN -> Dense d_model.
The neighbour table and its mask are NumPy constants read from geometry at call time; they are
never model state.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from xecjax import geometry
from xecjax.models.layers import (
    LN_EPS_TORCH,
    HexNeXtBlock,
    dense,
    gelu,
    layer_norm,
    split_rng,
)


class HexEncoder(nnx.Module):
    """Hex face [B, 73, 2] -> token [B, out_dim]."""

    def __init__(
        self,
        dim: int,
        depth: int,
        out_dim: int,
        *,
        drop_path: float,
        dtype,
        rngs: nnx.Rngs,
        in_channels: int = 2,
    ):
        self.embed = dense(in_channels, dim, dtype, rngs)
        self.embed_norm = layer_norm(dim, LN_EPS_TORCH, dtype, rngs)
        rates = np.linspace(0.0, drop_path, max(depth, 1)).tolist()
        self.blocks = nnx.List(
            HexNeXtBlock(dim, drop_path=rates[i], dtype=dtype, rngs=rngs) for i in range(depth)
        )
        self.out_norm = layer_norm(dim, LN_EPS_TORCH, dtype, rngs)
        self.out = dense(dim, out_dim, dtype, rngs)

    def __call__(self, x: jax.Array, *, train: bool, rng: jax.Array | None) -> jax.Array:
        """x [B, 73, 2] in geometry.TOP_IDS / BOTTOM_IDS order -> [B, out_dim]."""
        if x.shape[1] != geometry.N_HEX:
            raise ValueError(f"hex encoder expects {geometry.N_HEX} nodes, got {x.shape}")
        keys = split_rng(rng, len(self.blocks))
        x = gelu(self.embed_norm(self.embed(x)))
        for block, key in zip(self.blocks, keys, strict=True):
            x = block(x, geometry.HEX_NEIGHBORS, geometry.HEX_NEIGHBOR_MASK, train=train, rng=key)
        return self.out(self.out_norm(x.mean(axis=1)))
