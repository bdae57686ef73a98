"""Masked autoencoder (model.name = "mae"): the regressor's encoder plus light face decoders.

Pretraining (configs/mae.py, xecjax.mae): a random share of each event's valid sensors is set to
the Normaliser's sentinels (as dead channels are), the encoder of the XECRegressor encodes the
masked event, and one light decoder per fusion token reconstructs the normalised (npho, time)
features of every sensor. The loss counts the masked sensors only (xecjax.mae).

Encoder: XECMAE subclasses XECRegressor and keeps its encoder as it is, under the same
parameter names (backbone, hex_encoder, pos_embed, fusion): a regression run copies exactly
those leaves from an MAE checkpoint (config.init_from, xecjax.finetune). The regressor's head
is not part of the MAE (dropped after construction; it never gets trained or saved).

Decoders (model.decoder_dim = D), one per token:
  rectangular faces (inner 93 x 44, US / DS 24 x 6, outer): the token, a [C, gh, gw] map
    (C = cnn_dims[-1], gh x gw = model.face_grid, the CNN's channel-major flatten), is projected
    to D channels per pixel, then doubled per axis by transposed convolutions with kernel =
    stride 2 (a learned sub-pixel upsampling, the inverse of the encoder's patch conv) while
    the map stays within the face size, resized to the face size by the fixed half-pixel
    bilinear matrices of the encoder (einsum, no jax.image), and mapped to 2 channels per pixel
    (LN -> Dense D -> 2).
  outer face, "finegrid": decoded to the full 45 x 72 fine grid (not the 15 x 24 pooled grid the
    encoder reads: the centre-patch PMTs, 3 x 2 fine cells each, would otherwise share pooled
    cells with their neighbours); each outer PMT's value is the mean of its fine cells (15 for
    a coarse PMT, 6 for a centre-patch PMT). The values are sensor features, not the npho / 15
    shares of the encoder's fine grid.
  outer face, "split": the coarse 9 x 24 and centre 5 x 6 images; the 12 coarse PMTs under the
    centre patch appear in both and get the mean of the two.
  hex faces (top, bottom, 73 PMTs each): Dense d_model -> D broadcast to the nodes plus a
    learned node embedding, LN, model.decoder_hex_depth HexNeXt blocks over the hexagonal
    neighbour table, LN -> Dense D -> 2.
Output: the reconstruction [B, 4760, 2] float32 in sensor order (npho feature, time feature),
assembled from the face cells by gathers only (no scatter).

Residual decoding (model.decoder_residual; "none" by default: the MAE as above, its checkpoints
unchanged): with "neighbours" the reconstruction of each sensor is
    neighbour average of the input (feature space, per channel) + the decoders' output
i.e. the decoders learn a correction to the conventional estimate. The average is taken over
the sensor's face neighbours (geometry.face_neighbors) that are observed in the model's input x:
npho feature != model.sentinel_npho (masked and dead sensors are sentinels there); the time
over those whose time feature != model.sentinel_time too. Where no neighbour is usable, the
mean over the observed (timed) sensors of the same face, or 0 where the face has none. The
sentinels must be the Normaliser's (default -1, -1; xecjax.train checks). Every decoder's final
per-cell layer reads, besides its LN'd features, the context of the cell's sensor (N_CONTEXT
channels: the two averages, the share of its neighbours observed and timed), and starts at zero
(kernel and bias), so an untrained model gives exactly the neighbour average. Gathers, sums and
matrix products of x only: no extra input, ONNX-exportable. These final layers have other
shapes than the MAE's ("none"): an inpainter with this option takes only the encoder from an
MAE run (configs/inpainter.py: inpainter.init_decoders = False; xecjax.finetune refuses
decoders of a checkpoint with another decoder_residual).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from xecjax import geometry
from xecjax.models.layers import (
    LN_EPS_TORCH,
    WEIGHT_INIT,
    HexNeXtBlock,
    dense,
    gelu,
    layer_norm,
    resize_bilinear,
)
from xecjax.models.regressor import XECRegressor, token_names


def face_cells(outer_mode: str) -> dict[str, np.ndarray]:
    """Sensor id of every decoder output cell, per token: images [H, W] for the rectangular
    faces (the layouts of gather_faces; the outer face in "finegrid" mode at full fine-grid
    resolution 45 x 72), [73] for the hex faces."""
    cells = {
        "inner": geometry.INNER_MAP,
        "us": geometry.US_MAP,
        "ds": geometry.DS_MAP,
        "top": geometry.TOP_IDS,
        "bottom": geometry.BOTTOM_IDS,
    }
    if outer_mode == "finegrid":
        cells["outer"] = geometry.OUTER_FINE_MAP
    elif outer_mode == "split":
        cells["outer_coarse"] = geometry.OUTER_COARSE_MAP
        cells["outer_center"] = geometry.OUTER_CENTER_MAP.T
    else:
        token_names(outer_mode)  # raises with the valid modes
    return cells


@functools.cache
def assembly(outer_mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gather tables from the decoders' cells (concatenated in token order, each face raveled)
    to the 4760 sensors: (single [n1] the cell of each sensor covered by one cell, multi
    [n2, K] the cells of each sensor covered by several (padded), weight [n2, K] 1 / count or
    0 on padding, order [4760] the position of each sensor in [single | multi]). Every sensor
    is covered (a ValueError otherwise). NumPy constants, not module state."""
    cells = face_cells(outer_mode)
    ids = np.concatenate([cells[n].ravel() for n in token_names(outer_mode)])
    count = np.bincount(ids, minlength=geometry.N_SENSORS)
    if (count == 0).any():
        raise ValueError(f"MAE decoders ({outer_mode}): sensors {np.flatnonzero(count == 0)} "
                         "are in no face")  # fmt: skip
    by_sensor = np.argsort(ids, kind="stable")  # cells grouped by sensor id
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    one, many = np.flatnonzero(count == 1), np.flatnonzero(count > 1)
    single = by_sensor[start[one]]
    k = int(count.max())
    multi = np.zeros((len(many), k), np.int64)
    weight = np.zeros((len(many), k), np.float32)
    for row, s in enumerate(many):
        multi[row, : count[s]] = by_sensor[start[s] : start[s] + count[s]]
        multi[row, count[s] :] = multi[row, 0]
        weight[row, : count[s]] = 1.0 / count[s]
    order = np.empty(geometry.N_SENSORS, np.int64)
    order[np.concatenate([one, many])] = np.arange(geometry.N_SENSORS)
    return single, multi, weight, order


def cells_to_sensors(cells: jax.Array, outer_mode: str) -> jax.Array:
    """Decoder cells [B, n_cells, C] (token order, faces raveled) -> [B, 4760, C]: a sensor
    covered by several cells gets their mean."""
    single, multi, weight, order = assembly(outer_mode)
    parts = [cells[:, single]]
    if len(multi):
        w = jnp.asarray(weight, cells.dtype)[None, :, :, None]
        parts.append((cells[:, multi] * w).sum(axis=2))
    return jnp.concatenate(parts, axis=1)[:, order]


DECODER_RESIDUALS = ("none", "neighbours")
# context channels of each cell with decoder_residual = "neighbours" (neighbour_context)
N_CONTEXT = 4


@functools.cache
def neighbour_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [4760, 8] int32 face neighbours, weight [4760, 8] float32 1 or 0 on padding,
    face [4760, 6] float32 one-hot of each sensor's face). NumPy constants."""
    ids, mask = geometry.face_neighbors()
    face = np.eye(len(geometry.FACE_NAMES), dtype=np.float32)[geometry.FACE_OF]
    return np.asarray(ids), mask.astype(np.float32), face


def neighbour_context(x: jax.Array, sentinel_npho: float, sentinel_time: float) -> jax.Array:
    """[B, 4760, N_CONTEXT] float32 of the model input x [B, 4760, 2] (masked and dead sensors
    at the sentinels): (mean npho feature of the observed face neighbours, mean time feature
    of the timed ones, share of the neighbours observed, share timed). A sensor without an
    observed (timed) neighbour gets the mean of the observed (timed) sensors of its face, 0
    where there are none. Gathers, sums and matrix products only (no scatter)."""
    ids, weight, face = neighbour_tables()
    x = x.astype(jnp.float32)
    observed = x[..., 0] != jnp.float32(sentinel_npho)
    timed = observed & (x[..., 1] != jnp.float32(sentinel_time))
    face = jnp.asarray(face)
    deg = jnp.asarray(weight.sum(-1))
    out, shares = [], []
    for ch, use in ((0, observed), (1, timed)):
        v = jnp.where(use, x[..., ch], 0.0)  # [B, N]
        u = use.astype(jnp.float32)
        w = u[:, ids] * jnp.asarray(weight)  # [B, N, 8]
        total, count = (v[:, ids] * w).sum(-1), w.sum(-1)
        # per-face sums [B, 6] (full float32, not TF32), gathered back to the sensors
        face_total, face_count = (jnp.matmul(a, face, precision=jax.lax.Precision.HIGHEST)
                                  for a in (v, u))  # fmt: skip
        face_mean = (face_total / jnp.maximum(face_count, 1.0))[:, geometry.FACE_OF]
        out.append(jnp.where(count > 0, total / jnp.maximum(count, 1.0), face_mean))
        shares.append(count / deg)
    return jnp.stack(out + shares, axis=-1)


def upsample_plan(grid: tuple[int, int], size: tuple[int, int]) -> list[tuple[int, int]]:
    """Strides (1 or 2 per axis) of the transposed convolutions from the token map `grid` to a
    face of `size`: an axis doubles while the doubled map still fits the face."""
    n = [max(0, int(np.floor(np.log2(s / g)))) for g, s in zip(grid, size, strict=True)]
    return [(2 if i < n[0] else 1, 2 if i < n[1] else 1) for i in range(max(n))]


def output_layer(dim: int, context: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """The final per-cell layer Dense(dim [+ context] -> 2); zero (kernel and bias) with a
    context (decoder_residual: the decoders' output is a correction, none at the start)."""
    if context:
        return dense(dim + context, 2, dtype, rngs, init=nnx.initializers.zeros_init())
    return dense(dim, 2, dtype, rngs)


def with_context(x: jax.Array, context: jax.Array | None) -> jax.Array:
    return x if context is None else jnp.concatenate([x, context.astype(x.dtype)], axis=-1)


class FaceDecoder(nnx.Module):
    """Token [B, C * gh * gw] (channel-major [C, gh, gw]) -> face image [B, H, W, 2]."""

    def __init__(
        self, channels: int, grid, size, dim: int, *, context: int = 0, dtype, rngs: nnx.Rngs
    ):
        self.grid = (int(grid[0]), int(grid[1]))
        self.size = (int(size[0]), int(size[1]))
        self.channels = int(channels)
        self.proj = dense(channels, dim, dtype, rngs)
        self.strides = tuple(upsample_plan(self.grid, self.size))
        self.up_kernels = nnx.List(
            nnx.Param(WEIGHT_INIT(rngs.params(), (sh, sw, dim, dim), jnp.float32))
            for sh, sw in self.strides
        )
        self.up_biases = nnx.List(nnx.Param(jnp.zeros((dim,), jnp.float32)) for _ in self.strides)
        self.up_norms = nnx.List(layer_norm(dim, LN_EPS_TORCH, dtype, rngs) for _ in self.strides)
        self.out_norm = layer_norm(dim, LN_EPS_TORCH, dtype, rngs)
        self.out = output_layer(dim, context, dtype, rngs)

    def __call__(self, token: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """context: [B, H, W, N_CONTEXT] of the cells' sensors (decoder_residual) or None."""
        b = token.shape[0]
        gh, gw = self.grid
        x = token.reshape(b, self.channels, gh, gw).transpose(0, 2, 3, 1)
        x = gelu(self.proj(x))
        for kernel, bias, norm in zip(self.up_kernels, self.up_biases, self.up_norms,
                                      strict=True):  # fmt: skip
            k = kernel[...].astype(x.dtype)
            sh, sw = k.shape[:2]
            # transposed conv, kernel = stride: every input pixel -> its own sh x sw block
            y = jnp.einsum("bhwc,ijcd->bhiwjd", x, k)
            _, h, _, w, _, d = y.shape
            x = y.reshape(b, h * sh, w * sw, d) + bias[...].astype(x.dtype)
            x = gelu(norm(x))
        x = resize_bilinear(x, self.size)
        return self.out(with_context(self.out_norm(x), context))


class HexDecoder(nnx.Module):
    """Token [B, d_model] -> hex face [B, 73, 2] (geometry.TOP_IDS / BOTTOM_IDS order)."""

    def __init__(
        self, d_model: int, dim: int, depth: int, *, context: int = 0, dtype, rngs: nnx.Rngs
    ):
        self.proj = dense(d_model, dim, dtype, rngs)
        self.node_embed = nnx.Param(WEIGHT_INIT(rngs.params(), (geometry.N_HEX, dim), jnp.float32))
        self.norm = layer_norm(dim, LN_EPS_TORCH, dtype, rngs)
        self.blocks = nnx.List(
            HexNeXtBlock(dim, drop_path=0.0, dtype=dtype, rngs=rngs) for _ in range(depth)
        )
        self.out_norm = layer_norm(dim, LN_EPS_TORCH, dtype, rngs)
        self.out = output_layer(dim, context, dtype, rngs)

    def __call__(self, token: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """context: [B, 73, N_CONTEXT] of the nodes' sensors (decoder_residual) or None."""
        x = self.proj(token)[:, None, :] + self.node_embed[...].astype(token.dtype)
        x = self.norm(x)
        for block in self.blocks:
            x = block(x, geometry.HEX_NEIGHBORS, geometry.HEX_NEIGHBOR_MASK, train=False, rng=None)
        return self.out(with_context(self.out_norm(x), context))


class XECMAE(XECRegressor):
    """The XECRegressor's encoder (same parameter names) + per-token decoders.

    Called as model(x [B, 4760, 2] normalised and already masked, train=..., rng=...) ->
    reconstruction [B, 4760, 2] float32 (npho feature, time feature) of every sensor.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype=jnp.float32):
        if cfg.get("vertex_input", False):
            raise ValueError("model.name = 'mae': no vertex input (the MAE reads npho and time)")
        if tuple(cfg.get("tasks", ())):
            raise ValueError(f"model.name = 'mae': no task heads, got model.tasks {cfg.tasks}")
        super().__init__(cfg, rngs=rngs, dtype=dtype)
        # the regressor's heads are no part of the MAE (built above, dropped here: never saved)
        self.head = None
        self.tasks = None
        self.residual = str(cfg.get("decoder_residual", "none"))
        if self.residual not in DECODER_RESIDUALS:
            raise ValueError(f"model.decoder_residual must be one of {DECODER_RESIDUALS}, got "
                             f"{self.residual!r}")  # fmt: skip
        self.sentinels = (float(cfg.get("sentinel_npho", -1.0)),
                          float(cfg.get("sentinel_time", -1.0)))  # fmt: skip
        ctx = N_CONTEXT if self.residual == "neighbours" else 0
        dim = int(cfg.decoder_dim)
        channels = int(cfg.cnn_dims[-1])
        cells = face_cells(self.outer_mode)
        for name in self.tokens:
            if name in ("top", "bottom"):
                dec = HexDecoder(int(cfg.d_model), dim, int(cfg.decoder_hex_depth),
                                 context=ctx, dtype=dtype, rngs=rngs)  # fmt: skip
            else:
                dec = FaceDecoder(channels, cfg.face_grid, cells[name].shape, dim,
                                  context=ctx, dtype=dtype, rngs=rngs)  # fmt: skip
            setattr(self, f"decoder_{name}", dec)

    def __call__(
        self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        """x [B, 4760, 2] (masked sensors at the sentinels) -> [B, 4760, 2] float32."""
        tokens, _, _ = self.encode(x, train=train, rng=rng)
        b = x.shape[0]
        context = None
        if self.residual == "neighbours":
            context = neighbour_context(x, *self.sentinels)
            ids = face_cells(self.outer_mode)
        cells = []
        for i, name in enumerate(self.tokens):
            ctx = None if context is None else context[:, ids[name]]  # the cells' sensors
            out = getattr(self, f"decoder_{name}")(tokens[:, i], ctx)
            cells.append(out.astype(jnp.float32).reshape(b, -1, 2))
        out = cells_to_sensors(jnp.concatenate(cells, axis=1), self.outer_mode)
        return out if context is None else out + context[..., :2]


ENCODER_PARTS = ("backbone", "hex_encoder", "pos_embed", "fusion")


def build(cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype=jnp.float32) -> XECMAE:
    """Entry point used by xecjax.models.build_model for model.name == "mae"."""
    return XECMAE(cfg, rngs=rngs, dtype=dtype)
