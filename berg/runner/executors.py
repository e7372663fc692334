"""Running a plan: the local executor, the Dask executor, and Slurm-array slices.

:func:`run` is the entry point (``berg.run(plan)`` and ``berg run PLAN.yaml``):

1. open the stimulus collection and load the plan's models once in this process (their spaces,
   provenance and artifact checksums decide the store layout and each target's hash);
2. lock the store (one run at a time; array slices share it) and create or reconcile its arrays;
3. list the *units* (shards) that have a pending or stale target — finished shards are never redone;
4. compute them: locally (the next shard is decoded in background threads while the current one is
   encoded), or as one Dask task per shard on a ``LocalCluster``, an existing scheduler, or a
   ``dask-jobqueue`` cluster (GPU workers pinned with worker resources).

Dask is the one distributed engine: workers write straight into the store (a shared file system), and a
worker killed mid-shard simply has its task rerun elsewhere by the scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from berg.errors import InvalidParameterError, MissingExtraError
from berg.runner.inputs import open_source
from berg.runner.plan import EncodePlan
from berg.runner.worker import (
    compute_unit,
    default_decode_threads,
    encode_unit,
    load_entries,
    shard_bounds,
    write_unit,
)
from berg.runner.zarr_store import RunStore

__all__ = ["RunReport", "pending_units", "run"]

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a call of :func:`run` did."""

    store: str
    n_stimuli: int
    n_shards: int
    computed_units: int
    skipped_units: int
    seconds: float
    failed: list[dict[str, Any]] = field(default_factory=list)
    dashboard: str | None = None

    @property
    def stimuli_per_second(self) -> float:
        """Throughput of this call over the shards it computed."""
        return 0.0 if self.seconds <= 0 else self.computed_stimuli / self.seconds

    computed_stimuli: int = 0


def pending_units(store: RunStore, loaded: Mapping[str, Any], n_shards: int) -> dict[int, dict[str, str]]:
    """``{shard: {target key: expected hash}}`` for every shard with a pending or stale target."""
    targets = [t for le in loaded.values() for t in le.targets.values()]
    markers = {t.key: store.markers_of(t.key) for t in targets}
    units: dict[int, dict[str, str]] = {}
    for shard in range(n_shards):
        for t in targets:
            m = markers[t.key].get(shard)
            if m is None or m.get("target_hash") != t.hash:
                units.setdefault(shard, {})[t.key] = t.hash
    return units


def _quiet() -> bool:
    from berg.env import env_flag

    return env_flag("BERG_QUIET")


def run(
    plan: EncodePlan | str | os.PathLike[str] | Mapping[str, Any],
    *,
    shard: tuple[int, int] | None = None,
    show_progress: bool = True,
    prepare_only: bool = False,
) -> RunReport:
    """Run (or resume) a plan; returns a :class:`RunReport`.

    Parameters
    ----------
    plan : EncodePlan, dict, or path of a YAML plan
    shard : (I, N), optional
        Slurm-array mode: compute only units ``u`` with ``u % N == I`` (0-based), in this process, sharing
        the store with the other slices. Independent of ``plan.executor``.
    show_progress : bool
        A tqdm bar (also off with ``BERG_QUIET=1``).
    prepare_only : bool
        Create or reconcile the store (stale shards become visible in ``berg status``) and return without
        computing anything.

    Raises
    ------
    RunLockedError
        Another run holds the store.
    StimulusError
        A stimulus cannot be decoded and ``on_error`` is ``"raise"`` (the file is named).
    """
    if not isinstance(plan, EncodePlan):
        plan = EncodePlan.from_dict(plan) if isinstance(plan, Mapping) else EncodePlan.from_yaml(plan)
    if shard is not None:
        i, of = shard
        if not (isinstance(i, int) and isinstance(of, int) and of >= 1 and 0 <= i < of):
            raise InvalidParameterError(f"--shard I --of N needs 0 <= I < N, got I={i}, N={of}")
    t_start = time.perf_counter()
    source = open_source(plan.stimuli)
    n = len(source)
    n_shards = -(-n // plan.shard_size)
    use_dask = plan.executor["kind"] == "dask" and shard is None
    store = RunStore(plan.store)
    show = show_progress and not _quiet()
    with store.lock(shard):  # first: a second run on the store stops before loading anything
        # The driver of a Dask run only needs spaces and provenance: load on CPU (a login node has no GPU).
        loaded = load_entries(plan, source, device="cpu" if use_dask else None)
        targets = [t for le in loaded.values() for t in le.targets.values()]
        store.initialise(
            targets=targets,
            plan=plan.to_dict(),
            plan_hash=plan.plan_hash(),
            stimulus_ids=source.ids(),
            stimuli_fingerprint=source.fingerprint(),
            shard_size=plan.shard_size,
            dtype=plan.dtype,
            compressor=plan.compressor,
        )
        units = pending_units(store, loaded, n_shards)
        finished = n_shards - len(units)
        if shard is not None:
            units = {u: k for u, k in units.items() if u % shard[1] == shard[0]}
        if prepare_only:
            return RunReport(
                store=os.fspath(plan.store),
                n_stimuli=n,
                n_shards=n_shards,
                computed_units=0,
                skipped_units=finished,
                seconds=time.perf_counter() - t_start,
                failed=store.failed(),
            )
        store.log_event(
            "run_start",
            pending=len(units),
            mode="dask" if use_dask else ("local" if shard is None else f"slice {shard[0]} of {shard[1]}"),
        )
        log.info("%s: %d of %d shards to compute", plan.store, len(units), n_shards)
        dashboard = None
        if not units:
            results = []
        elif use_dask:
            for le in loaded.values():  # free the driver's copies before the workers load theirs
                le.model = None
            results, dashboard = _run_dask(plan, units, n, show)
        else:
            results = _run_local(store, plan, loaded, source, units, show)
        store.log_event("run_end", computed=len(results))
    computed_stimuli = sum(
        shard_bounds(r["shard"], plan.shard_size, n)[1] - shard_bounds(r["shard"], plan.shard_size, n)[0]
        for r in results
        if r["computed"]
    )
    return RunReport(
        store=os.fspath(plan.store),
        n_stimuli=n,
        n_shards=n_shards,
        computed_units=sum(1 for r in results if r["computed"]),
        skipped_units=finished,
        seconds=time.perf_counter() - t_start,
        failed=store.failed(),
        dashboard=dashboard,
        computed_stimuli=computed_stimuli,
    )


def _progress(total: int, show: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not show, desc=desc, unit="stim")


def _run_local(store, plan, loaded, source, units, show) -> list[dict[str, Any]]:
    threads = plan.decode_threads or default_decode_threads()
    order = sorted(units)
    n = len(source)
    results = []

    def bounds(u: int) -> range:
        return range(*shard_bounds(u, plan.shard_size, n))

    with (
        _progress(sum(len(bounds(u)) for u in order), show, "berg run") as bar,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="berg-shard-decode") as prefetch,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="berg-shard-write") as writer,
    ):
        # Three stages overlap: shard k+1 is decoded (itself in `threads` threads) and shard k-1 written
        # and fsync-ed while shard k runs through the network. At most one write is in flight, so memory
        # stays at a few shards whatever the collection size.
        nxt = prefetch.submit(source.read, bounds(order[0]), threads)
        writing = None
        for k, unit in enumerate(order):
            items = nxt.result()
            if k + 1 < len(order):
                nxt = prefetch.submit(source.read, bounds(order[k + 1]), threads)
            done = encode_unit(store, plan, loaded, source, unit, units[unit], items=items)
            if writing is not None:
                results.append(writing.result())
                writing = None
            if done is None:
                results.append({"shard": unit, "computed": [], "failed": [], "seconds": 0.0})
            else:
                writing = writer.submit(write_unit, store, plan, done)
            bar.update(len(bounds(unit)))
        if writing is not None:
            results.append(writing.result())
    return results


# ---------------------------------------------------------------------------------------------- Dask
_WORKER_STATE: dict[str, Any] = {}


def _dask_unit(plan_dict: dict[str, Any], shard: int, pending: dict[str, str]) -> dict[str, Any]:
    """One Dask task: compute a shard in a worker (models are loaded once per worker process and kept)."""
    key = plan_dict["__hash__"]
    state = _WORKER_STATE.get(key)
    if state is None:
        import torch

        plan = EncodePlan.from_dict({k: v for k, v in plan_dict.items() if k != "__hash__"})
        threads = plan.executor.get("torch_threads") or plan.executor.get("threads_per_worker", 1)
        torch.set_num_threads(int(threads))
        source = open_source(plan.stimuli)
        loaded = load_entries(plan, source)
        _WORKER_STATE.clear()  # one plan per worker at a time: free the previous plan's models
        state = _WORKER_STATE[key] = (plan, source, loaded, RunStore(plan.store))
    plan, source, loaded, store = state
    threads = plan.decode_threads or 2
    return compute_unit(store, plan, loaded, source, shard, pending, decode_threads=threads)


def _dask_client(cfg: Mapping[str, Any]):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise MissingExtraError(
            "the Dask executor needs dask.distributed; install it with: pip install 'berg[scale]'"
        ) from exc
    if cfg.get("address"):
        return Client(cfg["address"]), None
    kwargs: dict[str, Any] = {
        "n_workers": int(cfg.get("n_workers", 2)),
        "threads_per_worker": int(cfg.get("threads_per_worker", 1)),
        "processes": True,
        "dashboard_address": ":0" if cfg.get("dashboard", True) else None,
    }
    if cfg.get("resources"):
        kwargs["resources"] = dict(cfg["resources"])
    if cfg.get("memory_limit") is not None:
        kwargs["memory_limit"] = cfg["memory_limit"]
    cluster = LocalCluster(**kwargs)
    return Client(cluster), cluster


def _run_dask(plan: EncodePlan, units: dict[int, dict[str, str]], n: int, show: bool):
    from dask.distributed import as_completed

    client, cluster = _dask_client(plan.executor)
    dashboard = getattr(client, "dashboard_link", None)
    if dashboard:
        log.warning("Dask dashboard: %s", dashboard)  # the one link users need while a run is going
    from berg.runner.plan import digest

    # Workers keep their models per plan *and* execution settings (a device change reloads them).
    plan_dict = {**plan.to_dict(), "__hash__": digest(plan.to_dict())}
    resources = plan.executor.get("resources")
    results = []
    try:
        futures = [
            client.submit(
                _dask_unit,
                plan_dict,
                u,
                units[u],
                key=f"berg-shard-{plan.plan_hash()[:10]}-{u}",
                pure=False,
                resources=resources,
            )
            for u in sorted(units)
        ]
        with _progress(
            sum(shard_bounds(u, plan.shard_size, n)[1] - u * plan.shard_size for u in units), show, "berg run (dask)"
        ) as bar:
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
                results.append(res)
                start, stop = shard_bounds(res["shard"], plan.shard_size, n)
                bar.update(stop - start)
    finally:
        client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
    return results, dashboard
