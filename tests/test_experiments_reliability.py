"""Reliability: synthetic beats real repetitions exactly when theory says so (low SNR)."""

from __future__ import annotations

import numpy as np
import pytest

from berg import metrics
from berg.errors import InvalidParameterError
from berg.experiments.reliability import expected_reliability, plot_reliability, reliability


def _world(ncsnr, model_r, *, n=300, m=60, reps=4, seed=0):
    """Unit-variance signal, real trials = signal + noise (sd 1/ncsnr), predictions correlating model_r with it."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, m))
    signal = (signal - signal.mean(0)) / signal.std(0)
    real = signal[:, None, :] + rng.standard_normal((n, reps, m)) / np.asarray(ncsnr)
    err = rng.standard_normal((n, m))
    pred = model_r * signal + np.sqrt(1 - model_r**2) * err
    return pred, real


def test_point_estimates_equal_direct_pearson():
    pred, real = _world(1.0, 0.7, n=50, m=8, reps=3)
    res = reliability(pred, real, n_boot=0)
    syn = np.mean([metrics.pearson_r(pred, real[:, k]) for k in range(3)], axis=0)
    rr = np.mean([metrics.pearson_r(real[:, j], real[:, k]) for j in range(3) for k in range(j + 1, 3)], axis=0)
    assert np.allclose(res.per_output["synthetic"], syn) and np.allclose(res.per_output["real"], rr)
    assert res.r_synthetic["all"] == pytest.approx(syn.mean())


@pytest.mark.parametrize(
    "ncsnr, model_r, synthetic_wins", [(0.5, 0.8, True), (3.0, 0.8, False), (1.0, 0.95, True), (1.5, 0.6, False)]
)
def test_synthetic_beats_real_exactly_when_theory_says(ncsnr, model_r, synthetic_wins):
    theory = expected_reliability(model_r, ncsnr)
    assert bool(theory["synthetic_better"]) is synthetic_wins
    pred, real = _world(ncsnr, model_r, seed=int(ncsnr * 10))
    res = reliability(pred, real, rois={"A": np.arange(30), "B": np.arange(30, 60)}, n_boot=300, seed=1)
    assert res.rois == ["all", "A", "B"]
    assert res.r_real["all"] == pytest.approx(float(theory["r_real"]), abs=0.03)
    assert res.r_synthetic["all"] == pytest.approx(float(theory["r_synthetic"]), abs=0.03)
    lo, hi = res.ci_difference["all"]
    if synthetic_wins:
        assert lo > 0 and res.p_not_better["all"] < 0.01
    else:
        assert hi < 0 and res.p_not_better["all"] > 0.99
    for roi in ("A", "B"):
        assert res.ci_synthetic[roi][0] < res.r_synthetic[roi] < res.ci_synthetic[roi][1]


def test_bootstrap_interval_covers_truth_at_nominal_rate():
    """90% intervals of r_real cover the true value in roughly 90% of independent worlds."""
    truth = float(expected_reliability(1.0, 0.8)["r_real"])
    covered = 0
    for seed in range(30):
        pred, real = _world(0.8, 0.9, n=80, m=4, reps=2, seed=100 + seed)
        lo, hi = reliability(pred, real, n_boot=200, ci=0.9, seed=seed).ci_real["all"]
        covered += lo <= truth <= hi
    # Binomial(30, 0.9): P(covered <= 21) ~ 0.026, P(covered == 30) ~ 0.042. A 100% rate would mean
    # intervals too wide, below 22 too narrow: both ends can fail.
    assert 22 <= covered <= 29


def test_missing_repeats_and_validation(tmp_path):
    pred, real = _world(1.0, 0.8, n=40, m=5, reps=4)
    real[3, 2] = np.nan  # a stimulus seen 3 times (like BOLD5000's one image)
    res = reliability(pred, real, n_boot=50)
    assert np.isfinite(res.r_real["all"]) and np.isfinite(res.ci_difference["all"][0])
    fig = plot_reliability(res, out_path=tmp_path / "rel.png")
    assert (tmp_path / "rel.png").stat().st_size > 1000
    fig.clf()
    with pytest.raises(InvalidParameterError, match="at least 2 repeats"):
        reliability(pred, real[:, :1])
    with pytest.raises(InvalidParameterError, match="ROI 'X'"):
        reliability(pred, real, rois={"X": np.array([99])})
    with pytest.raises(InvalidParameterError, match="differ"):
        reliability(pred[:10], real)
