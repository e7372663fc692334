"""Synthetic training datasets with known ground truth (``berg.testing``), for tests, benchmarks and the demo.

Nothing here is brain data: stimuli are random images; features come from a seeded untrained backbone through berg's own
extractor; true responses are linear in the standardised-PCA features (fitted with scikit-learn,
independently of berg's trainer), with per-output signal variance ``s2`` and noise variance ``n2``
per repeat, so the noise ceiling of a mean over ``n`` repeats is known: ``s2 / (s2 + n2 / n)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from berg.training.datasets import EncodingDataset, SubjectData, write_dataset

__all__ = ["SyntheticTruth", "make_synthetic_dataset", "blob_grid", "linear_problem"]


@dataclass
class SyntheticTruth:
    """Ground truth of a synthetic dataset."""

    path: Path
    effective_weights: dict[Any, np.ndarray]  # (n_out, F): true map from raw-feature space (scaler+PCA folded)
    effective_bias: dict[Any, np.ndarray]
    signal_var: dict[Any, np.ndarray]  # true signal variance over the test stimuli
    noise_var: dict[Any, np.ndarray]
    n_repeats_test: int
    features: np.ndarray

    def noise_ceiling(self, subject: Any, n: int | None = None) -> np.ndarray:
        """Analytic noise ceiling (fraction) of the mean over ``n`` repeats (default: test repeats).

        ``NC = s2 / (s2 + n2 / n)``, i.e. ``ncsnr² / (ncsnr² + 1/n)`` with ``ncsnr = sqrt(s2 / n2)``;
        ``s2`` is the signal variance over the test stimuli, ``n2`` the per-trial noise variance.
        """
        n = self.n_repeats_test if n is None else n
        s2, n2 = self.signal_var[subject], self.noise_var[subject]
        return s2 / (s2 + n2 / n)


def blob_grid(
    shape=(20, 24, 20), n_blobs: int = 3, seed: int = 0, radius: tuple[float, float] = (0.15, 0.25)
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A made-up brain: voxel indices of a few ellipsoid blobs on a grid, and one 'ROI' per blob."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    mask = np.zeros(shape, dtype=bool)
    labels = np.zeros(shape, dtype=int)
    for b in range(n_blobs):
        centre = rng.uniform(0.25, 0.75, 3) * np.array(shape)
        radii = rng.uniform(*radius, 3) * np.array(shape)
        inside = (((grid - centre) / radii) ** 2).sum(-1) <= 1
        labels[inside & ~mask] = b + 1
        mask |= inside
    ijk = np.argwhere(mask)
    lab = labels[mask]
    rois = {f"blob{b + 1}": np.flatnonzero(lab == b + 1) for b in range(n_blobs)}
    return ijk.astype(np.int32), rois


def make_synthetic_dataset(
    path: str | Path,
    recipe: dict[str, Any],
    *,
    n_train: int = 80,
    n_test: int = 20,
    n_repeats_train: int = 3,
    n_repeats_test: int = 5,
    subjects=(1,),
    n_outputs: int | None = None,
    grid: tuple[int, int, int] | None = (12, 14, 12),
    n_blobs: int = 3,
    blob_radius: tuple[float, float] = (0.15, 0.25),
    k_true: int = 10,
    snr_range: tuple[float, float] = (0.3, 3.0),
    image_size: int = 48,
    seed: int = 0,
    shuffle_responses: bool = False,
) -> SyntheticTruth:
    """Write a synthetic dataset in berg's HDF5 format and return its ground truth.

    Parameters
    ----------
    recipe : dict
        Registry-style recipe whose backbone/nodes/transform produce the features.
    grid : (int, int, int) or None
        Made-up volume; outputs are the voxels of ``n_blobs`` ellipsoids (radii a ``blob_radius`` fraction
        of the grid), one ROI per blob. ``None``: ``n_outputs`` flat outputs.
    snr_range : (float, float)
        Per-output ``s2 / n2`` drawn log-uniformly from this range.
    shuffle_responses : bool
        Permute responses across stimuli (a null dataset: true r = 0).
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from berg.core.engine import iter_features
    from berg.features import FeatureExtractor
    from berg.stimuli import load_stimuli

    rng = np.random.default_rng(seed)
    n = n_train + n_test
    images = rng.integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
    # smooth the noise a little so images have spatial structure
    images = ((images.astype(np.float32) + np.roll(images, 1, axis=1) + np.roll(images, 1, axis=2)) / 3).astype(
        np.uint8
    )
    extractor = FeatureExtractor(recipe, backbone_weights="untrained", seed=seed)
    feats = np.concatenate(list(iter_features(extractor, load_stimuli(images, "image"), batch_size=32))).astype(
        np.float64
    )
    split = np.array(["train"] * n_train + ["test"] * n_test)
    train = split == "train"
    scaler = StandardScaler().fit(feats[train])
    pca = PCA(n_components=k_true, random_state=seed).fit(scaler.transform(feats[train]))
    z = pca.transform(scaler.transform(feats))
    z /= z[train].std(axis=0)

    if grid is not None:
        ijk, rois = blob_grid(grid, n_blobs=n_blobs, seed=seed, radius=blob_radius)
    else:
        ijk, rois = None, {}
    n_out = len(ijk) if ijk is not None else int(n_outputs or 50)
    truth_w, truth_b, s2s, n2s, sub_data = {}, {}, {}, {}, {}
    for s in subjects:
        a = rng.standard_normal((n_out, k_true))
        signal = z @ a.T
        sd = signal[train].std(axis=0)
        snr = np.exp(rng.uniform(*np.log(snr_range), n_out))
        s2 = np.ones(n_out)
        n2 = s2 / snr
        signal = signal / sd
        responses = np.full((n, max(n_repeats_train, n_repeats_test), n_out), np.nan, dtype=np.float64)
        for i in range(n):
            reps = n_repeats_train if train[i] else n_repeats_test
            responses[i, :reps] = signal[i] + rng.standard_normal((reps, n_out)) * np.sqrt(n2)
        if shuffle_responses:
            responses = responses[rng.permutation(n)]
        # effective truth in raw-feature space: signal = ((x - m)/s) @ C.T / zsd @ (a / sd).T
        zsd = (pca.transform(scaler.transform(feats[train]))).std(axis=0)
        coef = (a / sd[:, None]) / zsd[None, :]
        comp = pca.components_ / scaler.scale_[None, :]
        truth_w[s] = coef @ comp
        truth_b[s] = -(truth_w[s] @ scaler.mean_) - coef @ (pca.components_ @ pca.mean_)
        # the noise ceiling of the test split depends on the signal variance over *test* stimuli
        s2s[s], n2s[s] = signal[~train].var(axis=0, ddof=1), n2
        sub_data[s] = SubjectData(responses.astype(np.float32), ijk, rois)
    ds = EncodingDataset(
        name="synthetic",
        kind="image",
        stimuli=images,
        ids=[f"synthetic-{i:04d}" for i in range(n)],
        split=split,
        subjects=sub_data,
        grid_shape=grid,
        affine=np.diag([3.0, 3.0, 3.0, 1.0]) if grid is not None else None,
    )
    write_dataset(path, ds)
    return SyntheticTruth(Path(path), truth_w, truth_b, s2s, n2s, n_repeats_test, feats)


def linear_problem(
    n: int, k: int, m: int, *, snr: float = 1.0, seed: int = 0, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A plain regression problem ``y = x @ w.T + noise`` (no backbone), for solver tests and benchmarks.

    Returns
    -------
    x : (n, k) array, standard normal
    y : (n, m) array; per output, signal variance / noise variance = ``snr``
    w : (m, k) true weights, scaled so the signal variance is 1
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k), dtype=np.float32).astype(dtype)
    w = (rng.standard_normal((m, k), dtype=np.float32) / np.sqrt(k)).astype(dtype)
    y = x @ w.T
    y += rng.standard_normal((n, m), dtype=np.float32).astype(dtype) / np.sqrt(snr)
    return x, y, w
