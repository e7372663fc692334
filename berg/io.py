"""Saving responses: HDF5 with dimensions, output ids and provenance; NIfTI through the model's space."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError

__all__ = ["save", "save_nifti"]


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def save(
    path: str | os.PathLike[str],
    responses: np.ndarray | Mapping[Any, np.ndarray],
    model: Any,
    *,
    stimulus_ids: list[str] | None = None,
) -> Path:
    """Write responses to HDF5 with provenance (atomic: a temp file renamed into place).

    Layout: one dataset per subject, ``/sub-XX/responses`` ``(n_stimuli, n_outputs)`` float32 with
    attributes ``dims``; ``/sub-XX/output_ids`` (voxel ``ijk`` for volumes, else indices); optional
    ``/stimulus_ids``; root attribute ``provenance`` (JSON: model id, subjects, selection, berg version,
    artifact checksums, backbone, preprocessing).

    Parameters
    ----------
    path : path
        ``.h5`` file to write.
    responses : ndarray or dict
        What ``encode`` returned.
    model : BaseModelInterface
        The model that produced them.
    stimulus_ids : list of str, optional
        A label per stimulus (e.g. file names).
    """
    import h5py

    from berg.layouts import subject_label

    path = Path(path)
    per_subject = dict(responses) if isinstance(responses, Mapping) else {model.subjects[0]: responses}
    n = {np.asarray(r).shape[0] for r in per_subject.values()}
    if len(n) != 1:
        raise InvalidParameterError(f"responses of different subjects have different stimulus counts {n}")
    if stimulus_ids is not None and len(stimulus_ids) != n.pop():
        raise InvalidParameterError("stimulus_ids must have one entry per stimulus")
    tmp = _atomic_target(path)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["provenance"] = json.dumps(model.provenance(), default=str)
            f.attrs["model_id"] = model.model_id
            f.attrs["format"] = "berg-responses-1"
            if stimulus_ids is not None:
                f.create_dataset("stimulus_ids", data=np.asarray(stimulus_ids, dtype=object), dtype=h5py.string_dtype())
            for subject, r in per_subject.items():
                r = np.asarray(r, dtype=np.float32)
                group = f.create_group(subject_label(subject))
                ds = group.create_dataset("responses", data=r, chunks=True, compression="gzip", compression_opts=1)
                ds.attrs["dims"] = json.dumps(["n_stimuli", "n_outputs"])
                ids = model.output_ids(subject)
                group.create_dataset("output_ids", data=ids)
                group.attrs["output_ids"] = "voxel (i, j, k) on the model grid" if np.ndim(ids) == 2 else "output index"
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_nifti(path: str | os.PathLike[str], responses: np.ndarray, model: Any, subject: Any = None) -> Path:
    """Write ``model.to_nifti(responses)`` atomically (``.nii`` or ``.nii.gz``)."""
    path = Path(path)
    img = model.to_nifti(responses, subject=subject)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        img.to_filename(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
