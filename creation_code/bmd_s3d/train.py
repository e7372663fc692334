"""Train ``fmri-bmd-s3d`` from BOLD Moments (BMD) data with berg's generic trainer.

BMD (Lahner et al. 2024): 1,102 3-s videos, 1,000 train videos seen 3 times and 102 test videos seen
10 times, "versionB" GLM betas z-scored per session, MNI152 volume (62, 77, 61). The model is BERG's
recipe: S3D features from 7 nodes (5,337,088 per clip with 14 frames at 256x256) -> StandardScaler
-> 100 components -> ordinary least squares per voxel, fitted on the train split (mean over the 3
repeats) and evaluated on the test split (mean over the 10 repeats; noise ceiling with n = 10).

BERG fits ``TruncatedSVD`` after the scaler; on standardised training data (zero column means) that
is the same subspace as the trainer's PCA, so ``projection: scaler_pca`` reproduces it.

Input folder ("BMD-format", the arrays of BMD's prepared betas written as plain ``.npy``; berg never
unpickles downloaded files, so BMD's own pickles must be converted to arrays by the user first)::

    BMD_DIR/stimuli/train/*.mp4            1,000 videos, sorted by name = row order of the train betas
    BMD_DIR/stimuli/test/*.mp4             102 videos, same rule for the test betas
    BMD_DIR/betas/sub-SS/train.npy         (n_train, 3, n_voxels) float, NaN for a missing repeat
    BMD_DIR/betas/sub-SS/test.npy          (n_test, 10, n_voxels)
    BMD_DIR/betas/sub-SS/mask.nii.gz       (62, 77, 61) subject mask; voxel v of the betas is the v-th
                                           non-zero voxel in C order (as BERG's outputs)
    BMD_DIR/betas/sub-SS/rois/NAME.nii.gz  optional ROI masks on the same grid

Usage::

    python -m creation_code.bmd_s3d.train BMD_DIR OUT_DIR [--config creation_code/bmd_s3d/config.yaml]

writes ``OUT_DIR/bmd_dataset.h5`` (berg's training format, stimuli by path) and the trainer's export:
``OUT_DIR/export/artifact`` (berg-native), ``OUT_DIR/export/model_cards/<id>.yaml`` with the accuracy
numbers, and ``OUT_DIR/export/registry.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_bmd", "bmd_to_dataset", "load_config", "train_bmd"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
N_REPEATS = {"train": 3, "test": 10}


def _subjects(bmd_dir: Path) -> list[int]:
    subs = [int(m.group(1)) for p in (bmd_dir / "betas").iterdir() if (m := re.fullmatch(r"sub-(\d+)", p.name))]
    if not subs:
        raise FileNotFoundError(f"no betas/sub-SS folders in {bmd_dir}")
    return sorted(subs)


def read_bmd(bmd_dir: str | os.PathLike[str], subjects: list[int] | None = None):
    """Read a BMD-format folder into a :class:`berg.training.datasets.EncodingDataset`.

    Train and test betas are stacked into one ``(n_videos, 10, n_voxels)`` array (train rows padded
    with NaN beyond their 3 repeats), so the trainer averages the available repeats per split.
    """
    import nibabel as nib

    from berg.training.datasets import EncodingDataset, SubjectData

    bmd_dir = Path(bmd_dir)
    videos = {split: sorted((bmd_dir / "stimuli" / split).glob("*.mp4")) for split in ("train", "test")}
    for split, paths in videos.items():
        if not paths:
            raise FileNotFoundError(f"no videos in {bmd_dir / 'stimuli' / split}")
    n_rep = max(N_REPEATS.values())
    grid = affine = None
    data = {}
    for s in subjects or _subjects(bmd_dir):
        folder = bmd_dir / "betas" / f"sub-{s:02d}"
        img = nib.load(folder / "mask.nii.gz")
        mask = np.asarray(img.dataobj) != 0
        if grid is None:
            grid, affine = mask.shape, img.affine
        elif mask.shape != grid or not np.allclose(img.affine, affine):
            raise ValueError(f"{folder / 'mask.nii.gz'}: grid {mask.shape} differs from the first subject's {grid}")
        n_vox = int(mask.sum())
        parts = []
        for split in ("train", "test"):
            betas = np.load(folder / f"{split}.npy", mmap_mode="r")  # plain numeric arrays only, no pickles
            expected = (len(videos[split]), N_REPEATS[split], n_vox)
            if betas.shape != expected:
                raise ValueError(
                    f"{folder / (split + '.npy')}: shape {betas.shape}, expected {expected} "
                    "(videos, repeats, mask voxels)"
                )
            padded = np.full((betas.shape[0], n_rep, n_vox), np.nan, dtype=np.float32)
            padded[:, : betas.shape[1]] = betas
            parts.append(padded)
        flat = np.flatnonzero(mask.reshape(-1))
        lookup = np.full(mask.size, -1, dtype=np.int64)
        lookup[flat] = np.arange(flat.size)
        rois = {}
        for roi_path in sorted((folder / "rois").glob("*.nii.gz")):
            roi = np.asarray(nib.load(roi_path).dataobj).reshape(-1) != 0
            idx = lookup[np.flatnonzero(roi)]
            rois[roi_path.name[: -len(".nii.gz")]] = np.sort(idx[idx >= 0])
        data[s] = SubjectData(responses=np.concatenate(parts), voxel_ijk=np.argwhere(mask).astype(np.int32), rois=rois)
    stimuli = [str(p) for p in videos["train"] + videos["test"]]
    split = np.array(["train"] * len(videos["train"]) + ["test"] * len(videos["test"]))
    return EncodingDataset(
        name="bmd",
        kind="video",
        stimuli=stimuli,
        ids=[Path(p).stem for p in stimuli],
        split=split,
        subjects=data,
        grid_shape=tuple(grid),
        affine=np.asarray(affine),
    )


def bmd_to_dataset(
    bmd_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], subjects: list[int] | None = None
) -> Path:
    """Convert a BMD-format folder into berg's HDF5 training dataset (videos referenced by path)."""
    from berg.training.datasets import write_dataset

    return write_dataset(out_path, read_bmd(bmd_dir, subjects))


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any):
    """The trainer config for this model (``config.yaml`` beside this file), with overrides."""
    from berg.training.trainer import TrainConfig

    cfg = TrainConfig.from_yaml(path or HERE / "config.yaml")
    for key, value in overrides.items():
        if key not in TrainConfig.__dataclass_fields__:
            raise KeyError(f"unknown config key {key!r}")
        setattr(cfg, key, value)
    return cfg


def train_bmd(
    bmd_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    subjects: list[int] | None = None,
    **overrides: Any,
):
    """BMD folder -> berg dataset -> generic trainer -> berg-native export. Returns the TrainResult."""
    from berg.training.trainer import train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = bmd_to_dataset(bmd_dir, out_dir / "bmd_dataset.h5", subjects)
    cfg = load_config(config, dataset=str(dataset), out_dir=str(out_dir / "export"), **overrides)
    log.info("training %s on %s", cfg.model_id, dataset)
    return train(cfg)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bmd_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--config", default=None, help="trainer config (default: config.yaml beside this file)")
    ap.add_argument("--subjects", type=int, nargs="*", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    result = train_bmd(args.bmd_dir, args.out_dir, config=args.config, subjects=args.subjects)
    for line in result.summary_lines():
        print(line)
    print(f"artifact: {result.artifact_dir}\ncard: {result.card_path}\nregistry: {result.registry_path}")


if __name__ == "__main__":
    main()
