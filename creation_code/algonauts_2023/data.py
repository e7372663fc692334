"""Reader of the Algonauts 2023 challenge data as distributed (one folder per NSD subject).

Layout (confirmed from the challenge's own preparation script, gifale95/algonauts_2023
``code/01_challenge_data_preparation/challenge_data_preparation.py``, and the development kit tutorial)::

    DIR/subjNN/training_split/training_images/train-IIII_nsd-NNNNN.png   (IIII from 0001; NNNNN = 0-based NSD id)
    DIR/subjNN/training_split/training_fmri/{lh,rh}_training_fmri.npy   float32 (n_train, n_vertices[hemi])
    DIR/subjNN/test_split/test_images/test-IIII_nsd-NNNNN.png
    DIR/subjNN/test_split/test_fmri/{lh,rh}_test_fmri.npy               (released after the challenge; optional)
    DIR/subjNN/test_split/noise_ceiling/{lh,rh}_noise_ceiling.npy      noise ceiling per vertex, fraction (optional)
    DIR/subjNN/roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy     (163842,) int, non-zero at the challenge vertices (1; 2 where nsdgeneral and nsdgeneralRSC overlap)
    DIR/subjNN/roi_masks/{lh,rh}.<class>_challenge_space.npy          (n_vertices[hemi],) int ROI label per vertex
    DIR/subjNN/roi_masks/{lh,rh}.<class>_fsaverage_space.npy          (163842,) int ROI label per fsaverage vertex
    DIR/subjNN/roi_masks/mapping_<class>.npy                          {label: ROI name} (np.save of a dict)

ROI classes: prf-visualrois, floc-bodies, floc-faces, floc-places, floc-words, streams. Challenge vertices are
the fsaverage vertices of NSD's nsdgeneral ROI plus RSC, in increasing fsaverage index order (subjects 6
and 8 lose the vertices with NaN betas). The fMRI is z-scored per vertex within each NSD session and
averaged over repeats.

Captions (for the CLIP text features) come from COCO: NSD image id -> ``cocoId`` in NSD's stimulus table
``nsd_stim_info_merged.csv`` (nsddata/experiments/nsd/ in the NSD bucket; row ``nsdId`` = the id in the file
names) -> ``captions_train2017.json`` / ``captions_val2017.json`` (COCO annotations_trainval2017.zip). The
mapping dicts are pickled by ``np.save``; they are read with berg's restricted pickle interpreter
(:func:`berg.store.legacy.load_legacy_npy`), which runs nothing.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from berg.errors import InvalidParameterError

__all__ = [
    "ROI_CLASSES",
    "HEMIS",
    "FSAVERAGE_VERTICES",
    "SubjectData",
    "read_subject",
    "devkit_split",
    "nsd_ids",
    "coco_captions",
    "roi_indices",
]

ROI_CLASSES = ("prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words", "streams")
HEMIS = ("lh", "rh")
FSAVERAGE_VERTICES = 163842
_NAME = re.compile(r"^(train|test)-(\d{4,})_nsd-(\d{5})\.png$")
#: The development kit's split of the training data: 90 % train, 10 % validation, np.random.seed(5).
DEVKIT_SEED = 5
DEVKIT_TRAIN_PERCENT = 90


@dataclass
class SubjectData:
    """One subject's challenge files (arrays are read on demand)."""

    subject: int
    root: Path
    train_images: list[Path]
    test_images: list[Path]
    n_vertices: dict[str, int]
    fsaverage_vertices: dict[str, np.ndarray]
    roi_classes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # class -> hemi -> labels
    roi_names: dict[str, dict[int, str]] = field(default_factory=dict)  # class -> {label: name}

    def fmri(self, hemi: str, split: str = "training") -> np.ndarray:
        """``(n_images, n_vertices[hemi])`` float32 responses of a split (``training`` or ``test``)."""
        path = self.root / f"{split}_split" / f"{split}_fmri" / f"{hemi}_{split}_fmri.npy"
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        n = len(self.train_images if split == "training" else self.test_images)
        if arr.shape != (n, self.n_vertices[hemi]):
            raise InvalidParameterError(
                f"{path} has shape {arr.shape}; expected ({n}, {self.n_vertices[hemi]}) "
                f"({n} {split} images x {self.n_vertices[hemi]} challenge vertices)"
            )
        return arr

    def has_test_fmri(self) -> bool:
        return all((self.root / "test_split" / "test_fmri" / f"{h}_test_fmri.npy").is_file() for h in HEMIS)

    def noise_ceiling(self) -> np.ndarray | None:
        """Shipped noise ceilings (fraction), lh then rh, or ``None`` when the files are absent."""
        paths = [self.root / "test_split" / "noise_ceiling" / f"{h}_noise_ceiling.npy" for h in HEMIS]
        if not all(p.is_file() for p in paths):
            return None
        parts = [np.load(p, allow_pickle=False).astype(np.float64).ravel() for p in paths]
        for h, part in zip(HEMIS, parts):
            if part.size != self.n_vertices[h]:
                raise InvalidParameterError(
                    f"{h}_noise_ceiling.npy has {part.size} values; {self.n_vertices[h]} expected"
                )
        return np.concatenate(parts)


def _missing(path: Path, what: str) -> InvalidParameterError:
    return InvalidParameterError(
        f"{path} not found ({what}). DIR must hold the Algonauts 2023 challenge data as distributed: one folder "
        "per subject (subj01 ... subj08) with training_split/, test_split/ and roi_masks/ "
        "(http://algonauts.csail.mit.edu/challenge.html)"
    )


def _images(folder: Path, kind: str) -> list[Path]:
    if not folder.is_dir():
        raise _missing(folder, f"{kind} images")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".png")
    bad = [p.name for p in files if not _NAME.match(p.name) or _NAME.match(p.name).group(1) != kind]
    if bad:
        raise InvalidParameterError(f"{folder}: file names {bad[:3]} do not follow {kind}-IIII_nsd-NNNNN.png")
    return files


def read_subject(data_dir: str | Path, subject: int) -> SubjectData:
    """Check and index one subject's challenge folder (no large array is read)."""
    from berg.store.legacy import load_legacy_npy

    root = Path(data_dir) / f"subj{int(subject):02d}"
    if not root.is_dir():
        raise _missing(root, f"subject {subject}")
    train = _images(root / "training_split" / "training_images", "train")
    test = (
        _images(root / "test_split" / "test_images", "test") if (root / "test_split" / "test_images").is_dir() else []
    )
    masks = root / "roi_masks"
    verts, n_vertices = {}, {}
    for h in HEMIS:
        path = masks / f"{h}.all-vertices_fsaverage_space.npy"
        if not path.is_file():
            raise _missing(path, "challenge vertices on fsaverage")
        m = np.load(path, allow_pickle=False).ravel()
        if m.size != FSAVERAGE_VERTICES:
            raise InvalidParameterError(
                f"{path} has {m.size} entries; fsaverage has {FSAVERAGE_VERTICES} per hemisphere"
            )
        verts[h] = np.flatnonzero(m).astype(np.int64)
        n_vertices[h] = int(verts[h].size)
    sd = SubjectData(int(subject), root, train, test, n_vertices, verts)
    for cls in ROI_CLASSES:
        mapping = masks / f"mapping_{cls}.npy"
        if not mapping.is_file():
            raise _missing(mapping, f"ROI names of {cls}")
        names = load_legacy_npy(mapping)
        if isinstance(names, np.ndarray) and names.dtype == object and names.shape == ():
            names = names.item()
        if not isinstance(names, dict):
            raise InvalidParameterError(f"{mapping} does not hold a {{label: ROI name}} dict")
        sd.roi_names[cls] = {int(k): str(v) for k, v in names.items()}
        sd.roi_classes[cls] = {}
        for h in HEMIS:
            path = masks / f"{h}.{cls}_challenge_space.npy"
            if not path.is_file():
                raise _missing(path, f"{cls} labels in challenge space")
            labels = np.load(path, allow_pickle=False).ravel().astype(np.int64)
            if labels.size != n_vertices[h]:
                raise InvalidParameterError(f"{path} has {labels.size} labels; {n_vertices[h]} challenge vertices")
            sd.roi_classes[cls][h] = labels
    return sd


def roi_indices(sd: SubjectData) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``({ROI name: output indices}, {ROI class: output indices})`` over lh then rh outputs."""
    offset = {"lh": 0, "rh": sd.n_vertices["lh"]}
    rois: dict[str, list[np.ndarray]] = defaultdict(list)
    classes: dict[str, np.ndarray] = {}
    for cls in ROI_CLASSES:
        members = []
        for h in HEMIS:
            labels = sd.roi_classes[cls][h]
            for label, name in sd.roi_names[cls].items():
                if label == 0:
                    continue  # 0 = "Unknown": outside the class
                idx = np.flatnonzero(labels == label) + offset[h]
                rois[name].append(idx)
            members.append(np.flatnonzero(labels > 0) + offset[h])
        classes[cls] = np.concatenate(members).astype(np.int64)
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in rois.items()}, classes


def devkit_split(n: int, seed: int = DEVKIT_SEED, train_percent: float = DEVKIT_TRAIN_PERCENT):
    """The development kit's train/validation split of the training images (indices).

    ``np.random.seed(seed); idxs = np.arange(n); np.random.shuffle(idxs)``; the first
    ``round(n / 100 * train_percent)`` are training, the rest validation.
    """
    idxs = np.arange(n)
    np.random.RandomState(seed).shuffle(idxs)  # == np.random.seed(seed); np.random.shuffle(idxs)
    n_train = int(np.round(n / 100 * train_percent))
    return idxs[:n_train], idxs[n_train:]


def nsd_ids(images: Sequence[Path]) -> np.ndarray:
    """0-based NSD image ids from challenge file names (``..._nsd-NNNNN.png``)."""
    return np.array([int(_NAME.match(Path(p).name).group(3)) for p in images], dtype=np.int64)


def coco_captions(ids: Sequence[int], stim_info: str | Path, annotations: str | Path) -> list[list[str]]:
    """The COCO captions of NSD images.

    Parameters
    ----------
    ids : sequence of int
        0-based NSD ids.
    stim_info : path
        ``nsd_stim_info_merged.csv`` (columns ``nsdId`` and ``cocoId``).
    annotations : path
        Folder with ``captions_train2017.json`` and ``captions_val2017.json``.
    """
    stim_info, annotations = Path(stim_info), Path(annotations)
    if not stim_info.is_file():
        raise InvalidParameterError(
            f"{stim_info} not found: the CLIP text features need NSD's stimulus table nsd_stim_info_merged.csv "
            "(nsddata/experiments/nsd/ in the NSD bucket); put it in DIR or pass --option nsd_stim_info=PATH, or "
            "build only the image variants (--option variants=[image_only,sam])"
        )
    coco_of: dict[int, int] = {}
    with stim_info.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            coco_of[int(row["nsdId"])] = int(row["cocoId"])
    by_image: dict[int, list[str]] = defaultdict(list)
    for name in ("captions_train2017.json", "captions_val2017.json"):
        path = annotations / name
        if not path.is_file():
            raise InvalidParameterError(
                f"{path} not found: the CLIP text features need COCO's caption files (annotations_trainval2017.zip "
                "from cocodataset.org, unpacked); put annotations/ in DIR or pass --option coco_annotations=PATH"
            )
        for ann in json.loads(path.read_text(encoding="utf-8"))["annotations"]:
            by_image[int(ann["image_id"])].append(str(ann["caption"]).strip())
    out = []
    for i in ids:
        coco = coco_of.get(int(i))
        caps = by_image.get(coco, []) if coco is not None else []
        if not caps:
            raise InvalidParameterError(f"NSD image {i} (COCO id {coco}) has no COCO caption in {annotations}")
        out.append(caps)
    return out
