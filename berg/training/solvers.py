"""Fitting: streamed scaler + PCA/SVD for very wide features, OLS, and ridge with per-output CV.

Why these algorithms:

* Feature widths reach millions (S3D: 5.3 M) while stimuli are ~1,000, so the projection is computed
  from the n x n Gram matrix of the (standardised) training rows, accumulated over column blocks of
  the feature cache. That is exact (no randomised approximation), needs two passes over the data and
  memory O(n² + n·block), and ``z @ z.T`` is a BLAS ``syrk`` (half the flops of a general matmul).
  A randomised SVD would need about as many flops here (n ≈ 10 k) and is only approximate.
* Readouts for 100k+ outputs: one SVD of the small (n x k) design per fold serves every alpha and
  every output. Validation correlations are computed without forming predictions: with the centred
  validation design ``A`` (projected on the fold's right singular vectors), ``B = Uᵀ Y`` and
  ``D = diag(s / (s² + α)) B``, the covariance with the targets is ``Σ_k D ∘ (Aᵀ Y_va)`` and the
  prediction variance is ``Σ_k D ∘ (AᵀA D)``: O(k²·m) per alpha instead of O(n_va·k·m).
  The big products run in float32 with numpy (OpenBLAS measured 26 GFLOP/s against torch's 18-20 on
  this 2-core CPU, see benchmarks/results/train.md); the small SVDs in float64.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError

__all__ = [
    "ProjectionFit",
    "fit_projection",
    "fit_ols",
    "fit_ridge_cv",
    "RidgeFit",
    "PROJECTION_KINDS",
]

log = logging.getLogger(__name__)

#: projection kinds: (centre columns, scale columns to unit variance) before the SVD.
#: ``scaler_svd`` (BERG: StandardScaler -> TruncatedSVD) equals ``scaler_pca`` because standardised
#: training columns already have zero mean; both names are accepted so recipes can say what they mean.
PROJECTION_KINDS: dict[str, tuple[bool, bool]] = {
    "scaler_pca": (True, True),
    "scaler_svd": (True, True),
    "pca": (True, False),
    "svd": (False, False),
}


@dataclass
class ProjectionFit:
    """Column statistics and components of a fitted projection.

    Attributes
    ----------
    mean : (F,) float64 array or None
        Column means subtracted before the SVD (``None`` for ``svd``).
    scale : (F,) float64 array or None
        Column standard deviations (``None`` unless the kind scales); zeros replaced by 1.
    components : (k, F) float32 array
        Orthonormal right singular vectors of the (standardised) training rows.
    singular_values : (k,) float64 array
    n_samples : int
        Training rows used.
    """

    mean: np.ndarray | None
    scale: np.ndarray | None
    components: np.ndarray
    singular_values: np.ndarray
    n_samples: int

    @property
    def explained_variance(self) -> np.ndarray:
        """Variance of each component's scores on the training rows (as scikit-learn's PCA)."""
        return self.singular_values**2 / max(self.n_samples - 1, 1)

    def transform_block(self, x: np.ndarray) -> np.ndarray:
        """Project raw features ``(b, F)`` (float64 reference implementation, for tests)."""
        x = np.asarray(x, dtype=np.float64)
        if self.mean is not None:
            x = x - self.mean
        if self.scale is not None:
            x = x / self.scale
        return x @ self.components.T.astype(np.float64)


def _blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _read_block(features: Any, rows: np.ndarray, a: int, b: int, all_rows: bool) -> np.ndarray:
    # Reading every row of a column block and selecting in numpy is faster on HDF5 than fancy
    # row indexing, and the test rows are a small fraction.
    block = np.asarray(features[:, a:b] if all_rows else features[rows, a:b])
    if all_rows and len(rows) != block.shape[0]:
        block = block[rows]
    return block


def fit_projection(
    features: Any,
    rows: np.ndarray,
    n_components: int,
    *,
    kind: str = "scaler_pca",
    col_block: int = 1 << 15,
    dtype: Any = np.float32,
    show_progress: bool = False,
) -> ProjectionFit:
    """Fit a (scaler +) PCA/SVD projection on ``features[rows]``, streamed over column blocks.

    Two passes over the columns: (1) column statistics and the Gram matrix ``G = Z Zᵀ`` of the
    (centred, scaled) training rows ``Z``; (2) after ``G = U S² Uᵀ``, the components
    ``Vᵀ = S⁻¹ Uᵀ Z`` block by block. Memory: ``n² + n·col_block`` numbers.

    Parameters
    ----------
    features : array-like (n_stimuli, F)
        In-memory array, memory-map or HDF5 dataset; read one column block at a time.
    rows : (n_train,) int array
        Training rows only: the test split never influences the fit.
    n_components : int
        k, at most ``n_train - 1`` (``n_train`` for ``svd``).
    kind : {"scaler_pca", "scaler_svd", "pca", "svd"}
        What happens to the columns before the SVD (see :data:`PROJECTION_KINDS`).
    col_block : int
        Columns per block.
    dtype : numpy dtype
        Precision of the block products (float32 halves time and memory; the Gram matrix is
        accumulated across blocks in float64).
    show_progress : bool
        tqdm bars over the two passes.

    Returns
    -------
    ProjectionFit
        Deterministic: component signs are fixed so that each component's largest training score
        is positive.
    """
    if kind not in PROJECTION_KINDS:
        raise InvalidParameterError(f"projection kind {kind!r} unknown; valid: {sorted(PROJECTION_KINDS)}")
    centre, scale_cols = PROJECTION_KINDS[kind]
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    n, width = len(rows), int(features.shape[1])
    max_k = n - 1 if centre else n
    if not 1 <= n_components <= min(max_k, width):
        raise InvalidParameterError(
            f"n_components={n_components} must be in [1, {min(max_k, width)}] for {n} training rows "
            f"and {width} features"
        )
    all_rows = n > 0.5 * features.shape[0]
    mean = np.zeros(width) if centre else None
    scale = np.ones(width) if scale_cols else None
    gram = np.zeros((n, n))
    from tqdm.auto import tqdm

    n_blocks = -(-width // col_block)
    for a, b in tqdm(
        _blocks(width, col_block), total=n_blocks, desc="projection pass 1/2", disable=not show_progress, leave=False
    ):
        z = _standardise(_read_block(features, rows, a, b, all_rows), mean, scale, a, b, dtype, fit=True)
        gram += z @ z.T  # numpy turns A @ A.T into syrk
    eigval, eigvec = np.linalg.eigh(gram)
    order = np.argsort(eigval)[::-1][:n_components]
    eigval, eigvec = np.clip(eigval[order], 1e-12, None), eigvec[:, order]
    signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(n_components)])
    eigvec = eigvec * np.where(signs == 0, 1.0, signs)
    sv = np.sqrt(eigval)
    left = (eigvec / sv).T.astype(dtype)  # (k, n): S⁻¹ Uᵀ
    components = np.empty((n_components, width), dtype=np.float32)
    for a, b in tqdm(
        _blocks(width, col_block), total=n_blocks, desc="projection pass 2/2", disable=not show_progress, leave=False
    ):
        z = _standardise(_read_block(features, rows, a, b, all_rows), mean, scale, a, b, dtype, fit=False)
        components[:, a:b] = left @ z
    return ProjectionFit(mean, scale, components, sv, n)


def _standardise(block, mean, scale, a, b, dtype, *, fit: bool) -> np.ndarray:
    if fit and mean is not None:
        block64 = block.astype(np.float64)
        mean[a:b] = block64.mean(axis=0)
        if scale is not None:
            sd = block64.std(axis=0)
            scale[a:b] = np.where(sd == 0, 1.0, sd)  # scikit-learn's rule for constant columns
    z = block.astype(dtype, copy=True)
    if mean is not None:
        z -= mean[a:b].astype(dtype)
    if scale is not None:
        z /= scale[a:b].astype(dtype)
    return z


def _svd64(x: np.ndarray, rcond: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD in float64, dropping directions with ``s < rcond * s_max`` (rank-deficient designs)."""
    u, s, vt = np.linalg.svd(np.asarray(x, dtype=np.float64), full_matrices=False)
    if rcond is None:
        rcond = max(x.shape) * np.finfo(np.float64).eps
    keep = s > rcond * (s[0] if s.size else 0.0)
    return u[:, keep], s[keep], vt[keep]


def _target_batches(m: int, size: int | None) -> Iterator[slice]:
    size = m if not size else size
    for a, b in _blocks(m, size):
        yield slice(a, b)


def fit_ols(x: np.ndarray, y: np.ndarray, *, target_batch: int | None = 32_768) -> tuple[np.ndarray, np.ndarray]:
    """Ordinary least squares with intercept for every output at once.

    ``W = V S⁻¹ Uᵀ Y`` from the thin SVD of the centred design (the minimum-norm solution when the
    design is rank deficient, as ``numpy.linalg.lstsq``); ``Uᵀ`` annihilates constants because the
    design is centred, so ``Y`` needs no centring. ``b = ȳ - x̄ Wᵀ``.

    Parameters
    ----------
    x : (n, k) array
        Design (projected features of the training stimuli).
    y : (n, m) array
        Targets (mean over repeats).
    target_batch : int or None
        Outputs per product (bounds temporary memory; ``None`` = all at once).

    Returns
    -------
    LinearReadout
        ``weight`` (m, k) float32 and ``bias`` (m,) float32 (berg's one affine type).
    """
    from berg.core.readouts import LinearReadout

    x = np.asarray(x, dtype=np.float64)
    n, m = y.shape
    if x.shape[0] != n:
        raise InvalidParameterError(f"x has {x.shape[0]} rows but y has {n}")
    xm = x.mean(axis=0)
    u, s, vt = _svd64(x - xm)
    pinv = ((vt.T / s) @ u.T).astype(np.float32)  # (k, n)
    weight = np.empty((m, x.shape[1]), dtype=np.float32)
    bias = np.empty(m, dtype=np.float32)
    for sl in _target_batches(m, target_batch):
        yb = np.ascontiguousarray(y[:, sl], dtype=np.float32)
        w = pinv @ yb
        weight[sl] = w.T
        bias[sl] = yb.mean(axis=0, dtype=np.float64) - xm @ w.astype(np.float64)
    return LinearReadout(weight, bias)


@dataclass
class RidgeFit:
    """Ridge weights with the alpha chosen for each output.

    Attributes
    ----------
    weight : (m, k) float32 array
    bias : (m,) float32 array
    alphas : (m,) float64 array
        Alpha chosen per output.
    cv_scores : (n_alphas, m) float32 array
        Mean validation Pearson r over folds for every candidate alpha.
    alpha_grid : (n_alphas,) float64 array
    """

    weight: np.ndarray
    bias: np.ndarray
    alphas: np.ndarray
    cv_scores: np.ndarray
    alpha_grid: np.ndarray

    @property
    def readout(self):
        """The fitted map as berg's affine type (:class:`~berg.core.readouts.LinearReadout`)."""
        from berg.core.readouts import LinearReadout

        return LinearReadout(self.weight, self.bias)


def kfold_assignment(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold index of every row: a seeded permutation dealt round-robin (folds differ by ≤ 1 row)."""
    if not 2 <= folds <= n:
        raise InvalidParameterError(f"folds must be in [2, {n}] for {n} training rows, got {folds}")
    return np.random.default_rng(seed).permutation(n) % folds


@dataclass
class _Fold:
    lo: int  # validation rows are [lo, hi) in fold-sorted order; training rows are the rest
    hi: int
    ut: np.ndarray  # (r, n_tr) float32, Uᵀ of the centred training design
    at: np.ndarray  # (r, n_va) float32, validation design in the fold's V basis, centred
    gram: np.ndarray  # (r, r) float32, A Aᵀ
    shrink: np.ndarray  # (n_alphas, r, 1) float32, s / (s² + α)


def fit_ridge_cv(
    x: np.ndarray,
    y: np.ndarray,
    alphas: Sequence[float],
    *,
    folds: int = 5,
    seed: int = 0,
    target_batch: int | None = 32_768,
) -> RidgeFit:
    """Ridge regression with intercept; alpha chosen per output by k-fold CV on the given rows.

    For each fold the centred training design is decomposed once, ``X = U S Vᵀ``; the ridge
    solution for any alpha is ``W_α = V diag(s / (s² + α)) Uᵀ Y``. The CV criterion is the mean
    over folds of the validation Pearson r (the metric the model is evaluated with), computed from
    ``Uᵀ Y`` and ``Aᵀ Y_va`` without forming predictions (module docstring); ties go to the
    smallest alpha. The final weights are refitted on all rows with each output's alpha.

    Parameters
    ----------
    x : (n, k) array
        Design of the TRAIN split only.
    y : (n, m) array
        Targets.
    alphas : sequence of float
        Candidate regularisation strengths (positive).
    folds : int
        Number of CV folds.
    seed : int
        Seed of the fold assignment.
    target_batch : int or None
        Outputs per batch (bounds temporary memory; ``None`` = all at once).

    Returns
    -------
    RidgeFit
    """
    grid = np.asarray(sorted(float(a) for a in alphas), dtype=np.float64)
    if grid.size == 0 or np.any(~np.isfinite(grid)) or np.any(grid <= 0):
        raise InvalidParameterError(f"alphas must be a non-empty list of positive numbers, got {list(alphas)}")
    x = np.asarray(x, dtype=np.float64)
    n, m = y.shape
    if x.shape[0] != n:
        raise InvalidParameterError(f"x has {x.shape[0]} rows but y has {n}")
    fold_of = kfold_assignment(n, folds, seed)
    # Sort rows by fold once so each fold's validation rows are one contiguous block of every target
    # batch: no per-fold copies of the (n x m) targets.
    order = np.argsort(fold_of, kind="stable")
    x = x[order]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(fold_of, minlength=folds))])
    fold_parts = []
    for f in range(folds):
        lo, hi = int(bounds[f]), int(bounds[f + 1])
        x_tr = np.concatenate([x[:lo], x[hi:]])
        xm = x_tr.mean(axis=0)
        u, s, vt = _svd64(x_tr - xm)
        a_va = (x[lo:hi] - xm) @ vt.T
        a_va -= a_va.mean(axis=0)  # correlations ignore offsets; centred columns annihilate constants
        shrink = (s[None, :] / (s[None, :] ** 2 + grid[:, None]))[:, :, None]
        fold_parts.append(
            _Fold(
                lo,
                hi,
                u.T.astype(np.float32),
                a_va.T.astype(np.float32),
                (a_va.T @ a_va).astype(np.float32),
                shrink.astype(np.float32),
            )
        )
    scores = np.zeros((grid.size, m), dtype=np.float32)
    xm_all = x.mean(axis=0)
    u, s, vt = _svd64(x - xm_all)
    ut_all, v_all = u.T.astype(np.float32), vt.T.astype(np.float32)
    weight = np.empty((m, x.shape[1]), dtype=np.float32)
    bias = np.empty(m, dtype=np.float32)
    best = np.empty(m, dtype=np.float64)
    for sl in _target_batches(m, target_batch):
        # two fast copies (contiguous column block, then a row gather) beat one strided gather
        yb = np.ascontiguousarray(y[:, sl], dtype=np.float32)[order]
        for fp in fold_parts:
            lo, hi = fp.lo, fp.hi
            b = fp.ut[:, :lo] @ yb[:lo] + fp.ut[:, lo:] @ yb[hi:]  # Uᵀ Y_train, (r, mb)
            y_va = yb[lo:hi]
            cross = fp.at @ y_va  # Aᵀ Y_va (A is centred, so Y_va needs no centring)
            var_y = np.einsum("ij,ij->j", y_va, y_va) - y_va.sum(axis=0) ** 2 / max(hi - lo, 1)
            for i in range(grid.size):
                db = fp.shrink[i] * b
                cov = np.einsum("ij,ij->j", db, cross)
                var_p = np.einsum("ij,ij->j", db, fp.gram @ db)
                denom = np.sqrt(np.clip(var_p * var_y, 0.0, None))
                scores[i, sl] += np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 1e-20) / len(fold_parts)
        best_sl = grid[np.argmax(scores[:, sl], axis=0)]  # first maximum = smallest alpha on ties
        best[sl] = best_sl
        b = ut_all @ yb
        w = np.empty((x.shape[1], b.shape[1]), dtype=np.float32)
        for alpha in np.unique(best_sl):
            cols = np.flatnonzero(best_sl == alpha)
            w[:, cols] = v_all @ ((s / (s * s + alpha)).astype(np.float32)[:, None] * b[:, cols])
        weight[sl] = w.T
        bias[sl] = yb.mean(axis=0, dtype=np.float64) - xm_all @ w.astype(np.float64)
    return RidgeFit(weight, bias, best, scores, grid)
