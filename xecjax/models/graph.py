"""Sensor-graph model: all 4760 sensors as nodes, fixed-degree neighbour gathers.

Node features: the two input channels (npho, time features) + sensor position / pos_scale
(cm / cm) + unit normal, from xecjax.geometry. Edges: the k nearest sensors on the same face
(geometry.sensor_neighbors(k), constant [4760, k]). Each block mixes neighbours with learned
multi-head gates on (destination, source, relative position) and then applies the ConvNeXt V2
channel MLP (LN -> Dense 4d -> GELU -> GRN -> Dense d, residual with drop path). The nodes are
pooled (mean or attention) and passed to the regressor's MLP head -> [B, 2 | 4].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from xecjax import geometry
from xecjax.models.layers import (
    GRN,
    LN_EPS_TORCH,
    dense,
    drop_path,
    gelu,
    layer_norm,
    split_rng,
)
from xecjax.models.regressor import (
    RegressionHead,
    check_input,
    check_vertex,
    compute_dtype,
    direction_output,
    output_kind,
    task_heads,
    with_tasks,
)

POOLINGS = ("mean", "attention")


def node_geometry(pos_scale: float) -> np.ndarray:
    """Constant node features [4760, 6]: position / pos_scale and the unit normal."""
    return np.concatenate([geometry.POSITIONS / pos_scale, geometry.NORMALS], -1).astype(np.float32)


def relative_positions(k: int, pos_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour table [4760, k] and (source - destination) positions / pos_scale [4760, k, 3]."""
    nb = geometry.sensor_neighbors(k)
    rel = (geometry.POSITIONS[nb] - geometry.POSITIONS[:, None, :]) / pos_scale
    return nb, rel.astype(np.float32)


class GraphBlock(nnx.Module):
    """Gated neighbour mixing (heads gates per edge) + ConvNeXt V2 channel MLP, x [B, N, C]."""

    def __init__(self, dim: int, heads: int, *, drop_path: float, dtype, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"model.dim={dim} is not divisible by model.heads={heads}")
        self.gate = dense(2 * dim + 3, heads, dtype, rngs)  # on [x_dst, x_src, rel_pos]
        self.norm = layer_norm(dim, LN_EPS_TORCH, dtype, rngs)
        self.pw1 = dense(dim, 4 * dim, dtype, rngs)
        self.grn = GRN(4 * dim)
        self.pw2 = dense(4 * dim, dim, dtype, rngs)
        self.heads = heads
        self.drop_path = drop_path

    def mix(self, x: jax.Array, nb: np.ndarray, rel: np.ndarray) -> jax.Array:
        b, n, c = x.shape
        k = nb.shape[1]
        w = self.gate.kernel[...].astype(x.dtype)  # [2C + 3, H]
        # Dense([x_i, x_j, r_ij]) split into per-node and per-edge terms: no [B, N, K, 2C+3].
        logit = (
            (x @ w[:c])[:, :, None, :]
            + (x @ w[c : 2 * c])[:, nb]
            + jnp.asarray(rel, x.dtype) @ w[2 * c :]
            + self.gate.bias[...].astype(x.dtype)
        )  # [B, N, K, H]
        gate = jax.nn.sigmoid(logit) / k  # mean over the k neighbours keeps the scale of x
        src = x[:, nb].reshape(b, n, k, self.heads, c // self.heads)
        return x + jnp.einsum("bnkh,bnkhc->bnhc", gate, src).reshape(b, n, c)

    def __call__(
        self, x: jax.Array, nb: np.ndarray, rel: np.ndarray, *, train: bool, rng: jax.Array | None
    ) -> jax.Array:
        y = self.pw2(self.grn(gelu(self.pw1(self.norm(self.mix(x, nb, rel))))))
        return x + drop_path(y, self.drop_path, train=train, rng=rng)


class SensorGraphModel(nnx.Module):
    """Graph network over the 4760 sensors; every option from the model config."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype=jnp.float32):
        dtype = compute_dtype(cfg, dtype)
        dim, depth = int(cfg.dim), int(cfg.depth)
        if cfg.pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {POOLINGS}, got {cfg.pooling!r}")
        self.k = int(cfg.k)
        self.pos_scale = float(cfg.pos_scale)
        self.pooling = str(cfg.pooling)
        self.embed = dense(2 + 6, dim, dtype, rngs)
        self.embed_norm = layer_norm(dim, LN_EPS_TORCH, dtype, rngs)
        rates = np.linspace(0.0, float(cfg.drop_path), max(depth, 1)).tolist()
        self.blocks = nnx.List(
            GraphBlock(dim, int(cfg.heads), drop_path=rates[i], dtype=dtype, rngs=rngs)
            for i in range(depth)
        )
        self.out_norm = layer_norm(dim, LN_EPS_TORCH, dtype, rngs)
        self.pool_score = dense(dim, 1, dtype, rngs) if self.pooling == "attention" else None
        self.output = output_kind(cfg)
        if self.output == "point":
            raise ValueError("model.output = 'point' is a regressor option (inner-face CNN map)")
        if cfg.get("vertex_input", False):
            raise ValueError("model.vertex_input (a vertex token) is a regressor option")
        self.head = RegressionHead.from_config(dim, cfg, dtype=dtype, rngs=rngs)
        self.tasks = task_heads(dim, cfg, dtype=dtype, rngs=rngs)
        self.dtype = dtype

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        rng: jax.Array | None = None,
        tasks: bool = False,
        vertex: jax.Array | None = None,
    ) -> jax.Array:
        """x [B, 4760, 2] normalised -> [B, 2 | 4] float32 (theta, phi in degrees, ...)."""
        check_input(x)
        check_vertex(vertex, False, x.shape[0])
        r_blocks, r_head = split_rng(rng, 2)
        x = x.astype(self.dtype)
        geo = jnp.broadcast_to(
            jnp.asarray(node_geometry(self.pos_scale), self.dtype), (x.shape[0], x.shape[1], 6)
        )
        h = gelu(self.embed_norm(self.embed(jnp.concatenate([x, geo], -1))))
        nb, rel = relative_positions(self.k, self.pos_scale)
        for block, key in zip(self.blocks, split_rng(r_blocks, len(self.blocks)), strict=True):
            h = block(h, nb, rel, train=train, rng=key)
        h = self.out_norm(h)
        if self.pool_score is None:
            pooled = h.mean(axis=1)
        else:
            score = self.pool_score(h)[..., 0].astype(jnp.float32)  # [B, N]
            attn = jax.nn.softmax(score, axis=-1).astype(h.dtype)
            pooled = jnp.einsum("bn,bnc->bc", attn, h)
        out = self.head(pooled, train=train, rng=r_head).astype(jnp.float32)
        # tasks=True: also the heads of the tasks beside the angle (xecjax.tasks)
        return with_tasks(direction_output(out, self.output), self.tasks, pooled, train, r_head,
                          tasks)  # fmt: skip


def build(cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype=jnp.float32) -> SensorGraphModel:
    """Entry point used by xecjax.models.build_model for model.name == "graph"."""
    return SensorGraphModel(cfg, rngs=rngs, dtype=dtype)
