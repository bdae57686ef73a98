"""Building blocks of the xecjax models, written from primitive ops so they export to ONNX.

All layers are channels-last: images [B, H, W, C], node sets [B, N, C], token sets [B, T, C].
Parameters are float32; `dtype` is the compute dtype ("float32" or "bfloat16").
Randomness (dropout, drop path) is explicit: layers take `rng: jax.Array | None` and draw from
it only when `train` is True, so a model is a pure function of (params, x, train, rng).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xecjax import native

# Truncated normal(0.02) weights, zero biases: the ConvNeXt V2 / timm initialisation.
WEIGHT_INIT = nnx.initializers.truncated_normal(stddev=0.02)
LN_EPS_CONVNEXT = 1e-6  # the reference's own channels-last LayerNorm
LN_EPS_TORCH = 1e-5  # torch.nn.LayerNorm default, used everywhere else


_SQRT2 = float(np.sqrt(2.0))


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as torch.nn.GELU(); jax.nn.gelu defaults to the tanh approximation.

    Written as (0.5 x) (1 + erf(x / sqrt 2)): the exact pattern that onnxruntime's GeluFusion
    turns into one fused Gelu kernel (jax.nn.gelu exports x * (1/sqrt 2), which it does not
    match, leaving five elementwise passes over the largest tensors of the model).
    """
    xf = x.astype(jnp.float32)  # float32 inside: 1 + erf cancels for x << 0 in bfloat16
    return ((xf * 0.5) * (1.0 + jax.lax.erf(xf / jnp.asarray(_SQRT2, jnp.float32)))).astype(x.dtype)


def split_rng(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
    """n independent keys from `rng`, or n Nones when there is no key (evaluation)."""
    if rng is None:
        return [None] * n
    return list(jax.random.split(rng, n))


def _need_rng(rng: jax.Array | None, what: str) -> jax.Array:
    if rng is None:
        raise ValueError(f"{what} with train=True needs an rng key (pass rng=jax.random.key(...))")
    return rng


def dropout(x: jax.Array, rate: float, *, train: bool, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero with probability `rate`, scale survivors by 1/(1-rate)."""
    if not train or rate == 0.0:
        return x
    keep = jax.random.bernoulli(_need_rng(rng, "dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def drop_path(x: jax.Array, rate: float, *, train: bool, rng: jax.Array | None) -> jax.Array:
    """Stochastic depth: drop the whole residual branch per sample (x is [B, ...])."""
    if not train or rate == 0.0:
        return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(_need_rng(rng, "drop path"), 1.0 - rate, shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def dense(din: int, dout: int, dtype, rngs: nnx.Rngs, init=WEIGHT_INIT) -> nnx.Linear:
    """Linear layer with float32 parameters and `dtype` compute."""
    return nnx.Linear(din, dout, dtype=dtype, kernel_init=init, rngs=rngs)


def layer_norm(dim: int, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the last axis; two-pass variance as in PyTorch."""
    return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, use_fast_variance=False, rngs=rngs)


class GRN(nnx.Module):
    """Global response normalisation (ConvNeXt V2) over the spatial/node axes.

    G = ||x||_2 over space, N = G / (mean_C G + 1e-6), y = gamma * (x * N) + beta + x,
    gamma = beta = 0 at init (identity). Computed as x * (gamma * N + 1) + beta: the same
    value with two passes over x instead of four (the factor is [B, C], broadcast over space).
    """

    def __init__(self, dim: int):
        self.gamma = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def factor(self, x: jax.Array, *, by_matmul: bool = False) -> jax.Array:
        """The per-(sample, channel) factor gamma * N + 1, [B, C], float32 (in bfloat16,
        1 + a small gamma * N would round to 1).

        by_matmul (the "onnx" form): the sum of squares over space as ones[1, P] @ x^2
        [B, P, C]. onnxruntime runs that twice as fast as its ReduceL2 over the spatial axes
        (one [1, 92, 43, 128] map: 155 vs 303 us); XLA:CPU runs the fused reduction faster.
        HIGHEST precision: never a reduced-precision (TF32) matmul for a sum.
        """
        if by_matmul:
            sq = jnp.square(x.astype(jnp.float32)).reshape(x.shape[0], -1, x.shape[-1])
            ones = jnp.ones((1, sq.shape[1]), jnp.float32)
            g2 = jnp.matmul(ones, sq, precision=jax.lax.Precision.HIGHEST)  # [B, 1, C]
            g = jnp.sqrt(g2.reshape(x.shape[0], x.shape[-1]))
        else:
            axes = tuple(range(1, x.ndim - 1))
            g = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes))
        n = g / (jnp.mean(g, axis=-1, keepdims=True) + 1e-6)
        return self.gamma[...] * n + 1.0

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.factor(x).reshape(x.shape[0], *[1] * (x.ndim - 2), x.shape[-1])
        return (x.astype(jnp.float32) * scale + self.beta[...]).astype(x.dtype)

    def then_dense(self, x: jax.Array, dense: nnx.Linear, *, onnx: bool = False) -> jax.Array:
        """dense(self(x)), with the per-(sample, channel) GRN factor folded into the kernel.

        (x * scale + beta) @ K + b = x @ (scale^T * K) + (beta @ K + b): one batched matmul
        with a [B, C, D] kernel instead of an elementwise pass over x, the largest tensor of a
        ConvNeXt block on CPU (reference size, batch 256: inference +8 %). Same value and
        parameters. Worth it only where x has many more positions than the kernel has columns.
        For a Linear with a bias whose compute dtype is x.dtype (as the blocks' pw2).
        onnx: the factor by matmul, and x flattened to [B, P, C] so that the product exports
        as one batched MatMul (onnxruntime: 209 us for the [1, 92, 43, 128] map, against 434
        for Mul + Add + MatMul of the plain graph, and a slow Einsum without the flattening).
        """
        scale = self.factor(x, by_matmul=onnx)
        kernel = dense.kernel[...]
        # float32 in a bfloat16 model too: one [C] @ [C, D] per call, not per position
        bias = self.beta[...] @ kernel + dense.bias[...]
        folded = (scale[:, :, None] * kernel).astype(x.dtype)
        if onnx:
            y = x.reshape(x.shape[0], -1, x.shape[-1]) @ folded
            return y.reshape(*x.shape[:-1], -1) + bias.astype(x.dtype)
        return jnp.einsum("b...c,bcd->b...d", x, folded) + bias.astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Depthwise k x k convolution. On CPU, XLA's grouped convolution is slow (measured on one
# 32 x 92 x 43 x 32 block: 650 ms forward, 3.0 s forward + backward). Two faster forms:
#  - "direct": the sum of k*k shifted products, channels minor. Forward (one fused loop) and
#    the input gradient (the same sum with the flipped kernel, custom VJP) are fast: 15-20 ms
#    on that block; the kernel gradient is a toeplitz-style matmul (_kernel_grad). Plain
#    autodiff of the sum gives k*k reductions plus k*k shifted adds instead (~270 ms).
#  - "toeplitz": each channel's k column taps as a banded [(W + k - 1) x W] matrix, all k row
#    offsets in one batched matmul over channels: ~7x the multiply-adds of the direct form
#    and a 7x copy of the input (~130 ms forward, ~290 ms forward + backward on that block).
# Both export to ONNX as the grouped Conv of the same kernel: the "onnx" form (xecjax.export),
# which is "xla" plus onnxruntime-friendly forms of the layers around it (GRN.factor,
# GRN.then_dense, the patch conv of xecjax.models.convnext).
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _toeplitz_index(width: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Tap index [width + k - 1, width] (v - w clipped) and its validity mask (0 <= v - w < k)."""
    tap = np.arange(width + k - 1)[:, None] - np.arange(width)[None, :]
    valid = (tap >= 0) & (tap < k)
    return np.where(valid, tap, 0), valid.astype(np.float32)


def _row_shifts(xt: jax.Array, k: int) -> jax.Array:
    """Channel-major padded x [C, B, H + k - 1, Wp] -> its k row shifts side by side,
    [C, B * H, k * Wp]: row (b, h) holds padded rows h .. h + k - 1 of event b."""
    c, b, hp, wp = xt.shape
    h = hp - (k - 1)
    rows = jnp.concatenate([xt[:, :, i : i + h] for i in range(k)], axis=-1)
    return rows.reshape(c, b * h, k * wp)


def _depthwise_toeplitz(x: jax.Array, w: jax.Array) -> jax.Array:
    b, h, wd, c = x.shape
    k = w.shape[0]
    p = k // 2
    tap, valid = _toeplitz_index(wd, k)
    # band[c, (i, v), w] = w[i, v - w, c] on the band, 0 elsewhere
    band = (w[:, tap, :] * jnp.asarray(valid, w.dtype)[None, :, :, None]).transpose(3, 0, 1, 2)
    band = band.reshape(c, k * (wd + 2 * p), wd)
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).transpose(3, 0, 1, 2)  # [C, B, H+2p, Wp]
    out = jnp.einsum("cnv,cvw->cnw", _row_shifts(xp, k), band)
    return out.reshape(c, b, h, wd).transpose(1, 2, 3, 0)


def _shifted_sum(x: jax.Array, w: jax.Array) -> jax.Array:
    """sum_ij pad(x)[:, h + i, w + j] * w[i, j], accumulated in float32, as x.dtype."""
    b, h, wd, c = x.shape
    k = w.shape[0]
    p = k // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).astype(jnp.float32)
    wf = w.astype(jnp.float32)
    out = sum(xp[:, i : i + h, j : j + wd] * wf[i, j] for i in range(k) for j in range(k))
    # reduce_precision to float32's own 23 mantissa bits changes no value, but XLA:CPU's
    # library (YNNPACK) fusion does not take it: it keeps the sum one fused loop. Without it
    # the fusion of the next matmul absorbs part of the sum and materialises a shifted copy of
    # x per absorbed term (an optimization_barrier does not help: XLA:CPU removes it before
    # fusion). Measured on a 32 x 92 x 43 x 32 ConvNeXt block forward: ~90-120 ms vs 130-150.
    out = jax.lax.reduce_precision(out, exponent_bits=8, mantissa_bits=23)
    return out.astype(x.dtype)


def _native_or(native_fn, jax_fn, *arrays: jax.Array) -> jax.Array:
    """native_fn(*arrays) with xecjax.native's CPU kernels where they apply, else jax_fn(*arrays).

    They apply to float32 operands with a CPU default backend (GPU jobs never build the
    library) once the library is built; the CPU branch is still chosen per platform at
    lowering. GPUs and bfloat16 keep the pure-JAX forms."""
    if (
        all(a.dtype == jnp.float32 for a in arrays)
        and jax.default_backend() == "cpu"
        and native.available()
    ):
        return jax.lax.platform_dependent(*arrays, cpu=native_fn, default=jax_fn)
    return jax_fn(*arrays)


def _conv_sum(x: jax.Array, w: jax.Array) -> jax.Array:
    """The depthwise correlation of the direct form: native on CPU, else the shifted sum."""
    return _native_or(native.depthwise_forward, _shifted_sum, x, w)


def _conv_kernel_grad(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
    """Its kernel gradient: native on CPU, else the banded-matmul form (_kernel_grad)."""
    return _native_or(
        functools.partial(native.depthwise_kernel_grad, k=k),
        functools.partial(_kernel_grad, k=k),
        x,
        g,
    )


@jax.custom_vjp
def _depthwise_direct(x: jax.Array, w: jax.Array) -> jax.Array:
    return _conv_sum(x, w)


def _depthwise_direct_fwd(x, w):
    return _conv_sum(x, w), (x, w)


def _depthwise_direct_bwd(res, g):
    x, w = res
    # 'same' padding with odd k: the input gradient is the same conv with the flipped kernel
    dx = _conv_sum(g, w[::-1, ::-1])
    return dx.astype(x.dtype), _conv_kernel_grad(x, g, w.shape[0]).astype(w.dtype)


def _kernel_grad(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
    """dL/dw[i, j, c] = sum_bhw pad(x)[b, h + i, w + j, c] g[b, h, w, c], float32 [k, k, C].

    As the toeplitz form: per channel, the k row-shifted [B*H, W + k - 1] slices of x against
    g [B*H, W] in one batched matmul, then the k diagonals v - w = j of each [W + k - 1, W]
    block summed. x and g go channel-major by a matmul with the identity: XLA:CPU otherwise
    fuses the transpose into each of the k slices (measured: 7 slices 21-31 ms each instead
    of 5-9; the block forward + backward 8-11 % faster). x is padded after that transpose,
    not before (the identity matmul of the padded x took 20-26 ms against 8-11 for transpose
    then pad; this gradient alone 84 -> 71 ms on a 32 x 92 x 43 x 32 map, 54 -> 36 ms on
    32 x 46 x 21 x 64; a whole block forward + backward 0.97x). As k*k reductions the
    gradient is no faster (XLA:CPU materialises every shifted slice for them) and compiles
    more slowly; neither is splitting W into tiles to skip the unused taps of the banded
    product (more copies, smaller matmuls).
    """
    b, h, wd, c = x.shape
    p = k // 2
    f32 = jnp.float32
    dt = jnp.promote_types(x.dtype, g.dtype)  # float32, or bfloat16 in a bfloat16 model
    eye = jnp.eye(c, dtype=dt)  # exact in bfloat16 too: one nonzero product per output
    xt = jnp.einsum("cd,bhwc->dbhw", eye, x.astype(dt))
    xt = jnp.pad(xt, ((0, 0), (0, 0), (p, p), (p, p)))  # [C, B, H + 2p, W + 2p]
    gt = jnp.einsum("cd,bhwc->dbhw", eye, g.astype(dt)).reshape(c, b * h, wd)
    # g as the left operand ([W, k (W + 2p)] per channel, not its transpose): the same sums,
    # 10.7 against 14.3 ms for this product alone on the 32 x 46 x 21 x 64 map. The sums over
    # B * H accumulate in float32 (bfloat16 operands in a bfloat16 model).
    m = jnp.einsum("cnw,cnv->cwv", gt, _row_shifts(xt, k), preferred_element_type=f32)
    m = m.reshape(c, wd, k, wd + 2 * p)
    tap, valid = _toeplitz_index(wd, k)
    diag = (tap[:, :, None] == np.arange(k)) & (valid[:, :, None] > 0)  # [W + 2p, W, k]
    # float32 in a bfloat16 model too: a 0/1 selection sum of the float32 m, whose cost does
    # not grow with the batch (C W k (W + 2p) k multiply-adds)
    return jnp.einsum("cwiv,vwj->ijc", m, jnp.asarray(diag, f32))


_depthwise_direct.defvjp(_depthwise_direct_fwd, _depthwise_direct_bwd)

DWCONV_IMPLS = ("direct", "toeplitz", "xla", "onnx")


def depthwise_conv(x: jax.Array, w: jax.Array, impl: str = "direct") -> jax.Array:
    """Depthwise 'same' convolution, x [B, H, W, C], w [k, k, C] (k odd) -> [B, H, W, C].

    impl "direct" (CPU: xecjax.native's C++ kernels, or shifted sums and a banded-matmul
    kernel gradient without them; fastest on CPU), "toeplitz" (banded matmuls), "xla"
    (grouped lax.conv: cuDNN on GPUs) or "onnx" (the same conv; the form exported to ONNX).
    """
    if impl == "direct":
        return _depthwise_direct(x, w)
    if impl == "toeplitz":
        return _depthwise_toeplitz(x, w)
    if impl in ("xla", "onnx"):
        p = w.shape[0] // 2
        return jax.lax.conv_general_dilated(
            x,
            w[:, :, None, :],
            (1, 1),
            ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1],
        )
    raise ValueError(f"model.dwconv must be one of {DWCONV_IMPLS}, got {impl!r}")


# ----------------------------------------------------------------------------------------------
# The pointwise part of the ConvNeXt V2 block on CPU, LN -> Dense 4C -> GELU -> GRN -> Dense C
# (GRN folded into the second Dense, as GRN.then_dense), with a hand-written VJP. Autodiff of the
# same graph leaves XLA:CPU extra passes over the [B, H, W, 4C] tensors (separately reduced
# GELU / GRN terms, the product of the GRN scale with the second kernel per sample); here each
# of them is read once per matmul that needs it. Measured on one reference-size block
# (32 x 92 x 43 x 32, forward + backward, the two forms alternated in one process, median of
# the paired ratios): 0.93x the time, 0.91x on the 32 x 46 x 21 x 64 blocks of stage 2. Same
# value; gradients equal to autodiff within float32 rounding (tests/test_models.py).
# ----------------------------------------------------------------------------------------------
_INV_SQRT2PI = float(1.0 / np.sqrt(2.0 * np.pi))


def _normalise(y, eps):
    """Channels-last (y - mean) / sqrt(var + eps), two-pass variance, and 1 / sqrt(var + eps)."""
    d = y - jnp.mean(y, -1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(d * d, -1, keepdims=True) + eps)
    return d * rstd, rstd


def _pointwise_parts(y, params, eps):
    """y [B, P, C] -> (z [B, P, C], residuals); params = (ln scale, ln bias, w1, b1, gamma,
    beta, w2, b2), all float32."""
    ln_s, ln_b, w1, b1, gamma, beta, w2, b2 = params
    nh, rstd = _normalise(y, eps)
    a = (nh * ln_s + ln_b) @ w1 + b1
    h = gelu(a)
    g = jnp.sqrt(jnp.sum(jnp.square(h), axis=1))  # [B, 4C], as GRN.factor
    m = jnp.mean(g, -1, keepdims=True) + 1e-6
    s = gamma * (g / m) + 1.0
    z = jnp.einsum("bpc,bcd->bpd", h, s[:, :, None] * w2) + (beta @ w2 + b2)
    return z, (y, a, h, g, m, s)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _convnext_pointwise(y: jax.Array, params: tuple, eps: float) -> jax.Array:
    return _pointwise_parts(y, params, eps)[0]


def _convnext_pointwise_fwd(y, params, eps):
    z, res = _pointwise_parts(y, params, eps)
    return z, (res, params)


def _convnext_pointwise_bwd(eps, saved, dz):
    (y, a, h, g, m, s), params = saved
    ln_s, ln_b, w1, b1, gamma, beta, w2, b2 = params
    # z = h @ (s w2) + beta @ w2 + b2
    dfold = jnp.einsum("bpc,bpd->bcd", h, dz)  # [B, 4C, C]
    dbias = jnp.sum(dz, axis=(0, 1))
    dw2 = jnp.sum(s[:, :, None] * dfold, 0) + jnp.outer(beta, dbias)
    ds = jnp.sum(dfold * w2, -1)  # [B, 4C]
    # s = gamma * g / (mean_C g + 1e-6) + 1, g = ||h||_2 over positions
    dgamma = jnp.sum(ds * (g / m), 0)
    dn = ds * gamma
    dg = dn / m - jnp.sum(dn * g, -1, keepdims=True) / (m * m * g.shape[-1])
    r = jnp.where(g > 0, dg / jnp.where(g > 0, g, 1.0), 0.0)
    dh = jnp.einsum("bpd,bcd->bpc", dz, s[:, :, None] * w2) + h * r[:, None, :]
    # exact GELU: d/da = Phi(a) + a phi(a)
    phi = 0.5 * (1.0 + jax.lax.erf(a / _SQRT2)) + a * (_INV_SQRT2PI * jnp.exp(-0.5 * a * a))
    da = dh * phi
    # layer norm, recomputed from y (cheaper than keeping [B, P, C] normalised copies)
    nh, rstd = _normalise(y, eps)
    dw1 = jnp.einsum("bpc,bpd->cd", nh * ln_s + ln_b, da)
    dln_in = da @ w1.T
    dnh = dln_in * ln_s
    dy = rstd * (
        dnh - jnp.mean(dnh, -1, keepdims=True) - nh * jnp.mean(dnh * nh, -1, keepdims=True)
    )
    grads = (
        jnp.sum(dln_in * nh, axis=(0, 1)),
        jnp.sum(dln_in, axis=(0, 1)),
        dw1,
        jnp.sum(da, axis=(0, 1)),
        dgamma,
        w2 @ dbias,
        dw2,
        dbias,
    )
    return dy, grads


_convnext_pointwise.defvjp(_convnext_pointwise_fwd, _convnext_pointwise_bwd)


class ConvNeXtBlock(nnx.Module):
    """ConvNeXt V2 block: dw 7x7 -> LN -> Dense 4d -> GELU -> GRN -> Dense d -> + drop path."""

    def __init__(self, dim: int, *, drop_path: float, dwconv: str, dtype, rngs: nnx.Rngs):
        self.dw_kernel = nnx.Param(WEIGHT_INIT(rngs.params(), (7, 7, dim), jnp.float32))
        self.dw_bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.norm = layer_norm(dim, LN_EPS_CONVNEXT, dtype, rngs)
        self.pw1 = dense(dim, 4 * dim, dtype, rngs)
        self.grn = GRN(4 * dim)
        self.pw2 = dense(4 * dim, dim, dtype, rngs)
        self.drop_path = drop_path
        self.dwconv = dwconv

    def _pointwise_params(self) -> tuple:
        """(LN scale, LN bias, pw1 kernel, pw1 bias, GRN gamma, GRN beta, pw2 kernel, pw2 bias)."""
        return (
            self.norm.scale[...],
            self.norm.bias[...],
            self.pw1.kernel[...],
            self.pw1.bias[...],
            self.grn.gamma[...],
            self.grn.beta[...],
            self.pw2.kernel[...],
            self.pw2.bias[...],
        )

    def __call__(self, x: jax.Array, *, train: bool, rng: jax.Array | None) -> jax.Array:
        w = self.dw_kernel[...].astype(x.dtype)
        y = depthwise_conv(x, w, self.dwconv) + self.dw_bias[...].astype(x.dtype)
        if self.dwconv in ("direct", "toeplitz") and x.dtype == jnp.float32:
            # the CPU forms: the same graph as below with GRN folded, with its own VJP
            y = _convnext_pointwise(
                y.reshape(x.shape[0], -1, x.shape[-1]), self._pointwise_params(), self.norm.epsilon
            )
            return x + drop_path(y.reshape(x.shape), self.drop_path, train=train, rng=rng)
        h = gelu(self.pw1(self.norm(y)))
        # "onnx" folds GRN into pw2 too; "xla" (GPUs) keeps the plain graph.
        if self.dwconv == "xla":
            y = self.pw2(self.grn(h))
        else:
            y = self.grn.then_dense(h, self.pw2, onnx=self.dwconv == "onnx")
        return x + drop_path(y, self.drop_path, train=train, rng=rng)


class HexNeXtBlock(nnx.Module):
    """HexNeXt block on a fixed-degree graph, x [B, N, C] with neighbours [N, K] and mask [N, K].

    Mixing: h_i = x_i + sum_k mask_ik * sigmoid(Dense([x_i, x_j])) * x_j, j = neighbours[i, k]
    (one learned gate per (destination, source) pair, gated messages summed); then
    LN -> Dense 4C -> GELU -> GRN -> Dense C -> residual with drop path.
    """

    def __init__(self, dim: int, *, drop_path: float, dtype, rngs: nnx.Rngs):
        self.gate = dense(2 * dim, 1, dtype, rngs)
        self.norm = layer_norm(dim, LN_EPS_TORCH, dtype, rngs)
        self.pw1 = dense(dim, 4 * dim, dtype, rngs)
        self.grn = GRN(4 * dim)
        self.pw2 = dense(4 * dim, dim, dtype, rngs)
        self.drop_path = drop_path

    def mix(self, x: jax.Array, neighbors: np.ndarray, mask: np.ndarray) -> jax.Array:
        dim = x.shape[-1]
        kernel = self.gate.kernel[...].astype(x.dtype)  # [2C, 1]: rows [:C] dst, [C:] src
        # Dense([x_i, x_j]) = x_i . w_dst + x_j . w_src + b: two per-node scalars, no concat.
        s_dst = x @ kernel[:dim, 0]
        s_src = x @ kernel[dim:, 0]
        logit = s_dst[:, :, None] + s_src[:, neighbors] + self.gate.bias[...].astype(x.dtype)
        weight = jax.nn.sigmoid(logit) * jnp.asarray(mask, x.dtype)  # [B, N, K]
        return x + jnp.einsum("bnk,bnkc->bnc", weight, x[:, neighbors])

    def __call__(
        self,
        x: jax.Array,
        neighbors: np.ndarray,
        mask: np.ndarray,
        *,
        train: bool,
        rng: jax.Array | None,
    ) -> jax.Array:
        y = self.pw2(self.grn(gelu(self.pw1(self.norm(self.mix(x, neighbors, mask))))))
        return x + drop_path(y, self.drop_path, train=train, rng=rng)


class MultiHeadSelfAttention(nnx.Module):
    """torch.nn.MultiheadAttention layout: packed in-projection [C, 3C] + out-projection."""

    def __init__(self, dim: int, heads: int, *, dropout: float, dtype, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"model.d_model={dim} is not divisible by model.num_heads={heads}")
        self.in_proj = dense(dim, 3 * dim, dtype, rngs, nnx.initializers.xavier_uniform())
        self.out_proj = dense(dim, dim, dtype, rngs)
        self.heads = heads
        self.dropout = dropout

    def __call__(self, x: jax.Array, *, train: bool, rng: jax.Array | None) -> jax.Array:
        b, t, c = x.shape
        qkv = self.in_proj(x).reshape(b, t, 3, self.heads, c // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, D]
        logits = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(c // self.heads).astype(x.dtype)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
        attn = dropout(attn, self.dropout, train=train, rng=rng)
        return self.out_proj(jnp.einsum("bhts,bshd->bthd", attn, v).reshape(b, t, c))


class TransformerEncoderLayer(nnx.Module):
    """Post-norm encoder layer as torch.nn.TransformerEncoderLayer(norm_first=False, gelu)."""

    def __init__(self, dim: int, heads: int, ffn: int, *, dropout: float, dtype, rngs: nnx.Rngs):
        self.attn = MultiHeadSelfAttention(dim, heads, dropout=dropout, dtype=dtype, rngs=rngs)
        self.norm1 = layer_norm(dim, LN_EPS_TORCH, dtype, rngs)
        self.ffn1 = dense(dim, ffn, dtype, rngs)
        self.ffn2 = dense(ffn, dim, dtype, rngs)
        self.norm2 = layer_norm(dim, LN_EPS_TORCH, dtype, rngs)
        self.dropout = dropout

    def __call__(self, x: jax.Array, *, train: bool, rng: jax.Array | None) -> jax.Array:
        r = split_rng(rng, 4)
        y = self.attn(x, train=train, rng=r[0])
        x = self.norm1(x + dropout(y, self.dropout, train=train, rng=r[1]))
        y = self.ffn2(dropout(gelu(self.ffn1(x)), self.dropout, train=train, rng=r[2]))
        return self.norm2(x + dropout(y, self.dropout, train=train, rng=r[3]))


# ----------------------------------------------------------------------------------------------
# Bilinear resize as two constant matrices (exports to ONNX with a dynamic batch).
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of half-pixel bilinear interpolation without antialiasing.

    Same as torch F.interpolate(mode="bilinear", align_corners=False) along one axis:
    src = (dst + 0.5) * n_in / n_out - 0.5, clamped below at 0; neighbours floor(src) and
    min(floor(src) + 1, n_in - 1).
    """
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m.astype(np.float32)


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Resize [B, H, W, C] to [B, size[0], size[1], C] (half-pixel bilinear, no antialias)."""
    mh = bilinear_matrix(x.shape[1], int(size[0])).astype(x.dtype)
    mw = bilinear_matrix(x.shape[2], int(size[1])).astype(x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw)
