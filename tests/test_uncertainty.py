"""Predicted uncertainties: coverage, pulls and calibration on synthetic samples drawn from the
predicted distributions (calibrated by construction), and their evaluation outputs."""

import numpy as np
import pytest
import uproot

from xecjax import evaluate, losses, metrics, plots
from xecjax.geometry import N_SENSORS, angles_to_vec, vec_to_angles
from xecjax.rootio import TreeWriter

N = 20_000
TOL = 0.015  # ~4.5 binomial standard deviations of a coverage from N events


def gaussian_sample(seed=0, scale=1.0):
    """pred [N, 4] with log sigmas scaled by `scale` vs the sigmas the truth was drawn with."""
    rng = np.random.default_rng(seed)
    pred_angles = np.stack([rng.uniform(70, 110, N), rng.uniform(-60, 60, N)], 1)
    sigma = np.exp(rng.uniform(np.log(0.3), np.log(3.0), (N, 2)))
    true = pred_angles + sigma * rng.normal(size=(N, 2))
    pred = np.concatenate([pred_angles, np.log(scale * sigma)], 1)
    return pred, true


def vmf_sample(seed=0, kappa_scale=1.0, kappa_range=(0.3, 1e5)):
    """pred [N, 6]; truth drawn from vMF(mu, kappa) by the inverse CDF of w = cos psi."""
    rng = np.random.default_rng(seed)
    mu_angles = np.stack([rng.uniform(70, 110, N), rng.uniform(-60, 60, N)], 1)
    mu = angles_to_vec(mu_angles[:, 0], mu_angles[:, 1])
    kappa = np.exp(rng.uniform(*np.log(kappa_range), N))
    u = rng.uniform(size=N)
    w = 1 + np.log(u + (1 - u) * np.exp(-2 * kappa)) / kappa
    a = rng.uniform(0, 2 * np.pi, N)
    e1 = np.cross(mu, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(mu, e1)
    s = np.sqrt(np.clip(1 - w * w, 0, None))[:, None]
    v_true = w[:, None] * mu + s * (np.cos(a)[:, None] * e1 + np.sin(a)[:, None] * e2)
    true = vec_to_angles(v_true)
    pred = np.concatenate([vec_to_angles(mu), mu, np.log(kappa_scale * kappa)[:, None]], 1)
    return pred, true


def test_no_uncertainty_without_its_columns():
    pred, true = gaussian_sample()
    assert metrics.uncertainty_metrics(pred[:, :2], true) is None
    v, tv = vmf_sample()
    assert metrics.uncertainty_metrics(v[:, :5], tv) is None
    assert metrics.uncertainty_columns(pred[:, :2]) == {}


def test_sigma_floor_matches_the_loss():
    assert metrics.SIGMA_MIN_DEG == pytest.approx(np.sqrt(losses.NLL_MIN_VAR))


def test_gaussian_coverage_and_pulls_of_a_calibrated_sample():
    u = metrics.uncertainty_metrics(*gaussian_sample())
    assert u["kind"] == "gaussian" and u["n_events"] == N
    assert u["coverage_68"] == pytest.approx(0.68, abs=TOL)
    assert u["coverage_90"] == pytest.approx(0.90, abs=TOL)
    np.testing.assert_allclose(u["calibration"]["observed"], u["calibration"]["nominal"], atol=TOL)
    assert u["calibration"]["nominal"][0] == 0.05 and u["calibration"]["nominal"][-1] == 0.95
    p = u["pulls"]
    for k in ("theta", "phi"):
        assert p[f"{k}_mean"] == pytest.approx(0.0, abs=0.03)
        assert p[f"{k}_std"] == pytest.approx(1.0, abs=0.02)
    # resolution follows the predicted width bin by bin (within 10 %: sigma_eff is exact for
    # circular Gaussians only)
    r = u["resolution_vs_uncertainty"]
    assert len(r["psi68"]) == metrics.UNCERTAINTY_BINS and sum(r["n"]) == N
    assert np.all(np.diff(r["psi68"]) > 0)  # wider predicted -> wider observed
    np.testing.assert_allclose(r["psi68"], r["predicted_psi68"], rtol=0.1)


def test_gaussian_coverage_is_off_with_wrong_sigmas():
    wide = metrics.uncertainty_metrics(*gaussian_sample(scale=2.0))
    # chi2 / 4 <= -2 ln 0.32  <=>  chi2 <= -8 ln 0.32: 1 - 0.32^4 = 0.990
    assert wide["coverage_68"] == pytest.approx(1 - 0.32**4, abs=TOL)
    assert wide["coverage_68"] > 0.95
    assert wide["pulls"]["theta_std"] == pytest.approx(0.5, abs=0.02)
    narrow = metrics.uncertainty_metrics(*gaussian_sample(scale=0.5))
    assert narrow["coverage_90"] < 0.5
    assert narrow["pulls"]["phi_std"] == pytest.approx(2.0, abs=0.05)


def test_vmf_closed_forms():
    # kappa -> 0: uniform sphere, the 68 % cap has 1 - cos psi = 1.36
    assert metrics.vmf_psi_deg(np.array([1e-9]))[0] == pytest.approx(
        np.rad2deg(np.arccos(1 - 1.36)), rel=1e-6
    )
    # large kappa: psi68 = sqrt(-2 ln 0.32 / kappa) rad, content(2) = 1 and content(0) = 0
    k = np.array([1e8])
    assert metrics.vmf_psi_deg(k)[0] == pytest.approx(
        np.rad2deg(np.sqrt(-2 * np.log(0.32) / 1e8)), rel=1e-6
    )
    np.testing.assert_allclose(metrics.vmf_content(np.array([1e-9, 1.0, 1e8]), 2.0), 1.0)
    np.testing.assert_allclose(metrics.vmf_content(np.array([1e-9, 1e8]), 0.0), 0.0)
    # the content at psi68 is 0.68
    k = np.array([0.01, 1.0, 100.0, 1e6])
    psi = np.deg2rad(metrics.vmf_psi_deg(k))
    np.testing.assert_allclose(metrics.vmf_content(k, 1 - np.cos(psi)), 0.68, rtol=1e-6)


def test_vmf_coverage_of_a_calibrated_sample():
    u = metrics.uncertainty_metrics(*vmf_sample())
    assert u["kind"] == "vmf"
    assert u["coverage_68"] == pytest.approx(0.68, abs=TOL)
    assert u["coverage_90"] == pytest.approx(0.90, abs=TOL)
    np.testing.assert_allclose(u["calibration"]["observed"], u["calibration"]["nominal"], atol=TOL)
    r = u["resolution_vs_uncertainty"]
    np.testing.assert_allclose(r["psi68"], r["predicted_psi68"], rtol=0.12)
    assert "pulls" not in u and u["kappa_median"] > 0


def test_vmf_coverage_is_off_with_wrong_kappa():
    over = metrics.uncertainty_metrics(*vmf_sample(kappa_scale=4.0, kappa_range=(100, 1e5)))
    # predicted cap 2x too narrow: P(k u <= -ln 0.32 / 4) ~ 1 - 0.32^(1/4) = 0.248
    assert over["coverage_68"] == pytest.approx(1 - 0.32**0.25, abs=TOL)
    r = over["resolution_vs_uncertainty"]
    np.testing.assert_allclose(np.array(r["psi68"]) / r["predicted_psi68"], 2.0, rtol=0.12)
    under = metrics.uncertainty_metrics(*vmf_sample(kappa_scale=0.25, kappa_range=(100, 1e5)))
    assert under["coverage_68"] > 0.97


def test_val_tree_gets_the_uncertainty_branches(tmp_path):
    n = 5
    rng = np.random.default_rng(0)
    true = rng.uniform(80, 100, (n, 2))
    ids = (np.arange(n), np.arange(n))
    extra = (np.full(n, 0.05), np.zeros((n, 3)), np.zeros((n, 3)))
    base = list(evaluate.VAL_TREE_DTYPES)
    gauss = np.concatenate([true + 1, np.log(np.full((n, 2), [0.5, 2.0]))], 1)
    vec = angles_to_vec(true[:, 0], true[:, 1])
    vmf = np.concatenate([true, vec, np.full((n, 1), np.log(1e4))], 1)
    for pred, new in (
        (gauss, ["pred_sigma_theta", "pred_sigma_phi"]),
        (vmf, ["pred_kappa", "pred_psi68"]),
        (vmf[:, :5], []),
    ):
        path = tmp_path / f"v{pred.shape[1]}.root"
        with TreeWriter(path, "val_tree") as w:
            w.extend(evaluate.val_tree_columns(pred, true, *ids, *extra))
        t = uproot.open(path)["val_tree"]
        assert t.keys() == base + new
        a = t.arrays(library="np")
        assert all(a[k].dtype == np.float32 for k in new)
    cols = evaluate.val_tree_columns(gauss, true, *ids, *extra)
    np.testing.assert_allclose(cols["pred_sigma_theta"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(cols["pred_sigma_phi"], 2.0, rtol=1e-6)
    cols = evaluate.val_tree_columns(vmf, true, *ids, *extra)
    np.testing.assert_allclose(cols["pred_kappa"], 1e4, rtol=1e-6)
    psi68 = np.rad2deg(np.sqrt(-2 * np.log(0.32) / 1e4))
    np.testing.assert_allclose(cols["pred_psi68"], psi68, rtol=1e-3)


def test_predict_keeps_all_columns_and_saliency_is_on_the_angles():
    import jax.numpy as jnp

    def apply_fn(params, x, train, rng):  # output j = w_j * npho of sensor j
        return params[None, :] * x[:, :6, 0]

    predict, saliency = evaluate.make_predict_and_saliency(apply_fn)
    w = jnp.arange(1.0, 7.0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, N_SENSORS, 2)), jnp.float32)
    y = np.asarray(predict(w, x))
    assert y.shape == (3, 6)
    y2, grads = (np.asarray(a) for a in saliency(w, x))
    np.testing.assert_allclose(y2, y, rtol=1e-6)
    assert grads.shape == (3, 2, N_SENSORS, 2)
    want = np.zeros((3, 2, N_SENSORS, 2))
    want[:, 0, 0, 0], want[:, 1, 1, 0] = 1.0, 2.0
    np.testing.assert_allclose(grads, want)


def test_calibration_plot_and_report(tmp_path):
    u = metrics.uncertainty_metrics(*vmf_sample())
    path = plots.plot_calibration(u, tmp_path / "calibration.pdf")
    assert path.stat().st_size > 1000 and not list(tmp_path.glob(".*tmp*"))
    g = metrics.uncertainty_metrics(*gaussian_sample())
    plots.plot_calibration(g, tmp_path / "calibration_gauss.pdf")
    summary = {
        "run": "r", "model": "m", "variant": "", "val_resolution_deg": 1.0,
        "checkpoint": {"which": "best", "ema": True, "step": 1},
        "data": {"n_events": N, "sources": ["f"], "split": "test", "recorded_split": True},
        "metrics": {}, "events_per_s": {}, "uncertainty": g,
    }  # fmt: skip
    md = plots.summary_markdown(summary)
    assert f"**{g['coverage_68']:.3f}**" in md and "pulls theta" in md
    summary["uncertainty"] = u
    assert "median kappa" in plots.summary_markdown(summary)
