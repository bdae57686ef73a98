"""Per-sample losses on the gamma emission angles (theta, phi in degrees).

Every loss maps predictions `[B, 2]` (theta, phi deg) - or `[B, 4]` (theta, phi, log_sigma_theta,
log_sigma_phi) for `gaussian_nll` - and targets `[B, 2]` to a per-sample loss `[B]`. The batch
reduction is `weighted_mean`, a weighted average with the data pipeline's sample weights (rows of
a padded last batch carry weight 0). Training and validation use the same function, so
`val_loss` is comparable to `train_loss` (the reference implementation's were not).

Losses on angle differences are in degrees: `beta` of smooth_l1 is in degrees too. The angular
loss is 1 - cos of the opening angle between the unit vectors (convention of xecjax.geometry);
it is dimensionless and well-behaved at zero (arccos is not).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from xecjax.geometry import angles_to_vec

# Variance floor of the Gaussian NLL (deg^2), as torch.nn.GaussianNLLLoss's eps: stops a
# collapsing sigma from sending the loss to -inf.
NLL_MIN_VAR = 1e-6

LOSS_NAMES = ("smooth_l1", "l1", "mse", "angular", "gaussian_nll")


def smooth_l1(pred: jax.Array, target: jax.Array, beta: float = 1.0) -> jax.Array:
    """Huber-like loss, mean over (theta, phi): 0.5 d^2 / beta if |d| < beta else |d| - beta/2.

    Args:
      pred: [B, >=2] predicted (theta, phi) in degrees (extra columns ignored).
      target: [B, 2] true (theta, phi) in degrees.
      beta: transition point in degrees; beta <= 0 gives the L1 loss.
    Returns:
      [B] per-sample loss (degrees).
    """
    d = jnp.abs(pred[..., :2] - target[..., :2])
    if beta <= 0:
        return d.mean(-1)
    return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).mean(-1)


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean absolute difference over (theta, phi), [B] in degrees."""
    return jnp.abs(pred[..., :2] - target[..., :2]).mean(-1)


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared difference over (theta, phi), [B] in degrees^2."""
    d = pred[..., :2] - target[..., :2]
    return (d * d).mean(-1)


def angular(pred: jax.Array, target: jax.Array) -> jax.Array:
    """1 - cos(opening angle) between predicted and true directions, [B] (dimensionless)."""
    v_pred = angles_to_vec(pred[..., 0], pred[..., 1])
    v_true = angles_to_vec(target[..., 0], target[..., 1])
    return 1.0 - (v_pred * v_true).sum(-1)


def gaussian_nll(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Gaussian negative log-likelihood with a predicted width, mean over (theta, phi).

    loss = 0.5 * (log var + d^2 / var) with var = max(exp(2 log_sigma), NLL_MIN_VAR), the
    convention of torch.nn.GaussianNLLLoss (no 0.5 log 2 pi constant).

    Args:
      pred: [B, 4] (theta, phi, log_sigma_theta, log_sigma_phi); angles and sigma in degrees.
      target: [B, 2] true (theta, phi) in degrees.
    Returns:
      [B] per-sample loss.
    """
    if pred.shape[-1] != 4:
        raise ValueError(
            f"gaussian_nll needs predictions [B, 4] (theta, phi, log_sigma_theta, log_sigma_phi), "
            f"got {pred.shape}: set config.model.uncertainty = True"
        )
    d = pred[..., :2] - target[..., :2]
    var = jnp.maximum(jnp.exp(2.0 * pred[..., 2:4]), NLL_MIN_VAR)
    return (0.5 * (jnp.log(var) + d * d / var)).mean(-1)


def get_loss(name: str, beta: float = 1.0) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Per-sample loss function `(pred [B, C], target [B, 2]) -> [B]` by config name."""
    table: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
        "smooth_l1": lambda p, t: smooth_l1(p, t, beta),
        "l1": l1,
        "mse": mse,
        "angular": angular,
        "gaussian_nll": gaussian_nll,
    }
    if name not in table:
        raise ValueError(f"unknown loss {name!r} (config.optim.loss): one of {'|'.join(table)}")
    return table[name]


def weighted_mean(per_sample: jax.Array, weight: jax.Array) -> jax.Array:
    """Sum(w * loss) / sum(w) over the batch; rows with weight 0 (padding) do not count.

    Args:
      per_sample: [B] per-sample loss.
      weight: [B] non-negative sample weights (0 on padding rows).
    """
    w = weight.astype(per_sample.dtype)
    # where, not w * loss: a padding row's loss may be non-finite and 0 * nan = nan.
    return jnp.where(w > 0, w * per_sample, 0.0).sum() / jnp.maximum(w.sum(), 1e-12)
