"""Encoding-model accuracy metrics (vectorised numpy; outputs along the last axis).

Conventions follow BERG's creation code and the NSD / Algonauts literature:

* prediction accuracy: Pearson r per output on held-out stimuli, negative r set to 0 for r²;
* noise ceilings from the noise-ceiling SNR (NCSNR; Allen et al. 2022, Nature Neuroscience,
  "A massive 7T fMRI dataset...", Methods "Noise ceiling");
* noise-normalised explained variance = 100 · r² / NC, capped at 100;
* the Algonauts 2023 score (Gifford et al. 2023, arXiv:2301.03198): mean of that quantity over outputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

__all__ = [
    "pearson_r",
    "r2_score_from_r",
    "ncsnr",
    "noise_ceiling",
    "noise_ceiling_nsd",
    "split_half_reliability",
    "spearman_brown",
    "noise_normalized_ev",
    "nnmc_score",
    "roi_summary",
]

_EPS = 1e-12


def pearson_r(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson correlation per output between predictions and measured responses.

    Parameters
    ----------
    pred, target : (n_stimuli, n_outputs) arrays

    Returns
    -------
    (n_outputs,) float64 array; 0 where either side is constant.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
    p = pred - pred.mean(axis=0)
    t = target - target.mean(axis=0)
    denom = np.sqrt((p * p).sum(axis=0) * (t * t).sum(axis=0))
    return np.divide((p * t).sum(axis=0), denom, out=np.zeros(denom.shape), where=denom > _EPS)


def r2_score_from_r(r: np.ndarray) -> np.ndarray:
    """r² with negative correlations set to 0 (BERG convention): ``max(r, 0)²``."""
    return np.square(np.clip(np.asarray(r, dtype=np.float64), 0.0, None))


def ncsnr(responses: np.ndarray) -> np.ndarray:
    """Noise-ceiling signal-to-noise ratio per output.

    ``noise_var`` = mean over stimuli of the across-repeat variance (ddof 1), ``total_var`` = variance of
    all single trials, ``ncsnr = sqrt(max(total_var - noise_var, 0)) / sqrt(noise_var)``
    (Allen et al. 2022; with z-scored betas ``total_var`` = 1).

    Parameters
    ----------
    responses : (n_stimuli, n_repeats, n_outputs) array
        Single-trial responses; NaN marks a missing repeat.
    """
    x = np.asarray(responses, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"responses must be (n_stimuli, n_repeats, n_outputs), got {x.shape}")
    counts = np.sum(~np.isnan(x), axis=1)
    with warnings.catch_warnings():  # stimuli with < 2 repeats give NaN variances; they are excluded
        warnings.simplefilter("ignore", RuntimeWarning)
        var_rep = np.nanvar(x, axis=1, ddof=1)
        var_rep[counts < 2] = np.nan
        noise_var = np.nanmean(var_rep, axis=0)
        total_var = np.nanvar(x.reshape(-1, x.shape[-1]), axis=0, ddof=1)
    signal = np.sqrt(np.clip(total_var - noise_var, 0.0, None))
    return np.divide(signal, np.sqrt(noise_var), out=np.zeros_like(signal), where=noise_var > _EPS)


def noise_ceiling(snr: np.ndarray, n: float) -> np.ndarray:
    """Noise ceiling (fraction of variance, 0-1) for responses averaged over ``n`` repeats.

    ``NC = ncsnr² / (ncsnr² + 1/n)`` (BERG / BMD convention; multiply by 100 for percent).
    """
    s2 = np.square(np.asarray(snr, dtype=np.float64))
    return s2 / (s2 + 1.0 / n)


def noise_ceiling_nsd(snr: np.ndarray, n_a: int, n_b: int, n_c: int) -> np.ndarray:
    """NSD / Algonauts 2023 noise ceiling (fraction) for a test set mixing repeat counts.

    ``NC = ncsnr² / (ncsnr² + (A/3 + B/2 + C) / (A + B + C))`` with A, B, C the numbers of test stimuli
    averaged over 3, 2 and 1 repeats (Allen et al. 2022; Gifford et al. 2023).
    """
    total = n_a + n_b + n_c
    if total <= 0:
        raise ValueError("A + B + C must be positive")
    s2 = np.square(np.asarray(snr, dtype=np.float64))
    return s2 / (s2 + (n_a / 3 + n_b / 2 + n_c) / total)


def spearman_brown(r: np.ndarray, factor: float = 2.0) -> np.ndarray:
    """Spearman–Brown prophecy: reliability of a test ``factor`` times longer, ``k r / (1 + (k-1) r)``."""
    r = np.asarray(r, dtype=np.float64)
    return factor * r / (1.0 + (factor - 1.0) * r)


def split_half_reliability(responses: np.ndarray, *, seed: int = 0, n_splits: int = 10) -> np.ndarray:
    """Split-half reliability per output, Spearman–Brown corrected, averaged over random repeat splits.

    Parameters
    ----------
    responses : (n_stimuli, n_repeats, n_outputs) array, NaN for missing repeats
    """
    x = np.asarray(responses, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n_rep = x.shape[1]
    if n_rep < 2:
        raise ValueError("split-half reliability needs at least 2 repeats")
    out = np.zeros(x.shape[-1])
    for _ in range(n_splits):
        perm = rng.permutation(n_rep)
        a = np.nanmean(x[:, perm[: n_rep // 2]], axis=1)
        b = np.nanmean(x[:, perm[n_rep // 2:]], axis=1)
        out += spearman_brown(pearson_r(a, b))
    return out / n_splits


def noise_normalized_ev(r: np.ndarray, nc: np.ndarray) -> np.ndarray:
    """Noise-ceiling-normalised explained variance in percent: ``100 · max(r,0)² / NC``, capped at 100.

    ``nc`` is a fraction (0-1); outputs with NC = 0 use a tiny epsilon (their value is then 0 or 100).
    """
    nc = np.maximum(np.asarray(nc, dtype=np.float64), _EPS)
    return np.minimum(100.0 * r2_score_from_r(r) / nc, 100.0)


def nnmc_score(r: np.ndarray, nc: np.ndarray) -> float:
    """Algonauts 2023 noise-normalised mean correlation score: mean of :func:`noise_normalized_ev`."""
    return float(np.mean(noise_normalized_ev(r, nc)))


def roi_summary(values: Mapping[str, np.ndarray], rois: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean and median of each metric within each ROI.

    Parameters
    ----------
    values : {metric name: (n_outputs,) array}
    rois : {ROI name: output indices}
    """
    out: dict[str, dict[str, float]] = {}
    for roi, idx in rois.items():
        idx = np.asarray(idx, dtype=np.int64)
        out[roi] = {"n_outputs": int(idx.size)}
        for name, v in values.items():
            sel = np.asarray(v)[idx]
            out[roi][f"mean_{name}"] = float(np.nanmean(sel)) if sel.size else float("nan")
            out[roi][f"median_{name}"] = float(np.nanmedian(sel)) if sel.size else float("nan")
    return out
