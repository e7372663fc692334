"""In silico functional localizers: contrast t-maps from labelled stimuli, thresholds, ROIs, Dice.

A localizer runs a model on stimuli of known categories (faces, places, bodies, ...) and tests, per
output, whether the responses to one set of categories exceed those to another: a two-sample t-test
per output (Welch's by default, Student's with ``equal_var=True``), as fMRI localizers do with a GLM
contrast. Responses are read in row blocks and only per-output sums are kept (sums of shifted values,
for numerical stability), so zarr run stores of any size work.

Thresholds: uncorrected p, Bonferroni, or the Benjamini-Hochberg false discovery rate (Benjamini &
Hochberg 1995, J R Stat Soc B 57:289-300; ``scipy.stats.false_discovery_control``). Agreement of a
localized ROI with a model's declared ROI is the Dice coefficient ``2 |A n B| / (|A| + |B|)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError, close_matches
from berg.experiments._inputs import as_subject_dict, iter_row_blocks, n_outputs

__all__ = ["Contrast", "contrast_map", "category_localizer", "threshold_map", "dice", "roi_agreement"]

_CORRECTIONS = ("fdr", "bonferroni", "none")
_TAILS = ("positive", "negative", "two-sided")


def threshold_map(p: np.ndarray, *, alpha: float = 0.05, correction: str = "fdr") -> np.ndarray:
    """Outputs significant at ``alpha`` after a multiple-comparison correction.

    Parameters
    ----------
    p : (n_outputs,) array
        p-values (NaN counts as not significant).
    alpha : float
    correction : {"fdr", "bonferroni", "none"}
        Benjamini-Hochberg FDR, Bonferroni (family-wise), or uncorrected.

    Returns
    -------
    (n_outputs,) bool array
    """
    from scipy.stats import false_discovery_control

    if correction not in _CORRECTIONS:
        raise InvalidParameterError(f"correction must be one of {_CORRECTIONS}, not {correction!r}")
    if not 0 < alpha < 1:
        raise InvalidParameterError(f"alpha must be between 0 and 1, not {alpha!r}")
    p = np.asarray(p, dtype=np.float64)
    finite = np.isfinite(p)
    out = np.zeros(p.shape, dtype=bool)
    if not finite.any():
        return out
    if correction == "fdr":
        out[finite] = false_discovery_control(p[finite], method="bh") <= alpha
    elif correction == "bonferroni":
        out[finite] = p[finite] * finite.sum() <= alpha
    else:
        out[finite] = p[finite] <= alpha
    return out


@dataclass(frozen=True)
class Contrast:
    """A contrast map: per-output t statistics of ``positive`` minus ``negative`` categories.

    Attributes
    ----------
    name : str
    positive, negative : tuple
        Category labels on each side.
    t : (n_outputs,) array
    df : (n_outputs,) array
        Degrees of freedom (Welch-Satterthwaite for ``equal_var=False``).
    effect : (n_outputs,) array
        Mean difference ``mean(positive) - mean(negative)``.
    n_positive, n_negative : int
        Stimuli on each side.
    """

    name: str
    positive: tuple
    negative: tuple
    t: np.ndarray
    df: np.ndarray
    effect: np.ndarray
    n_positive: int
    n_negative: int

    def p_values(self, tail: str = "positive") -> np.ndarray:
        """p-value per output: ``"positive"`` tests positive > negative, ``"two-sided"`` either way."""
        from scipy.stats import t as student_t

        if tail not in _TAILS:
            raise InvalidParameterError(f"tail must be one of {_TAILS}, not {tail!r}")
        if tail == "positive":
            return student_t.sf(self.t, self.df)
        if tail == "negative":
            return student_t.cdf(self.t, self.df)
        return 2 * student_t.sf(np.abs(self.t), self.df)

    def significant(self, *, alpha: float = 0.05, correction: str = "fdr", tail: str = "positive") -> np.ndarray:
        """Boolean map of significant outputs (see :func:`threshold_map`)."""
        return threshold_map(self.p_values(tail), alpha=alpha, correction=correction)

    def roi(
        self,
        *,
        alpha: float = 0.05,
        correction: str = "fdr",
        tail: str = "positive",
        top_k: int | None = None,
    ) -> np.ndarray:
        """Output indices of the ROI this contrast defines.

        Parameters
        ----------
        alpha, correction, tail :
            Significance threshold (see :func:`threshold_map`).
        top_k : int, optional
            Keep at most the ``top_k`` significant outputs with the largest t (e.g. to match the size
            of a declared ROI).

        Returns
        -------
        int64 array, sorted
        """
        mask = self.significant(alpha=alpha, correction=correction, tail=tail)
        idx = np.flatnonzero(mask)
        if top_k is not None and len(idx) > top_k:
            strength = self.t[idx] if tail != "negative" else -self.t[idx]
            if tail == "two-sided":
                strength = np.abs(self.t[idx])
            idx = np.sort(idx[np.argsort(-strength, kind="stable")[:top_k]])
        return idx.astype(np.int64)

    def agreement(self, rois: Mapping[str, Any], **roi_kwargs: Any) -> dict[str, float]:
        """Dice of :meth:`roi` with each declared ROI (``model.get_metadata()["rois"]``)."""
        return roi_agreement(self.roi(**roi_kwargs), rois)


def _labels(categories: Any, n: int) -> np.ndarray:
    labels = np.asarray(categories)
    if labels.shape != (n,):
        raise InvalidParameterError(f"categories must give one label per stimulus ({n}); got shape {labels.shape}")
    return labels


def _side(spec: Any, labels: np.ndarray, name: str) -> tuple:
    values = tuple(spec) if isinstance(spec, (list, tuple, set, frozenset)) else (spec,)
    present = set(labels.tolist())
    missing = [v for v in values if v not in present]
    if missing:
        hint = close_matches(str(missing[0]), [str(x) for x in present])
        raise InvalidParameterError(
            f"{name} category {missing[0]!r} has no stimuli; categories present: {sorted(map(str, present))}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    return values


def _contrast_one(
    array: Any, labels: np.ndarray, pos: tuple, neg: tuple, name: str, equal_var: bool, block_rows: int | None
) -> Contrast:
    is_pos = np.isin(labels, pos)
    is_neg = np.isin(labels, neg) & ~is_pos
    n1, n2 = int(is_pos.sum()), int(is_neg.sum())
    if n1 < 2 or n2 < 2:
        raise InvalidParameterError(f"contrast {name!r} needs >= 2 stimuli per side; has {n1} vs {n2}")
    p_out = n_outputs(array)
    s1, q1, s2, q2 = (np.zeros(p_out) for _ in range(4))
    shift = None
    for start, stop, block in iter_row_blocks(array, block_rows=block_rows):
        if shift is None:  # shifting by a typical value keeps sums of squares from cancelling
            shift = block.mean(axis=0)
        x = block - shift
        m1, m2 = is_pos[start:stop], is_neg[start:stop]
        s1 += x[m1].sum(0)
        q1 += np.einsum("ij,ij->j", x[m1], x[m1])
        s2 += x[m2].sum(0)
        q2 += np.einsum("ij,ij->j", x[m2], x[m2])
    mean1, mean2 = s1 / n1, s2 / n2
    var1 = np.maximum(q1 - n1 * mean1**2, 0) / (n1 - 1)
    var2 = np.maximum(q2 - n2 * mean2**2, 0) / (n2 - 1)
    diff = mean1 - mean2
    with np.errstate(invalid="ignore", divide="ignore"):
        if equal_var:
            pooled = ((n1 - 1) * var1 + (n2 - 1) * var2) / (n1 + n2 - 2)
            se = np.sqrt(pooled * (1 / n1 + 1 / n2))
            df = np.full(p_out, float(n1 + n2 - 2))
        else:
            a, b = var1 / n1, var2 / n2
            se = np.sqrt(a + b)
            df = (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n2 - 1))
        t = diff / se
    return Contrast(name, pos, neg, t, df, diff, n1, n2)


def contrast_map(
    responses: Any,
    categories: Sequence[Any] | np.ndarray,
    positive: Any,
    negative: Any = "rest",
    *,
    name: str | None = None,
    equal_var: bool = False,
    block_rows: int | None = None,
) -> Contrast | dict[Any, Contrast]:
    """Per-output two-sample t-map of responses to ``positive`` vs ``negative`` categories.

    Parameters
    ----------
    responses : (n_stimuli, n_outputs) array-like or {subject: array-like}
        Read in row blocks (numpy, zarr, h5py, memmap).
    categories : (n_stimuli,) array
        Category label of each stimulus.
    positive : label or list of labels
    negative : label, list of labels, or "rest"
        "rest" = every stimulus not in ``positive`` (unless "rest" is itself a label).
    name : str, optional
        Default ``"<positive> > <negative>"``.
    equal_var : bool
        False: Welch's t-test (default); True: Student's pooled-variance t-test.
    block_rows : int, optional
        Stimuli read per block.

    Returns
    -------
    Contrast, or {subject: Contrast} for a dict of subjects
        Matches ``scipy.stats.ttest_ind(pos, neg, equal_var=...)`` per output.
    """
    table = as_subject_dict(responses)
    n = next(iter(table.values())).shape[0]
    labels = _labels(categories, n)
    pos = _side(positive, labels, "positive")
    if isinstance(negative, str) and negative == "rest" and "rest" not in set(labels.tolist()):
        neg = tuple(v for v in dict.fromkeys(labels.tolist()) if v not in pos)
    else:
        neg = _side(negative, labels, "negative")
    if set(pos) & set(neg):
        raise InvalidParameterError(f"positive {pos} and negative {neg} share categories {set(pos) & set(neg)}")
    label = name or f"{'+'.join(map(str, pos))} > {'+'.join(map(str, neg)) if negative != 'rest' else 'rest'}"
    out = {s: _contrast_one(a, labels, pos, neg, label, equal_var, block_rows) for s, a in table.items()}
    return out[None] if list(out) == [None] else out


def category_localizer(
    responses: Any,
    categories: Sequence[Any] | np.ndarray,
    *,
    equal_var: bool = False,
    block_rows: int | None = None,
) -> dict[Any, Any]:
    """One contrast per category against all other categories: ``{category: Contrast}``.

    For a dict of subjects the values are ``{subject: Contrast}`` dicts.
    """
    n = as_subject_dict(responses)
    labels = _labels(categories, next(iter(n.values())).shape[0])
    cats = list(dict.fromkeys(labels.tolist()))
    if len(cats) < 2:
        raise InvalidParameterError(f"a localizer needs at least 2 categories; got {cats}")
    return {
        c: contrast_map(
            responses,
            labels,
            c,
            [o for o in cats if o != c],
            name=f"{c} > rest",
            equal_var=equal_var,
            block_rows=block_rows,
        )
        for c in cats
    }


def dice(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """Dice coefficient ``2 |A n B| / (|A| + |B|)`` of two index sets (1 = identical; 0 if both empty)."""
    a, b = np.unique(np.asarray(a, dtype=np.int64)), np.unique(np.asarray(b, dtype=np.int64))
    total = len(a) + len(b)
    return 2.0 * len(np.intersect1d(a, b, assume_unique=True)) / total if total else 0.0


def roi_agreement(indices: Sequence[int] | np.ndarray, rois: Mapping[str, Any]) -> dict[str, float]:
    """Dice of ``indices`` with every declared ROI, best match first.

    Parameters
    ----------
    indices : int array
        E.g. :meth:`Contrast.roi`.
    rois : {roi: indices or boolean mask}
        The model's declared ROIs (``model.get_metadata()["rois"]``).
    """
    scores = {}
    for name, idx in rois.items():
        idx = np.asarray(idx)
        scores[name] = dice(indices, np.flatnonzero(idx) if idx.dtype == bool else idx)
    return dict(sorted(scores.items(), key=lambda kv: -kv[1]))
