"""Prediction validation: do predicted patterns match the measured ones better than other items' patterns?

img2fmri (Bennett & Baldassano 2023, Figs 1-2) validates its model on an unseen image set (Twinset):

1. the correlation matrix ``C[i, j] = pearson(predicted_i, real_j)`` across voxels (rows: predicted
   items, columns: measured items, same order);
2. the statistic ``mean(diag C) - mean(off-diagonal C)``: how much better an item's prediction matches
   its own measured pattern than the others';
3. a null distribution by shuffling the rows of ``C`` (``n_permutations``, seeded) and the one-sided
   p-value ``(1 + #{null >= observed}) / (1 + n_permutations)``;
4. per category (items split into groups) and per participant (one measured set each).

Inputs are arrays ``(n_items, n_voxels)`` (e.g. berg's ``encode`` output and your own data) or
NIfTI images with a mask (masked with nilearn). Every result has a ``plot`` and can be saved.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError

__all__ = [
    "ValidationResult",
    "as_matrix",
    "correlation_matrix",
    "diagonal_statistic",
    "permutation_test",
    "validate_predictions",
    "plot_validation",
    "significance_stars",
    "save_figure",
]

log = logging.getLogger(__name__)

#: Rows of the permutation null computed at once (memory: chunk x n_items int64).
_PERM_CHUNK = 2048


# ----------------------------------------------------------------------------------------- helpers
def as_matrix(data: Any, mask: Any = None, *, name: str = "data") -> np.ndarray:
    """Turn responses into a float64 ``(n_items, n_voxels)`` matrix.

    Parameters
    ----------
    data : array, nibabel image, path or list of those
        A 2-D array ``(n_items, n_voxels)``; a 4-D NIfTI (items or time along the 4th axis); or a
        list of 3-D NIfTI images / paths (one per item).
    mask : nibabel image or path, optional
        Needed for images: the voxels to keep (masked with :class:`nilearn.maskers.NiftiMasker`).
    name : str
        What ``data`` is, for error messages.
    """
    if not _image_like(data) and not (isinstance(data, (list, tuple)) and data and _image_like(data[0])):
        arr = np.asarray(data, dtype=np.float64)
        if arr.ndim != 2:
            raise InvalidParameterError(
                f"{name} must be a 2-D array (n_items, n_voxels) or NIfTI image(s) with a mask; got shape {arr.shape}"
            )
        return arr
    if mask is None:
        raise InvalidParameterError(
            f"{name} is given as image(s): pass mask= (a NIfTI mask image) to choose the voxels"
        )
    from nilearn.maskers import NiftiMasker

    masker = NiftiMasker(mask_img=mask, standardize=None)
    imgs = list(data) if isinstance(data, (list, tuple)) else data
    if isinstance(imgs, list):
        from nilearn.image import concat_imgs

        imgs = concat_imgs([str(i) if isinstance(i, Path) else i for i in imgs])
    return np.asarray(masker.fit_transform(str(imgs) if isinstance(imgs, (str, Path)) else imgs), dtype=np.float64)


def _image_like(x: Any) -> bool:
    """A NIfTI image or a path to one (what nilearn masks), as opposed to an array of numbers."""
    from nibabel.spatialimages import SpatialImage

    return isinstance(x, (str, Path, SpatialImage))


def _zrows(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / np.where(norm > 0, norm, 1.0)


def correlation_matrix(predicted: Any, real: Any, *, mask: Any = None) -> np.ndarray:
    """Pearson correlation of every predicted pattern with every measured one, across voxels.

    Parameters
    ----------
    predicted, real : array ``(n_items, n_voxels)`` or NIfTI image(s)
        Same voxels in the same order (see :func:`as_matrix`).
    mask : NIfTI image, optional
        For image inputs.

    Returns
    -------
    np.ndarray
        float64 ``(n_predicted, n_real)``; rows predicted items, columns measured items. A constant
        pattern correlates 0 with everything.
    """
    p = as_matrix(predicted, mask, name="predicted")
    r = as_matrix(real, mask, name="real")
    if p.shape[1] != r.shape[1]:
        raise InvalidParameterError(f"predicted has {p.shape[1]} voxels but real has {r.shape[1]}; use the same mask")
    return _zrows(p) @ _zrows(r).T


def diagonal_statistic(corr: np.ndarray) -> float:
    """``mean(diag corr) - mean(off-diagonal corr)`` of a square correlation matrix."""
    c = np.asarray(corr, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise InvalidParameterError(f"need a square matrix of at least 2 x 2 items, got shape {c.shape}")
    n = c.shape[0]
    d = np.trace(c)
    return float(d / n - (c.sum() - d) / (n * n - n))


def significance_stars(p: float) -> str:
    """img2fmri's marks: ``****`` p < 0.0001, ``***`` < 0.001, ``**`` < 0.01, ``*`` < 0.05, ``†`` < 0.10."""
    for cut, mark in ((1e-4, "****"), (1e-3, "***"), (1e-2, "**"), (0.05, "*"), (0.10, "\u2020")):
        if p < cut:
            return mark
    return ""


def save_figure(fig: Any, path: str | Path, *, dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically; the format follows the suffix (``.png``, ``.pdf``, ``.svg``)."""
    from berg.fsutil import atomic_path

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt, bbox_inches="tight")
    return path


def _pyplot():
    # matplotlib picks a headless backend by itself where there is no display; never force one here.
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------------------- results
@dataclass
class ValidationResult:
    """A permutation test of one correlation matrix.

    Attributes
    ----------
    corr : np.ndarray
        ``(n, n)``; rows predicted, columns measured items.
    statistic : float
        ``mean(diag) - mean(off-diagonal)``.
    null : np.ndarray
        ``(n_permutations,)`` statistics of row-shuffled matrices.
    p_value : float
        One-sided, ``(1 + #{null >= statistic}) / (1 + n_permutations)``.
    label : str
        Category or participant name.
    seed : int
    """

    corr: np.ndarray
    statistic: float
    null: np.ndarray
    p_value: float
    label: str = ""
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_permutations(self) -> int:
        return int(self.null.size)

    def summary(self) -> dict[str, Any]:
        """Plain numbers (JSON-ready)."""
        return {
            "label": self.label,
            "n_items": int(self.corr.shape[0]),
            "statistic": self.statistic,
            "null_mean": float(self.null.mean()),
            "null_sd": float(self.null.std()),
            "p_value": self.p_value,
            "n_permutations": self.n_permutations,
            "seed": self.seed,
        }

    def plot(self, *, title: str | None = None, out_path: str | Path | None = None):
        """The correlation matrix and the null distribution with the observed statistic."""
        plt = _pyplot()
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
        vmax = float(np.abs(self.corr).max()) or 1.0
        im = a.imshow(self.corr, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        a.set_xlabel("measured item")
        a.set_ylabel("predicted item")
        a.set_title("pearson r across voxels")
        fig.colorbar(im, ax=a, shrink=0.8)
        _violins(b, [self])
        fig.suptitle(title if title is not None else (self.label or "prediction validation"))
        if out_path is not None:
            save_figure(fig, out_path)
        return fig


def permutation_test(
    corr: np.ndarray, *, n_permutations: int = 10000, seed: int = 0, label: str = ""
) -> ValidationResult:
    """Row-shuffle permutation test of ``mean(diag) - mean(off-diagonal)`` (img2fmri's).

    Shuffling rows keeps the matrix's total, so each permuted statistic is computed from the
    permuted diagonal alone; all permutations run vectorised.

    Parameters
    ----------
    corr : (n, n) array
    n_permutations : int
        Number of shuffles (img2fmri: 10,000 for the group, 1,000 per category/participant).
    seed : int
        Seed of :func:`numpy.random.default_rng`.
    label : str
        Name carried into the result.
    """
    if not isinstance(n_permutations, (int, np.integer)) or n_permutations < 1:
        raise InvalidParameterError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    c = np.asarray(corr, dtype=np.float64)
    observed = diagonal_statistic(c)
    n = c.shape[0]
    total = c.sum()
    rng = np.random.default_rng(seed)
    cols = np.arange(n)
    null = np.empty(int(n_permutations))
    for start in range(0, int(n_permutations), _PERM_CHUNK):
        m = min(_PERM_CHUNK, int(n_permutations) - start)
        rows = rng.permuted(np.broadcast_to(cols, (m, n)), axis=1)
        diag = c[rows, cols].sum(axis=1)
        null[start : start + m] = diag / n - (total - diag) / (n * n - n)
    # Ties count against the model (>=), and the observed arrangement is one of the permutations.
    p = float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + n_permutations))
    return ValidationResult(corr=c, statistic=observed, null=null, p_value=p, label=label, seed=seed)


def validate_predictions(
    predicted: Any,
    real: Any,
    *,
    groups: Sequence[Any] | None = None,
    mask: Any = None,
    n_permutations: int = 1000,
    seed: int = 0,
) -> dict[str, ValidationResult]:
    """img2fmri's validation: per category and/or per participant permutation tests.

    Parameters
    ----------
    predicted : array ``(n_items, n_voxels)`` or NIfTI image(s)
        Predictions, one row per item (e.g. ``model.encode(images)``).
    real : array, image(s), or mapping
        Measured patterns in the same item order; a mapping ``{participant: data}`` tests each
        participant separately.
    groups : sequence, optional
        A category label per item; each category is tested on its own sub-matrix.
    mask : NIfTI image, optional
        For image inputs.
    n_permutations, seed
        See :func:`permutation_test` (each test gets its own seed, ``seed + k``).

    Returns
    -------
    dict
        ``label -> ValidationResult``; labels are ``"all"``, the category, the participant, or
        ``"participant/category"``.
    """
    pred = as_matrix(predicted, mask, name="predicted")
    reals = {str(k): v for k, v in real.items()} if isinstance(real, Mapping) else {"": real}
    out: dict[str, ValidationResult] = {}
    k = 0
    for who, data in reals.items():
        r = as_matrix(data, mask, name=f"real[{who}]" if who else "real")
        if r.shape != pred.shape:
            raise InvalidParameterError(
                f"real{f'[{who}]' if who else ''} has shape {r.shape} but predicted has {pred.shape}: "
                "items must be in the same order on the same voxels"
            )
        corr = correlation_matrix(pred, r)
        if groups is None:
            parts = {"": np.arange(pred.shape[0])}
        else:
            g = np.asarray(groups)
            if g.shape[0] != pred.shape[0]:
                raise InvalidParameterError(f"groups has {g.shape[0]} labels for {pred.shape[0]} items")
            parts = {str(name): np.flatnonzero(g == name) for name in dict.fromkeys(g.tolist())}
        for gname, idx in parts.items():
            label = "/".join(x for x in (who, gname) if x) or "all"
            out[label] = permutation_test(
                corr[np.ix_(idx, idx)], n_permutations=n_permutations, seed=seed + k, label=label
            )
            k += 1
    return out


def _violins(ax: Any, results: Sequence[ValidationResult]) -> None:
    pos = np.arange(1, len(results) + 1)
    parts = ax.violinplot([r.null for r in results], positions=pos, showextrema=False)
    for body in parts["bodies"]:
        body.set_facecolor("cornflowerblue")
        body.set_edgecolor("cornflowerblue")
        body.set_alpha(0.6)
    ax.scatter(pos, [r.statistic for r in results], color="k", zorder=3, label="observed")
    top = max(max(float(r.null.max()), r.statistic) for r in results)
    span = top - min(min(float(r.null.min()), r.statistic) for r in results) or 1.0
    for x, r in zip(pos, results):
        ax.text(x, top + 0.05 * span, significance_stars(r.p_value), ha="center", va="bottom", fontsize=13)
    ax.set_ylim(top=top + 0.2 * span)
    ax.set_xticks(pos)
    ax.set_xticklabels([r.label or "all" for r in results], rotation=30 if len(results) > 6 else 0)
    ax.set_ylabel("mean diagonal - mean off-diagonal")
    ax.legend(loc="lower right")


def plot_validation(
    results: Mapping[str, ValidationResult] | Sequence[ValidationResult],
    *,
    title: str = "predicted vs measured: diagonal - off-diagonal",
    out_path: str | Path | None = None,
):
    """img2fmri's Figs 1-2: one violin (the null) per category/participant, the observed value, stars.

    Returns
    -------
    matplotlib.figure.Figure
    """
    items = list(results.values()) if isinstance(results, Mapping) else list(results)
    if not items:
        raise InvalidParameterError("no validation results to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(items) + 3), 4.5))
    _violins(ax, items)
    ax.set_title(title)
    if out_path is not None:
        save_figure(fig, out_path)
    return fig
