"""Saving responses: HDF5 with dimensions, output ids and provenance; NIfTI through the model's space.

HDF5 layout (``format = "berg-responses"``, ``format_version = 1``)::

    /                         attrs: format, format_version, model_id, berg_version, created_utc,
                                     subjects (JSON), provenance (JSON: model.provenance()),
                                     artifacts (JSON: {key: sha256/size} of the files used)
    /stimulus_ids             (n_stimuli,) str       optional, e.g. the input file names
    /sub-01/responses         (n_stimuli, n_outputs) float32, attrs: dims, units
    /sub-01/output_ids        (n_outputs, 3) int32 voxel (i, j, k) for volumes, else (n_outputs,) index
    /sub-01                   attrs: subject, selection (JSON), n_outputs

One group per subject, also for a single subject, so readers never special-case. Responses that a
model returns as one array for several subjects (a group-level output) go to ``/group``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from berg._version import __version__
from berg.errors import InvalidParameterError

__all__ = ["save", "save_nifti", "load_responses", "FORMAT", "FORMAT_VERSION"]

FORMAT = "berg-responses"
FORMAT_VERSION = 1
_H5_SUFFIXES = (".h5", ".hdf5")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@contextlib.contextmanager
def _atomic_path(path: Path, suffix: str) -> Iterator[Path]:
    """A temp file beside ``path`` that replaces it only if the block succeeds (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name (not mkstemp, whose 0600 mode would stick to the result): the writer
    # creates it with the user's umask.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:  # durable before it becomes visible under the final name
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _label(subject: Any) -> str:
    from berg.layouts import subject_label

    return "group" if subject == "group" else subject_label(subject)


def _per_subject(responses: Any, model: Any) -> dict[Any, np.ndarray]:
    """``{subject: 2-D array}`` from what ``encode`` returned, checked against the model's subjects."""
    subjects = list(getattr(model, "subjects", []) or [])
    if isinstance(responses, Mapping):
        unknown = [s for s in responses if s not in subjects]
        if unknown:
            raise InvalidParameterError(
                f"responses have subject(s) {unknown} that the model did not load; loaded subjects: {subjects}"
            )
        if not responses:
            raise InvalidParameterError("responses is an empty dict; nothing to save")
        out = dict(responses)
    else:
        # One array from a multi-subject model is a group-level output (e.g. maps combined over subjects).
        out = {subjects[0] if len(subjects) == 1 else "group": responses}
    for s, r in out.items():
        arr = np.asarray(r)
        if arr.ndim != 2:
            raise InvalidParameterError(
                f"responses of subject {s} have shape {arr.shape}; expected 2-D (n_stimuli, n_outputs) "
                "as returned by encode"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise InvalidParameterError(f"responses of subject {s} have dtype {arr.dtype}; expected float32")
        out[s] = arr
    counts = {s: r.shape[0] for s, r in out.items()}
    if len(set(counts.values())) != 1:
        raise InvalidParameterError(f"subjects have different numbers of stimuli: {counts}")
    return out


def _output_ids(model: Any, subject: Any, n_outputs: int) -> np.ndarray:
    ids = np.asarray(model.output_ids(None if subject == "group" else subject))
    if ids.shape[0] != n_outputs:
        raise InvalidParameterError(
            f"responses of subject {subject} have {n_outputs} outputs but the model has {ids.shape[0]}; "
            "pass the responses of this model (with the same selection)"
        )
    return ids


def _dims(model: Any) -> list[str]:
    """Dimension names from the card (``output.dims``), else the standard pair."""
    spec = getattr(model, "spec", None)
    try:
        dims = [d["name"] for d in spec.card["output"]["dims"]]
    except (AttributeError, KeyError, TypeError):
        dims = []
    return dims if len(dims) == 2 else ["n_stimuli", "n_outputs"]


def save(
    path: str | os.PathLike[str],
    responses: np.ndarray | Mapping[Any, np.ndarray],
    model: Any,
    *,
    stimulus_ids: Sequence[str] | None = None,
    compression: str | None = None,
) -> Path:
    """Write responses to HDF5 with output ids and provenance (atomically).

    Parameters
    ----------
    path : path
        ``.h5`` or ``.hdf5`` file to write (replaced if it exists).
    responses : ndarray or dict
        What ``encode`` returned for ``model``: ``(n_stimuli, n_outputs)`` or ``{subject: array}``.
    model : BaseModelInterface
        The model that produced them (for output ids and ``model.provenance()``).
    stimulus_ids : sequence of str, optional
        One label per stimulus (e.g. file names), stored as ``/stimulus_ids``.
    compression : {None, "gzip", "lzf"}
        HDF5 filter for the responses. Off by default: predicted responses are float32 noise to a
        compressor (gzip saves ~7 % at ~18x the write time; benchmarks/save_hdf5.py).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InvalidParameterError
        Wrong suffix, subjects the model did not load, wrong shapes, or a stimulus id count that does
        not match; checked before anything is written.

    Examples
    --------
    >>> berg.save("responses.h5", responses, model, stimulus_ids=["cat.jpg", "house.jpg"])
    >>> berg.io.load_responses("responses.h5")["responses"][1].shape
    (2, 1685)
    """
    import h5py

    path = Path(path)
    if not path.name.endswith(_H5_SUFFIXES):
        raise InvalidParameterError(f"HDF5 output must end with {' or '.join(_H5_SUFFIXES)}, got {path.name!r}")
    if compression not in ("gzip", "lzf", None):
        raise InvalidParameterError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}")
    per_subject = _per_subject(responses, model)
    n_stimuli = next(iter(per_subject.values())).shape[0]
    ids = {s: _output_ids(model, s, r.shape[1]) for s, r in per_subject.items()}
    if stimulus_ids is not None:
        stimulus_ids = [str(s) for s in stimulus_ids]
        if len(stimulus_ids) != n_stimuli:
            raise InvalidParameterError(
                f"stimulus_ids has {len(stimulus_ids)} entries; responses have {n_stimuli} stimuli"
            )
    provenance = dict(model.provenance())
    selection = provenance.get("selection") or {}
    dims = _dims(model)
    units = None
    spec = getattr(model, "spec", None)
    with contextlib.suppress(AttributeError, KeyError, TypeError):
        units = spec.card["output"]["units"]

    with _atomic_path(path, ".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["model_id"] = str(model.model_id)
            f.attrs["berg_version"] = __version__
            f.attrs["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            f.attrs["subjects"] = json.dumps([s for s in per_subject], default=str)
            f.attrs["provenance"] = json.dumps(provenance, default=str, sort_keys=True)
            f.attrs["artifacts"] = json.dumps(provenance.get("artifacts", {}), default=str, sort_keys=True)
            if stimulus_ids is not None:
                f.create_dataset("stimulus_ids", data=stimulus_ids, dtype=h5py.string_dtype())
            for subject, r in per_subject.items():
                group = f.create_group(_label(subject))
                group.attrs["subject"] = str(subject)
                group.attrs["n_outputs"] = int(r.shape[1])
                group.attrs["selection"] = json.dumps(selection.get(str(subject), {}), default=str)
                ds = group.create_dataset(
                    "responses", data=r.astype(np.float32, copy=False),
                    chunks=True if (compression and r.size) else None, compression=compression if r.size else None,
                )
                ds.attrs["dims"] = np.array(dims, dtype=h5py.string_dtype())
                for axis, name in enumerate(dims):
                    ds.dims[axis].label = name
                if units:
                    ds.attrs["units"] = str(units)
                out_ids = group.create_dataset("output_ids", data=ids[subject])
                out_ids.attrs["meaning"] = (
                    "voxel (i, j, k) on the model's grid" if ids[subject].ndim == 2 else "output index"
                )
    return path


def load_responses(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by :func:`save`.

    Returns
    -------
    dict
        ``{"model_id", "responses": {group: ndarray}, "output_ids": {group: ndarray},
        "stimulus_ids": list or None, "provenance": dict, "attrs": dict}``; groups are keyed by the
        subject as written (``"1"``, ``"group"``).
    """
    import h5py

    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise InvalidParameterError(f"{path} is not a berg responses file (format={f.attrs.get('format')!r})")
        out: dict[str, Any] = {
            "model_id": str(f.attrs["model_id"]),
            "provenance": json.loads(f.attrs["provenance"]),
            "attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()},
            "stimulus_ids": [s.decode() for s in f["stimulus_ids"][()]] if "stimulus_ids" in f else None,
            "responses": {},
            "output_ids": {},
        }
        for name, group in f.items():
            if isinstance(group, h5py.Group):
                key = str(group.attrs["subject"])
                out["responses"][key] = group["responses"][()]
                out["output_ids"][key] = group["output_ids"][()]
    return out


def save_nifti(
    path: str | os.PathLike[str],
    responses: np.ndarray | Mapping[Any, np.ndarray],
    model: Any,
    subject: Any = None,
) -> Path:
    """Write ``model.to_nifti(responses)`` atomically (``.nii`` or ``.nii.gz``).

    One stimulus gives a 3-D image, several a 4-D image (one volume per stimulus).

    Parameters
    ----------
    path : path
        Output file, ``.nii`` or ``.nii.gz``.
    responses : ndarray or dict
        What ``encode`` returned; for a dict pass ``subject`` (or have only one subject in it).
    model : BaseModelInterface
        The model that produced them (mask and affine come from its metadata).
    subject : optional
        The subject to write when ``responses`` holds several.

    Returns
    -------
    Path
    """
    path = Path(path)
    if not path.name.endswith(_NIFTI_SUFFIXES):
        raise InvalidParameterError(f"NIfTI output must end with .nii or .nii.gz, got {path.name!r}")
    if isinstance(responses, Mapping):
        if subject is None:
            if len(responses) != 1:
                raise InvalidParameterError(
                    f"responses hold subjects {list(responses)}; pass subject= one of them (one NIfTI per subject)"
                )
            subject = next(iter(responses))
        if subject not in responses:
            raise InvalidParameterError(f"subject {subject!r} not in responses; subjects: {list(responses)}")
        responses = responses[subject]
    arr = np.asarray(responses)
    if arr.ndim == 2 and arr.shape[0] == 1:
        responses = arr[0]  # one stimulus -> a 3-D image, as viewers expect for a single map
    img = model.to_nifti(responses, subject=subject)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with _atomic_path(path, suffix) as tmp:
        img.to_filename(str(tmp))
    return path
