"""Relational neural control (RNC): stimuli that drive, suppress, align or disentangle two ROIs.

The definitions follow Gifford et al., "In silico discovery of representational relationships across
visual cortex" and its code, github.com/gifale95/RNC (files cited as ``RNC/<path>``):

Univariate RNC
    * ROI score of a stimulus: the mean response over the ROI's outputs (``nanmean``), optionally only
      outputs with ``ncsnr > threshold`` (``RNC/02_univariate_rnc/01_baseline.py``).
    * Null baseline: many random stimulus batches (without replacement, seeded); each batch's score is
      the mean ROI score over its stimuli; the baseline batch is the one whose score is closest to the
      mean of that null distribution (``01_baseline.py``). Each ROI has its own baseline batch, drawn
      from the same random batches.
    * Ranking (``02_univariate_rnc.py``): stimuli ordered by the sum (high/high, low/low) or the
      difference (high/low, low/high) of the two ROI scores; a stimulus is kept only if each ROI's
      score is beyond that ROI's baseline score by ``margin`` in the required direction (RNC: 0.04);
      the first ``n_images`` kept stimuli (RNC: 25) are the controlling stimuli.
    * Leave-one-subject-out cross-validation (``03_stats.py``): stimuli and baselines are chosen on
      the mean of the other subjects and scored on the held-out subject; within-subject p-values from
      a permutation null (``(count + 1) / (n + 1)``, one-sided in the condition's direction),
      Benjamini-Hochberg over the 4 conditions x 2 ROIs, between-subject p from the binomial
      probability of that many significant subjects at alpha, 95 % bootstrap CIs over subjects.

Multivariate RNC (``RNC/04_multivariate_rnc/``)
    * Score of a batch: Pearson r between the two ROIs' RSMs restricted to the batch (lower triangle).
    * Genetic search (``05_multivariate_rnc.py``, ``utils.py``): a population of random batches
      (RNC: 200 batches of 50); each generation adds 5 mutants per batch (1 image, 10 %, 25 %, 50 %,
      75 % of the batch replaced by images not in it), then as many new random batches as the
      population now holds; keeps the best ``population`` batches: highest r to *align*, lowest |r|
      to *disentangle*.
    * Baseline and cross-validation as for univariate RNC, with batch RSA scores (``04_baseline.py``,
      ``06_stats.py``).

Everything is vectorised (random batches by rejection sampling, batch scores by one gather), so the
NSD scale (73,000 stimuli x 8 subjects x 2 ROIs, 10^6 null batches) runs in minutes on a CPU.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError
from berg.experiments._inputs import (
    as_subject_dict,
    iter_row_blocks,
    roi_indices_for,
    select_outputs,
    stimulus_ids_or_range,
)

__all__ = [
    "univariate_responses",
    "null_baseline",
    "rank_conditions",
    "univariate_control",
    "genetic_search",
    "multivariate_control",
    "Baseline",
    "UnivariateControlResult",
    "UnivariateEvidence",
    "MultivariateControlResult",
    "MultivariateEvidence",
    "plot_univariate_control",
    "plot_multivariate_control",
    "CONDITIONS",
]

log = logging.getLogger(__name__)

#: The four univariate control conditions; for each, the required direction of ROI 1 and ROI 2.
CONDITIONS: dict[str, tuple[int, int]] = {
    "high_high": (+1, +1),
    "low_low": (-1, -1),
    "high_low": (+1, -1),
    "low_high": (-1, +1),
}
#: RNC's mutation sizes: 1 image, then these fractions of the batch.
MUTATION_FRACTIONS = (0.10, 0.25, 0.50, 0.75)
_CHUNK = 50_000  # random batches drawn per chunk in null distributions


# ----------------------------------------------------------------------------- random batches
def random_batches(rng: np.random.Generator, n: int, k: int, m: int) -> np.ndarray:
    """``m`` uniformly random batches of ``k`` distinct indices out of ``n``, rows sorted.

    Rejection sampling of i.i.d. draws is exact (a draw without repeats is a uniform ``k``-subset) and
    vectorised; when repeats are likely (``k**2 > 4 n``) random keys are partitioned instead.
    """
    if not 0 < k <= n:
        raise InvalidParameterError(f"batch size {k} must be between 1 and the number of stimuli ({n})")
    if k * k > 4 * n:
        out = np.empty((m, k), dtype=np.int64)
        step = max(1, 2**24 // n)
        for s in range(0, m, step):
            keys = rng.random((min(step, m - s), n))
            out[s : s + step] = np.argpartition(keys, k - 1, axis=1)[:, :k]
        out.sort(axis=1)
        return out
    out = np.sort(rng.integers(0, n, size=(m, k)), axis=1)
    bad = np.flatnonzero((np.diff(out, axis=1) == 0).any(axis=1)) if k > 1 else np.array([], int)
    while bad.size:
        redo = np.sort(rng.integers(0, n, size=(bad.size, k)), axis=1)
        out[bad] = redo
        bad = bad[(np.diff(redo, axis=1) == 0).any(axis=1)]
    return out


def _null_search(
    evaluate: Callable[[np.ndarray], np.ndarray], n: int, k: int, n_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Null distribution of batch scores; returns (null scores, chunk seeds, chunk sizes).

    Batches are not kept (10^6 x 25 indices would be 200 MB): each chunk has its own seed, so any batch
    can be drawn again exactly (:func:`_null_batch`).
    """
    if n_samples < 1:
        raise InvalidParameterError(f"n_null must be a positive int, not {n_samples!r}")
    sizes = np.diff(np.r_[np.arange(0, n_samples, _CHUNK), n_samples])
    seeds = np.random.SeedSequence(seed).generate_state(len(sizes), dtype=np.uint64)
    scores = np.concatenate(
        [evaluate(random_batches(np.random.default_rng(int(s)), n, k, int(m))) for s, m in zip(seeds, sizes)]
    )
    return scores, seeds, sizes


def _null_batch(i: int, n: int, k: int, seeds: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    chunk = int(i // _CHUNK)
    batches = random_batches(np.random.default_rng(int(seeds[chunk])), n, k, int(sizes[chunk]))
    return batches[i - chunk * _CHUNK]


@dataclass(frozen=True)
class Baseline:
    """The null baseline batch: the random batch whose score is closest to the null mean.

    Attributes
    ----------
    indices : (k,) int array
        Positions of the baseline stimuli.
    stimulus_ids : (k,) array
    score : float
        Its score on the data it was chosen on.
    null_mean, null_std : float
        Mean and standard deviation of the null distribution of batch scores.
    n_null : int
        Number of random batches.
    """

    indices: np.ndarray
    stimulus_ids: np.ndarray
    score: float
    null_mean: float
    null_std: float
    n_null: int


def _baseline_from(
    evaluate: Callable[[np.ndarray], np.ndarray], n: int, k: int, n_null: int, seed: int, ids: np.ndarray
) -> Baseline:
    null, seeds, sizes = _null_search(evaluate, n, k, n_null, seed)
    mean = float(np.nanmean(null))
    best = int(np.nanargmin(np.abs(null - mean)))
    batch = _null_batch(best, n, k, seeds, sizes)
    return Baseline(batch, ids[batch], float(null[best]), mean, float(np.nanstd(null)), int(n_null))


def null_baseline(
    scores: np.ndarray,
    *,
    batch_size: int = 25,
    n_null: int = 1_000_000,
    seed: int = 0,
    stimulus_ids: Sequence[Any] | np.ndarray | None = None,
) -> Baseline:
    """Univariate null baseline (RNC ``02_univariate_rnc/01_baseline.py``).

    Parameters
    ----------
    scores : (n_stimuli,) array
        One ROI's score per stimulus (e.g. from :func:`univariate_responses`, averaged over subjects).
    batch_size : int
        Stimuli per random batch (RNC: 25, the number of controlling images).
    n_null : int
        Random batches in the null distribution (RNC: 1,000,000).
    seed : int
        Seed of the random batches (the same seed gives the same batches for every ROI).
    stimulus_ids : array, optional
        Id of each stimulus (default: positions).

    Returns
    -------
    Baseline
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise InvalidParameterError(f"scores must be 1-D (n_stimuli,); got shape {scores.shape}")
    ids = stimulus_ids_or_range(stimulus_ids, len(scores))
    return _baseline_from(lambda b: scores[b].mean(axis=1), len(scores), batch_size, n_null, seed, ids)


# ----------------------------------------------------------------------------- univariate RNC
def _subject_ncsnr(ncsnr: Any, subject: Any) -> np.ndarray | None:
    """One subject's NCSNR from an array, a ``{subject: array}`` mapping, or the model's reliability accessor."""
    from berg.core.contract import BaseModelInterface

    if isinstance(ncsnr, BaseModelInterface):
        return ncsnr.reliability(subject).ncsnr
    return ncsnr[subject] if isinstance(ncsnr, Mapping) else ncsnr


def univariate_responses(
    responses: Any,
    rois: Mapping[Any, Any],
    roi_names: Sequence[str] | None = None,
    *,
    ncsnr: Any = None,
    ncsnr_threshold: float | None = None,
    block_rows: int | None = None,
) -> dict[Any, dict[str, np.ndarray]]:
    """Per-subject ROI scores: the mean response over each ROI's outputs, per stimulus.

    Parameters
    ----------
    responses : (n_stimuli, n_outputs) array-like or {subject: array-like}
        Read in row blocks (zarr / h5py / memmap arrays never load whole).
    rois : {roi: indices} or {subject: {roi: indices}}
        Output indices per ROI, as ``model.get_metadata()["rois"]`` gives them.
    roi_names : list of str, optional
        ROIs to score (default: all in ``rois``).
    ncsnr : (n_outputs,) array, {subject: array}, or a loaded berg model, optional
        Noise-ceiling SNR of every output. Pass the model that produced ``responses`` to use its own
        reliability (``model.reliability(subject).ncsnr``: each release's NCSNR, for the model's selection).
    ncsnr_threshold : float, optional
        Keep only outputs with ``ncsnr > ncsnr_threshold`` (RNC: 0.5).
    block_rows : int, optional
        Stimuli read per block.

    Returns
    -------
    {subject: {roi: (n_stimuli,) float64}}
        The only subject key is None when ``responses`` is a single array.
    """
    table = as_subject_dict(responses)
    out: dict[Any, dict[str, np.ndarray]] = {}
    for subject, array in table.items():
        sub_rois = rois[subject] if subject in rois and isinstance(rois[subject], Mapping) else rois
        names = list(roi_names) if roi_names is not None else list(sub_rois)
        sub_ncsnr = _subject_ncsnr(ncsnr, subject)
        cols = {
            r: select_outputs(roi_indices_for(rois, subject, r), sub_ncsnr, ncsnr_threshold, roi=str(r)) for r in names
        }
        union = np.unique(np.concatenate(list(cols.values())))
        where = {r: np.searchsorted(union, c) for r, c in cols.items()}
        # ROI means of a block as one BLAS product with an averaging matrix (4x faster than nanmean)
        average = np.zeros((len(union), len(names)))
        for j, r in enumerate(names):
            np.add.at(average[:, j], where[r], 1.0 / len(where[r]))
        scores = np.empty((len(names), int(array.shape[0])))
        for start, stop, block in iter_row_blocks(array, block_rows=block_rows, columns=union):
            if not np.isnan(block).any():
                scores[:, start:stop] = (block @ average).T
                continue
            for j, r in enumerate(names):  # missing outputs (NaN): mean over the valid ones, as RNC
                with warnings.catch_warnings():
                    # a stimulus with no valid output in the ROI gets NaN, by design
                    warnings.simplefilter("ignore", RuntimeWarning)
                    scores[j, start:stop] = np.nanmean(block[:, where[r]], axis=1)
        out[subject] = {r: scores[j] for j, r in enumerate(names)}
    return out


def rank_conditions(
    scores_1: np.ndarray,
    scores_2: np.ndarray,
    baseline: tuple[float, float],
    *,
    margin: float = 0.04,
    n_images: int = 25,
) -> dict[str, np.ndarray]:
    """The controlling stimuli of the four conditions (RNC ``02_univariate_rnc/02_univariate_rnc.py``).

    Parameters
    ----------
    scores_1, scores_2 : (n_stimuli,) arrays
        Scores of ROI 1 and ROI 2.
    baseline : (float, float)
        Baseline scores of ROI 1 and ROI 2.
    margin : float
        How far beyond its baseline each ROI must be (same units as the scores; RNC: 0.04).
    n_images : int
        Stimuli kept per condition (fewer when fewer pass the margin).

    Returns
    -------
    {condition: (k,) int array}
        Positions of the chosen stimuli, best first, for ``high_high``, ``low_low``, ``high_low``,
        ``low_high``.
    """
    s1, s2 = np.asarray(scores_1, dtype=np.float64), np.asarray(scores_2, dtype=np.float64)
    out = {}
    for cond, (d1, d2) in CONDITIONS.items():
        key = d1 * s1 + d2 * s2  # sum or difference, signed so that larger is better
        key = np.where(np.isnan(key), -np.inf, key)
        order = np.argsort(-key, kind="stable")
        ok = (d1 * (s1[order] - baseline[0]) >= margin) & (d2 * (s2[order] - baseline[1]) >= margin)
        out[cond] = order[ok][:n_images]
        if len(out[cond]) < n_images:
            log.warning(
                "%s: only %d stimuli pass the margin %.3g (asked for %d)", cond, len(out[cond]), margin, n_images
            )
    return out


@dataclass(frozen=True)
class UnivariateEvidence:
    """Leave-one-subject-out evidence for univariate control (RNC ``03_stats.py``).

    Arrays are ``(n_subjects, 2)``: held-out subject x (ROI 1, ROI 2).

    Attributes
    ----------
    subjects : list
        Held-out subject of each row.
    chosen : {condition: list of (k,) arrays}
        Stimulus ids chosen on the other subjects, per fold.
    test : {condition: array}
        Held-out subject's mean ROI score over the chosen stimuli.
    baseline : array
        Held-out subject's mean ROI score over the baseline stimuli (chosen on the other subjects).
    p_within : {condition: array}
        Permutation p-value of ``test - baseline`` in the condition's direction.
    significant : {condition: bool array}
        Benjamini-Hochberg at ``alpha`` over 4 conditions x 2 ROIs, per subject.
    p_between : {condition: (2,) array}
        Binomial probability of at least that many significant subjects by chance.
    ci : {condition or "baseline": (2, 2) array}
        95 % bootstrap CI over subjects of the mean held-out score: rows (low, high), columns ROIs.
    """

    subjects: list
    chosen: dict[str, list[np.ndarray]]
    test: dict[str, np.ndarray]
    baseline: np.ndarray
    p_within: dict[str, np.ndarray]
    significant: dict[str, np.ndarray]
    p_between: dict[str, np.ndarray]
    ci: dict[str, np.ndarray]
    alpha: float


@dataclass(frozen=True)
class UnivariateControlResult:
    """Result of :func:`univariate_control`.

    Attributes
    ----------
    rois : (str, str)
    chosen : {condition: (k,) array}
        Stimulus ids of the controlling stimuli, chosen on the mean over all subjects.
    chosen_indices : {condition: (k,) int array}
        Their positions.
    scores : {condition: (k, 2) array}
        Mean-over-subjects ROI scores of each chosen stimulus.
    baseline : (Baseline, Baseline)
        Baseline batch of each ROI (on the mean over all subjects).
    univariate : {subject: {roi: (n_stimuli,)}}
        The ROI scores everything was computed from.
    evidence : UnivariateEvidence or None
        Leave-one-subject-out evidence (None with one subject or ``cross_validate=False``).
    """

    rois: tuple[str, str]
    chosen: dict[str, np.ndarray]
    chosen_indices: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    baseline: tuple[Baseline, Baseline]
    univariate: dict[Any, dict[str, np.ndarray]]
    evidence: UnivariateEvidence | None


def _p_one_sided(null: np.ndarray, observed: float, direction: int) -> float:
    """RNC's permutation p-value: ``(#null beyond observed + 1) / (n + 1)`` in ``direction``."""
    beyond = np.count_nonzero(null > observed) if direction > 0 else np.count_nonzero(null < observed)
    return (beyond + 1) / (len(null) + 1)


def _bootstrap_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """95 % percentile CI of the mean over rows (subjects), per column."""
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    return np.percentile(means, [2.5, 97.5], axis=0)


def _between_subject_p(significant: np.ndarray, alpha: float) -> np.ndarray:
    from scipy.stats import binom

    k = significant.sum(axis=0)
    return binom.sf(k - 1, significant.shape[0], alpha)


def univariate_control(
    responses: Any = None,
    rois: Mapping[Any, Any] | None = None,
    *,
    roi_pair: tuple[str, str],
    univariate: Mapping[Any, Mapping[str, np.ndarray]] | None = None,
    stimulus_ids: Sequence[Any] | np.ndarray | None = None,
    n_images: int = 25,
    margin: float = 0.04,
    ncsnr: Any = None,
    ncsnr_threshold: float | None = None,
    n_null: int = 1_000_000,
    cross_validate: bool = True,
    n_permutations: int = 10_000,
    n_bootstrap: int = 10_000,
    alpha: float = 0.05,
    seed: int = 0,
) -> UnivariateControlResult:
    """Univariate relational neural control of two ROIs (Gifford et al., gifale95/RNC).

    Parameters
    ----------
    responses : array-like or {subject: array-like}, optional
        In silico responses ``(n_stimuli, n_outputs)`` per subject (numpy, zarr, h5py); or give
        ``univariate`` instead.
    rois : {roi: indices} or {subject: {roi: indices}}, optional
        Output indices of the ROIs (``model.get_metadata()["rois"]``).
    roi_pair : (str, str)
        ROI 1 and ROI 2.
    univariate : {subject: {roi: (n_stimuli,)}}, optional
        Precomputed ROI scores (:func:`univariate_responses`).
    stimulus_ids : array, optional
        Id of each stimulus (default: positions).
    n_images : int
        Controlling stimuli per condition (RNC: 25); also the baseline batch size.
    margin : float
        Distance from the baseline each ROI must exceed (RNC: 0.04, in response units).
    ncsnr, ncsnr_threshold :
        Keep only outputs with ``ncsnr > ncsnr_threshold`` (see :func:`univariate_responses`).
    n_null : int
        Random batches for each baseline (RNC: 1,000,000).
    cross_validate : bool
        Leave-one-subject-out evidence (needs at least 2 subjects).
    n_permutations, n_bootstrap : int
        Permutation null size (RNC: 100,000) and bootstrap resamples for the CIs.
    alpha : float
        Significance level of the within- and between-subject tests.
    seed : int

    Returns
    -------
    UnivariateControlResult
    """
    if len(roi_pair) != 2 or roi_pair[0] == roi_pair[1]:
        raise InvalidParameterError(f"roi_pair must be two different ROI names, not {roi_pair!r}")
    r1, r2 = roi_pair
    if univariate is None:
        if responses is None or rois is None:
            raise InvalidParameterError("give responses and rois, or precomputed univariate= scores")
        univariate = univariate_responses(responses, rois, roi_pair, ncsnr=ncsnr, ncsnr_threshold=ncsnr_threshold)
    subjects = list(univariate)
    for s in subjects:
        missing = [r for r in roi_pair if r not in univariate[s]]
        if missing:
            raise InvalidParameterError(f"univariate[{s!r}] lacks ROI(s) {missing}; it has {sorted(univariate[s])}")
    uni = np.stack([[np.asarray(univariate[s][r], dtype=np.float64) for r in roi_pair] for s in subjects])
    n = uni.shape[2]  # uni: (subjects, 2, n_stimuli)
    ids = stimulus_ids_or_range(stimulus_ids, n)

    def choose(train: np.ndarray) -> tuple[dict[str, np.ndarray], tuple[Baseline, Baseline]]:
        base = tuple(
            _baseline_from(lambda b, t=train[r]: t[b].mean(axis=1), n, n_images, n_null, seed, ids) for r in range(2)
        )
        chosen = rank_conditions(train[0], train[1], (base[0].score, base[1].score), margin=margin, n_images=n_images)
        return chosen, base  # type: ignore[return-value]

    mean_all = np.nanmean(uni, axis=0)
    chosen, base = choose(mean_all)
    result_scores = {c: mean_all[:, idx].T for c, idx in chosen.items()}
    evidence = None
    if cross_validate and len(subjects) >= 2:
        evidence = _univariate_evidence(uni, subjects, ids, choose, n_images, n_permutations, n_bootstrap, alpha, seed)
    elif cross_validate:
        log.info("one subject: no leave-one-subject-out evidence")
    return UnivariateControlResult(
        (r1, r2),
        {c: ids[i] for c, i in chosen.items()},
        chosen,
        result_scores,
        base,
        {s: dict(univariate[s]) for s in subjects},
        evidence,
    )


def _univariate_evidence(
    uni: np.ndarray,
    subjects: list,
    ids: np.ndarray,
    choose: Callable,
    n_images: int,
    n_permutations: int,
    n_bootstrap: int,
    alpha: float,
    seed: int,
) -> UnivariateEvidence:
    from scipy.stats import false_discovery_control

    n_sub, _, n = uni.shape
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    test = {c: np.full((n_sub, 2), np.nan) for c in CONDITIONS}
    p_within = {c: np.ones((n_sub, 2)) for c in CONDITIONS}
    base_test = np.full((n_sub, 2), np.nan)
    chosen_ids: dict[str, list[np.ndarray]] = {c: [] for c in CONDITIONS}
    for f in range(n_sub):
        train = np.nanmean(np.delete(uni, f, axis=0), axis=0)
        held = uni[f]
        chosen, base = choose(train)
        base_test[f] = [np.nanmean(held[r, base[r].indices]) for r in range(2)]
        # Permutation null (RNC shuffles the held-out scores and re-reads the same positions): the
        # difference between the means of two disjoint random batches of the compared sizes.
        for c, (d1, d2) in CONDITIONS.items():
            idx = chosen[c]
            chosen_ids[c].append(ids[idx])
            if len(idx) == 0:
                continue
            batches = random_batches(rng, n, len(idx) + n_images, n_permutations)
            rng.permuted(batches, axis=1, out=batches)  # split a uniform subset into two at random
            for r, d in enumerate((d1, d2)):
                test[c][f, r] = np.nanmean(held[r, idx])
                null = held[r, batches[:, : len(idx)]].mean(1) - held[r, batches[:, len(idx) :]].mean(1)
                p_within[c][f, r] = _p_one_sided(null, test[c][f, r] - base_test[f, r], d)
    significant = {c: np.zeros((n_sub, 2), dtype=bool) for c in CONDITIONS}
    for f in range(n_sub):
        flat = np.concatenate([p_within[c][f] for c in CONDITIONS])
        sig = false_discovery_control(flat, method="bh") <= alpha
        for i, c in enumerate(CONDITIONS):
            significant[c][f] = sig[2 * i : 2 * i + 2]
    ci = {c: _bootstrap_ci(np.nan_to_num(test[c], nan=np.nanmean(test[c])), n_bootstrap, rng) for c in CONDITIONS}
    ci["baseline"] = _bootstrap_ci(base_test, n_bootstrap, rng)
    return UnivariateEvidence(
        subjects,
        chosen_ids,
        test,
        base_test,
        p_within,
        significant,
        {c: _between_subject_p(significant[c], alpha) for c in CONDITIONS},
        ci,
        alpha,
    )


# ----------------------------------------------------------------------------- multivariate RNC
def _mutation_sizes(k: int, fractions: Sequence[float]) -> list[int]:
    # RNC: 1 image, then round(k * fraction) images (at least 1, at most k)
    return [1] + [min(k, max(1, int(round(k * f)))) for f in fractions]


def _mutate(rng: np.random.Generator, batches: np.ndarray, n: int, sizes: Sequence[int]) -> np.ndarray:
    """For every batch, one mutant per size: that many positions replaced by stimuli not in the batch."""
    p, k = batches.shape
    if n - k < max(sizes):
        raise InvalidParameterError(
            f"mutations need at least {max(sizes)} stimuli outside a batch of {k}; there are only {n - k}"
        )
    mutants = []
    for m in sizes:
        pos = np.argpartition(rng.random((p, k)), m - 1, axis=1)[:, :m]
        new = rng.integers(0, n, size=(p, m))
        while True:
            # redraw rows whose new stimuli repeat each other or are already in the batch
            in_batch = (new[:, :, None] == batches[:, None, :]).any(axis=2).any(axis=1)
            s = np.sort(new, axis=1)
            repeats = (np.diff(s, axis=1) == 0).any(axis=1) if m > 1 else np.zeros(p, bool)
            bad = np.flatnonzero(in_batch | repeats)
            if not bad.size:
                break
            new[bad] = rng.integers(0, n, size=(bad.size, m))
        child = batches.copy()
        np.put_along_axis(child, pos, new, axis=1)
        mutants.append(child)
    out = np.concatenate(mutants)
    out.sort(axis=1)
    return out


def _rank_key(scores: np.ndarray, condition: str) -> np.ndarray:
    """Smaller is better: -r to align, |r| to disentangle; NaN scores are worst."""
    key = -scores if condition == "align" else np.abs(scores)
    return np.where(np.isnan(key), np.inf, key)


def genetic_search(
    rsm_a: np.ndarray,
    rsm_b: np.ndarray,
    *,
    condition: str = "align",
    n_images: int = 50,
    population: int = 200,
    generations: int = 2000,
    mutation_fractions: Sequence[float] = MUTATION_FRACTIONS,
    n_random: int | None = None,
    method: str = "pearson",
    seed: int = 0,
) -> tuple[np.ndarray, float, np.ndarray]:
    """RNC's genetic search for a stimulus batch that aligns or disentangles two RSMs.

    Follows ``RNC/04_multivariate_rnc/05_multivariate_rnc.py`` and ``utils.py``: each generation adds
    one mutant per batch and mutation size (1 image and ``mutation_fractions`` of the batch, replaced
    by stimuli not in it), then ``n_random`` new random batches (RNC: as many as the population holds
    after mutation, the default), scores every batch by the RSM correlation over it, and keeps the best
    ``population`` (highest r for ``"align"``, lowest |r| for ``"disentangle"``). Scores of surviving
    batches are reused, not recomputed.

    Parameters
    ----------
    rsm_a, rsm_b : (n, n) arrays
        RSMs of the two ROIs over the same stimuli.
    condition : {"align", "disentangle"}
    n_images : int
        Stimuli per batch (RNC: 50).
    population : int
        Batches kept per generation (RNC: 200).
    generations : int
        RNC: 2000.
    mutation_fractions : sequence of float
        Fractions of the batch replaced, besides the 1-image mutation.
    n_random : int, optional
        New random batches per generation.
    method : {"pearson", "spearman"}
    seed : int

    Returns
    -------
    best : (n_images,) int array
        Positions of the best batch (sorted).
    score : float
        Its RSM correlation.
    history : (generations,) array
        Best score after each generation.
    """
    from berg.experiments.rsa import batch_rsm_correlation

    if condition not in ("align", "disentangle"):
        raise InvalidParameterError(f"condition must be 'align' or 'disentangle', not {condition!r}")
    if population < 1 or generations < 1:
        raise InvalidParameterError(f"population and generations must be >= 1; got {population}, {generations}")
    n = rsm_a.shape[0]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    sizes = _mutation_sizes(n_images, mutation_fractions)
    n_new = n_random if n_random is not None else population * (1 + len(sizes))
    batches = random_batches(rng, n, n_images, population)
    scores = batch_rsm_correlation(rsm_a, rsm_b, batches, method=method)
    history = np.empty(generations)
    for g in range(generations):
        children = np.concatenate([_mutate(rng, batches, n, sizes), random_batches(rng, n, n_images, n_new)])
        batches = np.concatenate([batches, children])
        scores = np.concatenate([scores, batch_rsm_correlation(rsm_a, rsm_b, children, method=method)])
        keep = np.argsort(_rank_key(scores, condition), kind="stable")[:population]
        batches, scores = batches[keep], scores[keep]
        history[g] = scores[0]
    return batches[0], float(scores[0]), history


@dataclass(frozen=True)
class MultivariateEvidence:
    """Leave-one-subject-out evidence for multivariate control (RNC ``04_multivariate_rnc/06_stats.py``).

    Attributes
    ----------
    subjects : list
    chosen : {condition: list of (k,) arrays}
        Stimulus ids found on the other subjects' mean RSMs, per fold.
    test : {condition: (n_subjects,) array}
        RSM correlation of the found batch on the held-out subject.
    baseline : (n_subjects,) array
        The baseline batch's RSM correlation on the held-out subject.
    p_within : {condition: (n_subjects,) array}
        Permutation p-value of ``test - baseline`` (above for align, below for disentangle).
    significant : {condition: bool array}
        Benjamini-Hochberg at ``alpha`` over the conditions, per subject.
    p_between : {condition: float}
    ci : {condition or "baseline": (2,) array}
        95 % bootstrap CI over subjects.
    """

    subjects: list
    chosen: dict[str, list[np.ndarray]]
    test: dict[str, np.ndarray]
    baseline: np.ndarray
    p_within: dict[str, np.ndarray]
    significant: dict[str, np.ndarray]
    p_between: dict[str, float]
    ci: dict[str, np.ndarray]
    alpha: float


@dataclass(frozen=True)
class MultivariateControlResult:
    """Result of :func:`multivariate_control`.

    Attributes
    ----------
    chosen : {condition: (k,) array}
        Stimulus ids of the best batch, found on the mean RSMs of all subjects.
    chosen_indices : {condition: (k,) int array}
    scores : {condition: float}
        Their RSM correlation.
    history : {condition: (generations,) array}
        Best score per generation.
    baseline : Baseline
        The random batch with RSM correlation closest to the null mean.
    evidence : MultivariateEvidence or None
    """

    chosen: dict[str, np.ndarray]
    chosen_indices: dict[str, np.ndarray]
    scores: dict[str, float]
    history: dict[str, np.ndarray]
    baseline: Baseline
    evidence: MultivariateEvidence | None


def _rsm_table(rsms: Any, name: str) -> dict[Any, np.ndarray]:
    table = dict(rsms) if isinstance(rsms, Mapping) else {None: rsms}
    for s, m in table.items():
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise InvalidParameterError(f"{name}[{s!r}] must be a square RSM; got shape {m.shape}")
    return table


def multivariate_control(
    rsms_a: Any,
    rsms_b: Any,
    *,
    conditions: Sequence[str] = ("align", "disentangle"),
    stimulus_ids: Sequence[Any] | np.ndarray | None = None,
    n_images: int = 50,
    population: int = 200,
    generations: int = 2000,
    mutation_fractions: Sequence[float] = MUTATION_FRACTIONS,
    n_null: int = 100_000,
    cross_validate: bool = True,
    n_permutations: int = 10_000,
    n_bootstrap: int = 10_000,
    alpha: float = 0.05,
    method: str = "pearson",
    seed: int = 0,
) -> MultivariateControlResult:
    """Multivariate relational neural control: batches that align or disentangle two ROIs' RSMs.

    Parameters
    ----------
    rsms_a, rsms_b : (n, n) RSM or {subject: RSM}
        RSMs of ROI A and ROI B (:func:`berg.experiments.roi_rsms`), numpy arrays or ``np.memmap``
        (batches are gathered by fancy indexing). With several subjects the search runs on their mean.
    conditions : sequence of {"align", "disentangle"}
    stimulus_ids : array, optional
    n_images, population, generations, mutation_fractions :
        Genetic search parameters (:func:`genetic_search`; RNC: 50, 200, 2000).
    n_null : int
        Random batches for the baseline (RNC: 1,000,000; 100,000 by default here, since each costs an
        RSA of ``n_images`` stimuli).
    cross_validate : bool
        Leave-one-subject-out evidence (needs at least 2 subjects).
    n_permutations, n_bootstrap, alpha, method, seed :
        See :func:`univariate_control`.

    Returns
    -------
    MultivariateControlResult
    """
    from berg.experiments.rsa import batch_rsm_correlation

    for c in conditions:
        if c not in ("align", "disentangle"):
            raise InvalidParameterError(f"conditions must be 'align' and/or 'disentangle', not {c!r}")
    ta, tb = _rsm_table(rsms_a, "rsms_a"), _rsm_table(rsms_b, "rsms_b")
    if set(ta) != set(tb):
        raise InvalidParameterError(f"rsms_a has subjects {list(ta)}, rsms_b has {list(tb)}; give the same")
    subjects = list(ta)
    n = next(iter(ta.values())).shape[0]
    ids = stimulus_ids_or_range(stimulus_ids, n)
    search = dict(
        n_images=n_images,
        population=population,
        generations=generations,
        mutation_fractions=mutation_fractions,
        method=method,
        seed=seed,
    )

    def mean_of(table: dict, keep: list) -> np.ndarray:
        if len(keep) == 1:  # no copy: a single (possibly memory-mapped) RSM is used in place
            return table[keep[0]]
        return sum(np.asarray(table[s], dtype=np.float64) for s in keep) / len(keep)

    def run(a: np.ndarray, b: np.ndarray):
        found = {c: genetic_search(a, b, condition=c, **search) for c in conditions}
        base = _baseline_from(lambda x: batch_rsm_correlation(a, b, x, method=method), n, n_images, n_null, seed, ids)
        return found, base

    a_all, b_all = mean_of(ta, subjects), mean_of(tb, subjects)
    found, base = run(a_all, b_all)
    evidence = None
    if cross_validate and len(subjects) >= 2:
        evidence = _multivariate_evidence(
            ta, tb, subjects, ids, run, mean_of, conditions, n_images, n_permutations, n_bootstrap, alpha, method, seed
        )
    return MultivariateControlResult(
        {c: ids[f[0]] for c, f in found.items()},
        {c: f[0] for c, f in found.items()},
        {c: f[1] for c, f in found.items()},
        {c: f[2] for c, f in found.items()},
        base,
        evidence,
    )


def _multivariate_evidence(
    ta: dict,
    tb: dict,
    subjects: list,
    ids: np.ndarray,
    run: Callable,
    mean_of: Callable,
    conditions: Sequence[str],
    n_images: int,
    n_permutations: int,
    n_bootstrap: int,
    alpha: float,
    method: str,
    seed: int,
) -> MultivariateEvidence:
    from scipy.stats import false_discovery_control

    from berg.experiments.rsa import batch_rsm_correlation

    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    n_sub = len(subjects)
    n = len(ids)
    test = {c: np.full(n_sub, np.nan) for c in conditions}
    p_within = {c: np.ones(n_sub) for c in conditions}
    base_test = np.full(n_sub, np.nan)
    chosen: dict[str, list[np.ndarray]] = {c: [] for c in conditions}
    for f, s in enumerate(subjects):
        others = [o for o in subjects if o != s]
        found, base = run(mean_of(ta, others), mean_of(tb, others))
        a, b = np.asarray(ta[s]), np.asarray(tb[s])
        base_test[f] = batch_rsm_correlation(a, b, base.indices[None], method=method)[0]
        # RNC 06_stats.py: null = score of one random batch minus score of another, on the held-out subject
        null = batch_rsm_correlation(a, b, random_batches(rng, n, n_images, 2 * n_permutations), method=method)
        null = null[:n_permutations] - null[n_permutations:]
        for c in conditions:
            idx = found[c][0]
            chosen[c].append(ids[idx])
            test[c][f] = batch_rsm_correlation(a, b, idx[None], method=method)[0]
            p_within[c][f] = _p_one_sided(null, test[c][f] - base_test[f], +1 if c == "align" else -1)
    significant = {c: np.zeros(n_sub, dtype=bool) for c in conditions}
    for f in range(n_sub):
        sig = false_discovery_control([p_within[c][f] for c in conditions], method="bh") <= alpha
        for i, c in enumerate(conditions):
            significant[c][f] = sig[i]
    ci = {c: _bootstrap_ci(test[c][:, None], n_bootstrap, rng)[:, 0] for c in conditions}
    ci["baseline"] = _bootstrap_ci(base_test[:, None], n_bootstrap, rng)[:, 0]
    p_between = {c: float(_between_subject_p(significant[c][:, None], alpha)[0]) for c in conditions}
    return MultivariateEvidence(subjects, chosen, test, base_test, p_within, significant, p_between, ci, alpha)


# ----------------------------------------------------------------------------- plots
_COLORS = {
    "high_high": "tab:red",
    "low_low": "tab:blue",
    "high_low": "tab:orange",
    "low_high": "tab:green",
    "align": "tab:red",
    "disentangle": "tab:blue",
}


def _figure(ax: Any, size: tuple[float, float]):
    import matplotlib.pyplot as plt  # matplotlib falls back to Agg without a display

    return plt.subplots(figsize=size) if ax is None else (ax.figure, ax)


def _save(fig: Any, out_path: Any) -> None:
    if out_path is not None:
        from pathlib import Path

        from berg.fsutil import atomic_path

        suffix = Path(out_path).suffix or ".png"
        with atomic_path(out_path, suffix) as tmp:
            fig.savefig(tmp, dpi=120, format=suffix.lstrip("."))


def plot_univariate_control(
    result: UnivariateControlResult, *, max_points: int = 20_000, out_path: Any = None, ax: Any = None
):
    """Scatter of the two ROIs' scores (mean over subjects), the four conditions' stimuli and baselines.

    Parameters
    ----------
    result : UnivariateControlResult
    max_points : int
        Background stimuli drawn (a seeded random subset beyond this).
    out_path : path, optional
        Save the figure there (PNG or PDF by suffix, atomically).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _figure(ax, (4.2, 4.0))
    r1, r2 = result.rois
    s1 = np.nanmean([result.univariate[s][r1] for s in result.univariate], axis=0)
    s2 = np.nanmean([result.univariate[s][r2] for s in result.univariate], axis=0)
    shown = np.arange(len(s1))
    if len(shown) > max_points:
        shown = np.sort(np.random.default_rng(0).choice(len(s1), max_points, replace=False))
    ax.scatter(s1[shown], s2[shown], s=2, c="0.75", lw=0, rasterized=True, label="all stimuli")
    for cond, idx in result.chosen_indices.items():
        ax.scatter(s1[idx], s2[idx], s=10, c=_COLORS[cond], lw=0, label=cond.replace("_", "/"))
    ax.axvline(result.baseline[0].score, color="k", ls="--", lw=0.8)
    ax.axhline(result.baseline[1].score, color="k", ls="--", lw=0.8)
    ax.set_xlabel(f"{r1} (mean response)")
    ax.set_ylabel(f"{r2} (mean response)")
    ax.legend(frameon=False, fontsize=7, markerscale=2)
    ax.set_title(f"univariate control {r1} vs {r2}")
    fig.tight_layout()
    _save(fig, out_path)
    return fig


def plot_multivariate_control(result: MultivariateControlResult, *, out_path: Any = None, ax: Any = None):
    """RSM correlation of the best batch per generation, per condition, against the baseline.

    Returns
    -------
    matplotlib.figure.Figure
        Saved to ``out_path`` when given.
    """
    fig, ax = _figure(ax, (4.6, 3.2))
    for cond, history in result.history.items():
        ax.plot(np.arange(1, len(history) + 1), history, color=_COLORS[cond], label=cond)
    ax.axhline(result.baseline.score, color="k", ls="--", lw=0.8, label="baseline")
    ax.set_xlabel("generation")
    ax.set_ylabel("RSM correlation of the best batch")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, out_path)
    return fig
