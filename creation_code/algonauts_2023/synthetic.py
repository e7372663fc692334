"""A synthetic dataset in the Algonauts 2023 challenge layout, with a planted linear ground truth.

For tests and demos of ``berg build fmri-algonauts_2023-clip_sam`` without the real data. Everything the
adapter (:mod:`creation_code.algonauts_2023.data`) reads is written as the challenge distributes it:
``subjNN/training_split/{training_images,training_fmri}``, ``test_split/{test_images,test_fmri,noise_ceiling}``,
``roi_masks`` (fsaverage masks, ROI labels per class in challenge space, ``mapping_<class>.npy`` dicts), plus
NSD's ``nsd_stim_info_merged.csv`` and COCO's ``annotations/captions_{train,val}2017.json``.

The responses are linear in the features berg's backbones compute (``features(paths, captions)``), so a
build must recover them: prf-visualrois vertices are driven by SAM features, vertices of the other ROI
classes by CLIP image + caption features, and the remaining vertices by all features concatenated (the
per_roi_class variant's assignment). Each vertex's weights lie in the span of the centred features of the
development kit's training split, so ridge with a small penalty recovers them exactly.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from creation_code.algonauts_2023 import data as challenge

__all__ = ["ROI_NAMES", "Planted", "write_dataset"]

#: {class: {label: name}} as in the challenge's mapping files (0 = Unknown).
ROI_NAMES = {
    "prf-visualrois": ["V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"],
    "floc-bodies": ["EBA", "FBA-1", "FBA-2", "mTL-bodies"],
    "floc-faces": ["OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"],
    "floc-places": ["OPA", "PPA", "RSC"],
    "floc-words": ["OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"],
    "streams": ["early", "midventral", "midlateral", "midparietal", "ventral", "lateral", "parietal"],
}
_WORDS = "a the dog cat man woman street table red blue green plate pizza train bus sky tree sits on with near".split()


@dataclass
class Planted:
    """The ground truth of one subject: noiseless responses and which feature set drives each output."""

    train: np.ndarray  # (n_train, n_outputs) noiseless training responses (lh then rh)
    test: np.ndarray  # (n_test, n_outputs)
    driver: np.ndarray  # (n_outputs,) 0 image_text, 1 sam, 2 all (== per_roi_class codes)
    n_vertices: dict[str, int]
    train_images: list[Path] = field(default_factory=list)
    test_images: list[Path] = field(default_factory=list)
    captions: dict[int, list[str]] = field(default_factory=dict)  # nsd id -> captions


def _labels(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """ROI labels per class for one hemisphere of ``n`` vertices (prf first, then floc, streams overlapping)."""
    out = {c: np.zeros(n, dtype=np.int64) for c in challenge.ROI_CLASSES}
    q = n // 6
    out["prf-visualrois"][:q] = rng.integers(1, 8, q)
    start = q
    for cls, width in (("floc-bodies", 2), ("floc-faces", 2), ("floc-places", 1), ("floc-words", 1)):
        out[cls][start : start + width] = rng.integers(1, len(ROI_NAMES[cls]) + 1, width)
        start += width
    out["streams"][: start + 2] = rng.integers(1, 8, start + 2)  # overlaps prf and floc: prf must win
    return out


def _image(rng: np.random.Generator) -> np.ndarray:
    h, w = int(rng.integers(40, 72)), int(rng.integers(40, 72))
    base = rng.integers(0, 256, (1, 1, 3))
    return np.clip(base + rng.normal(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)


def _weights(x_train: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """(k, m) weights in the row space of the centred training features, scaled to unit response std."""
    xc = x_train - x_train.mean(axis=0)
    w = xc.T @ rng.standard_normal((xc.shape[0], m))
    scale = np.std(xc @ w, axis=0)
    return w / np.where(scale > 0, scale, 1.0)


def write_dataset(
    root: str | Path,
    features: Callable[[list[Path], list[list[str]]], dict[str, np.ndarray]],
    *,
    subjects: tuple[int, ...] = (1, 2),
    n_train: int = 40,
    n_test: int = 6,
    n_vertices: dict[str, int] | None = None,
    n_captions: int = 5,
    train_percent: float = challenge.DEVKIT_TRAIN_PERCENT,
    noise: float = 0.05,
    seed: int = 0,
) -> dict[int, Planted]:
    """Write the dataset under ``root`` and return the planted truth per subject.

    Every subject sees the same images (as NSD's shared images; features are computed once) but has its
    own vertices, ROIs, weights and noise; subject ``k``'s hemispheres have ``n_vertices`` plus a few
    (vertex counts differ between subjects, as in the challenge data).

    Parameters
    ----------
    root : path
        The ``DIR`` of ``berg build ... --data DIR``.
    features : callable
        ``features(image_paths, captions) -> {"image": (n, 512), "text": (n, 512), "sam": (n, 16384)}``,
        computed with the backbones the build will use.
    subjects, n_train, n_test : int
    n_vertices : dict
        Challenge vertices per hemisphere of the first subject (default ``{"lh": 24, "rh": 20}``).
    n_captions : int
        At most this many captions per image (at least one).
    train_percent : float
        The build's ``train_percent``: the weights lie in the span of that split's centred features.
    noise : float
        Standard deviation of the Gaussian noise added to the unit-variance responses.
    seed : int
    """
    from PIL import Image

    from berg.models.algonauts_2023 import per_roi_assignment

    root = Path(root)
    rng = np.random.default_rng(seed)
    base = dict(n_vertices or {"lh": 24, "rh": 20})
    pool = rng.permutation(73000)
    ids = {"train": np.sort(pool[:n_train]), "test": np.sort(pool[n_train : n_train + n_test])}
    coco_of = {int(n): int(100000 + n) for split in ids for n in ids[split]}
    captions = {
        int(n): [
            " ".join(rng.choice(_WORDS, int(rng.integers(3, 7)))) for _ in range(int(rng.integers(1, n_captions + 1)))
        ]
        for n in coco_of
    }
    pixels = {n: _image(rng) for n in coco_of}
    feats: dict[str, dict[str, np.ndarray]] = {}
    planted = {}
    for k, s in enumerate(subjects):
        sub = root / f"subj{s:02d}"
        nv = {"lh": base["lh"] + 2 * k, "rh": base["rh"] + k}
        paths: dict[str, list[Path]] = {}
        for split, folder in (("train", "training_split/training_images"), ("test", "test_split/test_images")):
            d = sub / folder
            d.mkdir(parents=True, exist_ok=True)
            paths[split] = []
            for i, nsd in enumerate(ids[split]):
                p = d / f"{split}-{i + 1:04d}_nsd-{int(nsd):05d}.png"
                Image.fromarray(pixels[int(nsd)]).save(p)
                paths[split].append(p)
        masks = sub / "roi_masks"
        masks.mkdir(parents=True, exist_ok=True)
        labels = {}
        for h in challenge.HEMIS:
            fs_mask = np.zeros(challenge.FSAVERAGE_VERTICES, dtype=np.int64)
            fs_mask[rng.choice(challenge.FSAVERAGE_VERTICES, nv[h], replace=False)] = 1
            np.save(masks / f"{h}.all-vertices_fsaverage_space.npy", fs_mask)
            labels[h] = _labels(nv[h], rng)
            for cls, lab in labels[h].items():
                np.save(masks / f"{h}.{cls}_challenge_space.npy", lab)
                full = np.zeros(challenge.FSAVERAGE_VERTICES, dtype=np.int64)
                full[np.flatnonzero(fs_mask)] = lab
                np.save(masks / f"{h}.{cls}_fsaverage_space.npy", full)
        for cls, names in ROI_NAMES.items():
            np.save(masks / f"mapping_{cls}.npy", {0: "Unknown", **{i + 1: n for i, n in enumerate(names)}})
        # ground truth: drivers follow the authors' per-ROI-class rule
        driver = per_roi_assignment(
            {c: np.concatenate([labels[h][c] > 0 for h in challenge.HEMIS]) for c in challenge.ROI_CLASSES}
        )
        for split in paths:
            if split not in feats:
                feats[split] = features(paths[split], [captions[int(n)] for n in ids[split]])
        tr, _ = challenge.devkit_split(n_train, train_percent=train_percent)
        m = nv["lh"] + nv["rh"]
        y = {split: np.zeros((len(paths[split]), m)) for split in paths}
        for code, kinds in ((0, ("image", "text")), (1, ("sam",)), (2, ("image", "text", "sam"))):
            cols = np.flatnonzero(driver == code)
            if cols.size == 0:
                continue
            x = {
                split: np.concatenate([feats[split][kd] for kd in kinds], axis=1).astype(np.float64) for split in feats
            }
            w = _weights(x["train"][tr], cols.size, rng)
            mean = x["train"][tr].mean(axis=0)
            bias = rng.normal(0, 0.5, cols.size)
            for split in y:
                y[split][:, cols] = (x[split] - mean) @ w + bias
        planted[s] = Planted(
            y["train"].copy(), y["test"].copy(), driver, nv, paths["train"], paths["test"], dict(captions)
        )
        nl = nv["lh"]
        for split, folder, stem in (
            ("train", "training_split/training_fmri", "training"),
            ("test", "test_split/test_fmri", "test"),
        ):
            d = sub / folder
            d.mkdir(parents=True, exist_ok=True)
            noisy = (y[split] + rng.normal(0, noise, y[split].shape)).astype(np.float32)
            np.save(d / f"lh_{stem}_fmri.npy", noisy[:, :nl])
            np.save(d / f"rh_{stem}_fmri.npy", noisy[:, nl:])
        nc = sub / "test_split" / "noise_ceiling"
        nc.mkdir(parents=True, exist_ok=True)
        ceil = rng.uniform(0.3, 0.9, m)
        np.save(nc / "lh_noise_ceiling.npy", ceil[:nl])
        np.save(nc / "rh_noise_ceiling.npy", ceil[nl:])
    with (root / "nsd_stim_info_merged.csv").open("w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(["", "cocoId", "cocoSplit", "nsdId"])
        for i, nsd in enumerate(sorted(coco_of)):
            wr.writerow([i, coco_of[nsd], "train2017" if nsd % 2 else "val2017", nsd])
    ann = root / "annotations"
    ann.mkdir(exist_ok=True)
    for split, parity in (("train2017", 1), ("val2017", 0)):
        anns = [
            {"image_id": coco_of[n], "id": n * 10 + j, "caption": c}
            for n in sorted(coco_of)
            if n % 2 == parity
            for j, c in enumerate(captions[n])
        ]
        (ann / f"captions_{split}.json").write_text(json.dumps({"annotations": anns}), encoding="utf-8")
    return planted
