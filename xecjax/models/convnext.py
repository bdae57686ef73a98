"""The face CNN of the XECRegressor: one ConvNeXt V2 backbone shared by all rectangular faces.

Reference layout (widths/depths from the config): stem Conv(2 -> d0, k4, s1, pad 1) + LN;
depths[0] blocks(d0); for every further stage: LN + Conv(d_prev -> d, k2, s2) and depths[s]
blocks(d); bilinear resize to `face_grid` (4 x 4); flatten channel-major (PyTorch order) to
d_last * 16 features. No layer scale, no final norm (as the reference).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xecjax.models.layers import (
    LN_EPS_CONVNEXT,
    WEIGHT_INIT,
    ConvNeXtBlock,
    layer_norm,
    resize_bilinear,
    split_rng,
)


def _patch_conv(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, *, onnx: bool = False
) -> jax.Array:
    """Conv with kernel size = stride = 2 ('VALID', odd edges dropped as in PyTorch).

    Space-to-depth + one matmul: the same result as lax.conv with kernel [2, 2, Cin, Cout],
    but a plain GEMM on CPU and trivially exportable. onnx: as transpose + one MatMul
    [B, P, 4 Cin] @ [1, 4 Cin, Cout], since onnxruntime runs the einsum's Einsum node ~4x
    slower (0.78 ms at batch 1 on the inner face, the largest single node of its CNN).
    """
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, c)
    if onnx:
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h2 * w2, 4 * c)
        # [1, 4 Cin, Cout], a broadcast batch: jax2onnx exports [B, P, K] @ [K, N] as Einsum
        y = jnp.matmul(x, kernel.reshape(1, 4 * c, -1))
        return y.reshape(b, h2, w2, -1) + bias
    return jnp.einsum("bhiwjc,ijcd->bhwd", x, kernel) + bias


class FaceBackbone(nnx.Module):
    """ConvNeXt V2 CNN: image [B, H, W, 2] -> features [B, dims[-1] * prod(face_grid)]."""

    def __init__(
        self,
        dims: Sequence[int],
        depths: Sequence[int],
        *,
        face_grid: Sequence[int],
        drop_path: float,
        dwconv: str,
        dtype,
        rngs: nnx.Rngs,
        in_channels: int = 2,
    ):
        dims, depths = [int(d) for d in dims], [int(d) for d in depths]
        if len(dims) != len(depths) or not dims:
            raise ValueError(f"model.cnn_dims {dims} and model.cnn_depths {depths} must match")
        self.stem = nnx.Conv(
            in_channels,
            dims[0],
            (4, 4),
            padding=((1, 1), (1, 1)),
            dtype=dtype,
            kernel_init=WEIGHT_INIT,
            rngs=rngs,
        )
        self.stem_norm = layer_norm(dims[0], LN_EPS_CONVNEXT, dtype, rngs)
        # Stochastic depth grows linearly over all blocks (ConvNeXt convention).
        rates = np.linspace(0.0, drop_path, sum(depths)).tolist()
        down_norms, down_kernels, down_biases, stages = [], [], [], []
        for s, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            if s > 0:
                down_norms.append(layer_norm(dims[s - 1], LN_EPS_CONVNEXT, dtype, rngs))
                shape = (2, 2, dims[s - 1], dim)
                down_kernels.append(nnx.Param(WEIGHT_INIT(rngs.params(), shape, jnp.float32)))
                down_biases.append(nnx.Param(jnp.zeros((dim,), jnp.float32)))
            first = sum(depths[:s])
            stages.append(
                nnx.List(
                    ConvNeXtBlock(
                        dim, drop_path=rates[first + i], dwconv=dwconv, dtype=dtype, rngs=rngs
                    )
                    for i in range(depth)
                )
            )
        self.down_norms = nnx.List(down_norms)
        self.down_kernels = nnx.List(down_kernels)
        self.down_biases = nnx.List(down_biases)
        self.stages = nnx.List(stages)
        self.face_grid = (int(face_grid[0]), int(face_grid[1]))
        self.n_blocks = sum(depths)
        self.onnx = dwconv == "onnx"

    @property
    def first_dim(self) -> int:
        """Channels of the first-stage map (return_map=True)."""
        return self.stages[0][0].pw2.out_features

    @property
    def out_features(self) -> int:
        dim = self.stages[-1][0].pw2.out_features
        return dim * self.face_grid[0] * self.face_grid[1]

    def __call__(
        self, x: jax.Array, *, train: bool, rng: jax.Array | None, return_map: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """x [B, H, W, 2] (H, W >= 5) -> [B, d_last * gh * gw].

        return_map: also return the full-resolution map after the first stage,
        [B, H - 1, W - 1, dims[0]] (pixel (i, j) is centred between input pixels i..i+1, j..j+1:
        the stem is a 4 x 4 kernel with padding 1).
        """
        keys = split_rng(rng, self.n_blocks)
        x = self.stem_norm(self.stem(x))
        n, first_map = 0, None
        for s, blocks in enumerate(self.stages):
            if s == 1:
                first_map = x
            if s > 0:
                kernel = self.down_kernels[s - 1][...].astype(x.dtype)
                bias = self.down_biases[s - 1][...].astype(x.dtype)
                x = _patch_conv(self.down_norms[s - 1](x), kernel, bias, onnx=self.onnx)
            for block in blocks:
                x = block(x, train=train, rng=keys[n])
                n += 1
        if first_map is None:
            first_map = x
        x = resize_bilinear(x, self.face_grid)
        # channel-major flatten, as torch's x.flatten(1) of an NCHW tensor
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
        return (x, first_map) if return_map else x
