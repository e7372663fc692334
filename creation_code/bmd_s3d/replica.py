"""Write a faithful replica of BERG's bucket tree for fmri-bmd-s3d (for tests and benchmarks).

Same file names, dict keys, nesting and dtypes as BERG's files, written the way BERG writes them
(pickled dicts via ``np.save``), with configurable sizes: small for tests, full size (100 x 5,337,088
projection, ~108k voxels) for the benchmark. As BERG's creation script writes them: metadata holds
``group_mask``, ``sub_mask`` and ``rois`` only (no headers or affines, unless ``with_affine``), and ROI
entries index the subject's masked voxels the way BERG's loader uses them (``coef_[rois[name]]``): a
1-D integer array or the 1-tuple ``np.where`` returns (both forms are written, alternately).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

PREFIX = "encoding_models/modality-fmri/train_dataset-bmd/model-s3d/"
ROIS = [
    "lV1v",
    "rV1v",
    "lV1d",
    "rV1d",
    "lV2v",
    "rV2v",
    "lV2d",
    "rV2d",
    "lV3v",
    "rV3v",
    "lV3d",
    "rV3d",
    "lV3ab",
    "rV3ab",
    "lhV4",
    "rhV4",
    "lFFA",
    "rFFA",
    "lOFA",
    "rOFA",
    "lEBA",
    "rEBA",
    "lLOC",
    "rLOC",
    "lPPA",
    "rPPA",
    "lRSC",
    "rRSC",
    "lSTS",
    "rSTS",
    "lTOS",
    "rTOS",
    "lMT",
    "rMT",
    "l7AL",
    "r7AL",
    "lIPS0",
    "rIPS0",
    "lIPS1-2-3",
    "rIPS1-2-3",
    "lPFt",
    "rPFt",
    "lBA2",
    "rBA2",
    "lPFop",
    "rPFop",
    "BMDgeneral",
]
AFFINE = np.array([[-2.5, 0, 0, 76.0], [0, 2.5, 0, -112.0], [0, 0, 2.5, -70.0], [0, 0, 0, 1]])


@dataclass
class Replica:
    root: Path  # the berg_dir (bucket root)
    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray  # (k, F)
    coef: dict
    intercept: dict
    masks: dict
    roi_flat: dict  # subject -> {roi: positions in the masked-voxel axis (readout rows)}


def _components(root: Path, k: int, n_features: int, dtype, rng: np.random.Generator):
    """Random SVD components, generated in row blocks into a scratch memmap when they are large.

    At BERG's full size (100 x 5,337,088) a float64 draw plus the pickled copy ``np.save`` makes would
    need ~8 GB; a file-backed scratch array keeps the writer at one pickled copy.
    """
    if k * n_features * np.dtype(dtype).itemsize < (256 << 20):
        return rng.standard_normal((k, n_features)).astype(dtype) / np.sqrt(n_features), None
    scratch = root / ".replica-components.tmp"
    mm = np.lib.format.open_memmap(scratch, mode="w+", dtype=dtype, shape=(k, n_features))
    for i in range(k):
        mm[i] = rng.standard_normal(n_features, dtype=np.float32) / np.float32(np.sqrt(n_features))
    mm.flush()
    return np.asarray(mm), scratch  # a plain ndarray view: np.save must pickle numpy.ndarray, not memmap


def write_replica(
    root: str | Path,
    *,
    subjects=(1, 2),
    n_features: int = 1000,
    k: int = 10,
    grid=(62, 77, 61),
    n_voxels=None,
    seed: int = 0,
    with_affine: bool = False,
    dtype=np.float64,
    keep_arrays: bool = True,
) -> Replica:
    """Write BERG's fmri-bmd-s3d files for ``subjects`` under ``root`` (a berg_dir / bucket root).

    Parameters
    ----------
    root : path
        Bucket root; files go under ``root / PREFIX``.
    subjects : tuple of int
    n_features, k : int
        Feature width (5,337,088 for BERG's files) and number of SVD components (100).
    grid : tuple
        Volume shape ((62, 77, 61) for BMD).
    n_voxels : dict, optional
        Exact voxel count per subject (e.g. BERG's 108,219 for subject 1); default: ~45% of the grid.
    seed : int
    with_affine : bool
        Also store ``sub_mask_affine``/``group_mask_affine`` (BERG's card lists them, its creation
        script does not save them; its plot script reads them, so some files may have them).
    dtype : numpy dtype
        dtype of ``components_``, ``coef_`` and ``intercept_`` (the scaler statistics are float64, as
        scikit-learn's StandardScaler stores them).
    keep_arrays : bool
        Return the arrays in the :class:`Replica` (off for full-size benchmark replicas).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    base = root / PREFIX
    (base / "encoding_models_weights").mkdir(parents=True, exist_ok=True)
    (base / "metadata").mkdir(parents=True, exist_ok=True)
    mean = rng.standard_normal(n_features)
    scale = rng.uniform(0.5, 2.0, n_features)
    if n_features > 10:
        # constant features: scikit-learn stores var_ = 0 and scale_ = 1 for them
        scale[:3] = 1.0
    var = scale**2
    if n_features > 10:
        var[:3] = 0.0
    components, scratch = _components(root, k, n_features, dtype, rng)
    pca = {
        "scaler_param": {
            "scale_": scale,
            "mean_": mean,
            "var_": var,
            "n_features_in_": n_features,
            "n_samples_seen_": np.int64(3000),
        },
        "pca_param": {
            "components_": components,
            "explained_variance_": np.sort(rng.random(k))[::-1],
            "explained_variance_ratio_": np.sort(rng.random(k))[::-1] / k,
            "singular_values_": np.sort(rng.random(k))[::-1],
            "n_features_in_": n_features,
        },
    }
    np.save(base / "encoding_models_weights" / "pca_weights.npy", pca, allow_pickle=True)
    del pca
    if scratch is not None:
        components = None
        scratch.unlink()
    group = rng.random(grid) < 0.5
    coefs, intercepts, masks, roi_flat = {}, {}, {}, {}
    for s in subjects:
        mask = group & (rng.random(grid) < 0.9)
        if n_voxels is not None:
            idx = np.flatnonzero(group)
            mask = np.zeros(grid, dtype=bool)
            mask.reshape(-1)[rng.choice(idx, size=n_voxels[s], replace=False)] = True
        n_vox = int(mask.sum())
        coef = rng.standard_normal((n_vox, k)).astype(dtype)
        intercept = rng.standard_normal(n_vox).astype(dtype)
        np.save(
            base / "encoding_models_weights" / f"weights_sub-{s:02d}.npy",
            {"coef_": coef, "intercept_": intercept, "n_features_in_": k},
            allow_pickle=True,
        )
        rois, flats = {}, {}
        for i, name in enumerate(ROIS):
            pos = np.sort(rng.choice(n_vox, size=max(1, min(n_vox, int(rng.integers(5, 40)))), replace=False))
            onehot = np.zeros(n_vox, dtype=bool)
            onehot[pos] = True
            # BMD's ROI pickles: an index array, or what np.where gives on the masked ROI vector
            rois[name] = pos.astype(np.int64) if i % 2 == 0 else np.where(onehot)
            flats[name] = pos
        nc = rng.uniform(0, 100, n_vox).astype(np.float32)
        r = rng.uniform(-0.2, 0.8, n_vox).astype(np.float32)
        metadata = {
            "fmri": {
                "group_mask": group.astype(np.float32),
                "sub_mask": mask.astype(np.float32),
                "rois": rois,
                **({"group_mask_affine": AFFINE, "sub_mask_affine": AFFINE} if with_affine else {}),
            },
            "encoding_models": {
                "noiseceiling_task_train_n_1": nc / 3,
                "noiseceiling_task_train_n_3": nc,
                "noiseceiling_task_test_n_1": nc / 4,
                "noiseceiling_task_test_n_10": nc,
                "correlation": r,
                "r2": np.clip(r, 0, None) ** 2,
                "explained_variance": np.minimum(100 * np.clip(r, 0, None) ** 2 / np.maximum(nc / 100, 1e-6), 100),
            },
        }
        np.save(base / "metadata" / f"metadata_sub-{s:02d}.npy", metadata, allow_pickle=True)
        masks[s] = mask
        if keep_arrays:
            coefs[s], intercepts[s], roi_flat[s] = coef, intercept, flats
    return Replica(root, mean, scale, components, coefs, intercepts, masks, roi_flat)
