"""A Dask worker of ``berg run`` computes with its own threads: torch and BLAS (numpy's GEMMs) alike, not the
one thread Dask's nanny gives BLAS by default, and the driver's environment is left as it was."""

from __future__ import annotations

import os
import warnings

import pytest

pytest.importorskip("dask.distributed", reason="the scale extra (pip install 'berg[scale]') is not installed")
pytest.importorskip(
    "threadpoolctl", reason="the scale extra (pip install 'berg[scale]', with threadpoolctl) is not installed"
)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def _in_worker(torch_threads: int | None) -> dict:
    """What a shard task sees in its worker before and after the worker's start-up sets its threads."""
    from threadpoolctl import threadpool_info

    from berg.runner import executors
    from berg.runner.plan import EncodePlan

    at_spawn = {k: os.environ.get(k) for k in executors._THREAD_VARS}
    blas_at_spawn = sorted({int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"})
    executor = {"kind": "dask"} if torch_threads is None else {"kind": "dask", "torch_threads": torch_threads}
    plan = EncodePlan.from_dict(
        {"models": [{"id": "m", "subjects": 1}], "stimuli": "x", "store": "r", "executor": executor},
        base_dir="/tmp",
    )
    applied = executors.set_compute_threads(executors._worker_threads(plan))
    return {"env": at_spawn, "blas_at_spawn": blas_at_spawn, "applied": applied}


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to tell 2 threads from 1")
def test_worker_torch_and_blas_use_the_workers_threads():
    from berg.runner import executors

    before = {k: os.environ.get(k) for k in executors._THREAD_VARS}

    def in_a_fresh_worker(torch_threads: int | None) -> dict:
        # A plan has one executor config: each case gets its own cluster, as a run does (a worker's
        # threads are set once, when it loads its plan; two settings in one worker never happen).
        cfg = {"kind": "dask", "n_workers": 1, "dashboard": False}
        if torch_threads is not None:
            cfg["torch_threads"] = torch_threads
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client, cluster = executors._dask_client(cfg)
        try:
            return client.submit(_in_worker, torch_threads, pure=False).result(timeout=120)
        finally:
            client.close()
            cluster.close()

    got, pinned = in_a_fresh_worker(None), in_a_fresh_worker(1)
    threads = executors.local_cluster_kwargs({"n_workers": 1})["threads_per_worker"]
    assert threads == os.cpu_count()  # one worker alone on the machine gets every core
    assert got["env"] == dict.fromkeys(executors._THREAD_VARS, str(threads))  # not Dask's 1
    assert got["blas_at_spawn"] == [threads]  # numpy's BLAS started with them in the worker
    assert got["applied"]["torch"] == threads
    assert got["applied"]["blas"] and set(got["applied"]["blas"].values()) == {threads}
    # torch_threads overrides the count for torch and BLAS together
    assert pinned["applied"]["torch"] == 1 and set(pinned["applied"]["blas"].values()) == {1}
    # the driver keeps its own environment (the nanny copies its variables into it while spawning)
    assert {k: os.environ.get(k) for k in executors._THREAD_VARS} == before


def _note_normal_exit(path: str) -> int:
    """Register, in the worker, an exit hook that runs only if the interpreter tears down normally."""
    import atexit

    def note() -> None:
        with open(path, "w") as f:
            f.write("normal interpreter exit")

    atexit.register(note)
    return os.getpid()


@pytest.mark.parametrize("fast", [True, False])
def test_own_workers_exit_at_once_when_closed(tmp_path, fast):
    from berg.runner import executors
    from berg.runner.dask_plugins import FastExit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client, cluster = executors._dask_client(
            {"kind": "dask", "n_workers": 1, "threads_per_worker": 1, "dashboard": False}
        )
    marker = tmp_path / "normal-exit"
    try:
        if fast:
            client.register_plugin(FastExit())
        pid = client.submit(_note_normal_exit, str(marker), pure=False).result(timeout=120)
    finally:
        client.close()
        cluster.close()
    assert pid != os.getpid()
    # with the plugin the closed worker ended before the interpreter's teardown (its atexit hooks never ran)
    assert marker.exists() is not fast
