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
