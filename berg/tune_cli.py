"""``berg tune``: measure the GEMM kernels on this machine and write the user kernel table.

The engine picks a kernel and operand layout per projection/readout shape from a table
(:mod:`berg.core.kernels`). berg ships one measured by ``make bench``; ``berg tune`` measures this
machine and writes ``kernels.json`` in berg's user config folder (atomically), which then wins.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["add_tune_subparser", "cmd_tune"]


def cmd_tune(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Measure the candidates on each shape, print the winners, write the table."""
    from berg.core import kernels

    out = out or sys.stdout
    if args.shapes:
        shapes = kernels.shapes_arg(args.shapes)
    else:
        shapes = list(kernels.QUICK_SHAPES if args.quick else kernels.DEFAULT_SHAPES)
    repeats = 1 if args.quick and args.repeats is None else (args.repeats or 3)
    target = Path(args.output) if args.output else kernels.user_table_path()
    out.write(f"measuring {len(shapes)} shape(s) x {len(kernels.CANDIDATES)} kernels, best of {repeats}\n")
    table = kernels.measure_table(shapes, repeats=repeats, progress=lambda line: out.write(line + "\n"))
    load = table["machine"].get("load_before")
    if load is not None and load > 0.5 * (table["machine"].get("cores") or 1):
        out.write(f"warning: load average {load} before measuring: the machine was busy, figures may mislead\n")
    kernels.write_table(table, target)
    out.write(f"wrote {target}\n")
    return 0


def add_tune_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``tune`` to an argparse sub-parsers object and return its parser."""
    p = subparsers.add_parser(
        "tune",
        help="measure the GEMM kernels on this machine (kernel table)",
        description="Measure torch/numpy GEMM kernels and operand layouts per projection/readout shape on this "
        "machine and write the kernel table the engine chooses from (default: kernels.json in berg's user "
        "config folder). Run it on a quiet machine; BERG_READOUT_KERNEL still forces a kernel.",
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (seconds; checks the set-up)")
    p.add_argument("--shapes", nargs="+", metavar="BxINxOUT", help="shapes to measure, e.g. 100x250x8820")
    p.add_argument("--repeats", type=int, default=None, help="best of this many timings per kernel (default 3)")
    p.add_argument("-o", "--output", help="write the table here instead of the user config folder")
    p.set_defaults(func=cmd_tune)
    return p
