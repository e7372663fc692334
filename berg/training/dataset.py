"""berg's on-disk dataset format for training encoding models (HDF5), and its reader/writer.

Layout (documented in docs/training.md)::

    /stimuli/images   (n, H, W, 3) uint8            images stored inline, or
    /stimuli/paths    (n,) str                      files (relative to the HDF5 file's folder or absolute)
    /stimuli/ids      (n,) str
    /split            (n,) str                      "train" or "test"
    /subjects/sub-XX/responses  (n, n_repeats, n_outputs) float32, NaN for missing repeats
    /subjects/sub-XX/voxel_ijk  (n_outputs, 3) int32            optional (volumetric outputs)
    /subjects/sub-XX/rois/<name> int64 indices into the outputs  optional
    root attrs: name, kind ("image" | "video"), grid_shape + affine (volumetric outputs)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError

__all__ = ["SubjectData", "EncodingDataset", "write_dataset", "read_dataset"]


@dataclass
class SubjectData:
    """One subject's responses and output geometry."""

    responses: np.ndarray  # (n_stimuli, n_repeats, n_outputs)
    voxel_ijk: np.ndarray | None = None
    rois: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_outputs(self) -> int:
        """Number of outputs."""
        return int(self.responses.shape[-1])


@dataclass
class EncodingDataset:
    """A dataset in memory (responses) with stimuli kept as arrays or paths."""

    name: str
    kind: str
    stimuli: Any  # (n, H, W, 3) uint8 array, or list of paths
    ids: list[str]
    split: np.ndarray  # (n,) str
    subjects: dict[Any, SubjectData]
    grid_shape: tuple[int, int, int] | None = None
    affine: np.ndarray | None = None
    checksum: str = ""

    def indices(self, split: str) -> np.ndarray:
        """Row indices of a split."""
        idx = np.flatnonzero(self.split == split)
        if idx.size == 0:
            raise InvalidParameterError(f"dataset {self.name} has no {split!r} stimuli; splits: {sorted(set(self.split))}")
        return idx


def _label(subject: Any) -> str:
    from berg.layouts import subject_label

    return subject_label(subject)


def write_dataset(path: str | os.PathLike[str], ds: EncodingDataset) -> Path:
    """Write a dataset in berg's HDF5 format (atomically)."""
    import h5py

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["name"] = ds.name
        f.attrs["kind"] = ds.kind
        if ds.grid_shape is not None:
            f.attrs["grid_shape"] = np.asarray(ds.grid_shape, dtype=np.int64)
            f.attrs["affine"] = np.asarray(ds.affine, dtype=np.float64)
        g = f.create_group("stimuli")
        if isinstance(ds.stimuli, np.ndarray):
            g.create_dataset("images", data=ds.stimuli, chunks=True)
        else:
            g.create_dataset("paths", data=np.asarray([str(p) for p in ds.stimuli], dtype=object), dtype=h5py.string_dtype())
        g.create_dataset("ids", data=np.asarray(ds.ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("split", data=np.asarray(ds.split, dtype=object), dtype=h5py.string_dtype())
        for subject, sd in ds.subjects.items():
            sg = f.create_group(f"subjects/{_label(subject)}")
            sg.attrs["subject"] = subject
            sg.create_dataset("responses", data=sd.responses.astype(np.float32), chunks=True)
            if sd.voxel_ijk is not None:
                sg.create_dataset("voxel_ijk", data=sd.voxel_ijk.astype(np.int32))
            for name, idx in sd.rois.items():
                sg.create_dataset(f"rois/{name}", data=np.asarray(idx, dtype=np.int64))
    os.replace(tmp, path)
    return path


def read_dataset(path: str | os.PathLike[str]) -> EncodingDataset:
    """Read a dataset written in berg's HDF5 format (responses into memory, stimuli lazily for paths)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InvalidParameterError(f"dataset file not found: {path}")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    with h5py.File(path, "r") as f:
        for required in ("stimuli/ids", "split", "subjects"):
            if required not in f:
                raise InvalidParameterError(f"{path} lacks /{required}; see docs/training.md for the format")
        if "stimuli/images" in f:
            stimuli: Any = f["stimuli/images"][()]
        elif "stimuli/paths" in f:
            stimuli = [p if os.path.isabs(p) else str(path.parent / p) for p in f["stimuli/paths"].asstr()[()]]
        else:
            raise InvalidParameterError(f"{path} has neither /stimuli/images nor /stimuli/paths")
        subjects = {}
        for label, sg in f["subjects"].items():
            subject = sg.attrs.get("subject", label)
            subject = int(subject) if isinstance(subject, (np.integer, int)) else str(subject)
            subjects[subject] = SubjectData(
                responses=sg["responses"][()],
                voxel_ijk=sg["voxel_ijk"][()] if "voxel_ijk" in sg else None,
                rois={k: v[()] for k, v in sg["rois"].items()} if "rois" in sg else {},
            )
        return EncodingDataset(
            name=str(f.attrs.get("name", path.stem)),
            kind=str(f.attrs.get("kind", "image")),
            stimuli=stimuli,
            ids=list(f["stimuli/ids"].asstr()[()]),
            split=np.asarray(f["split"].asstr()[()]),
            subjects=subjects,
            grid_shape=tuple(int(v) for v in f.attrs["grid_shape"]) if "grid_shape" in f.attrs else None,
            affine=np.asarray(f.attrs["affine"]) if "affine" in f.attrs else None,
            checksum=h.hexdigest(),
        )
