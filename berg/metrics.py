"""Encoding-model accuracy metrics (vectorised numpy; outputs along the last axis).

Conventions (BERG's creation code, NSD and Algonauts 2023):

* prediction accuracy: Pearson r per output on held-out stimuli (predictions against the mean over
  repeats); r² with negative r set to 0;
* noise ceilings from the noise-ceiling SNR (NCSNR), Allen et al. 2022, "A massive 7T fMRI dataset to
  bridge cognitive neuroscience and artificial intelligence", Nature Neuroscience 25:116-126,
  Methods "Noise ceiling"; BERG/BMD use ``NC = ncsnr² / (ncsnr² + 1/n)``, NSD/Algonauts the variant
  with A/B/C stimuli averaged over 3/2/1 repeats;
* noise-ceiling-normalised explained variance = 100 · r² / NC, capped at 100;
* Algonauts 2023 score (Gifford et al. 2023, arXiv:2301.03198, "The Algonauts Project 2023
  Challenge"): the mean of that quantity over outputs ("noise-normalised mean correlation", NNMC).

Noise ceilings are returned as fractions (0-1); multiply by 100 for percent.
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
    "noise_ceiling_from_counts",
    "split_half_reliability",
    "spearman_brown",
    "noise_normalized_ev",
    "nnmc_score",
    "roi_summary",
]

_EPS = 1e-12
_OUT_BLOCK = 8192  # outputs per block in ncsnr


def pearson_r(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson correlation per output between predictions and measured responses.

    ``r_v = Σ_i (p_iv − p̄_v)(t_iv − t̄_v) / sqrt(Σ_i (p_iv − p̄_v)² · Σ_i (t_iv − t̄_v)²)``
    (Pearson 1896), computed in float64.

    Parameters
    ----------
    pred, target : (n_stimuli, n_outputs) arrays
        Same shape; at least 2 stimuli.

    Returns
    -------
    (n_outputs,) float64 array
        0 where either side is constant (an undefined correlation counts as no prediction).
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
    if pred.ndim == 1:
        pred, target = pred[:, None], target[:, None]
    p = pred - pred.mean(axis=0)
    t = target - target.mean(axis=0)
    denom = np.sqrt((p * p).sum(axis=0) * (t * t).sum(axis=0))
    return np.divide((p * t).sum(axis=0), denom, out=np.zeros(denom.shape), where=denom > _EPS)


def r2_score_from_r(r: np.ndarray) -> np.ndarray:
    """Squared correlation with negative correlations set to 0: ``max(r, 0)²`` (BERG convention)."""
    return np.square(np.clip(np.asarray(r, dtype=np.float64), 0.0, None))


def ncsnr(responses: np.ndarray) -> np.ndarray:
    """Noise-ceiling signal-to-noise ratio per output (Allen et al. 2022, Methods).

    ``σ²_noise`` = mean over stimuli of the across-repeat variance (ddof 1; stimuli with < 2
    repeats excluded); ``σ²_total`` = variance of all single trials (ddof 1);
    ``ncsnr = sqrt(max(σ²_total − σ²_noise, 0)) / sqrt(σ²_noise)``. With z-scored betas
    ``σ²_total ≈ 1`` as in NSD.

    Parameters
    ----------
    responses : (n_stimuli, n_repeats, n_outputs) array
        Single-trial responses; NaN marks a missing repeat.

    Returns
    -------
    (n_outputs,) float64 array (0 where the noise variance is 0 or undefined).
    """
    if np.ndim(responses) != 3:
        raise ValueError(f"responses must be (n_stimuli, n_repeats, n_outputs), got {np.shape(responses)}")
    m = np.shape(responses)[-1]
    out = np.empty(m, dtype=np.float64)
    for a in range(0, m, _OUT_BLOCK):  # float64 copies of column blocks only: bounded memory
        out[a : a + _OUT_BLOCK] = _ncsnr_block(np.asarray(responses[..., a : a + _OUT_BLOCK], dtype=np.float64))
    return out


def _ncsnr_block(x: np.ndarray) -> np.ndarray:
    counts = np.sum(~np.isnan(x), axis=1)
    with warnings.catch_warnings():  # stimuli with < 2 repeats give NaN variances; they are excluded
        warnings.simplefilter("ignore", RuntimeWarning)
        var_rep = np.nanvar(x, axis=1, ddof=1)
        var_rep[counts < 2] = np.nan
        noise_var = np.nanmean(var_rep, axis=0)
        total_var = np.nanvar(x.reshape(-1, x.shape[-1]), axis=0, ddof=1)
    noise_var = np.nan_to_num(noise_var, nan=0.0)
    signal = np.sqrt(np.clip(np.nan_to_num(total_var) - noise_var, 0.0, None))
    return np.divide(signal, np.sqrt(noise_var), out=np.zeros_like(signal), where=noise_var > _EPS)


def noise_ceiling(snr: np.ndarray, n: float) -> np.ndarray:
    """Noise ceiling (fraction) of responses averaged over ``n`` repeats (BERG / BMD convention).

    ``NC = ncsnr² / (ncsnr² + 1/n)`` (Allen et al. 2022; Lahner et al. 2024). It is the fraction of
    the variance of the n-repeat mean that is signal: with signal variance s² and noise variance
    σ² per trial, ``ncsnr² = s²/σ²`` and ``NC = s² / (s² + σ²/n)``.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    s2 = np.square(np.asarray(snr, dtype=np.float64))
    return s2 / (s2 + 1.0 / n)


def noise_ceiling_nsd(snr: np.ndarray, n_a: int, n_b: int, n_c: int) -> np.ndarray:
    """NSD / Algonauts 2023 noise ceiling (fraction) for a test set mixing repeat counts.

    ``NC = ncsnr² / (ncsnr² + (A/3 + B/2 + C) / (A + B + C))`` with A, B, C the numbers of test
    stimuli averaged over 3, 2 and 1 repeats (Allen et al. 2022; Gifford et al. 2023).
    """
    total = n_a + n_b + n_c
    if total <= 0:
        raise ValueError("A + B + C must be positive")
    s2 = np.square(np.asarray(snr, dtype=np.float64))
    return s2 / (s2 + (n_a / 3 + n_b / 2 + n_c) / total)


def noise_ceiling_from_counts(snr: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Noise ceiling (fraction) for test stimuli averaged over different numbers of repeats.

    ``NC = ncsnr² / (ncsnr² + mean_i(1 / n_i))``: the NSD formula written for any counts (it
    equals :func:`noise_ceiling_nsd` for counts of 3/2/1 and :func:`noise_ceiling` when every
    ``n_i = n``). Stimuli with ``n_i = 0`` are ignored.

    Parameters
    ----------
    snr : (n_outputs,) array
    counts : (n_stimuli,) or (n_stimuli, n_outputs) int array
        Repeats averaged per test stimulus (per output when missing repeats differ between outputs).
    """
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_inv = np.nanmean(inv, axis=0)
    s2 = np.square(np.asarray(snr, dtype=np.float64))
    return np.divide(s2, s2 + mean_inv, out=np.zeros(np.broadcast(s2, mean_inv).shape), where=np.isfinite(mean_inv))


def spearman_brown(r: np.ndarray, factor: float = 2.0) -> np.ndarray:
    """Spearman–Brown prophecy: reliability of a test ``factor`` times longer, ``k r / (1 + (k−1) r)``.

    Spearman 1910 and Brown 1910, British Journal of Psychology 3.
    """
    r = np.asarray(r, dtype=np.float64)
    return factor * r / (1.0 + (factor - 1.0) * r)


def split_half_reliability(responses: np.ndarray, *, seed: int = 0, n_splits: int = 10) -> np.ndarray:
    """Split-half reliability per output, Spearman–Brown corrected, averaged over random splits.

    Repeats are split into two halves (random per split); the correlation over stimuli between the
    two half means is stepped up with :func:`spearman_brown` (factor 2). For n repeats it estimates
    the reliability of the mean of n repeats, comparable to :func:`noise_ceiling` with that n
    (Lage-Castellanos et al. 2019, PLoS Comput Biol 15:e1006397).

    Parameters
    ----------
    responses : (n_stimuli, n_repeats, n_outputs) array, NaN for missing repeats
    seed : int
    n_splits : int
    """
    x = np.asarray(responses, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n_rep = x.shape[1]
    if n_rep < 2:
        raise ValueError("split-half reliability needs at least 2 repeats")
    out = np.zeros(x.shape[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n_splits):
            perm = rng.permutation(n_rep)
            a = np.nanmean(x[:, perm[: n_rep // 2]], axis=1)
            b = np.nanmean(x[:, perm[n_rep // 2 :]], axis=1)
            ok = ~(np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1))
            out += spearman_brown(pearson_r(a[ok], b[ok]))
    return out / n_splits


def noise_normalized_ev(r: np.ndarray, nc: np.ndarray) -> np.ndarray:
    """Noise-ceiling-normalised explained variance in percent: ``min(100 · max(r,0)² / NC, 100)``.

    BERG's convention (creation code of its fMRI models); ``nc`` is a fraction, NC = 0 is replaced by
    a tiny epsilon (those outputs then score 0 or 100: report NC alongside).
    """
    nc = np.maximum(np.asarray(nc, dtype=np.float64), _EPS)
    return np.minimum(100.0 * r2_score_from_r(r) / nc, 100.0)


def nnmc_score(r: np.ndarray, nc: np.ndarray) -> float:
    """Algonauts 2023 challenge score: mean over outputs of :func:`noise_normalized_ev` (percent).

    Gifford et al. 2023 (arXiv:2301.03198), "noise-normalised squared correlation" averaged over
    vertices; with NC from :func:`noise_ceiling_nsd`.
    """
    return float(np.mean(noise_normalized_ev(r, nc)))


def roi_summary(values: Mapping[str, np.ndarray], rois: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean and median of each metric within each ROI.

    Parameters
    ----------
    values : {metric name: (n_outputs,) array}
    rois : {ROI name: output indices}

    Returns
    -------
    dict
        ``{roi: {"n_outputs": int, "mean_<metric>": float, "median_<metric>": float, ...}}``
        (NaN for empty ROIs).
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
