"""Per-sample losses on the gamma direction (angles theta, phi in degrees).

Every loss maps predictions `[B, C]` and targets `[B, 2]` (true theta, phi deg) to a per-sample
loss `[B]`. The prediction layout follows from its width C (xecjax.models.regressor.output_dim):
  2  (theta, phi) deg                                        model.output = "angles"
  4  (theta, phi, log_sigma_theta, log_sigma_phi)            + model.uncertainty (gaussian_nll)
  5  (theta, phi, x, y, z of the unit direction)             model.output = "vector" | "point"
  6  (theta, phi, x, y, z, log kappa)                        + model.kappa (vmf)
  8  (theta, phi, x, y, z, u, v, w)                          model.output = "point"
  9  (theta, phi, x, y, z, log kappa, u, v, w)               "point" + model.kappa
The batch reduction is `weighted_mean`, a weighted average with the data pipeline's sample
weights (rows of a padded last batch carry weight 0). Training and validation use the same
function, so `val_loss` is comparable to `train_loss` (the reference implementation's were not).

Losses on angle differences are in degrees: `beta` of smooth_l1 is in degrees too. The angular
loss is 1 - cos of the opening angle between the unit vectors (convention of xecjax.geometry;
the predicted vector is columns 2:5 when the model outputs one, else built from theta, phi);
it is dimensionless and well-behaved at zero (arccos is not). `opening_angle` is the opening
angle itself in degrees (an L1 loss on the sphere, robust to outliers). `vmf` is the negative
log-likelihood of a von Mises-Fisher distribution on the sphere around the predicted direction
with the per-event concentration kappa = exp(column 5) (kappa ~ 1 / sigma^2, sigma in rad).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from xecjax.geometry import angles_to_vec, xyz_to_uvw

# Variance floor of the Gaussian NLL (deg^2), as torch.nn.GaussianNLLLoss's eps: stops a
# collapsing sigma from sending the loss to -inf.
NLL_MIN_VAR = 1e-6

LOSS_NAMES = ("smooth_l1", "l1", "mse", "angular", "opening_angle", "gaussian_nll", "vmf")

# Prediction widths that carry the unit direction in columns 2:5 (vector / point heads), the
# log kappa in column 5, the conversion point (u, v, w) cm in the last 3 columns.
VECTOR_WIDTHS = (5, 6, 8, 9)
KAPPA_WIDTHS = (6, 9)
POINT_WIDTHS = (8, 9)
POINT_BETA_CM = 1.0  # smooth_l1 transition of point_loss
# Below this kappa the vMF normalisation uses its series (the closed form loses precision).
VMF_SERIES_KAPPA = 1e-3


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


def pred_vector(pred: jax.Array) -> jax.Array:
    """The predicted direction [..., 3]: columns 2:5 of a vector/point head, else from angles."""
    if pred.shape[-1] in VECTOR_WIDTHS:
        return pred[..., 2:5]
    return angles_to_vec(pred[..., 0], pred[..., 1])


def angular(pred: jax.Array, target: jax.Array) -> jax.Array:
    """1 - cos(opening angle) between predicted and true directions, [B] (dimensionless).

    pred [B, 2 | 4] uses angles_to_vec(theta, phi); pred [B, 5 | 6 | 8 | 9] its unit vector
    (columns 2:5).
    """
    v_true = angles_to_vec(target[..., 0], target[..., 1])
    return 1.0 - (pred_vector(pred) * v_true).sum(-1)


def opening_angle(pred: jax.Array, target: jax.Array) -> jax.Array:
    """The opening angle psi between predicted and true directions, [B] in degrees.

    An L1 loss on the sphere: every event pulls with the same strength whatever its error, so
    a few badly reconstructed events do not dominate (as they do 1 - cos ~ psi^2 / 2), and the
    loss is in the unit of the resolution (psi 68 %). psi = 2 arcsin(|v_pred - v_true| / 2),
    precise at small angles; the norm has a 1e-12 floor so that its gradient is finite at 0.
    """
    d = pred_vector(pred) - angles_to_vec(target[..., 0], target[..., 1]).astype(pred.dtype)
    chord = jnp.sqrt((d * d).sum(-1) + 1e-12)
    return jnp.rad2deg(2.0 * jnp.arcsin(jnp.minimum(0.5 * chord, 1.0)))


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


def vmf_log_norm_excess(log_kappa: jax.Array) -> jax.Array:
    """log C(kappa) + kappa + log(4 pi) = log(2 kappa / (1 - exp(-2 kappa))), stable in kappa.

    C(kappa) = kappa / (2 pi (1 - exp(-2 kappa))) exp(-kappa) is the vMF normalisation on the
    2-sphere. The closed form uses expm1 (exact for large kappa: -> log 2 kappa); below
    VMF_SERIES_KAPPA the series log(k / sinh k) + k = k - k^2 / 6 + k^4 / 180 (-> 0). The
    closed-form branch sees a kappa clamped into its range, so neither branch's gradient is NaN.
    """
    kappa = jnp.exp(log_kappa)
    small = kappa < VMF_SERIES_KAPPA
    k_big = jnp.where(small, VMF_SERIES_KAPPA, kappa)
    lk_big = jnp.where(small, jnp.log(VMF_SERIES_KAPPA), log_kappa)
    closed = jnp.log(2.0) + lk_big - jnp.log(-jnp.expm1(-2.0 * k_big))
    k_small = jnp.where(small, kappa, 0.0)
    series = k_small - k_small**2 / 6.0 + k_small**4 / 180.0
    return jnp.where(small, series, closed)


def vmf(pred: jax.Array, target: jax.Array) -> jax.Array:
    """von Mises-Fisher negative log-likelihood of the true direction, [B] (nats per steradian).

    nll = -(log C(kappa) + kappa cos psi), log C = log kappa - log 2 pi - kappa
    - log(1 - exp(-2 kappa)), with kappa = exp(pred[:, 5]) and psi the opening angle between the
    predicted unit vector (columns 2:5) and the truth. Written as
    kappa (1 - cos psi) + log(4 pi) - vmf_log_norm_excess(log kappa), with
    1 - cos psi = |v_pred - v_true|^2 / 2 (no cancellation at small psi, where kappa is large).
    Finite, with finite gradients, from kappa ~ 1e-30 to ~ 1e30 (exp(log kappa) overflows
    float32 beyond).

    Args:
      pred: [B, 6 | 9] (theta, phi, x, y, z, log kappa[, u, v, w]): unit direction, kappa in
        1/rad^2.
      target: [B, 2] true (theta, phi) in degrees.
    Returns:
      [B] per-sample loss.
    """
    if pred.shape[-1] not in KAPPA_WIDTHS:
        raise ValueError(
            f"vmf needs predictions [B, 6 | 9] (theta, phi, x, y, z, log kappa[, u, v, w]), got "
            f"{pred.shape}: "
            f"set config.model.output = 'vector' or 'point' and config.model.kappa = True"
        )
    v_true = angles_to_vec(target[..., 0], target[..., 1]).astype(pred.dtype)
    d = pred[..., 2:5] - v_true
    one_minus_cos = 0.5 * (d * d).sum(-1)
    log_kappa = pred[..., 5]
    kappa = jnp.exp(log_kappa)
    return kappa * one_minus_cos + jnp.log(4.0 * jnp.pi) - vmf_log_norm_excess(log_kappa)


def point_loss(pred: jax.Array, xyz_truth: jax.Array) -> jax.Array:
    """smooth_l1 (beta POINT_BETA_CM) of the predicted conversion point against the true one,
    mean over (u, v, w), [B] in cm.

    Args:
      pred: [B, 8 | 9] output of a "point" model: (u, v, w) in its last 3 columns (cm).
      xyz_truth: [B, 3] true conversion point (xyzTruth, cm); uvw by geometry.xyz_to_uvw.
    """
    if pred.shape[-1] not in POINT_WIDTHS:
        raise ValueError(
            f"point_loss needs the (u, v, w) columns of model.output = 'point' ([B, 8 | 9]), got "
            f"{pred.shape}: set config.optim.point_weight = 0 for other outputs"
        )
    d = jnp.abs(pred[..., -3:] - xyz_to_uvw(xyz_truth.astype(pred.dtype)))
    b = POINT_BETA_CM
    return jnp.where(d < b, 0.5 * d * d / b, d - 0.5 * b).mean(-1)


def get_loss(name: str, beta: float = 1.0) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Per-sample loss function `(pred [B, C], target [B, 2]) -> [B]` by config name."""
    table: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
        "smooth_l1": lambda p, t: smooth_l1(p, t, beta),
        "l1": l1,
        "mse": mse,
        "angular": angular,
        "opening_angle": opening_angle,
        "gaussian_nll": gaussian_nll,
        "vmf": vmf,
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
