"""Benchmarks cannot rot: every script in benchmarks/ runs its ``--smoke`` mode (tiny sizes, same code path).

Each script runs in a fresh process, as `make bench` runs it; a script without ``--smoke`` fails here.
Modules whose name starts with ``_`` are the harness and its plug-ins, not benchmarks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run_records_figures(script, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", BERG_QUIET="1")
    env.pop("BERG_BENCH_RESULTS", None)  # a smoke run must never record, even under `make bench`
    res = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", "--results", str(tmp_path / "r.jsonl")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, f"{script} --smoke failed:\n{res.stderr[-4000:]}"
    figures = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"benchmark"')]
    assert figures, f"{script} --smoke printed no figure (record them with benchmarks/_harness.py)"
    assert {f["benchmark"] for f in figures} == {script[:-3]}
    assert all(f["smoke"] is True for f in figures)
    assert not (tmp_path / "r.jsonl").exists(), "smoke figures must never be recorded"
