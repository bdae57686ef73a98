"""The Normaliser: values of all four schemes, sentinels, threshold, NumPy == jax, round trip."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xecjax.data import Normaliser
from xecjax.normalise import SCHEMES

N = 4760


def _inputs(seed: int = 0, events: int = 3):
    """Realistic npho/time [events, 4760] plus every kind of special value in the first rows."""
    rng = np.random.default_rng(seed)
    npho = (rng.gamma(0.5, 300, (events, N)) + rng.normal(0, 5, (events, N))).astype(np.float32)
    time = rng.normal(20e-9, 5e-9, (events, N)).astype(np.float32)
    special = [
        1e10,
        np.nan,
        np.inf,
        -np.inf,
        -1e10,
        -0.2,
        -0.5,
        -2.0,
        -999.0,
        -1000.0,
        -5000.0,
        99.0,
        100.0,
        0.0,
        3000.0,
    ]
    npho[0, : len(special)] = special
    time[0, : len(special)] = 1e-8
    time[1, :6] = [1e10, np.nan, np.inf, -np.inf, -1e10, 1e-9]
    npho[1, :6] = 500.0
    return npho, time


@pytest.mark.parametrize("scheme", SCHEMES)
def test_numpy_equals_jax(scheme):
    norm = Normaliser(npho_scheme=scheme)
    npho, time = _inputs()
    x_np = norm(npho, time)
    x_jx = jax.jit(norm.__call__)(jnp.asarray(npho), jnp.asarray(time))
    assert isinstance(x_np, np.ndarray) and isinstance(x_jx, jax.Array)
    assert x_np.dtype == np.float32 and x_jx.dtype == jnp.float32
    assert x_np.shape == (3, N, 2)
    assert np.all(np.isfinite(x_np)) and np.all(np.isfinite(np.asarray(x_jx)))
    np.testing.assert_allclose(x_np, np.asarray(x_jx), rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_values(scheme):
    """Against float64 formulas of DESIGN.md section 5, to float32 rounding."""
    norm = Normaliser(npho_scheme=scheme, npho_scale=800.0, npho_scale2=3.0)
    n = np.linspace(-1.0, 5000.0, N).astype(np.float32)[None]
    x = norm(n, np.zeros_like(n))[0, :, 0]
    n64, s = n[0].astype(np.float64), 800.0
    expected = {
        "log1p": np.log1p(n64 / s) / 3.0,
        "sqrt": np.sqrt(np.maximum(n64, 0)) / np.sqrt(s),
        "anscombe": 2 * np.sqrt(np.maximum(n64 + 0.375, 0)) / (2 * np.sqrt(s + 0.375)),
        "linear": n64 / s,
    }[scheme]
    below = {"sqrt": n64 < 0, "anscombe": n64 < -0.375}.get(scheme, np.zeros(N, bool))
    expected[below] = 0.0
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7)


def test_sentinels_threshold_and_domain():
    norm = Normaliser(sentinel_npho=-5.0, sentinel_time=-7.0)
    npho, time = _inputs()
    x = norm(npho, time)
    f, g = x[0, :15, 0], x[0, :15, 1]
    # 1e10, NaN, +Inf, -Inf, -1e10 are invalid: both features are sentinels
    assert np.all(f[:5] == -5.0) and np.all(g[:5] == -7.0)
    # -0.2, -0.5, -2, -999 inside log1p's domain (n > -1000): negative features, time sentinel
    assert (
        np.all(f[5:9] < 0)
        and f[8] == pytest.approx(np.log(1e-3) / 4.08, rel=1e-4)
        and np.all(g[5:9] == -7.0)
    )
    assert f[9] == 0.0 and f[10] == 0.0  # n = -1000, -5000: below the domain -> 0
    assert g[11] == -7.0  # 99 photons: below the 100-photon threshold
    expected_t = np.float32(1e-8) * np.float32(1 / 1.14e-7) - np.float32(-0.46)
    assert g[12] == pytest.approx(expected_t, rel=1e-6)  # 100 photons: time is kept
    assert f[13] == 0.0 and g[13] == -7.0
    assert f[14] == pytest.approx(np.log1p(3.0) / 4.08, rel=1e-6)
    # invalid time with valid npho: only the time feature is a sentinel
    assert np.all(x[1, :5, 1] == -7.0) and np.all(x[1, :5, 0] > 0)
    assert x[1, 5, 1] == pytest.approx(1e-9 / 1.14e-7 + 0.46, rel=1e-6)
    # sqrt / anscombe domains
    n = np.zeros((1, N), np.float32)
    n[0, :3] = [-1.0, -0.3, -0.5]
    assert np.all(Normaliser(npho_scheme="sqrt")(n, n)[0, :3, 0] == 0)
    xa = Normaliser(npho_scheme="anscombe")(n, n)[0, :3, 0]
    assert xa[0] == 0 and xa[1] > 0 and xa[2] == 0


def test_unbatched_and_batched_shapes():
    norm = Normaliser()
    npho, time = _inputs(events=6)
    assert norm(npho[0], time[0]).shape == (N, 2)
    y = norm(npho.reshape(2, 3, N), time.reshape(2, 3, N))
    np.testing.assert_array_equal(y.reshape(6, N, 2), norm(npho, time))
    with pytest.raises(ValueError, match="4760"):
        norm(npho[:, :100], time[:, :100])
    with pytest.raises(ValueError, match="same shape"):
        norm(npho, time[:2])


def test_round_trip_and_presets():
    for norm in (
        Normaliser(),
        Normaliser.preset("relative_npho"),
        Normaliser(npho_scheme="anscombe", time_shift=0.1, sentinel_time=-3.0),
    ):
        d = json.loads(json.dumps(norm.to_dict()))
        assert Normaliser.from_dict(d) == norm
    assert Normaliser.preset("default") == Normaliser()
    assert Normaliser().branches == ("npho", "relative_time")
    rel = Normaliser.preset("relative_npho")
    assert rel.branches == ("relative_npho", "relative_time")
    # relative_npho in [0, 1] maps into ~[0, 1]
    r = np.linspace(0, 1, N, dtype=np.float32)[None]
    f = rel(r, np.zeros_like(r))[0, :, 0]
    assert f[0] == 0 and 0.9 < f[-1] < 1.1 and np.all(np.diff(f) >= 0)
    with pytest.raises(ValueError, match="unknown Normaliser parameters.*npho_scal"):
        Normaliser.from_dict({**Normaliser().to_dict(), "npho_scal": 3})
    with pytest.raises(ValueError, match="npho_scheme"):
        Normaliser(npho_scheme="log")
    with pytest.raises(ValueError, match="time_scale"):
        Normaliser(time_scale=0.0)
    with pytest.raises(ValueError, match="preset"):
        Normaliser.preset("nope")
