"""berg's on-disk training dataset format (HDF5), its reader/writer, and adapters for published data.

Format (version 1; documented with examples in docs/training.md)::

    /stimuli/images              (n, H, W, 3) uint8        images stored inline, or
    /stimuli/paths               (n,) str                  image/video files (relative to the HDF5 file, or absolute)
    /stimuli/ids                 (n,) str                  unique stimulus ids
    /split                       (n,) str                  "train" | "test" (other labels are ignored)
    /subjects/<label>/responses  (n, n_repeats, n_outputs) float32, NaN for a missing repeat
    /subjects/<label>/voxel_ijk  (n_outputs, 3) int32      optional: voxel of each output (volumes)
    /subjects/<label>/rois/<name> int64 indices into the outputs (optional)
    root attrs: format = "berg-training-dataset", format_version = 1, name, kind ("image" | "video"),
                grid_shape (3,) + affine (4, 4) for volumetric outputs
    subject group attrs: subject (int or str)

Responses are read lazily, one subject at a time, in row blocks: a BMD-sized subject
(1,102 x 10 x 108 k float32 = 4.8 GB) never has to sit in memory twice.

Adapters turn published files into this format: :func:`trials_to_repeats` (the generic step: one
row per trial -> stimuli x repeats), :func:`nsd_dataset` and the BOLD5000 readers of
:mod:`berg.training.bold5000` (``bold5000_roi_dataset``, ``bold5000_release_dataset``,
``bold5000_glmsingle_dataset``; importable from here too). BMD is read by ``creation_code/bmd_s3d/train.py``. The adapters follow the datasets' documentation; what could
not be checked against the real files is listed under "Unverified" in each docstring.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError
from berg.fsutil import atomic_path, sha256_file
from berg.subjects import subject_label

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SubjectData",
    "EncodingDataset",
    "write_dataset",
    "read_dataset",
    "trials_to_repeats",
    "nsd_dataset",
    "NSDStimInfo",
    "read_nsd_stim_info",
    "NSD_STIM_INFO_COLUMNS",
]

log = logging.getLogger(__name__)

FORMAT = "berg-training-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
_ROW_BLOCK = 64  # rows per HDF5 read when responses are loaded lazily


class _H5Responses:
    """A subject's ``(n, n_repeats, n_outputs)`` responses in an HDF5 file, read on indexing.

    Supports ``.shape``, ``.dtype``, ``len()`` and ``[rows]`` / ``[rows, ...]`` with an int array, a
    slice or a boolean mask for the rows (read in row blocks, so fancy indexing stays fast).
    """

    def __init__(self, path: Path, name: str, shape: tuple[int, ...]):
        self.path, self.name, self.shape = path, name, shape
        self.dtype = np.dtype(np.float32)
        self.ndim = len(shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        import h5py

        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        rows = np.arange(self.shape[0])[key]
        rows = np.atleast_1d(rows)
        out = np.empty((len(rows),) + self.shape[1:], dtype=np.float32)
        with h5py.File(self.path, "r") as f:
            ds = f[self.name]
            order = np.argsort(rows, kind="stable")
            sorted_rows = rows[order]
            for start in range(0, len(sorted_rows), _ROW_BLOCK):
                chunk = sorted_rows[start : start + _ROW_BLOCK]
                lo, hi = int(chunk[0]), int(chunk[-1]) + 1
                block = ds[lo:hi]
                out[order[start : start + len(chunk)]] = block[chunk - lo]
        if np.ndim(np.arange(self.shape[0])[key]) == 0:
            return out[0][rest] if rest else out[0]
        return out[(slice(None),) + rest] if rest else out


@dataclass
class SubjectData:
    """One subject's responses and output geometry.

    Attributes
    ----------
    responses : (n_stimuli, n_repeats, n_outputs) array-like
        float32, NaN marks a missing repeat; an ndarray, or a lazy reader from :func:`read_dataset`.
    voxel_ijk : (n_outputs, 3) int array, optional
        Voxel of every output on the dataset's grid (volumetric outputs).
    rois : dict
        ROI name -> int64 indices into the outputs.
    """

    responses: Any
    voxel_ijk: np.ndarray | None = None
    rois: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_outputs(self) -> int:
        """Number of outputs."""
        return int(self.responses.shape[-1])


@dataclass
class EncodingDataset:
    """A training dataset: stimuli (inline images or file paths), splits and per-subject responses.

    Attributes
    ----------
    name : str
    kind : {"image", "video"}
    stimuli : (n, H, W, 3) uint8 array or list of paths
    ids : list of str
    split : (n,) str array
    subjects : dict
        Subject (int or str) -> :class:`SubjectData`.
    grid_shape, affine : volumetric output space (both or neither)
    checksum : str
        sha256 of the HDF5 file it was read from ("" if built in memory).
    """

    name: str
    kind: str
    stimuli: Any
    ids: list[str]
    split: np.ndarray
    subjects: dict[Any, SubjectData]
    grid_shape: tuple[int, int, int] | None = None
    affine: np.ndarray | None = None
    checksum: str = ""

    def __post_init__(self) -> None:
        self.split = np.asarray(self.split).astype(str)
        self.validate()

    def validate(self) -> None:
        """Check shapes and labels; raises :class:`InvalidParameterError` naming what is wrong."""
        n = len(self.ids)
        if self.kind not in ("image", "video"):
            raise InvalidParameterError(f"dataset kind {self.kind!r} unknown; valid: ['image', 'video']")
        if len(self.stimuli) != n or len(self.split) != n:
            raise InvalidParameterError(
                f"dataset {self.name}: {len(self.stimuli)} stimuli, {n} ids and {len(self.split)} split labels differ"
            )
        if len(set(self.ids)) != n:
            raise InvalidParameterError(f"dataset {self.name}: stimulus ids are not unique")
        if not self.subjects:
            raise InvalidParameterError(f"dataset {self.name} has no subjects")
        if (self.grid_shape is None) != (self.affine is None):
            raise InvalidParameterError("grid_shape and affine go together (volumetric outputs need both)")
        for subject, sd in self.subjects.items():
            shape = tuple(sd.responses.shape)
            if len(shape) != 3 or shape[0] != n:
                raise InvalidParameterError(
                    f"subject {subject}: responses must be (n_stimuli={n}, n_repeats, n_outputs), got {shape}"
                )
            m = shape[2]
            if sd.voxel_ijk is not None:
                if sd.voxel_ijk.shape != (m, 3):
                    raise InvalidParameterError(
                        f"subject {subject}: voxel_ijk is {sd.voxel_ijk.shape}, expected ({m}, 3)"
                    )
                if self.grid_shape is not None and (
                    np.any(sd.voxel_ijk < 0) or np.any(sd.voxel_ijk >= np.asarray(self.grid_shape))
                ):
                    raise InvalidParameterError(f"subject {subject}: voxel_ijk outside the grid {self.grid_shape}")
            for roi, idx in sd.rois.items():
                idx = np.asarray(idx)
                if idx.size and (idx.min() < 0 or idx.max() >= m):
                    raise InvalidParameterError(f"subject {subject}: ROI {roi!r} indexes outside 0..{m - 1}")

    def indices(self, split: str) -> np.ndarray:
        """Row indices of a split (sorted)."""
        idx = np.flatnonzero(self.split == split)
        if idx.size == 0:
            raise InvalidParameterError(
                f"dataset {self.name} has no {split!r} stimuli; splits present: {sorted(set(self.split.tolist()))}"
            )
        return idx


def write_dataset(path: str | os.PathLike[str], ds: EncodingDataset) -> Path:
    """Write a dataset in berg's HDF5 format (temp file + rename, so readers never see half a file).

    Responses are written in row blocks, so lazily read sources are streamed.
    """
    import h5py

    ds.validate()
    path = Path(path)
    with atomic_path(path, ".h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "name": ds.name, "kind": ds.kind})
        if ds.grid_shape is not None:
            f.attrs["grid_shape"] = np.asarray(ds.grid_shape, dtype=np.int64)
            f.attrs["affine"] = np.asarray(ds.affine, dtype=np.float64)
        g = f.create_group("stimuli")
        if isinstance(ds.stimuli, np.ndarray):
            g.create_dataset("images", data=ds.stimuli, chunks=(1,) + ds.stimuli.shape[1:])
        else:
            g.create_dataset("paths", data=[str(p) for p in ds.stimuli], dtype=h5py.string_dtype())
        g.create_dataset("ids", data=list(ds.ids), dtype=h5py.string_dtype())
        f.create_dataset("split", data=ds.split.tolist(), dtype=h5py.string_dtype())
        for subject, sd in ds.subjects.items():
            sg = f.create_group(f"subjects/{subject_label(subject)}")
            sg.attrs["subject"] = subject
            n, reps, m = sd.responses.shape
            chunks = (min(n, 16), reps, min(m, 1 << 14))
            out = sg.create_dataset("responses", shape=(n, reps, m), dtype=np.float32, chunks=chunks)
            for a in range(0, n, _ROW_BLOCK):
                out[a : a + _ROW_BLOCK] = np.asarray(sd.responses[a : min(a + _ROW_BLOCK, n)], dtype=np.float32)
            if sd.voxel_ijk is not None:
                sg.create_dataset("voxel_ijk", data=np.asarray(sd.voxel_ijk, dtype=np.int32))
            for name, idx in sd.rois.items():
                sg.create_dataset(f"rois/{name}", data=np.asarray(idx, dtype=np.int64))
    return path


def read_dataset(path: str | os.PathLike[str], *, checksum: bool = True) -> EncodingDataset:
    """Open a dataset written in berg's HDF5 format.

    Stimuli given by path stay paths (decoded per batch later); inline images are loaded; responses
    are lazy readers (:class:`SubjectData.responses` indexes the file on access).

    Parameters
    ----------
    path : path
    checksum : bool
        Compute the file's sha256 (recorded in the trained model's provenance).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InvalidParameterError(f"dataset file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InvalidParameterError(f"{path} is not an HDF5 file ({exc}); see docs/training.md for the format") from exc
    with f:
        version = int(f.attrs.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise InvalidParameterError(
                f"{path}: dataset format_version {version} is newer than this berg ({FORMAT_VERSION})"
            )
        for required in ("stimuli/ids", "split", "subjects"):
            if required not in f:
                raise InvalidParameterError(f"{path} lacks /{required}; see docs/training.md for the format")
        if "stimuli/images" in f:
            stimuli: Any = f["stimuli/images"][()]
        elif "stimuli/paths" in f:
            stimuli = [p if os.path.isabs(p) else str(path.parent / p) for p in f["stimuli/paths"].asstr()[()]]
        else:
            raise InvalidParameterError(f"{path} has neither /stimuli/images nor /stimuli/paths")
        subjects: dict[Any, SubjectData] = {}
        for label, sg in f["subjects"].items():
            if "responses" not in sg:
                raise InvalidParameterError(f"{path}: /subjects/{label} lacks responses")
            subject = sg.attrs.get("subject", label)
            subject = int(subject) if isinstance(subject, (np.integer, int)) else str(subject)
            subjects[subject] = SubjectData(
                responses=_H5Responses(path, sg["responses"].name, tuple(sg["responses"].shape)),
                voxel_ijk=sg["voxel_ijk"][()] if "voxel_ijk" in sg else None,
                rois={k: v[()] for k, v in sg["rois"].items()} if "rois" in sg else {},
            )
        ds = EncodingDataset(
            name=str(f.attrs.get("name", path.stem)),
            kind=str(f.attrs.get("kind", "image")),
            stimuli=stimuli,
            ids=list(f["stimuli/ids"].asstr()[()]),
            split=np.asarray(f["split"].asstr()[()]),
            subjects=subjects,
            grid_shape=tuple(int(v) for v in f.attrs["grid_shape"]) if "grid_shape" in f.attrs else None,
            affine=np.asarray(f.attrs["affine"]) if "affine" in f.attrs else None,
        )
    if checksum:
        ds.checksum = sha256_file(path)
    return ds


# --------------------------------------------------------------------------------------- adapters


def trials_to_repeats(
    trial_stimulus: Sequence[Any], trial_responses: np.ndarray, *, max_repeats: int | None = None
) -> tuple[list[Any], np.ndarray]:
    """Group single trials into berg's ``(n_stimuli, n_repeats, n_outputs)`` layout.

    Parameters
    ----------
    trial_stimulus : (n_trials,) sequence
        Stimulus id of each trial.
    trial_responses : (n_trials, n_outputs) array
    max_repeats : int, optional
        Keep at most this many repeats per stimulus (the first ones, in trial order).

    Returns
    -------
    ids : list
        Unique stimulus ids in order of first appearance.
    responses : (n_stimuli, n_repeats, n_outputs) float32 array
        Repeats in trial order, NaN-padded where a stimulus was seen fewer times.
    """
    trial_responses = np.asarray(trial_responses)
    if trial_responses.ndim != 2 or trial_responses.shape[0] != len(trial_stimulus):
        raise InvalidParameterError(
            f"trial_responses must be (n_trials={len(trial_stimulus)}, n_outputs), got {trial_responses.shape}"
        )
    ids: list[Any] = []
    rows: dict[Any, list[int]] = {}
    for t, sid in enumerate(trial_stimulus):
        if sid not in rows:
            rows[sid] = []
            ids.append(sid)
        rows[sid].append(t)
    reps = max(len(v) for v in rows.values())
    reps = min(reps, max_repeats) if max_repeats else reps
    out = np.full((len(ids), reps, trial_responses.shape[1]), np.nan, dtype=np.float32)
    for i, sid in enumerate(ids):
        trials = rows[sid][:reps]
        out[i, : len(trials)] = trial_responses[trials]
    return ids, out


def _zscore_per_session(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return ((x - x.mean(axis=0)) / np.where(sd == 0, 1.0, sd)).astype(np.float32)


#: Columns of NSD's ``nsd_stim_info_merged.csv`` (nsddata/experiments/nsd/), after its unnamed first column
#: (the pandas index, equal to ``nsdId``): checked against the real header (41 columns, see the NSD data
#: manual and tarrlab/BOLD5000-GLMs ``notebooks/between_dataset_analysis_v1.ipynb``).
NSD_STIM_INFO_COLUMNS = (
    "cocoId",
    "cocoSplit",
    "cropBox",
    "loss",
    "nsdId",
    "flagged",
    "BOLD5000",
    "shared1000",
    *(f"subject{s}" for s in range(1, 9)),
    *(f"subject{s}_rep{r}" for s in range(1, 9) for r in range(3)),
)
_NSD_STIM_INFO_NEEDED = ("cocoId", "cocoSplit", "nsdId", "BOLD5000", "shared1000")


@dataclass
class NSDStimInfo:
    """NSD's stimulus table (``nsd_stim_info_merged.csv``), the columns berg uses.

    Attributes
    ----------
    nsd_id : (n,) int64
        0-based NSD image id (``nsdId``; the 73k ids of ``nsd_stimuli.hdf5``'s ``imgBrick`` rows).
    coco_id : (n,) int64
    coco_split : list of str
        ``train2017`` / ``val2017``.
    shared1000, bold5000 : (n,) bool
        The 1,000 images every subject saw; images also in BOLD5000.
    """

    path: Path
    nsd_id: np.ndarray
    coco_id: np.ndarray
    coco_split: list[str]
    shared1000: np.ndarray
    bold5000: np.ndarray
    columns: dict[str, list[str]]

    def subject_trials(self, subject: int) -> np.ndarray:
        """``(n, 3)`` 1-based trial numbers of the 3 showings of each image to ``subject`` (0: not shown).

        From ``subject<S>_rep0..2``; raises when a column is absent or has empty cells.
        """
        cols = [f"subject{int(subject)}_rep{r}" for r in range(3)]
        out = np.zeros((len(self.nsd_id), 3), np.int64)
        for k, c in enumerate(cols):
            vals = self.columns.get(c)
            if vals is None:
                raise InvalidParameterError(f"{self.path} lacks column {c!r}; subjects are 1-8")
            empty = [i for i, v in enumerate(vals) if not v.strip()]
            if empty:
                raise InvalidParameterError(
                    f"{self.path}: column {c!r} is empty in {len(empty)} rows (first: {empty[0] + 2})"
                )
            out[:, k] = [int(float(v)) for v in vals]
        return out


def _bool_cell(v: str) -> bool:
    v = v.strip().lower()
    if v in ("true", "1", "1.0"):
        return True
    if v in ("false", "0", "0.0", ""):
        return False
    raise ValueError(v)


def read_nsd_stim_info(path: str | os.PathLike[str]) -> NSDStimInfo:
    """Read NSD's ``nsd_stim_info_merged.csv`` (the real 41-column header: an unnamed index column, then
    :data:`NSD_STIM_INFO_COLUMNS`).

    Raises
    ------
    InvalidParameterError
        Naming the file and the columns it lacks.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise InvalidParameterError(
            f"NSD stimulus table not found: {path} (nsddata/experiments/nsd/nsd_stim_info_merged.csv in the NSD bucket)"
        )
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = list(reader)
    missing = [c for c in _NSD_STIM_INFO_NEEDED if c not in header]
    if missing:
        raise InvalidParameterError(
            f"{path} lacks column(s) {missing}; NSD's nsd_stim_info_merged.csv has {list(NSD_STIM_INFO_COLUMNS)}"
        )
    columns = {h: [r[i] if i < len(r) else "" for r in rows] for i, h in enumerate(header) if h}
    try:
        return NSDStimInfo(
            path=path,
            nsd_id=np.asarray([int(float(v)) for v in columns["nsdId"]], np.int64),
            coco_id=np.asarray([int(float(v)) for v in columns["cocoId"]], np.int64),
            coco_split=[v.strip() for v in columns["cocoSplit"]],
            shared1000=np.asarray([_bool_cell(v) for v in columns["shared1000"]], bool),
            bold5000=np.asarray([_bool_cell(v) for v in columns["BOLD5000"]], bool),
            columns=columns,
        )
    except ValueError as exc:
        raise InvalidParameterError(
            f"{path}: a value of nsdId/cocoId/shared1000/BOLD5000 is not valid ({exc})"
        ) from exc


def _check_design_against_stim_info(info: NSDStimInfo, subject: int, trial_image: np.ndarray, shared: set) -> None:
    """Raise when ``nsd_expdesign.mat`` and ``nsd_stim_info_merged.csv`` disagree (they must be one release)."""
    table_shared = set(info.nsd_id[info.shared1000].tolist())
    if table_shared != shared:
        raise InvalidParameterError(
            f"{info.path}: shared1000 marks {len(table_shared)} images, nsd_expdesign.mat's sharedix {len(shared)} "
            f"({len(table_shared ^ shared)} differ); use both files from the same NSD release"
        )
    trials = info.subject_trials(subject)
    for nsd, reps in zip(info.nsd_id.tolist(), trials):
        for t in reps[reps > 0]:
            if t > len(trial_image) or trial_image[t - 1] != nsd:
                raise InvalidParameterError(
                    f"{info.path}: subject{subject} shows nsdId {nsd} on trial {t}, nsd_expdesign.mat shows "
                    f"{trial_image[t - 1] if t <= len(trial_image) else 'no trial'} there; use both files from the same "
                    "NSD release"
                )


def nsd_dataset(
    nsd_root: str | os.PathLike[str],
    subject: int,
    *,
    mask: str = "nsdgeneral",
    sessions: Sequence[int] | None = None,
    zscore: bool = True,
    stim_info: str | os.PathLike[str] | None = None,
) -> EncodingDataset:
    """Natural Scenes Dataset (Allen et al. 2022) betas of one subject in berg's format.

    Reads, relative to ``nsd_root`` (the layout of the public ``natural-scenes-dataset`` bucket):

    * ``nsddata/experiments/nsd/nsd_expdesign.mat``: ``masterordering`` (1-based index, per trial,
      into the subject's 10,000 images), ``subjectim`` (8 x 10,000, 1-based 73k ids) and ``sharedix``
      (the 1,000 shared images, 1-based 73k ids);
    * ``nsddata_betas/ppdata/subjSS/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz``:
      (X, Y, Z, 750) int16 betas, percent signal change x 300;
    * ``nsddata/ppdata/subjSS/func1pt8mm/roi/<mask>.nii.gz``: voxels with a value > 0 are outputs;
    * ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5``: ``imgBrick`` (73000, 425, 425, 3) uint8.

    The shared 1,000 images form the test split (as in Algonauts 2023), the rest train. Betas are
    z-scored per voxel within each session (``zscore``), as NSD's authors recommend.

    ``stim_info`` (optional, ``nsddata/experiments/nsd/nsd_stim_info_merged.csv``, read with
    :func:`read_nsd_stim_info`): the design is checked against it: its ``shared1000`` images must be
    ``sharedix``, and the 1-based trial numbers in ``subject<S>_rep0..2`` must show each image on the
    trials ``masterordering`` gives it.

    Unverified (written from the NSD data manual, not run on the real files): that scipy can read
    ``nsd_expdesign.mat`` (MATLAB v5, not v7.3); that trial ``t`` (0-based) of ``masterordering``
    is trial ``t % 750`` of session ``t // 750 + 1``; the dtype/scaling of the betas files.
    """
    import h5py
    import nibabel as nib
    import scipy.io

    root = Path(nsd_root)
    design = scipy.io.loadmat(root / "nsddata/experiments/nsd/nsd_expdesign.mat")
    order = np.asarray(design["masterordering"]).ravel().astype(np.int64) - 1
    subjectim = np.asarray(design["subjectim"])[subject - 1].astype(np.int64) - 1
    shared = set((np.asarray(design["sharedix"]).ravel().astype(np.int64) - 1).tolist())
    if stim_info is not None:
        _check_design_against_stim_info(read_nsd_stim_info(stim_info), subject, subjectim[order], shared)
    func = f"subj{subject:02d}/func1pt8mm"
    mask_img = nib.load(root / f"nsddata/ppdata/{func}/roi/{mask}.nii.gz")
    inside = np.asarray(mask_img.dataobj) > 0
    beta_dir = root / f"nsddata_betas/ppdata/{func}/betas_fithrf_GLMdenoise_RR"
    available = sorted(
        int(p.name[len("betas_session") : -len(".nii.gz")]) for p in beta_dir.glob("betas_session*.nii.gz")
    )
    sessions = list(sessions or available)
    if not sessions:
        raise InvalidParameterError(f"no betas_sessionNN.nii.gz in {beta_dir}")
    trial_ids, parts = [], []
    for s in sessions:
        betas = np.asarray(nib.load(beta_dir / f"betas_session{s:02d}.nii.gz").dataobj)[inside].T / 300.0
        parts.append(_zscore_per_session(betas) if zscore else betas.astype(np.float32))
        trial_ids.extend(subjectim[order[(s - 1) * 750 : s * 750]].tolist())
        log.info("NSD subject %d session %d: %s", subject, s, betas.shape)
    ids, responses = trials_to_repeats(trial_ids, np.concatenate(parts))
    with h5py.File(root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        brick = f["imgBrick"]
        images = np.stack([brick[i] for i in ids])
    split = np.array(["test" if i in shared else "train" for i in ids])
    return EncodingDataset(
        name="nsd",
        kind="image",
        stimuli=images,
        ids=[f"nsd-{i + 1:05d}" for i in ids],
        split=split,
        subjects={
            subject: SubjectData(responses, np.argwhere(inside).astype(np.int32), {mask: np.arange(int(inside.sum()))})
        },
        grid_shape=tuple(inside.shape),
        affine=np.asarray(mask_img.affine),
    )
