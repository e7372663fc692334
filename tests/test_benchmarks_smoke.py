"""Benchmarks cannot rot: every script in benchmarks/ runs its ``--smoke`` mode (tiny sizes, same code path).

Each script runs in a fresh process, as `make bench` runs it; a script without ``--smoke`` fails here.
Modules whose name starts with ``_`` are the harness and its plug-ins, not benchmarks.

Most of a smoke run's wall time is importing torch and its own short waits, so the selected scripts are
started together, ``BERG_BENCH_SMOKE_JOBS`` (default 8) at a time, the slowest first; each test then
judges its own script's run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))
JOBS = max(1, int(os.environ.get("BERG_BENCH_SMOKE_JOBS", "8")))
TIMEOUT_S = 600  # 8 smoke runs share 2 cores; a loaded box doubles their time
#: the slowest smoke runs, started first so the batch ends sooner; the rest follow in name order
SLOWEST_FIRST = [
    "movies.py",
    "hostile_inputs.py",
    "clip_sam.py",
    "berg_catalogue.py",
    "run_scale.py",
    "encode_overhead.py",
]


def _smoke(script: str, work: Path) -> subprocess.CompletedProcess:
    # TMPDIR: what a script puts in a temporary folder stays under pytest's, and is removed with it
    env = dict(os.environ, MPLBACKEND="Agg", BERG_QUIET="1", TMPDIR=str(work))
    env.pop("BERG_BENCH_RESULTS", None)  # a smoke run must never record, even under `make bench`
    return subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", "--results", str(work / "r.jsonl")],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory) -> dict[str, tuple[Path, Future]]:
    """The smoke run of every script this session selected, all started at once (``JOBS`` at a time)."""
    selected = {
        item.callspec.params["script"]
        for item in request.session.items
        if item.originalname == "test_smoke_run_records_figures" and hasattr(item, "callspec")
    }
    order = sorted(selected, key=lambda s: (SLOWEST_FIRST.index(s) if s in SLOWEST_FIRST else len(SLOWEST_FIRST), s))
    pool = ThreadPoolExecutor(max_workers=JOBS, thread_name_prefix="bench-smoke")
    runs = {}
    for script in order:
        work = tmp_path_factory.mktemp(script[:-3])
        runs[script] = (work, pool.submit(_smoke, script, work))
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run_records_figures(script, smoke_runs):
    work, future = smoke_runs[script]
    res = future.result()
    assert res.returncode == 0, f"{script} --smoke failed:\n{res.stderr[-4000:]}"
    figures = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"benchmark"')]
    assert figures, f"{script} --smoke printed no figure (record them with benchmarks/_harness.py)"
    assert {f["benchmark"] for f in figures} == {script[:-3]}
    assert all(f["smoke"] is True for f in figures)
    assert not (work / "r.jsonl").exists(), "smoke figures must never be recorded"
