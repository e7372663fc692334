"""Saving and reading responses: HDF5 with dims, coordinates and provenance; NIfTI and GIfTI via the space.

HDF5 layout (``format = "berg-responses"``, ``format_version = 2``)::

    /                           attrs: format, format_version, model_id, berg_version, created_utc,
                                       subjects (JSON), provenance (JSON: model.provenance()),
                                       artifacts (JSON: {key: sha256} of the files used)
    /stimulus_ids               (n_stimuli,) str       optional, e.g. the input file names
    /sub-01/responses           (n_stimuli, *space.shape) float32, attrs: dims, units
    /sub-01/coords/<name>       one dataset per coordinate of the space (voxel_ijk, hemisphere,
                                vertex, channel, time_ms, repetition...)
    /sub-01/output_ids          (n_outputs, 3) voxel (i, j, k) for volumes, else (n_outputs,) index
    /sub-01                     attrs: subject, selection (JSON), space (JSON: space.to_dict())

One group per subject, also for a single subject, so readers never special-case. Responses that a
model returns as one array for several subjects (a group-level output) go to ``/sub-group``.
Responses of any space are written: volumes, surfaces, sensor x time with repetitions.

:func:`load_responses` reads a file back into arrays, coordinates and provenance (and rebuilds each
subject's space, so ``to_nifti``/``to_gifti``/``split`` work on what was read).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from berg._version import __version__
from berg.errors import InvalidParameterError
from berg.fsutil import atomic_path
from berg.subjects import subject_label

__all__ = ["save", "save_nifti", "save_gifti", "load_responses", "FORMAT", "FORMAT_VERSION"]

FORMAT = "berg-responses"
FORMAT_VERSION = 2
_H5_SUFFIXES = (".h5", ".hdf5")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GROUP = "group"


def _label(subject: Any) -> str:
    return _GROUP if subject == _GROUP else subject_label(subject)


def _check_output_path(path: Any, suffixes: Sequence[str], what: str) -> Path:
    from berg.errors import check_output_path

    return check_output_path(path, suffixes, what=f"{what} output")


@contextlib.contextmanager
def _writing(path: Path, action: str):
    """Disk-full / permission errors arrive as a BERGError that keeps the errno text."""
    from berg.errors import BERGError, os_error

    try:
        yield
    except OSError as exc:
        if isinstance(exc, BERGError) or exc.errno is None:
            raise
        raise os_error(exc, action, path) from exc


def _space_of(model: Any, subject: Any):
    if subject == _GROUP:
        return model.space(None)
    return model.space(subject)


def _per_subject(responses: Any, model: Any) -> dict[Any, np.ndarray]:
    """``{subject: array}`` from what ``encode`` returned, checked against the model's spaces."""
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
        out = {subjects[0] if len(subjects) == 1 else _GROUP: responses}
    for s, r in out.items():
        arr = np.asarray(r)
        space = _space_of(model, s)
        if arr.shape[1:] != tuple(space.shape):
            raise InvalidParameterError(
                f"responses of subject {s} have shape {arr.shape}; this model returns "
                f"(n_stimuli, {', '.join(map(str, space.shape))}) as encode gives them"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise InvalidParameterError(f"responses of subject {s} have dtype {arr.dtype}; expected float32")
        out[s] = arr
    counts = {s: r.shape[0] for s, r in out.items()}
    if len(set(counts.values())) != 1:
        raise InvalidParameterError(f"subjects have different numbers of stimuli: {counts}")
    return out


def _check_stimulus_ids(stimulus_ids: Sequence[Any] | None, n_stimuli: int) -> list[str] | None:
    if stimulus_ids is None:
        return None
    ids = [str(s) for s in stimulus_ids]
    if len(ids) != n_stimuli:
        raise InvalidParameterError(f"stimulus_ids has {len(ids)} entries; responses have {n_stimuli} stimuli")
    return ids


def _write_coord(group: Any, name: str, values: np.ndarray) -> None:
    import h5py

    arr = np.asarray(values)
    if arr.dtype == object or arr.dtype.kind in "US":
        group.create_dataset(name, data=[str(v) for v in arr.ravel()], dtype=h5py.string_dtype())
    else:
        group.create_dataset(name, data=arr)


def save(
    path: str | os.PathLike[str],
    responses: np.ndarray | Mapping[Any, np.ndarray],
    model: Any,
    *,
    stimulus_ids: Sequence[str] | None = None,
    compression: str | None = None,
) -> Path:
    """Write responses of any output space to HDF5 with coordinates and provenance (atomically).

    Parameters
    ----------
    path : path
        ``.h5`` or ``.hdf5`` file to write (replaced if it exists).
    responses : ndarray or dict
        What ``encode`` returned for ``model``: ``(n_stimuli, *space.shape)`` or ``{subject: array}``.
    model : BaseModelInterface
        The model that produced them (for its spaces and ``model.provenance()``).
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
    >>> berg.save("responses.h5", responses, model, stimulus_ids=["a.jpg", "b.jpg"])   # doctest: +SKIP
    >>> berg.load_responses("responses.h5")["responses"]["1"].shape                  # doctest: +SKIP
    (2, 1685)
    """
    import h5py

    path = _check_output_path(path, _H5_SUFFIXES, "HDF5")
    if compression not in ("gzip", "lzf", None):
        raise InvalidParameterError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}")
    per_subject = _per_subject(responses, model)
    n_stimuli = next(iter(per_subject.values())).shape[0]
    ids = _check_stimulus_ids(stimulus_ids, n_stimuli)
    provenance = dict(model.provenance())
    selection = provenance.get("selection") or {}
    spec = getattr(model, "spec", None)
    units = ((getattr(spec, "card", None) or {}).get("output") or {}).get("units") if spec is not None else None

    with _writing(path, "write the responses"), atomic_path(path, ".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["model_id"] = str(model.model_id)
            f.attrs["berg_version"] = __version__
            f.attrs["created_utc"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            f.attrs["subjects"] = json.dumps(list(per_subject), default=str)
            f.attrs["provenance"] = json.dumps(provenance, default=str, sort_keys=True)
            f.attrs["artifacts"] = json.dumps(provenance.get("artifacts", {}), default=str, sort_keys=True)
            if "warning" in provenance:
                f.attrs["warning"] = str(provenance["warning"])
            if ids is not None:
                f.create_dataset("stimulus_ids", data=ids, dtype=h5py.string_dtype())
            for subject, r in per_subject.items():
                space = _space_of(model, subject)
                group = f.create_group(_label(subject))
                group.attrs["subject"] = str(subject)
                group.attrs["n_outputs"] = int(space.n_outputs)
                group.attrs["selection"] = json.dumps(selection.get(str(subject), {}), default=str)
                group.attrs["space"] = json.dumps(space.to_dict(), default=str)
                ds = group.create_dataset(
                    "responses",
                    data=r.astype(np.float32, copy=False),
                    chunks=True if (compression and r.size) else None,
                    compression=compression if r.size else None,
                )
                dims = ["stimulus", *space.dims]
                ds.attrs["dims"] = np.array(dims, dtype=h5py.string_dtype())
                for axis, name in enumerate(dims):
                    ds.dims[axis].label = name
                if units:
                    ds.attrs["units"] = str(units)
                coords = group.create_group("coords")
                for name, values in space.coords().items():
                    _write_coord(coords, name, values)
                for name, values in space.arrays().items():
                    _write_coord(coords, f"space_{name.replace('/', '_')}", values)
                out_ids = model.output_ids(None if subject == _GROUP else subject)
                oid = group.create_dataset("output_ids", data=np.asarray(out_ids))
                oid.attrs["meaning"] = (
                    "voxel (i, j, k) on the model's grid" if np.ndim(out_ids) == 2 else "output index"
                )
    return path


def _read_coord(ds: Any) -> np.ndarray:
    value = ds[()]
    if ds.dtype.kind == "O" or (ds.dtype.kind == "S"):
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(value)], dtype=object)
    return np.asarray(value)


def load_responses(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by :func:`save`.

    Returns
    -------
    dict
        ``{"model_id", "responses": {subject: ndarray}, "coords": {subject: {name: array}},
        "spaces": {subject: OutputSpace}, "output_ids": {subject: ndarray}, "stimulus_ids": list or
        None, "provenance": dict, "attrs": dict}``; subjects are keyed as written (``"1"``, ``"group"``).
    """
    import h5py

    from berg.core.spaces import space_from_dict

    text = os.fspath(path)
    if not Path(text).is_file():
        raise InvalidParameterError(f"responses file not found: {text}")
    with h5py.File(text, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise InvalidParameterError(f"{path} is not a berg responses file (format={f.attrs.get('format')!r})")
        out: dict[str, Any] = {
            "model_id": str(f.attrs["model_id"]),
            "provenance": json.loads(f.attrs["provenance"]),
            "attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()},
            "stimulus_ids": [s.decode() for s in f["stimulus_ids"][()]] if "stimulus_ids" in f else None,
            "responses": {},
            "coords": {},
            "spaces": {},
            "output_ids": {},
        }
        for group in f.values():
            if not isinstance(group, h5py.Group):
                continue
            key = str(group.attrs["subject"])
            out["responses"][key] = group["responses"][()]
            out["output_ids"][key] = group["output_ids"][()]
            coords = {name: _read_coord(ds) for name, ds in group["coords"].items()} if "coords" in group else {}
            out["coords"][key] = {k: v for k, v in coords.items() if not k.startswith("space_")}
            if "space" in group.attrs:
                arrays = {
                    k[len("space_") :].replace("_", "/", 1) if k.startswith("space_vertices") else k[len("space_") :]: v
                    for k, v in coords.items()
                    if k.startswith("space_")
                }
                if "voxel_ijk" in coords:
                    arrays.setdefault("voxel_ijk", coords["voxel_ijk"])
                out["spaces"][key] = space_from_dict(json.loads(group.attrs["space"]), arrays=arrays)
    return out


def _one_subject(responses: Any, subject: Any) -> tuple[Any, Any]:
    if isinstance(responses, Mapping):
        if subject is None:
            if len(responses) != 1:
                raise InvalidParameterError(
                    f"responses hold subjects {list(responses)}; pass subject= one of them (one file per subject)"
                )
            subject = next(iter(responses))
        if subject not in responses:
            raise InvalidParameterError(f"subject {subject!r} not in responses; subjects: {list(responses)}")
        responses = responses[subject]
    return responses, subject


def save_nifti(
    path: str | os.PathLike[str],
    responses: np.ndarray | Mapping[Any, np.ndarray],
    model: Any,
    subject: Any = None,
    *,
    stimulus_ids: Sequence[str] | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Write volume-space responses as NIfTI (atomically), with a JSON sidecar for 4-D images.

    One stimulus gives a 3-D image, several a 4-D image (one volume per stimulus). Voxels outside the
    model's (selected) outputs are NaN. Beside a 4-D image, ``<name>.json`` records which stimulus each
    volume is, the model and its provenance (BIDS-style sidecar).

    Parameters
    ----------
    path : path
        Output file, ``.nii`` or ``.nii.gz``.
    responses : ndarray or dict
        What ``encode`` returned; for a dict pass ``subject`` (or have only one subject in it).
    model : BaseModelInterface
        The model that produced them (grid and affine come from its space).
    subject : optional
        The subject to write when ``responses`` holds several (``None`` for a group map).
    stimulus_ids : sequence of str, optional
        One label per stimulus, recorded in the sidecar (default: ``stimulus-0000``...).
    affine : (4, 4) array, optional
        Only for models whose files record no affine.

    Returns
    -------
    Path
    """
    path = _check_output_path(path, _NIFTI_SUFFIXES, "NIfTI")
    responses, subject = _one_subject(responses, subject)
    arr = np.asarray(responses)
    space = model.space(subject)
    if space.kind != "volume":
        raise InvalidParameterError(
            f"this model's outputs are a {space.kind} space (no volumetric space); NIfTI needs a volume space"
            + ("; use berg.save_gifti" if space.kind == "surface" else "; use berg.save (HDF5)")
        )
    n = 1 if arr.ndim == 1 else arr.shape[0]
    ids = _check_stimulus_ids(stimulus_ids, n) if stimulus_ids is not None else [f"stimulus-{i:04d}" for i in range(n)]
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]  # one stimulus -> a 3-D image, as viewers expect for a single map
    img = space.to_nifti(arr, affine=affine)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    sidecar = path.with_name(path.name[: -len(suffix)] + ".json")
    with _writing(path, "write the NIfTI image"), atomic_path(path, suffix) as tmp:
        img.to_filename(str(tmp))
    if arr.ndim == 2:
        from berg.fsutil import atomic_write_text

        prov = model.provenance()
        who = subject if subject is not None else (model.subjects[0] if len(model.subjects) == 1 else _GROUP)
        meta = {
            "model_id": model.model_id,
            "subject": str(who),
            "volumes": ids,
            "units": _units(model),
            "outside_outputs": "NaN (not predicted)",
            "provenance": prov,
        }
        atomic_write_text(sidecar, json.dumps(meta, indent=1, default=str, sort_keys=True))
    return path


def _units(model: Any) -> Any:
    spec = getattr(model, "spec", None)
    try:
        return spec.card["output"]["units"]
    except (AttributeError, KeyError, TypeError):
        return None


def save_gifti(
    path_prefix: str | os.PathLike[str],
    responses: np.ndarray | Mapping[Any, np.ndarray],
    model: Any,
    subject: Any = None,
) -> dict[str, Path]:
    """Write surface-space responses as one GIfTI per hemisphere on the full template mesh.

    Files are ``<prefix>.lh.func.gii`` and ``<prefix>.rh.func.gii`` (one data array per stimulus;
    vertices outside the outputs are NaN), loadable by nilearn's surface plots and FreeSurfer.

    Returns
    -------
    dict
        ``{"lh": path, "rh": path}``.
    """
    import nibabel as nib

    prefix = os.fspath(path_prefix)
    if "\x00" in prefix:
        raise InvalidParameterError(f"GIfTI path contains a NUL byte: {prefix!r}")
    for ending in (".func.gii", ".gii"):
        if prefix.endswith(ending):
            prefix = prefix[: -len(ending)]
    responses, subject = _one_subject(responses, subject)
    images = model.space(subject).to_gifti(responses)
    out = {}
    for hemi, img in images.items():
        target = Path(f"{prefix}.{hemi}.func.gii")
        with _writing(target, "write the GIfTI image"), atomic_path(target, ".func.gii") as tmp:
            nib.save(img, str(tmp))
        out[hemi] = target
    return out
