"""The conventional reconstruction: light-model fit and centroid on toy events (CPU)."""

import numpy as np
import pytest

from xecjax import baseline
from xecjax.geometry import (
    INNER_MAP,
    N_SENSORS,
    N_SIPM,
    NORMALS,
    POSITIONS,
    angles_to_vec,
    opening_angle_deg,
    uvw_to_xyz,
)
from xecjax.simulate import SimConfig, simulate

N_EVENTS = 256


@pytest.fixture(scope="module")
def point_events():
    """Toy events from a point vertex at the origin (the direction is fixed by the shower)."""
    return simulate(123, N_EVENTS, SimConfig(vertex="point"))


def resolution(angles, true_angles) -> float:
    v_pred = angles_to_vec(angles[:, 0].astype(float), angles[:, 1].astype(float))
    v_true = angles_to_vec(true_angles[:, 0].astype(float), true_angles[:, 1].astype(float))
    return float(np.percentile(opening_angle_deg(v_pred, v_true), 68))


def test_fit_and_centroid_reach_the_physics_targets(point_events):
    npho, truth = point_events["npho"], point_events["emiAng"]
    assert (npho > 9e9).any()  # dead channels are present and must be masked
    res_fit = resolution(baseline.reconstruct(npho, method="fit"), truth)
    res_cen = resolution(baseline.reconstruct(npho, method="centroid"), truth)
    print(f"68% opening angle: fit {res_fit:.3f} deg, centroid {res_cen:.3f} deg")
    assert res_fit < 1.0
    assert res_cen < 1.5
    # the fit uses the light model and must beat the plain centroid
    assert res_fit < res_cen


def test_fit_recovers_a_noiseless_point_source():
    """npho = A * model(p) + B exactly: the fit must return p (tests the optimiser alone)."""
    rng = np.random.default_rng(0)
    uvw = np.stack(
        [rng.uniform(-20, 20, 16), rng.uniform(-50, 50, 16), rng.uniform(1.0, 15.0, 16)], 1
    ).astype(np.float32)
    npho = np.zeros((16, N_SENSORS), np.float32)
    import jax

    shape = jax.vmap(baseline.light_shape, in_axes=(0, None, None, None))(
        uvw,
        POSITIONS[:N_SIPM].astype(np.float32),
        NORMALS[:N_SIPM].astype(np.float32),
        baseline._INNER_AREA,
    )
    npho[:, :N_SIPM] = 2.0e6 * np.asarray(shape) + 3.0
    npho[:, N_SIPM:] = 50.0
    npho[:, INNER_MAP[46, 22]] = 1e10  # a dead channel and a NaN one near the middle
    npho[:, INNER_MAP[47, 20]] = np.nan
    xyz, info = baseline.fit_point_source(npho, iterations=20, return_info=True)
    np.testing.assert_allclose(info["uvw"], uvw, atol=0.05)
    np.testing.assert_allclose(xyz, uvw_to_xyz(uvw.astype(np.float64)), atol=0.1)
    np.testing.assert_allclose(info["yield"], 2.0e6, rtol=0.01)


def test_vertex_is_subtracted():
    xyz = np.array([[-70.0, 0.0, 0.0], [-60.0, 10.0, 20.0]], np.float32)
    np.testing.assert_allclose(baseline.direction(xyz), [[90, 0], [71.80, 9.46]], atol=0.01)
    # a vertex on the line of flight leaves the direction; one beside it turns it
    np.testing.assert_allclose(baseline.direction(xyz[:1], [-10.0, 0, 0]), [[90, 0]], atol=1e-5)
    np.testing.assert_allclose(baseline.direction(xyz[:1], [0, 0, -70.0]), [[45, 0]], atol=1e-4)
    per_event = baseline.direction(xyz, np.zeros((2, 3)))
    np.testing.assert_allclose(per_event, baseline.direction(xyz), atol=1e-6)


def test_dead_brightest_channel_does_not_break_the_centroid(point_events):
    npho = point_events["npho"][:16].copy()
    ref = baseline.centroid(npho)
    inner = np.where(npho[:, :N_SIPM] > 9e9, 0, npho[:, :N_SIPM])
    npho[np.arange(16), inner.argmax(1)] = np.nan
    out = baseline.centroid(npho)
    assert np.isfinite(out).all()
    assert np.abs(out - ref).max() < 1.5  # cm; one SiPM of ~1.5 cm pitch lost


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="4760"):
        baseline.reconstruct(np.zeros((3, 100), np.float32))
    with pytest.raises(ValueError, match="unknown baseline method"):
        baseline.reconstruct(np.zeros((3, N_SENSORS), np.float32), method="magic")
    with pytest.raises(ValueError, match="vertex"):
        baseline.direction(np.zeros((3, 3)), np.zeros((2, 3)))
