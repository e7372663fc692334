"""In silico experiments at scale: resumable, sharded encoding of stimulus collections into zarr.

>>> import berg
>>> plan = berg.EncodePlan(
...     models=[{"id": "fmri-bold5000-resnet18", "subjects": [1, 2, 3]}],
...     stimuli="images/", store="runs/bold5000.zarr", shard_size=256)
>>> report = berg.run(plan)                      # resumes where a killed run stopped
>>> berg.runner.status("runs/bold5000.zarr")     # done / pending / stale / damaged shards, ETA

``berg.run`` is the function :func:`run`; this package (``berg.runner``) holds the rest: :func:`status`,
:func:`export`, :func:`open_responses`, the plan, the zarr run store, stimulus inputs, reducers, the
worker and the executors.

Importing this package is light (no torch, zarr or dask); they load when a run starts.
See docs/guide/scale-out.md for the whole workflow (local, Dask, Slurm arrays).
"""

from __future__ import annotations

import os
from typing import Any

from berg.runner.plan import EncodePlan, ModelEntry

__all__ = ["EncodePlan", "ModelEntry", "export", "open_responses", "run", "status"]


def run(plan: Any, *, shard: tuple[int, int] | None = None, show_progress: bool = True, prepare_only: bool = False):
    """Run or resume ``plan`` (an :class:`EncodePlan`, a dict, or a YAML path); see :func:`berg.runner.executors.run`."""
    from berg.runner.executors import run as _run

    return _run(plan, shard=shard, show_progress=show_progress, prepare_only=prepare_only)


def status(store: str | os.PathLike[str], *, verify: bool = False) -> dict[str, Any]:
    """Done / stale / damaged / pending shards per target, failed stimuli and ETA of a run folder.

    Parameters
    ----------
    store : path
        The run folder.
    verify : bool
        Hash every chunk of every done shard against its marker (default: sizes and modification times,
        hashing only chunks whose modification time changed).
    """
    from berg.runner.zarr_store import RunStore

    return RunStore.open(store).status(verify=verify)


def export(
    store: str | os.PathLike[str],
    to: str | os.PathLike[str],
    *,
    allow_incomplete: bool = False,
    verify: bool = False,
    overwrite: bool = True,
):
    """Write a run as one HDF5 file (see :func:`berg.runner.export.export_hdf5`)."""
    from berg.runner.export import export_hdf5

    return export_hdf5(store, to, allow_incomplete=allow_incomplete, verify=verify, overwrite=overwrite)


def open_responses(store: str | os.PathLike[str]):
    """The run's zarr group, read-only (``open_responses(RUN)["model/sub-01/responses"]``)."""
    from berg.runner.zarr_store import open_responses as _open

    return _open(store)
