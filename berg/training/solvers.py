"""Fitting: streamed StandardScaler + PCA for very wide features, OLS, and ridge with per-output CV.

Why these algorithms:

* Feature widths reach millions (S3D: 5.3 M) while stimuli are ~1,000, so PCA is computed from the
  n x n Gram matrix accumulated over column blocks of the feature cache (exact, memory O(n² + n·block)),
  never from an n x F matrix in RAM.
* Ridge for 100k+ outputs: one SVD of the (n x k) design per fold serves every alpha and every
  output (``W_alpha = V diag(s / (s² + alpha)) Uᵀ Y``), so CV costs a few small matmuls per alpha.
  This is the same trick himalaya uses; it is written with numpy here to keep the dependency light.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ScalerPCA", "fit_scaler_pca", "fit_ols", "fit_ridge_cv", "RidgeFit"]


@dataclass
class ScalerPCA:
    """StandardScaler statistics and PCA components (of the standardised features)."""

    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    components: np.ndarray  # (k, F) float32
    explained_variance: np.ndarray  # (k,)

    def transform_block(self, x: np.ndarray) -> np.ndarray:
        """Project raw features ``(b, F)`` (reference implementation for tests)."""
        return ((x - self.mean) / self.scale) @ self.components.T


def _blocks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def fit_scaler_pca(features, rows: np.ndarray, n_components: int, *, col_block: int = 1 << 16) -> ScalerPCA:
    """Fit StandardScaler + PCA on ``features[rows]`` streamed over column blocks.

    Parameters
    ----------
    features : array-like (n_stimuli, F)
        In-memory array or HDF5 dataset (read block by block).
    rows : (n_train,) int array
        Training rows only (the test split never influences the fit).
    n_components : int
        k; at most ``n_train - 1``.
    """
    rows = np.sort(np.asarray(rows))
    n, width = len(rows), features.shape[1]
    if not 1 <= n_components <= n - 1:
        raise ValueError(f"n_components={n_components} must be in [1, {n - 1}] for {n} training stimuli")
    mean = np.empty(width)
    scale = np.empty(width)
    gram = np.zeros((n, n))
    for a, b in _blocks(width, col_block):
        block = np.asarray(features[rows, a:b], dtype=np.float64)
        mean[a:b] = block.mean(axis=0)
        sd = block.std(axis=0)
        scale[a:b] = np.where(sd == 0, 1.0, sd)  # scikit-learn's rule for constant features
        z = (block - mean[a:b]) / scale[a:b]
        gram += z @ z.T
    eigval, eigvec = np.linalg.eigh(gram)
    order = np.argsort(eigval)[::-1][:n_components]
    eigval, eigvec = np.clip(eigval[order], 1e-12, None), eigvec[:, order]
    # deterministic signs: largest |loading| of each component's train scores is positive
    signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(n_components)])
    eigvec *= signs
    components = np.empty((n_components, width), dtype=np.float32)
    for a, b in _blocks(width, col_block):
        z = (np.asarray(features[rows, a:b], dtype=np.float64) - mean[a:b]) / scale[a:b]
        components[:, a:b] = (eigvec.T @ z) / np.sqrt(eigval)[:, None]
    return ScalerPCA(mean, scale, components, eigval / (n - 1))


def fit_ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ordinary least squares with intercept for every output at once: returns ``(W (n_out, k), b)``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    coef, *_ = np.linalg.lstsq(x - xm, y - ym, rcond=None)
    return coef.T, ym - xm @ coef


@dataclass
class RidgeFit:
    """Ridge weights with the alpha chosen for each output."""

    weight: np.ndarray  # (n_out, k)
    bias: np.ndarray  # (n_out,)
    alphas: np.ndarray  # (n_out,) chosen alpha per output
    cv_scores: np.ndarray  # (n_alphas, n_out) mean CV correlation


def _ridge_svd_weights(u, s, vt, y, alpha):
    d = s / (s * s + alpha)
    return vt.T @ (d[:, None] * (u.T @ y))


def fit_ridge_cv(x: np.ndarray, y: np.ndarray, alphas, *, folds: int = 5, seed: int = 0) -> RidgeFit:
    """Ridge with intercept; alpha chosen per output by k-fold CV (mean correlation) on the given data.

    Parameters
    ----------
    x : (n, k) design (projected features of the TRAIN split only)
    y : (n, n_out) targets
    alphas : sequence of float
    folds : int
    seed : int
        Fold assignment.
    """
    from berg.metrics import pearson_r

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    alphas = np.asarray(sorted(alphas), dtype=np.float64)
    n = x.shape[0]
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    scores = np.zeros((len(alphas), y.shape[1]))
    for f in range(folds):
        tr, va = fold_of != f, fold_of == f
        xm, ym = x[tr].mean(axis=0), y[tr].mean(axis=0)
        u, s, vt = np.linalg.svd(x[tr] - xm, full_matrices=False)
        uty = u.T @ (y[tr] - ym)
        xv = x[va] - xm
        for i, alpha in enumerate(alphas):
            d = s / (s * s + alpha)
            pred = (xv @ vt.T) @ (d[:, None] * uty) + ym
            scores[i] += pearson_r(pred, y[va]) / folds
    best = alphas[np.argmax(scores, axis=0)]
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    u, s, vt = np.linalg.svd(x - xm, full_matrices=False)
    weight = np.empty((y.shape[1], x.shape[1]))
    for alpha in np.unique(best):
        cols = best == alpha
        weight[cols] = _ridge_svd_weights(u, s, vt, y[:, cols] - ym[cols], alpha).T
    return RidgeFit(weight, ym - weight @ xm, best, scores)
