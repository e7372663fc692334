"""Representational similarity: large RSMs by blocked matrix products, and RSM comparisons.

An RSM entry is the Pearson correlation between two stimuli's response patterns over outputs
(voxels, vertices, sensors). Pearson r of rows ``x_i, x_j`` equals the dot product of the rows after
z-scoring each row (centre, divide by its norm), so the whole RSM is ``Z @ Z.T``:

* each row is standardised once (float64, then float32), instead of once per pair as a double loop
  of ``scipy.stats.pearsonr`` does (the RNC scripts, gifale95/RNC ``04_multivariate_rnc/
  01_create_rsms.py``, build 73k x 73k RSMs that way split into 50 cluster jobs);
* the product runs in blocks of ``block_size`` rows on BLAS (torch on CPU, or on a GPU), only the
  upper block triangle is computed and mirrored;
* memory is bounded: the standardised rows are kept when they fit ``max_memory`` and otherwise
  re-read block by block, and the result can be written into any array-like ``out`` (a zarr array,
  an ``np.memmap``) for RSMs that do not fit in memory.

RSM comparisons use the lower triangle without the diagonal (as RNC's ``evaluate``), Pearson or
Spearman. The RSA noise ceiling follows Nili et al. 2014, "A toolbox for representational similarity
analysis", PLoS Comput Biol 10:e1003553: the upper bound is the mean correlation of each subject's
RSM with the group mean RSM, the lower bound the mean correlation with the mean of the other subjects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError
from berg.experiments._inputs import (
    as_subject_dict,
    check_array,
    iter_row_blocks,
    n_outputs,
    resolve_device,
    roi_indices_for,
    select_outputs,
)

__all__ = [
    "rsm",
    "roi_rsms",
    "zscore_rows",
    "rsm_correlation",
    "batch_rsm_correlation",
    "rsa_noise_ceiling",
    "compare_rsms",
    "RSAComparison",
    "NoiseCeiling",
]

log = logging.getLogger(__name__)

_METHODS = ("pearson", "spearman")


def zscore_rows(block: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (float64); constant rows become NaN.

    Then ``zscore_rows(a) @ zscore_rows(b).T`` is the matrix of Pearson correlations between rows.
    """
    x = np.asarray(block, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    with np.errstate(invalid="ignore", divide="ignore"):
        return x / np.where(norm > 0, norm, np.nan)[:, None]


class _Standardised:
    """Standardised rows of a response array, cached in memory when they fit, else re-read per block."""

    def __init__(self, array: Any, columns: np.ndarray | None, dtype: Any, max_memory: int) -> None:
        self.array, self.columns, self.dtype = array, columns, dtype
        self.n = int(array.shape[0])
        self.p = n_outputs(array) if columns is None else len(columns)
        self.cache: np.ndarray | None = None
        if self.n * self.p * np.dtype(dtype).itemsize <= max_memory:
            self.cache = np.empty((self.n, self.p), dtype=dtype)
            for start, stop, block in iter_row_blocks(array, columns=columns):
                self.cache[start:stop] = zscore_rows(block)
        else:
            log.info("standardised responses (%d x %d) exceed max_memory; re-reading blocks", self.n, self.p)

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache[start:stop]
        block = np.asarray(self.array[start:stop])
        block = block.reshape(len(block), -1)
        if self.columns is not None:
            block = block[:, self.columns]
        return zscore_rows(block).astype(self.dtype, copy=False)


def rsm(
    responses: Any,
    *,
    outputs: Sequence[int] | np.ndarray | None = None,
    block_size: int = 2048,
    device: str | None = "auto",
    dtype: Any = np.float32,
    out: Any = None,
    max_memory: int = 4 * 2**30,
) -> Any:
    """Representational similarity matrix (Pearson r between stimuli over outputs).

    Parameters
    ----------
    responses : (n_stimuli, n_outputs) array-like
        One subject's responses: numpy, memmap, zarr or h5py (read in row blocks).
    outputs : int array, optional
        Columns to use, e.g. an ROI from ``model.get_metadata()["rois"]``, optionally thinned by
        noise ceiling with :func:`berg.experiments.select_outputs`. Default: all outputs.
    block_size : int
        Rows per matrix-product block; the working memory is about ``3 * block_size**2`` floats
        plus the standardised rows.
    device : {"auto", "cpu", "cuda", ...}
        Where the products run (torch); "auto" picks a GPU when torch sees one.
    dtype : numpy float dtype
        float32 (default, BLAS speed; entries within ~1e-6 of float64) or float64.
    out : (n_stimuli, n_stimuli) array-like, optional
        Where to write the RSM (supports slice assignment, e.g. a zarr array or ``np.memmap``); by
        default a new numpy array.
    max_memory : int
        Bytes allowed for the standardised rows; above it they are recomputed per block.

    Returns
    -------
    (n_stimuli, n_stimuli) array
        ``out`` when given. Symmetric, diagonal 1, values clipped to [-1, 1]; rows and columns of
        stimuli whose pattern is constant are NaN (as ``np.corrcoef``).

    Examples
    --------
    >>> import numpy as np
    >>> from berg.experiments import rsm
    >>> x = np.random.default_rng(0).standard_normal((100, 50))
    >>> bool(np.allclose(rsm(x, dtype=np.float64), np.corrcoef(x)))
    True
    """
    import torch

    responses = check_array(responses)
    try:
        dtype = np.dtype(dtype).type  # "float32", np.dtype("float32") and np.float32 alike
    except TypeError:
        pass
    if dtype not in (np.float32, np.float64):
        raise InvalidParameterError(f"dtype must be np.float32 or np.float64, not {dtype!r}")
    if block_size < 1:
        raise InvalidParameterError(f"block_size must be a positive int, not {block_size!r}")
    columns = None if outputs is None else np.asarray(outputs, dtype=np.int64)
    if columns is not None and columns.size < 2:
        raise InvalidParameterError(f"an RSM needs at least 2 outputs; got {columns.size}")
    dev = resolve_device(device)
    z = _Standardised(responses, columns, dtype, max_memory)
    n = z.n
    result = np.empty((n, n), dtype=dtype) if out is None else out
    if tuple(result.shape) != (n, n):
        raise InvalidParameterError(f"out must have shape {(n, n)}, not {tuple(result.shape)}")
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    starts = list(range(0, n, block_size))
    for i0 in starts:
        i1 = min(n, i0 + block_size)
        zi = torch.as_tensor(z.rows(i0, i1), dtype=tdtype, device=dev)
        for j0 in starts:
            if j0 < i0:
                continue  # lower blocks are mirrored from the upper ones
            j1 = min(n, j0 + block_size)
            zj = zi if j0 == i0 else torch.as_tensor(z.rows(j0, j1), dtype=tdtype, device=dev)
            block = torch.clamp(zi @ zj.T, -1.0, 1.0).cpu().numpy()
            if j0 == i0:
                # exact symmetry and unit diagonal (BLAS rounding gives 1 +- 1e-7)
                block = (block + block.T) / 2
                diag = np.arange(i1 - i0)
                block[diag, diag] = np.where(np.isnan(block[diag, diag]), np.nan, 1.0)
            result[i0:i1, j0:j1] = block
            if j0 != i0:
                result[j0:j1, i0:i1] = block.T
    return result


def roi_rsms(
    responses: Any,
    rois: Mapping[Any, Any],
    roi: str,
    *,
    ncsnr: Any = None,
    ncsnr_threshold: float | None = None,
    **rsm_kwargs: Any,
) -> dict[Any, np.ndarray]:
    """RSM of one ROI for every subject: ``{subject: (n_stimuli, n_stimuli)}``.

    Parameters
    ----------
    responses : array-like or {subject: array-like}
    rois : {roi: indices} or {subject: {roi: indices}}
        ``model.get_metadata()["rois"]``.
    roi : str
    ncsnr, ncsnr_threshold :
        Keep only outputs with ``ncsnr > ncsnr_threshold`` (RNC's voxel selection, 0.5 there).
    **rsm_kwargs :
        Passed to :func:`rsm` (``block_size``, ``device``, ``dtype``, ...).

    Returns
    -------
    dict
        The only key is None when ``responses`` is a single array.
    """
    out = {}
    for subject, array in as_subject_dict(responses).items():
        sub_ncsnr = ncsnr[subject] if isinstance(ncsnr, Mapping) else ncsnr
        cols = select_outputs(roi_indices_for(rois, subject, roi), sub_ncsnr, ncsnr_threshold, roi=roi)
        out[subject] = rsm(array, outputs=cols, **rsm_kwargs)
    return out


# ----------------------------------------------------------------------------- comparisons
def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise InvalidParameterError(f"method must be one of {_METHODS}, not {method!r}")


def _lower_vector(m: np.ndarray, stimuli: np.ndarray | None) -> np.ndarray:
    m = np.asarray(m)
    if stimuli is not None:
        m = m[np.ix_(stimuli, stimuli)]
    i, j = np.tril_indices(m.shape[0], -1)
    return m[i, j].astype(np.float64)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denom) if denom > 0 else float("nan")


def _check_square(m: Any, name: str) -> None:
    if len(m.shape) != 2 or m.shape[0] != m.shape[1]:
        raise InvalidParameterError(f"{name} must be a square RSM (n, n); got shape {tuple(m.shape)}")


def rsm_correlation(
    rsm_a: Any, rsm_b: Any, *, method: str = "pearson", stimuli: Sequence[int] | np.ndarray | None = None
) -> float:
    """Correlation between two RSMs over their lower triangle (diagonal excluded).

    Parameters
    ----------
    rsm_a, rsm_b : (n, n) arrays
        RSMs over the same stimuli.
    method : {"pearson", "spearman"}
    stimuli : int array, optional
        Compare only the sub-RSM of these stimuli.

    Returns
    -------
    float
        NaN when either triangle is constant or contains NaN.
    """
    from scipy.stats import rankdata

    _check_method(method)
    _check_square(rsm_a, "rsm_a")
    _check_square(rsm_b, "rsm_b")
    if tuple(rsm_a.shape) != tuple(rsm_b.shape):
        raise InvalidParameterError(f"RSMs differ in shape: {tuple(rsm_a.shape)} vs {tuple(rsm_b.shape)}")
    idx = None if stimuli is None else np.asarray(stimuli, dtype=np.int64)
    a, b = _lower_vector(rsm_a, idx), _lower_vector(rsm_b, idx)
    if method == "spearman":
        a, b = rankdata(a), rankdata(b)
    return _pearson(a, b)


def batch_rsm_correlation(
    rsm_a: np.ndarray, rsm_b: np.ndarray, batches: np.ndarray, *, method: str = "pearson", chunk: int = 512
) -> np.ndarray:
    """RSM correlation for many stimulus batches at once (RNC's ``evaluate``, vectorised).

    For each row of ``batches`` (stimulus indices), the two sub-RSMs of those stimuli are compared over
    their lower triangle, as gifale95/RNC ``04_multivariate_rnc/utils.py:evaluate`` does with one
    ``scipy.stats.pearsonr`` per batch.

    Parameters
    ----------
    rsm_a, rsm_b : (n, n) arrays
    batches : (n_batches, k) int array
    method : {"pearson", "spearman"}
    chunk : int
        Batches gathered at once (bounds memory to ``chunk * k * (k - 1) / 2`` floats per RSM).

    Returns
    -------
    (n_batches,) float64 array
    """
    _check_method(method)
    batches = np.asarray(batches, dtype=np.int64)
    if batches.ndim != 2 or batches.shape[1] < 3:
        raise InvalidParameterError(f"batches must be (n_batches, k >= 3) indices; got shape {batches.shape}")
    n = rsm_a.shape[0]
    ti, tj = np.tril_indices(batches.shape[1], -1)
    # C-contiguous arrays (and memmaps) are gathered through one flat index shared by both RSMs
    flat_a, flat_b = (np.asarray(m).reshape(-1) if np.asarray(m).flags.c_contiguous else None for m in (rsm_a, rsm_b))
    scores = np.empty(len(batches))
    for s in range(0, len(batches), chunk):
        b = batches[s : s + chunk]
        flat = b[:, ti] * n + b[:, tj]
        va = (flat_a[flat] if flat_a is not None else np.asarray(rsm_a[b[:, ti], b[:, tj]])).astype(np.float64)
        vb = (flat_b[flat] if flat_b is not None else np.asarray(rsm_b[b[:, ti], b[:, tj]])).astype(np.float64)
        if method == "spearman":
            from scipy.stats import rankdata

            va, vb = rankdata(va, axis=1), rankdata(vb, axis=1)
        va -= va.mean(axis=1, keepdims=True)
        vb -= vb.mean(axis=1, keepdims=True)
        num = np.einsum("ij,ij->i", va, vb)
        den = np.sqrt(np.einsum("ij,ij->i", va, va) * np.einsum("ij,ij->i", vb, vb))
        with np.errstate(invalid="ignore", divide="ignore"):
            scores[s : s + chunk] = np.where(den > 0, num / den, np.nan)
    return scores


@dataclass(frozen=True)
class NoiseCeiling:
    """RSA noise ceiling (Nili et al. 2014): ``lower <= true model r <= upper`` (in expectation)."""

    lower: float
    upper: float
    per_subject_lower: dict[Any, float] = field(default_factory=dict)
    per_subject_upper: dict[Any, float] = field(default_factory=dict)


def _as_rsm_dict(rsms: Any, name: str) -> dict[Any, np.ndarray]:
    if isinstance(rsms, Mapping):
        out = dict(rsms)
    elif isinstance(rsms, (list, tuple)):
        out = dict(enumerate(rsms))
    else:
        out = {None: rsms}
    for s, m in out.items():
        _check_square(m, f"{name}[{s!r}]")
    shapes = {tuple(m.shape) for m in out.values()}
    if len(shapes) != 1:
        raise InvalidParameterError(f"{name}: RSMs of different shapes {sorted(shapes)}; use the same stimuli")
    return out


def rsa_noise_ceiling(
    rsms: Mapping[Any, np.ndarray] | Sequence[np.ndarray], *, method: str = "pearson"
) -> NoiseCeiling:
    """Noise ceiling of a group of subject RSMs (Nili et al. 2014, PLoS Comput Biol 10:e1003553).

    Parameters
    ----------
    rsms : {subject: (n, n) RSM} or list of RSMs
        At least 2 subjects, same stimuli.
    method : {"pearson", "spearman"}

    Returns
    -------
    NoiseCeiling
        ``upper`` = mean over subjects of r(subject RSM, mean of all RSMs); ``lower`` = mean of
        r(subject RSM, mean of the other subjects' RSMs).
    """
    table = _as_rsm_dict(rsms, "rsms")
    if len(table) < 2:
        raise InvalidParameterError(f"a noise ceiling needs RSMs of at least 2 subjects; got {len(table)}")
    total = sum(np.asarray(m, dtype=np.float64) for m in table.values())
    k = len(table)
    lower, upper = {}, {}
    for s, m in table.items():
        m = np.asarray(m, dtype=np.float64)
        upper[s] = rsm_correlation(m, total / k, method=method)
        lower[s] = rsm_correlation(m, (total - m) / (k - 1), method=method)
    return NoiseCeiling(float(np.mean(list(lower.values()))), float(np.mean(list(upper.values()))), lower, upper)


@dataclass(frozen=True)
class RSAComparison:
    """Result of :func:`compare_rsms`.

    Attributes
    ----------
    r : float
        Mean over subjects of the RSM correlation (or the single correlation).
    per_subject : dict
        Subject -> RSM correlation.
    method : str
    noise_ceiling : NoiseCeiling or None
        Ceiling of the ``b`` side when it has several subjects.
    fraction_of_ceiling : float or None
        ``r / noise_ceiling.lower``: how much of the explainable RSM structure ``a`` captures
        (1 = as well as the other subjects predict a subject).
    """

    r: float
    per_subject: dict[Any, float]
    method: str
    noise_ceiling: NoiseCeiling | None = None
    fraction_of_ceiling: float | None = None


def compare_rsms(
    a: Any,
    b: Any,
    *,
    method: str = "pearson",
    noise_ceiling: bool = True,
    stimuli: Sequence[int] | np.ndarray | None = None,
) -> RSAComparison:
    """Compare RSMs of two ROIs, models or subjects, with the noise ceiling of the ``b`` side.

    Parameters
    ----------
    a : (n, n) RSM or {subject: RSM}
        E.g. a model's RSM, or ROI A per subject.
    b : (n, n) RSM or {subject: RSM}
        E.g. measured (or in silico) RSMs per subject. When both are dicts with the same subjects,
        subject ``s`` of ``a`` is compared with subject ``s`` of ``b``; when ``a`` is one RSM it is
        compared with every subject of ``b``.
    method : {"pearson", "spearman"}
    noise_ceiling : bool
        Compute the RSA noise ceiling of ``b`` (needs at least 2 subjects in ``b``).
    stimuli : int array, optional
        Compare only these stimuli.

    Returns
    -------
    RSAComparison
    """
    _check_method(method)
    ta, tb = _as_rsm_dict(a, "a"), _as_rsm_dict(b, "b")
    if set(ta) == set(tb):
        pairs = {s: (ta[s], tb[s]) for s in tb}
    elif len(ta) == 1:
        only = next(iter(ta.values()))
        pairs = {s: (only, m) for s, m in tb.items()}
    else:
        raise InvalidParameterError(
            f"a has subjects {list(ta)} and b has {list(tb)}; give the same subjects, or one RSM as a"
        )
    idx = None if stimuli is None else np.asarray(stimuli, dtype=np.int64)
    per = {s: rsm_correlation(x, y, method=method, stimuli=idx) for s, (x, y) in pairs.items()}
    r = float(np.mean(list(per.values())))
    ceiling = fraction = None
    if noise_ceiling and len(tb) >= 2:
        sub = {s: (m if idx is None else np.asarray(m)[np.ix_(idx, idx)]) for s, m in tb.items()}
        ceiling = rsa_noise_ceiling(sub, method=method)
        fraction = r / ceiling.lower if ceiling.lower > 0 else float("nan")
    return RSAComparison(r, per, method, ceiling, fraction)
