"""Saving and reading responses: HDF5 with dims, coordinates and provenance; NIfTI and GIfTI via the space.

HDF5 layout (``format = "berg-responses"``, ``format_version = 2``)::

    /                           attrs: format, format_version, model_id, berg_version, created_utc,
                                       subjects (JSON), provenance (JSON: model.provenance(), plus
                                       "movie" for responses to a sampled movie), artifacts (JSON:
                                       {key: sha256} of the files used)
    /stimulus_ids               (n_stimuli,) str       optional, e.g. the input file names
    /sub-01/responses           (n_stimuli, *space.shape) float32, attrs: dims, units
    /sub-01/coords/<name>       one dataset per coordinate of the space (voxel_ijk, hemisphere,
                                vertex, channel, time_ms, repetition...)
    /sub-01/output_ids          (n_outputs, 3) voxel (i, j, k) for volumes, else (n_outputs,) index
    /sub-01                     attrs: subject, selection (JSON), space (JSON: space.to_dict())

One group per subject, also for a single subject, so readers never special-case. Responses that a
model returns as one array for several subjects (a group-level output) go to ``/sub-group``.
Responses of any space are written: volumes, surfaces, sensor x time with repetitions.

Files are written as a unit, atomically: a NIfTI image and its JSON sidecar (``<name>.json``), or
the ``lh``/``rh`` GIfTI pair, appear together or not at all (every temporary is written first, then
all are renamed; on a failure none is left). A sidecar berg wrote carries a ``"berg_sidecar"`` key;
a ``<name>.json`` without it is the user's, and berg refuses to overwrite it. Temporaries of a save
that was killed are removed by the next save to the same folder
(:func:`berg.fsutil.clean_stale_temporaries`). Like NumPy's ``save`` and h5py, an existing output
file is replaced (the ``berg`` CLI asks for ``--force``).

:func:`load_responses` reads a file back into arrays, coordinates and provenance (and rebuilds each
subject's space, so ``to_nifti``/``to_gifti``/``split`` work on what was read).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from berg._version import __version__
from berg.errors import BERGError, InvalidParameterError, ModelLoadError
from berg.fsutil import atomic_path, clean_stale_temporaries, fsync_dir, temporary_name
from berg.subjects import subject_label

__all__ = ["save", "save_nifti", "save_gifti", "load_responses", "FORMAT", "FORMAT_VERSION", "SIDECAR_KEY"]

log = logging.getLogger(__name__)

FORMAT = "berg-responses"
FORMAT_VERSION = 2
#: Key of every JSON sidecar berg writes (``{"image": name, "berg_version": ...}``); a ``.json`` beside
#: an output without it is not berg's and is never overwritten.
SIDECAR_KEY = "berg_sidecar"
_H5_SUFFIXES = (".h5", ".hdf5")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GROUP = "group"
# A temporary left by a killed save is removed once its writer's pid is gone and it is this old: on a
# folder shared over NFS a live writer on another host keeps touching its temporary.
_SWEEP_MIN_AGE_S = 60.0
# A sidecar berg wrote is a few MB at most (one id per volume plus provenance); larger JSON is not ours.
_SIDECAR_MAX_BYTES = 64 << 20


def _label(subject: Any) -> str:
    return _GROUP if subject == _GROUP else subject_label(subject)


# ------------------------------------------------------------------------------------------ checks


def _name_max(folder: Path) -> int:
    """Longest file name (bytes) the file system of ``folder`` (or its nearest existing parent) takes."""
    for candidate in (folder, *folder.parents):
        try:
            if candidate.is_dir():
                return int(os.pathconf(candidate, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):  # no pathconf on this platform, or a bad parent
            continue
    return 255


def _check_name(path: Path, what: str, suffix: str = "") -> None:
    """Refuse a file name the OS would refuse (berg's temporary beside it is ~30 bytes longer)."""
    limit = _name_max(path.parent)
    size = len(os.fsencode(path.name))
    extra = len(os.fsencode(temporary_name(path, suffix).name)) - size
    if size + extra > limit:
        raise InvalidParameterError(
            f"{what} file name is {size} bytes long ({path.name[:40]}...); this file system allows {limit} bytes "
            f"per name and berg first writes a temporary named '.<name>.<pid>.<token>.tmp{suffix}' ({extra} bytes "
            f"more): shorten the name to at most {limit - extra} bytes"
        )


def _check_output_path(path: Any, suffixes: Sequence[str], what: str, suffix: str = "") -> Path:
    from berg.errors import check_output_path, os_error

    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if isinstance(text, str) and text and "\x00" not in text:
        _check_name(Path(text).expanduser(), what, suffix)
    try:
        return check_output_path(path, suffixes, what=f"{what} output")
    except OSError as exc:  # a path the OS refuses even to look at (too long a folder name...)
        if isinstance(exc, BERGError):
            raise
        raise os_error(exc, f"use the {what} output path", text) from None


def _check_model(model: Any) -> None:
    """``model`` implements the model contract (subclass or not); else a clear error, never AttributeError."""
    from berg.core.contract import BaseModelInterface, check_model_class

    if isinstance(model, BaseModelInterface):
        return
    try:  # the contract's own check: a class may implement the interface without subclassing it
        check_model_class(type(model), "model")
    except ModelLoadError as exc:
        raise InvalidParameterError(
            f"model must be a loaded berg model (what BERG.get_encoding_model returns), got {type(model).__name__}: {exc}"
        ) from None


def _output_ids(model: Any, subject: Any) -> np.ndarray:
    from berg.core.contract import BaseModelInterface

    key = None if subject == _GROUP else subject
    if isinstance(model, BaseModelInterface):
        return model.output_ids(key)
    return BaseModelInterface.output_ids(model, key)  # the contract's rule, for models that do not subclass it


def _units(model: Any) -> Any:
    """The model's output units (``BaseModelInterface.output_units``: the card's, or the model's own)."""
    from berg.core.contract import BaseModelInterface

    if isinstance(model, BaseModelInterface):
        return model.output_units
    return BaseModelInterface.output_units.fget(model)  # the contract's rule, for models that do not subclass it


@contextlib.contextmanager
def _writing(path: Path, action: str):
    """Disk-full / permission errors arrive as a BERGError that keeps the errno text."""
    from berg.errors import os_error

    try:
        yield
    except OSError as exc:
        if isinstance(exc, BERGError) or exc.errno is None:
            raise
        raise os_error(exc, action, path) from exc


def _sweep(folder: Path) -> None:
    """Remove temporaries of earlier saves to ``folder`` that were killed (their process is gone)."""
    removed = clean_stale_temporaries(folder, min_age=_SWEEP_MIN_AGE_S)
    if removed:
        log.info("removed %d temporary file(s) of interrupted saves in %s", len(removed), folder)


def _write_unit(parts: Sequence[tuple[Path, str, Callable[[Path], None]]]) -> None:
    """Write files that belong together: every temporary first, then every rename.

    ``parts`` are ``(final path, temporary suffix, writer(temporary path))``. A failure (or an
    interruption) while writing removes the temporaries and leaves any earlier files as they were; a
    failure between the renames removes every member (new or earlier), so a reader never finds one
    member without the other, nor a new one beside an old one.
    """
    tmps: list[Path] = []
    renamed: list[Path] = []
    try:
        for final, suffix, write in parts:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_name(final, suffix)
            tmps.append(tmp)
            write(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        for (final, _, _), tmp in zip(parts, tmps):
            os.replace(tmp, final)
            renamed.append(final)
        for folder in {final.parent for final, _, _ in parts}:
            fsync_dir(folder)
    except BaseException:
        finals = [final for final, _, _ in parts] if renamed else []
        for leftover in (*tmps, *finals):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise


def _space_of(model: Any, subject: Any):
    if subject == _GROUP:
        return model.space(None)
    return model.space(subject)


def _is_image(obj: Any) -> bool:
    try:
        import nibabel as nib
    except ImportError:  # pragma: no cover - nibabel is a dependency
        return False
    return isinstance(obj, nib.spatialimages.SpatialImage)


def _image_responses(img: Any, space: Any) -> np.ndarray:
    """A NIfTI image on the model's grid (e.g. from ``encode_movie``) -> responses ``(n, n_outputs)``."""
    if "nifti" not in space.FILE_FORMATS:
        raise InvalidParameterError(f"got a NIfTI image, but this model's outputs are a {space.kind} space")
    grid = tuple(space.grid)
    if tuple(img.shape[:3]) != grid or img.ndim not in (3, 4):
        raise InvalidParameterError(
            f"the NIfTI image has shape {img.shape}; this model's grid is {grid} (one volume per stimulus)"
        )
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    return np.ascontiguousarray(data[tuple(np.asarray(space.voxel_ijk).T)].T)


def _plain(value: Any) -> Any:
    """JSON-ready copy of a provenance value (numpy arrays and scalars become lists and numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _movie_record(movie: Any, img: Any, n_stimuli: int) -> dict[str, Any] | None:
    """The movie sampling record to store: ``movie=`` or the ``extra["movie"]`` of an ``encode_movie`` image."""
    if movie is None and img is not None:
        movie = img.extra.get("movie")
    if movie is None:
        return None
    if not isinstance(movie, Mapping):
        raise InvalidParameterError(
            f"movie must be a dict (berg.stimuli.movie_provenance(path, fps, info)), got {type(movie).__name__}"
        )
    record = _plain(movie)
    times = record.get("frame_times")
    if times is not None and len(times) != n_stimuli:
        raise InvalidParameterError(
            f"movie records {len(times)} frame times; the responses have {n_stimuli} stimuli (one per sampled frame)"
        )
    return record


def _per_subject(responses: Any, model: Any) -> dict[Any, np.ndarray]:
    """``{subject: array}`` from what ``encode`` returned, checked against the model's spaces."""
    subjects = list(model.subjects or [])
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
        key = subjects[0] if len(subjects) == 1 else _GROUP
        out = {key: _image_responses(responses, _space_of(model, key)) if _is_image(responses) else responses}
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


def _check_stimulus_ids(stimulus_ids: Any, n_stimuli: int) -> list[str] | None:
    """One ``str`` per stimulus, or None; a single string (``"abc"``) is not a list of 3 ids."""
    if stimulus_ids is None:
        return None
    form = f"a sequence of {n_stimuli} str (one label per stimulus, e.g. the file names)"
    if isinstance(stimulus_ids, (str, bytes)):
        raise InvalidParameterError(f"stimulus_ids must be {form}, got the single string {stimulus_ids!r}")
    if isinstance(stimulus_ids, np.ndarray) and stimulus_ids.ndim != 1:
        raise InvalidParameterError(f"stimulus_ids must be {form}, got an array of shape {stimulus_ids.shape}")
    if not isinstance(stimulus_ids, (Sequence, np.ndarray)):
        raise InvalidParameterError(f"stimulus_ids must be {form}, got {type(stimulus_ids).__name__}")
    ids = []
    for i, value in enumerate(stimulus_ids):
        text = os.fspath(value) if isinstance(value, os.PathLike) else value
        if not isinstance(text, str):
            raise InvalidParameterError(
                f"stimulus_ids[{i}] is {type(value).__name__} {value!r}; each id must be a str "
                "(convert with [str(i) for i in ids])"
            )
        if "\x00" in text:
            raise InvalidParameterError(f"stimulus_ids[{i}] contains a NUL byte: {text!r}")
        ids.append(str(text))
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


# ------------------------------------------------------------------------------------------ HDF5


def save(
    path: str | os.PathLike[str],
    responses: Any,
    model: Any,
    *,
    stimulus_ids: Sequence[str] | None = None,
    compression: str | None = None,
    movie: Mapping[str, Any] | None = None,
) -> Path:
    """Write responses of any output space to HDF5 with coordinates and provenance (atomically).

    Parameters
    ----------
    path : path
        ``.h5`` or ``.hdf5`` file to write (replaced if it exists, as ``numpy.save`` and h5py do).
    responses : ndarray, dict or NIfTI image
        What ``encode`` returned for ``model``: ``(n_stimuli, *space.shape)`` or ``{subject: array}``;
        or the 4-D image ``encode_movie`` returned (its frame record is stored too).
    model : BaseModelInterface
        The model that produced them (for its spaces and ``model.provenance()``).
    stimulus_ids : sequence of str, optional
        One label per stimulus (e.g. file names), stored as ``/stimulus_ids``.
    compression : {None, "gzip", "lzf"}
        HDF5 filter for the responses. Off by default: predicted responses are float32 noise to a
        compressor (gzip saves ~7 % at ~18x the write time; benchmarks/save_hdf5.py).
    movie : dict, optional
        How the stimuli were sampled from a movie (:func:`berg.stimuli.movie_provenance`: frame
        times, frame indices, the frame rule, fps); stored in the provenance under ``"movie"``.
        Taken from an ``encode_movie`` image automatically.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InvalidParameterError
        Wrong suffix (valid: ``.h5``, ``.hdf5``), a file name too long for the file system, subjects
        the model did not load, wrong shapes, stimulus ids that are not one str per stimulus; checked
        before anything is written.

    Examples
    --------
    >>> berg.save("responses.h5", responses, model, stimulus_ids=["a.jpg", "b.jpg"])   # doctest: +SKIP
    >>> berg.load_responses("responses.h5")["responses"]["1"].shape                  # doctest: +SKIP
    (2, 1685)
    """
    import h5py

    path = _check_output_path(path, _H5_SUFFIXES, "HDF5", ".h5")
    if compression not in ("gzip", "lzf", None):
        raise InvalidParameterError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}")
    _check_model(model)
    image = responses if _is_image(responses) else None
    per_subject = _per_subject(responses, model)
    n_stimuli = next(iter(per_subject.values())).shape[0]
    ids = _check_stimulus_ids(stimulus_ids, n_stimuli)
    record = _movie_record(movie, image, n_stimuli)
    provenance = dict(model.provenance())
    if record is not None:
        provenance["movie"] = record
    selection = provenance.get("selection") or {}
    units = _units(model)

    _sweep(path.parent)
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
                out_ids = _output_ids(model, subject)
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


def _movie_arrays(record: Any) -> dict[str, Any] | None:
    """A stored movie record with its per-sample lists as arrays."""
    if not isinstance(record, Mapping):
        return None
    out = dict(record)
    for key in ("frame_indices", "frame_times", "sample_times"):
        if isinstance(out.get(key), list):
            out[key] = np.asarray(out[key], dtype=np.int64 if key == "frame_indices" else np.float64)
    return out


def load_responses(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by :func:`save`.

    Returns
    -------
    dict
        ``{"model_id", "responses": {subject: ndarray}, "coords": {subject: {name: array}},
        "spaces": {subject: OutputSpace}, "output_ids": {subject: ndarray}, "stimulus_ids": list or
        None, "provenance": dict, "movie": dict or None, "attrs": dict}``; subjects are keyed as
        written (``"1"``, ``"group"``). ``"movie"`` is the movie sampling record (``frame_times``,
        ``frame_indices``, ``sample_times`` as arrays, ``frame_rule``, ``fps``, ``stream_fps``,
        ``source``) when the responses are to a movie's frames.
    """
    import h5py

    from berg.core.spaces import space_from_dict

    text = os.fspath(path)
    if not Path(text).is_file():
        raise InvalidParameterError(f"responses file not found: {text}")
    with h5py.File(text, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise InvalidParameterError(f"{path} is not a berg responses file (format={f.attrs.get('format')!r})")
        provenance = json.loads(f.attrs["provenance"])
        out: dict[str, Any] = {
            "model_id": str(f.attrs["model_id"]),
            "provenance": provenance,
            "movie": _movie_arrays(provenance.get("movie")),
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


# ------------------------------------------------------------------------------------------ NIfTI / GIfTI


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


def _check_sidecar(sidecar: Path, image: Path) -> None:
    """Refuse to overwrite a ``.json`` berg did not write (it has no :data:`SIDECAR_KEY`)."""
    if not os.path.lexists(sidecar):
        return
    data = None
    with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
        if sidecar.is_file() and sidecar.stat().st_size <= _SIDECAR_MAX_BYTES:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get(SIDECAR_KEY), dict):
        return  # berg's sidecar of an earlier save: replaced with the image
    raise InvalidParameterError(
        f"{sidecar} exists and was not written by berg (no {SIDECAR_KEY!r} key), but it is where berg writes the "
        f"JSON sidecar of {image.name}; berg does not overwrite it: move or rename it, or choose another output name"
    )


def save_nifti(
    path: str | os.PathLike[str],
    responses: Any,
    model: Any,
    subject: Any = None,
    *,
    stimulus_ids: Sequence[str] | None = None,
    affine: np.ndarray | None = None,
    movie: Mapping[str, Any] | None = None,
) -> Path:
    """Write volume-space responses as NIfTI with a JSON sidecar, both or neither (atomically).

    One stimulus gives a 3-D image, several a 4-D image (one volume per stimulus). Voxels outside the
    model's (selected) outputs are NaN. Beside the image, ``<name>.json`` (BIDS-style sidecar) records
    which stimulus each volume is, the model, its provenance and, for a movie, its frame record. A
    ``<name>.json`` that berg did not write is never overwritten (the save is refused first); berg's
    own sidecar of an earlier save is replaced.

    Parameters
    ----------
    path : path
        Output file, ``.nii`` or ``.nii.gz`` (replaced if it exists).
    responses : ndarray, dict or NIfTI image
        What ``encode`` returned; for a dict pass ``subject`` (or have only one subject in it). The
        4-D image ``encode_movie`` returns is written as it is (time step included) with its frame
        record in the sidecar.
    model : BaseModelInterface
        The model that produced them (grid and affine come from its space).
    subject : optional
        The subject to write when ``responses`` holds several (``None`` for a group map).
    stimulus_ids : sequence of str, optional
        One label per stimulus, recorded in the sidecar (default: ``stimulus-0000``...).
    affine : (4, 4) array, optional
        Only for models whose files record no affine.
    movie : dict, optional
        The movie sampling record (:func:`berg.stimuli.movie_provenance`); see :func:`save`.

    Returns
    -------
    Path
        The image; the sidecar is ``<name>.json`` beside it.
    """
    path = _check_output_path(path, _NIFTI_SUFFIXES, "NIfTI", ".nii.gz")
    _check_model(model)
    responses, subject = _one_subject(responses, subject)
    space = model.space(subject)
    if "nifti" not in space.FILE_FORMATS:
        raise InvalidParameterError(
            f"this model's outputs are a {space.kind} space (no volumetric space); NIfTI needs a volume space"
            + ("; use berg.save_gifti" if "gifti" in space.FILE_FORMATS else "; use berg.save (HDF5)")
        )
    image = responses if _is_image(responses) else None
    if image is not None:
        n = _image_responses(image, space).shape[0]
        img = image
    else:
        arr = np.asarray(responses)
        n = 1 if arr.ndim == 1 else arr.shape[0]
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]  # one stimulus -> a 3-D image, as viewers expect for a single map
        img = space.to_nifti(arr, affine=affine)
    ids = _check_stimulus_ids(stimulus_ids, n) if stimulus_ids is not None else [f"stimulus-{i:04d}" for i in range(n)]
    record = _movie_record(movie, image, n)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    sidecar = path.with_name(path.name[: -len(suffix)] + ".json")
    _check_sidecar(sidecar, path)
    who = subject if subject is not None else (model.subjects[0] if len(model.subjects) == 1 else _GROUP)
    meta = {
        SIDECAR_KEY: {"image": path.name, "berg_version": __version__},
        "model_id": model.model_id,
        "subject": str(who),
        "volumes": ids,
        "units": _units(model),
        "outside_outputs": "NaN (not predicted)",
        "provenance": _plain(model.provenance()),
    }
    if record is not None:
        meta["movie"] = record
    text = json.dumps(meta, indent=1, default=str, sort_keys=True)

    _sweep(path.parent)
    with _writing(path, "write the NIfTI image and its sidecar"):
        _write_unit(
            [
                (path, suffix, lambda tmp: img.to_filename(str(tmp))),
                (sidecar, ".json", lambda tmp: tmp.write_text(text, encoding="utf-8")),
            ]
        )
    return path


def save_gifti(
    path_prefix: str | os.PathLike[str],
    responses: np.ndarray | Mapping[Any, np.ndarray],
    model: Any,
    subject: Any = None,
) -> dict[str, Path]:
    """Write surface-space responses as one GIfTI per hemisphere on the full template mesh, both or neither.

    Files are ``<prefix>.lh.func.gii`` and ``<prefix>.rh.func.gii`` (one data array per stimulus;
    vertices outside the outputs are NaN), loadable by nilearn's surface plots and FreeSurfer.

    Parameters
    ----------
    path_prefix : path
        Folder and base name, e.g. ``"out/responses"``; a trailing ``.gii``/``.func.gii`` is dropped.
    responses : ndarray or dict
        What ``encode`` returned; for a dict pass ``subject``.
    model : BaseModelInterface
    subject : optional

    Returns
    -------
    dict
        ``{"lh": path, "rh": path}``.

    Raises
    ------
    InvalidParameterError
        A prefix with no file name (``""``, a folder), a NUL byte, a name too long for the file system.
    """
    import nibabel as nib

    form = "a path prefix such as 'out/responses' (writes out/responses.lh.func.gii and .rh.func.gii)"
    if isinstance(path_prefix, bytes) or not isinstance(path_prefix, (str, os.PathLike)):
        raise InvalidParameterError(f"GIfTI output must be {form}, got {type(path_prefix).__name__}")
    prefix = os.fspath(path_prefix)
    if "\x00" in prefix:
        raise InvalidParameterError(f"GIfTI path contains a NUL byte: {prefix!r}; give {form}")
    for ending in (".func.gii", ".gii"):
        if prefix.endswith(ending):
            prefix = prefix[: -len(ending)]
    base = Path(prefix).expanduser()
    if not prefix or prefix.endswith(("/", os.sep)) or base.name in ("", ".", ".."):
        raise InvalidParameterError(f"GIfTI path prefix {os.fspath(path_prefix)!r} has no file name; give {form}")
    _check_model(model)
    responses, subject = _one_subject(responses, subject)
    images = model.space(subject).to_gifti(responses)
    targets = {hemi: Path(f"{base}.{hemi}.func.gii") for hemi in images}
    for target in targets.values():
        _check_name(target, "GIfTI", ".func.gii")
        if target.is_dir():
            raise InvalidParameterError(f"GIfTI output {target} is a folder; give {form}")

    def writer(img: Any) -> Callable[[Path], None]:
        return lambda tmp: nib.save(img, str(tmp))

    _sweep(base.parent)
    with _writing(base, "write the GIfTI images"):
        _write_unit([(targets[hemi], ".func.gii", writer(img)) for hemi, img in images.items()])
    return targets
