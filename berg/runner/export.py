"""Export a (small) run to one HDF5 file, in the layout of :func:`berg.save`, one group per model.

Layout::

    /                              attrs: format "berg-run-export", format_version, plan_hash, plan (JSON),
                                          berg_version, n_stimuli
    /stimulus_ids                  (n_stimuli,) str or int64
    /failed                        (n_failed,) int64 indices of stimuli that could not be decoded (NaN rows)
    /<model name>/sub-01/responses (n_stimuli, ...) as stored, attrs: dims
    /<model name>/sub-01/output_ids, /<model name>/sub-01/coords/<name>
    /<model name>/sub-01           attrs: model_id, subject, provenance (JSON), space (JSON), reducers (JSON)

Copies run chunk by chunk (constant memory). An incomplete run is refused unless ``allow_incomplete``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import BERGError
from berg.fsutil import atomic_path
from berg.runner.zarr_store import RunStore

__all__ = ["IncompleteRunError", "export_hdf5"]

log = logging.getLogger(__name__)

FORMAT = "berg-run-export"
FORMAT_VERSION = 1


class IncompleteRunError(BERGError):
    """The run still has pending or stale shards."""


def _strings(values: np.ndarray) -> np.ndarray:
    import h5py

    return np.asarray(values, dtype=object).astype(h5py.string_dtype())


def export_hdf5(run: str | os.PathLike[str], to: str | os.PathLike[str], *, allow_incomplete: bool = False) -> Path:
    """Write run ``run`` as one HDF5 file ``to`` (atomically); returns the path.

    Raises
    ------
    IncompleteRunError
        Shards are pending or stale and ``allow_incomplete`` is False (their rows would be NaN).
    """
    import h5py

    store = RunStore.open(run)
    status = store.status()
    if not status["complete"] and not allow_incomplete:
        left = {k: v["pending"] + v["stale"] for k, v in status["targets"].items() if v["pending"] + v["stale"]}
        raise IncompleteRunError(
            f"{run} is not complete ({status['pending_units']} shards left: {left}); finish it with "
            "'berg run PLAN.yaml', or export anyway with --allow-incomplete (missing rows are NaN)"
        )
    info = store.info()
    group = store.group("r")
    to = Path(to)
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
            step = arr.chunks[0]
            for a in range(0, arr.shape[0], step):
                resp[a : a + step] = arr[a : a + step]
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
