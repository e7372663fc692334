"""Export a (small) run to one HDF5 file, in the layout of :func:`berg.save`, one group per model.

Layout::

    /                              attrs: format "berg-run-export", format_version, plan_hash, plan (JSON),
                                          berg_version, n_stimuli
    /stimulus_ids                  (n_stimuli,) str or int64
    /failed                        (n_failed,) int64 indices of stimuli that could not be decoded (NaN rows)
    /<model name>/sub-01/responses (n_stimuli, ...) as stored, attrs: dims
    /<model name>/sub-01/output_ids, /<model name>/sub-01/coords/<name>
    /<model name>/sub-01           attrs: model_id, subject, provenance (JSON), space (JSON), reducers (JSON)

Copies run chunk by chunk (constant memory). Every shard is checked against its marker first (sizes and
modification times; every chunk's sha256 with ``verify``). A run with pending, stale (another plan) or
damaged shards is refused unless ``allow_incomplete``: then exactly the rows of those shards are NaN (never
the older values a stale shard still holds), the count is logged, and each target's ``nan_shards`` and
``n_nan_rows`` attributes say which.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import BERGError, InvalidParameterError
from berg.fsutil import atomic_path
from berg.runner.zarr_store import RunStore

__all__ = ["EXPORT_SUFFIXES", "IncompleteRunError", "export_hdf5", "rows_not_done"]

#: File names an export may have (it writes HDF5).
EXPORT_SUFFIXES = (".h5", ".hdf5")

log = logging.getLogger(__name__)

FORMAT = "berg-run-export"
FORMAT_VERSION = 1


class IncompleteRunError(BERGError):
    """The run still has pending or stale shards."""


def _strings(values: np.ndarray) -> np.ndarray:
    import h5py

    return np.asarray(values, dtype=object).astype(h5py.string_dtype())


def rows_not_done(status: dict[str, Any]) -> dict[str, int]:
    """``{target key: rows that an incomplete export fills with NaN}`` from :meth:`RunStore.status`."""
    n, size = int(status["n_stimuli"] or 0), int(status["shard_size"] or 1)
    return {
        key: sum(min(n, (s + 1) * size) - s * size for s in t["not_done"])
        for key, t in status["targets"].items()
        if t["not_done"]
    }


def _describe_incomplete(status: dict[str, Any]) -> str:
    parts = []
    for state in ("pending", "stale", "damaged"):
        count = sum(t[state] for t in status["targets"].values())
        if count:
            parts.append(f"{count} {state}")
    damaged = [(k, d) for k, t in status["targets"].items() for d in t["damaged_shards"]]
    why = f"; e.g. {damaged[0][0]} shard {damaged[0][1]['shard']}: {damaged[0][1]['reason']}" if damaged else ""
    return f"{', '.join(parts)} target shard(s){why}"


def export_hdf5(
    run: str | os.PathLike[str],
    to: str | os.PathLike[str],
    *,
    allow_incomplete: bool = False,
    verify: bool = False,
    overwrite: bool = True,
) -> Path:
    """Write run ``run`` as one HDF5 file ``to`` (atomically); returns the path.

    Parameters
    ----------
    run : path
        The run folder.
    to : path
        The HDF5 file to write (``.h5`` or ``.hdf5``).
    allow_incomplete : bool
        Export a run with pending, stale or damaged shards: their rows are NaN (the count is logged).
    verify : bool
        Hash every chunk against its marker before exporting (default: sizes and modification times).
    overwrite : bool
        Replace an existing ``to`` (the Python default, as NumPy and h5py do; ``berg export`` refuses
        without ``--force``).

    Raises
    ------
    IncompleteRunError
        Shards are pending, stale or damaged and ``allow_incomplete`` is False.
    InvalidParameterError
        ``to`` has another extension, or exists and ``overwrite`` is False.
    """
    import h5py

    to = Path(os.fspath(to))
    if to.suffix.lower() not in EXPORT_SUFFIXES:
        raise InvalidParameterError(
            f"berg export writes HDF5; name the file {to.stem or 'run'}.h5 (valid extensions: "
            f"{', '.join(EXPORT_SUFFIXES)}), not {to.name!r}"
        )
    if to.is_dir():
        raise InvalidParameterError(f"{to} is a folder; give the HDF5 file to write")
    if to.exists() and not overwrite:
        raise InvalidParameterError(f"{to} exists; pass --force to overwrite it")
    store = RunStore.open(run)
    status = store.status(verify=verify)
    if not status["complete"] and not allow_incomplete:
        raise IncompleteRunError(
            f"{run} is not complete ({_describe_incomplete(status)}); finish or repair it with "
            "'berg run PLAN.yaml' (damaged shards are recomputed), or export anyway with --allow-incomplete "
            "(their rows are NaN)"
        )
    nan_rows = rows_not_done(status)
    if nan_rows:
        log.warning(
            "exporting %s incomplete (%s): %d row(s) are NaN",
            run,
            _describe_incomplete(status),
            sum(nan_rows.values()),
        )
    info = store.info()
    group = store.group("r")
    with atomic_path(to, suffix=to.suffix) as tmp, h5py.File(tmp, "w") as out:
        from berg._version import __version__

        out.attrs.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "plan_hash": info["plan_hash"],
                "plan": json.dumps(info["plan"]),
                "berg_version": __version__,
                "n_stimuli": info["n_stimuli"],
            }
        )
        ids = group["stimulus_ids"][:]
        out.create_dataset("stimulus_ids", data=_strings(ids) if ids.dtype.kind in "OUS" else ids)
        out.create_dataset("failed", data=np.asarray([f["index"] for f in status["failed"]], dtype=np.int64))
        for key in info["targets"]:
            src = group[key]
            dst = out.create_group(key)
            arr = src["responses"]
            resp = dst.create_dataset(
                "responses",
                shape=arr.shape,
                dtype=arr.dtype,
                chunks=tuple(min(c, s) for c, s in zip(arr.chunks, arr.shape)) or None,
            )
            step = int(info["shard_size"])  # == arr.chunks[0]: one shard per block
            not_done = set(status["targets"][key]["not_done"])
            for shard, a in enumerate(range(0, arr.shape[0], step)):
                b = min(a + step, arr.shape[0])
                resp[a:b] = np.nan if shard in not_done else arr[a:b]
            resp.attrs["nan_shards"] = json.dumps(sorted(not_done))
            resp.attrs["n_nan_rows"] = int(nan_rows.get(key, 0))
            attrs: dict[str, Any] = dict(src.attrs)
            resp.attrs["dims"] = json.dumps(attrs.get("dims", []))
            for name, child in src.arrays():
                if name != "responses":
                    values = child[:]
                    dst.create_dataset(name, data=_strings(values) if values.dtype.kind in "OUS" else values)
            if "coords" in src:
                for name, child in src["coords"].arrays():
                    values = child[:]
                    dst.create_dataset(
                        f"coords/{name}", data=_strings(values) if values.dtype.kind in "OUS" else values
                    )
            dst.attrs.update(
                {
                    "model_id": attrs.get("model_id", ""),
                    "subject": json.dumps(attrs.get("subject")),
                    "provenance": json.dumps(attrs.get("provenance", {})),
                    "space": json.dumps(attrs.get("space", {})),
                    "reducers": json.dumps(attrs.get("reducers", [])),
                }
            )
    log.info("exported %s to %s", run, to)
    return to
