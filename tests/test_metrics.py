"""berg.metrics against independent computations and simulated data with known noise ceilings."""

from __future__ import annotations

import numpy as np
import pytest

from berg import metrics


def _simulate(n_stim, n_rep, n2, *, seed=0, s2=1.0):
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n_stim, 1, n2.size)) * np.sqrt(s2)
    return signal, signal + rng.standard_normal((n_stim, n_rep, n2.size)) * np.sqrt(n2)


def test_pearson_matches_numpy_and_handles_constants():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 7)), rng.standard_normal((50, 7))
    b[:, 0] = a[:, 0] * 2 + 1
    expected = [np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(7)]
    np.testing.assert_allclose(metrics.pearson_r(a, b), expected, atol=1e-12)
    assert metrics.pearson_r(a, b)[0] == pytest.approx(1.0)
    assert metrics.pearson_r(np.ones((5, 1)), rng.standard_normal((5, 1)))[0] == 0
    with pytest.raises(ValueError):
        metrics.pearson_r(a, b[:, :3])


def test_r2_and_ev_conventions():
    r = np.array([-0.5, 0.0, 0.5, 0.9])
    np.testing.assert_allclose(metrics.r2_score_from_r(r), [0, 0, 0.25, 0.81])
    ev = metrics.noise_normalized_ev(r, np.full(4, 0.5))
    np.testing.assert_allclose(ev, [0, 0, 50, 100])  # capped at 100
    assert metrics.nnmc_score(r, np.full(4, 0.5)) == pytest.approx(37.5)
    assert metrics.noise_normalized_ev(np.array([0.1]), np.array([0.0]))[0] == 100  # NC=0 -> epsilon


def test_noise_ceiling_formulas_agree():
    snr = np.array([0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(metrics.noise_ceiling(snr, 3), snr**2 / (snr**2 + 1 / 3))
    np.testing.assert_allclose(metrics.noise_ceiling_nsd(snr, 10, 0, 0), metrics.noise_ceiling(snr, 3))
    np.testing.assert_allclose(metrics.noise_ceiling_nsd(snr, 0, 0, 5), metrics.noise_ceiling(snr, 1))
    counts = np.array([3] * 4 + [2] * 3 + [1] * 2)
    np.testing.assert_allclose(metrics.noise_ceiling_from_counts(snr, counts), metrics.noise_ceiling_nsd(snr, 4, 3, 2))
    np.testing.assert_allclose(metrics.noise_ceiling_from_counts(snr, np.full(7, 10)), metrics.noise_ceiling(snr, 10))
    np.testing.assert_allclose(metrics.spearman_brown(np.array([0.5])), [2 / 3])
    with pytest.raises(ValueError):
        metrics.noise_ceiling_nsd(snr, 0, 0, 0)


def test_ncsnr_and_nc_match_analytic_within_sampling_error():
    n_stim, n_rep = 500, 4
    n2 = np.geomspace(0.25, 8.0, 300)
    signal, x = _simulate(n_stim, n_rep, n2, seed=1)
    x[::7, 3] = np.nan  # missing repeats are handled
    est = metrics.ncsnr(x)
    s2 = signal[:, 0].var(axis=0, ddof=1)  # the realised signal variance of these stimuli
    true = np.sqrt(s2 / n2)
    # the noise-variance estimate pools ~1,900 df, so its relative sampling error is ~3 %
    assert np.median(np.abs(est / true - 1)) < 0.05
    nc_true = metrics.noise_ceiling(true, n_rep)
    nc_est = metrics.noise_ceiling(est, n_rep)
    err = nc_est - nc_true
    # low-SNR outputs carry the largest error: their signal variance is a small difference of two
    # noisy variances (SE of NC ~0.03-0.05 at NC ~0.35 with these counts)
    assert np.median(np.abs(err)) < 0.02 and np.quantile(np.abs(err), 0.95) < 0.08
    assert abs(np.mean(err)) < 0.01  # no bias overall
    # averaged over independent replicates the estimate converges on the analytic value per output
    reps = [metrics.noise_ceiling(metrics.ncsnr(_simulate(200, 4, n2[::10], seed=100 + i)[1]), 4) for i in range(20)]
    analytic = metrics.noise_ceiling(np.sqrt(1.0 / n2[::10]), 4)  # population s2 = 1
    assert np.abs(np.mean(reps, axis=0) - analytic).max() < 0.03


def test_ncsnr_zero_for_pure_noise_and_blocks_are_consistent(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 3, 40))
    assert np.mean(metrics.ncsnr(x)) < 0.15
    _, y = _simulate(100, 3, np.linspace(0.5, 2, 50), seed=3)
    whole = metrics.ncsnr(y)
    monkeypatch.setattr(metrics, "_OUT_BLOCK", 7)  # column blocks give identical numbers
    np.testing.assert_allclose(metrics.ncsnr(y), whole, rtol=1e-12)
    with pytest.raises(ValueError):
        metrics.ncsnr(y[:, 0])


def test_split_half_tracks_noise_ceiling():
    n2 = np.geomspace(0.2, 5.0, 200)
    _, x = _simulate(400, 4, n2, seed=4)
    rel = metrics.split_half_reliability(x)
    nc = metrics.noise_ceiling(np.sqrt(1 / n2), 4)
    assert np.corrcoef(rel, nc)[0, 1] > 0.95
    assert np.median(np.abs(rel - nc)) < 0.05
    with pytest.raises(ValueError):
        metrics.split_half_reliability(x[:, :1])


def test_oracle_reaches_ceiling_and_shuffle_reaches_zero():
    n2 = np.geomspace(0.3, 3.0, 400)
    signal, x = _simulate(600, 5, n2, seed=5)
    target = x.mean(axis=1)
    nc = metrics.noise_ceiling(metrics.ncsnr(x), 5)
    r = metrics.pearson_r(signal[:, 0], target)
    ev = metrics.noise_normalized_ev(r, nc)
    assert 95 < np.mean(ev) <= 100
    assert np.mean(r**2 / nc) == pytest.approx(1.0, abs=0.03)  # uncapped, r² ≈ NC for the oracle
    shuffled = metrics.pearson_r(signal[np.random.default_rng(0).permutation(600), 0], target)
    assert abs(np.mean(shuffled)) < 0.01 and np.std(shuffled) < 0.08


def test_roi_summary():
    v = {"r": np.arange(6.0)}
    out = metrics.roi_summary(v, {"a": np.array([0, 1, 2]), "b": np.array([5]), "empty": np.array([], dtype=int)})
    assert out["a"] == {"n_outputs": 3, "mean_r": 1.0, "median_r": 1.0}
    assert out["b"]["mean_r"] == 5.0
    assert np.isnan(out["empty"]["mean_r"])
