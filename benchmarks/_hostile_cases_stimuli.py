"""Hostile stimuli and output paths for benchmarks/hostile_inputs.py (issue 10, "Inputs and outputs").

The cases live in :mod:`berg.testing.hostile` (``stimulus_cases``, ``output_path_cases``), so the test
suite (tests/test_inputs_hostile.py) and this benchmark run the very same inputs: decompression-bomb
headers (PNG, GIF, BMP), truncated and corrupt images, EPS (never handed to Ghostscript),
empty/random/truncated videos, symlink loops, NUL bytes, closed and empty PIL images, odd arrays, and
output paths berg must refuse. Every one must raise a BERGError. Each case builds its files inside
``ctx.cache``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import hostile_inputs as H

from berg.testing.hostile import output_path_cases, stimulus_cases


def _case(group: str, factory, name: str) -> H.Case:
    def run(ctx):
        return dict(factory(ctx.cache / group))[name]()

    return H.Case(group, name.replace(" ", "-"), run)


def _names(factory) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        return [name for name, _ in factory(Path(tmp) / "probe")]


CASES = [_case("stimuli", stimulus_cases, n) for n in _names(stimulus_cases)]
CASES += [_case("outputs", output_path_cases, n) for n in _names(output_path_cases)]
