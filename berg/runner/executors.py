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
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from berg.env import temporarily
from berg.errors import InvalidParameterError, MissingExtraError
from berg.fsutil import digest
from berg.runner.inputs import StimulusSource, open_source
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


def pending_units(
    store: RunStore,
    loaded: Mapping[str, Any],
    n_shards: int,
    source: StimulusSource | None = None,
    *,
    only: Callable[[int], bool] | None = None,
) -> dict[int, dict[str, str]]:
    """``{shard: {target key: expected hash}}`` for every shard with a target to (re)compute.

    A target's shard is computed again when it is pending, stale (another plan), damaged (its chunks no
    longer match its marker's record; the marker is removed) or when a stimulus that failed in it has
    changed since (it came back or was replaced; the marker is removed, so the stimulus is retried).
    Markers are removed only for shards ``only`` accepts (this process's slice of a Slurm array).
    """
    targets = [t for le in loaded.values() for t in le.targets.values()]
    markers = {t.key: store.markers_of(t.key) for t in targets}
    units: dict[int, dict[str, str]] = {}
    for shard in range(n_shards):
        for t in targets:
            m = markers[t.key].get(shard)
            state, why = store.marker_state(t.key, shard, m, t.hash)
            if state == "done" and source is not None and _failed_changed(m, source):
                state, why = "retry", "a stimulus that failed in it has changed (restored or replaced)"
            if state in ("damaged", "retry") and (only is None or only(shard)):
                log.warning("%s shard %d: %s; computing it again", t.key, shard, why)
                store.log_event("shard_invalidated", target=t.key, shard=shard, reason=why)
                store.drop_marker(t.key, shard)
            if state != "done":
                units.setdefault(shard, {})[t.key] = t.hash
    return units


def _failed_changed(marker: Mapping[str, Any], source: StimulusSource) -> bool:
    """Whether a stimulus recorded as failed in ``marker`` looks different now (its file's stamp changed)."""
    for f in marker.get("failed") or ():
        i = f.get("index")
        if isinstance(i, int) and 0 <= i < len(source) and source.stamp(i) != f.get("stamp"):
            return True
    return False


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
    if isinstance(plan, Mapping):
        plan = EncodePlan.from_dict(plan)
    elif isinstance(plan, (str, os.PathLike)) and not isinstance(plan, bytes):
        plan = EncodePlan.from_yaml(plan)
    elif not isinstance(plan, EncodePlan):
        raise InvalidParameterError(
            f"berg.run takes an EncodePlan, a plan dict or the path of a YAML plan; got {type(plan).__name__} "
            f"{plan!r:.80}"
        )
    if shard is not None:
        i, of = shard
        if not (isinstance(i, int) and isinstance(of, int) and of >= 1 and 0 <= i < of):
            raise InvalidParameterError(f"--shard I --of N needs 0 <= I < N, got I={i}, N={of}")
    t_start = time.perf_counter()
    store = RunStore(plan.store)
    source = open_source(plan.stimuli, hash_cache=hash_cache_path(plan))
    n = len(source)
    n_shards = -(-n // plan.shard_size)
    use_dask = plan.executor["kind"] == "dask" and shard is None
    show = show_progress and not _quiet()
    with store.lock(shard), contextlib.ExitStack() as stack:  # a second run on the store stops before loading
        source.fingerprint()  # hashes new or changed files once; workers then find them in the cache
        cluster = None
        if use_dask and not prepare_only:
            # Workers start (and load the models) while this driver loads its own copy: start-up overlaps.
            cluster = stack.enter_context(_DaskCluster(plan))
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
        mine = None if shard is None else (lambda u: u % shard[1] == shard[0])
        all_units = pending_units(store, loaded, n_shards, source, only=mine)
        finished = n_shards - len(all_units)
        units = all_units if mine is None else {u: k for u, k in all_units.items() if mine(u)}
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
            prepare_seconds=time.perf_counter() - t_start,  # open, fingerprint, load, lay out, find pending shards
        )
        log.info("%s: %d of %d shards to compute", plan.store, len(units), n_shards)
        dashboard = None
        if not units:
            results = []
        elif use_dask:
            for le in loaded.values():  # free the driver's copies: the workers have theirs
                le.model = None
            results, dashboard = cluster.run(units, n, show)
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
_WORKER_LOCK = threading.Lock()  # a warm-up and a shard task of one worker must not both load the models
#: Worker resource that lets one shard task run at a time on a worker of berg's own LocalCluster, so the
#: task's torch uses all the worker's threads (``threads_per_worker``) instead of several tasks sharing them.
_SLOT = "berg-shard-slot"


def hash_cache_path(plan: EncodePlan) -> os.PathLike[str]:
    """Where a run caches the content hashes of its stimulus files (inside the run folder)."""
    return plan.store / "stimuli-hashes.json"


def _worker_threads(plan: EncodePlan) -> int:
    """Compute threads of a Dask task: ``torch_threads``, else the threads of the worker running it."""
    if plan.executor.get("torch_threads"):
        return int(plan.executor["torch_threads"])
    with contextlib.suppress(Exception):  # outside a worker (tests call the task directly)
        from dask.distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    return int(plan.executor.get("threads_per_worker", 1))


#: The thread-count variables of the BLAS/OpenMP libraries; Dask's nanny sets them to 1 in every worker
#: process (``distributed.nanny.pre-spawn-environ``), which would leave numpy's GEMMs on one core.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def set_compute_threads(n: int) -> dict[str, Any]:
    """Give this process's torch and BLAS (numpy's OpenBLAS/MKL, OpenMP) ``n`` threads each.

    A Dask worker calls this before loading its models, so the shard it runs uses the worker's threads
    in the backbone (torch) and in the readouts (numpy or torch kernels alike).

    Parameters
    ----------
    n : int
        Threads (>= 1).

    Returns
    -------
    dict
        ``{"torch": threads, "blas": {BLAS library: threads}}`` as set (``blas`` is empty without
        threadpoolctl, whose absence leaves BLAS at the process's start-up setting).
    """
    import torch

    n = max(1, int(n))
    torch.set_num_threads(n)
    blas: dict[str, int] = {}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        log.debug("threadpoolctl is not installed: BLAS keeps its start-up thread count")
    else:
        threadpool_limits(limits=n)  # not a context: the limit holds for the worker's lifetime
        # OpenMP's count is per thread (torch sets its own in each thread it computes in); BLAS's is global
        blas = {i["prefix"]: int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}
    return {"torch": torch.get_num_threads(), "blas": blas}


def _worker_state(plan_dict: dict[str, Any]):
    """The worker's loaded plan (models are loaded once per worker process and kept)."""
    key = plan_dict["__hash__"]
    with _WORKER_LOCK:
        return _WORKER_STATE.get(key) or _load_worker_state(key, plan_dict)


def _load_worker_state(key: str, plan_dict: dict[str, Any]):
    t0 = time.perf_counter()
    plan = EncodePlan.from_dict({k: v for k, v in plan_dict.items() if k != "__hash__"})
    threads = set_compute_threads(_worker_threads(plan))
    source = open_source(plan.stimuli, hash_cache=hash_cache_path(plan))
    _WORKER_STATE.clear()  # one plan per worker at a time: free the previous plan's models first
    loaded = load_entries(plan, source)
    store = RunStore(plan.store)
    state = _WORKER_STATE[key] = (plan, source, loaded, store)
    # start-up cost of this worker, in the event log beside its shards (berg status / benchmarks read it)
    store.log_event("worker_ready", seconds=time.perf_counter() - t0, threads=threads["torch"])
    return state


def _dask_warm(plan_dict: dict[str, Any]) -> int:
    """Load the plan's models in a worker ahead of its first shard (run on each worker at start-up)."""
    _worker_state(plan_dict)
    return os.getpid()


def _dask_unit(plan_dict: dict[str, Any], shard: int, pending: dict[str, str]) -> dict[str, Any]:
    """One Dask task: compute a shard in a worker."""
    plan, source, loaded, store = _worker_state(plan_dict)
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
    kwargs = local_cluster_kwargs(cfg)
    # Worker processes start with BLAS/OpenMP sized to their threads (Dask's nanny would give them 1), set
    # before the process spawns: numpy loads its BLAS while the worker unpickles, before any task runs.
    # Dask's nanny copies its pre-spawn variables (OMP_NUM_THREADS=1 ...) into this process's environment,
    # where they would outrank the next cluster's setting: the driver's own values come back afterwards.
    with temporarily(dict.fromkeys(_THREAD_VARS, str(int(cfg.get("torch_threads") or kwargs["threads_per_worker"])))):
        cluster = LocalCluster(**kwargs)
    return Client(cluster), cluster


def local_cluster_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``LocalCluster`` arguments of a plan's ``executor``.

    Without ``threads_per_worker`` the machine's cores are split between the workers (LocalCluster's own
    rule), so one worker alone on a machine uses them all; each worker runs one shard at a time (a
    worker resource) and that shard's torch and BLAS use the worker's threads (``torch_threads``
    overrides the count; see :func:`set_compute_threads`).
    """
    n_workers = int(cfg.get("n_workers", 2))
    threads = int(cfg.get("threads_per_worker") or max(1, (os.cpu_count() or 1) // n_workers))
    kwargs: dict[str, Any] = {
        "n_workers": n_workers,
        "threads_per_worker": threads,
        "processes": True,
        "dashboard_address": ":0" if cfg.get("dashboard", True) else None,
        "resources": {**dict(cfg.get("resources") or {}), _SLOT: 1},
    }
    if cfg.get("memory_limit") is not None:
        kwargs["memory_limit"] = cfg["memory_limit"]
    return kwargs


class _DaskCluster:
    """The Dask client of a run, started in a background thread so workers start (and load the models,
    :func:`_dask_warm`) while the driver loads its own copy and lays out the store."""

    def __init__(self, plan: EncodePlan):
        self.plan = plan
        # Workers keep their models per plan *and* execution settings (a device change reloads them).
        self.plan_dict = {**plan.to_dict(), "__hash__": digest(plan.to_dict())}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berg-dask-start")
        self._started = None
        self._warm: list[Any] = []  # held: Dask forgets tasks whose futures are dropped
        self.client = self.cluster = None

    def __enter__(self) -> _DaskCluster:
        self._started = self._pool.submit(self._start)
        return self

    def _start(self) -> None:
        self.client, self.cluster = _dask_client(self.plan.executor)
        if self.cluster is not None:  # an external cluster's workers load on their first task
            from berg.runner.dask_plugins import FastExit

            # berg's own workers end at once when the run closes them (no slow torch teardown to wait for)
            try:
                self.client.register_plugin(FastExit())
            except Exception as exc:  # noqa: BLE001 - only the close gets slower
                log.debug("the fast-exit worker plugin was not registered: %s", exc)
            with contextlib.suppress(Exception):  # a worker that fails here fails its first task, with the error
                resources = {**dict(self.plan.executor.get("resources") or {}), _SLOT: 1}
                self._warm = [
                    self.client.submit(
                        _dask_warm, self.plan_dict, workers=[w], pure=False, key=f"berg-warm-{i}", resources=resources
                    )
                    for i, w in enumerate(self.client.scheduler_info()["workers"])
                ]

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._started is not None:
                with contextlib.suppress(Exception):
                    self._started.result()
        finally:
            if self.client is not None:
                with contextlib.suppress(Exception):
                    self.client.close()
            if self.cluster is not None:
                with contextlib.suppress(Exception):
                    self.cluster.close()
            self._pool.shutdown(wait=True)

    def run(self, units: dict[int, dict[str, str]], n: int, show: bool):
        """Compute ``units`` on the cluster; returns ``(results, dashboard link)``."""
        from dask.distributed import as_completed

        self._started.result()  # raises the start-up error (missing extra, unreachable scheduler)
        client, plan = self.client, self.plan
        dashboard = getattr(client, "dashboard_link", None)
        if dashboard:
            log.warning("Dask dashboard: %s", dashboard)  # the one link users need while a run is going
        resources = dict(plan.executor.get("resources") or {})
        if self.cluster is not None:
            resources[_SLOT] = 1
        results = []
        futures = [
            client.submit(
                _dask_unit,
                self.plan_dict,
                u,
                units[u],
                key=f"berg-shard-{plan.plan_hash()[:10]}-{u}",
                pure=False,
                resources=resources or None,
            )
            for u in sorted(units)
        ]
        total = sum(shard_bounds(u, plan.shard_size, n)[1] - u * plan.shard_size for u in units)
        with _progress(total, show, "berg run (dask)") as bar:
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
        return results, dashboard
