"""Losses and resolution metrics against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from xecjax import losses, metrics

PRED = jnp.array([[90.0, 0.0], [100.0, 10.0]])
TRUE = jnp.array([[90.5, 2.0], [100.0, 10.0]])


def test_smooth_l1_l1_mse_by_hand():
    # event 0: |d| = (0.5, 2.0); beta = 1 -> (0.5 * 0.25, 2 - 0.5) = (0.125, 1.5), mean 0.8125
    np.testing.assert_allclose(losses.smooth_l1(PRED, TRUE, beta=1.0), [0.8125, 0.0], rtol=1e-6)
    np.testing.assert_allclose(losses.smooth_l1(PRED, TRUE, beta=0.0), [1.25, 0.0], rtol=1e-6)
    np.testing.assert_allclose(losses.l1(PRED, TRUE), [1.25, 0.0], rtol=1e-6)
    np.testing.assert_allclose(losses.mse(PRED, TRUE), [(0.25 + 4.0) / 2, 0.0], rtol=1e-6)


def test_angular_is_one_minus_cos_of_opening_angle():
    # same phi, theta differs by 3 deg -> opening angle 3 deg
    pred, true = jnp.array([[90.0, 5.0]]), jnp.array([[93.0, 5.0]])
    np.testing.assert_allclose(losses.angular(pred, true), [1 - np.cos(np.deg2rad(3.0))], rtol=1e-4)
    np.testing.assert_allclose(losses.angular(true, true), [0.0], atol=1e-7)


def test_gaussian_nll_by_hand():
    # d = (1, 0), sigma = (e^0, e^1): 0.5 * (0 + 1) and 0.5 * (2 + 0) -> mean 0.75
    pred = jnp.array([[91.0, 5.0, 0.0, 1.0]])
    np.testing.assert_allclose(
        losses.gaussian_nll(pred, jnp.array([[90.0, 5.0]])), [0.75], rtol=1e-6
    )
    with pytest.raises(ValueError, match="uncertainty"):
        losses.gaussian_nll(PRED, TRUE)


def test_weighted_mean_ignores_padding_even_if_nan():
    per = jnp.array([1.0, 3.0, jnp.nan])
    np.testing.assert_allclose(losses.weighted_mean(per, jnp.array([1.0, 3.0, 0.0])), 2.5)


def test_get_loss_names():
    for name in losses.LOSS_NAMES:
        assert callable(losses.get_loss(name))
    with pytest.raises(ValueError, match="config.optim.loss"):
        losses.get_loss("huber")


def test_angle_metrics_by_hand():
    true = np.array([[90.0, 0.0]] * 4)
    pred = true + np.array([[1.0, 0.0], [-1.0, 0.0], [3.0, 0.0], [1.0, 0.0]])
    m = metrics.angle_metrics(pred, true)
    d = np.array([1.0, -1.0, 3.0, 1.0])
    assert m["theta_bias"] == pytest.approx(1.0)
    assert m["theta_rms"] == pytest.approx(np.sqrt(((d - 1) ** 2).mean()))
    assert m["theta_skew"] == pytest.approx(((d - 1) ** 3).mean() / ((d - 1) ** 2).mean() ** 1.5)
    # in the theta direction at phi = 0 the opening angle is |d theta|
    assert m["val_resolution_deg"] == pytest.approx(np.quantile(np.abs(d), 0.68), rel=1e-5)
    assert m["phi_bias"] == pytest.approx(0.0, abs=1e-12)


def test_phi_difference_is_wrapped():
    m = metrics.angle_metrics(np.array([[90.0, 179.0]]), np.array([[90.0, -179.0]]))
    assert m["phi_bias"] == pytest.approx(-2.0)


def test_weighted_quantile_matches_numpy_and_drops_zero_weights():
    x = np.random.default_rng(0).normal(size=101)
    assert metrics.weighted_quantile(x, 0.68, np.ones(101)) == pytest.approx(np.quantile(x, 0.68))
    w = np.r_[np.ones(101), 0.0]
    assert metrics.weighted_quantile(np.r_[x, 1e9], 0.68, w) == pytest.approx(np.quantile(x, 0.68))


# ----------------------------------------------------------------------------------------------
# Unit-vector outputs: angular on columns 2:5, von Mises-Fisher NLL.
# ----------------------------------------------------------------------------------------------
TRUE_EQ = np.array([[90.0, 0.0]])  # unit vector (-1, 0, 0)


def vector_pred(psi_deg, log_kappa=None, theta_phi=(0.0, 0.0)):
    """[N, 5 | 6] predictions at opening angle psi from TRUE_EQ (in the theta direction).

    Columns 0, 1 are deliberately wrong (theta_phi): the losses must use the vector columns.
    """
    psi = np.atleast_1d(np.asarray(psi_deg, np.float64))
    t = np.deg2rad(90.0 + psi)
    vec = np.stack([-np.sin(t), np.zeros_like(t), np.cos(t)], 1)
    cols = [np.tile(theta_phi, (len(psi), 1)), vec]
    if log_kappa is not None:
        cols.append(np.broadcast_to(np.asarray(log_kappa, np.float64), psi.shape)[:, None])
    return np.concatenate(cols, 1)


def test_angular_uses_the_unit_vector_columns():
    psi = np.array([0.0, 3.0, 40.0, 180.0])
    true = jnp.asarray(np.repeat(TRUE_EQ, len(psi), 0), jnp.float32)
    for log_kappa in (None, 2.0):  # width 5 and width 6
        pred = jnp.asarray(vector_pred(psi, log_kappa), jnp.float32)
        np.testing.assert_allclose(
            losses.angular(pred, true), 1 - np.cos(np.deg2rad(psi)), atol=2e-6
        )


def vmf_nll_numpy(kappa, psi_rad):
    """Hand-written vMF NLL in float64 from the textbook normalisation."""
    log_c = np.log(kappa) - np.log(2 * np.pi) - kappa - np.log1p(-np.exp(-2 * kappa))
    return -(log_c + kappa * np.cos(psi_rad))


@pytest.mark.parametrize("kappa", [0.01, 1.0, 100.0, 1e4])
def test_vmf_nll_is_normalised_on_the_sphere(kappa):
    # integral of exp(-nll) over the sphere = 2 pi * int_0^2 density(u) du, u = 1 - cos psi;
    # the grid in u resolves the 1/kappa width of the peak.
    u = np.linspace(0.0, min(2.0, 60.0 / kappa), 40001)
    psi = np.rad2deg(np.arccos(1.0 - u))
    pred = jnp.asarray(vector_pred(psi, np.log(kappa)), jnp.float32)
    true = jnp.asarray(np.repeat(TRUE_EQ, len(u), 0), jnp.float32)
    nll = np.asarray(losses.vmf(pred, true), np.float64)
    assert np.isfinite(nll).all()
    integral = 2 * np.pi * np.trapezoid(np.exp(-nll), u)
    assert integral == pytest.approx(1.0, rel=2e-3)
    # and point by point against the float64 textbook form (away from float32 rounding of u)
    sel = u < 20.0 / kappa
    np.testing.assert_allclose(
        nll[sel], vmf_nll_numpy(kappa, np.deg2rad(psi[sel])), atol=2e-4 * max(1.0, kappa * 1e-2)
    )


def test_vmf_nll_limits_and_errors():
    true = jnp.asarray(TRUE_EQ, jnp.float32)
    # kappa -> 0: uniform on the sphere, density 1 / (4 pi) whatever psi
    for psi in (0.0, 90.0, 180.0):
        pred = jnp.asarray(vector_pred(psi, np.log(1e-8)), jnp.float32)
        np.testing.assert_allclose(losses.vmf(pred, true), [np.log(4 * np.pi)], rtol=1e-6)
    # large kappa at psi = 0: -log(kappa / 2 pi)
    pred = jnp.asarray(vector_pred(0.0, np.log(1e6)), jnp.float32)
    np.testing.assert_allclose(losses.vmf(pred, true), [-np.log(1e6 / (2 * np.pi))], rtol=1e-6)
    with pytest.raises(ValueError, match="model.kappa"):
        losses.vmf(jnp.asarray(vector_pred(0.0), jnp.float32), true)  # 5 columns
    with pytest.raises(ValueError, match="model.output"):
        losses.vmf(PRED, TRUE)
    assert losses.get_loss("vmf") is losses.vmf


@pytest.mark.parametrize("kappa", [1e-4, 1e-3, 1.0, 1e6])
def test_vmf_nll_gradients_are_finite_at_extreme_kappa(kappa):
    import jax

    psi = np.array([0.0, 1e-3, 1.0, 90.0, 180.0])
    pred = jnp.asarray(vector_pred(psi, np.log(kappa)), jnp.float32)
    true = jnp.asarray(np.repeat(TRUE_EQ, len(psi), 0), jnp.float32)
    value, grad = jax.jit(jax.value_and_grad(lambda p: losses.vmf(p, true).sum()))(pred)
    assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()
    # d nll / d log kappa = kappa (1 - cos psi) - 1 + 2 kappa / expm1(2 kappa) (float64 by hand)
    u = 1 - np.cos(np.deg2rad(psi))
    want = kappa * u - 1 + (2 * kappa / np.expm1(2 * kappa) if kappa < 100 else 0.0)
    np.testing.assert_allclose(np.asarray(grad)[:, 5], want, rtol=1e-3, atol=1e-5 * kappa + 1e-6)
