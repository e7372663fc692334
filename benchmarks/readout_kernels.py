"""GEMM kernels per shape: every candidate (torch / numpy x operand layout nk / kn) on the catalogue's
readout and projection shapes, against the run's GEMM peak; writes the kernel table the engine chooses from.

The engine chooses a kernel and operand layout per shape from ``berg/core/kernel_table.json``
(:mod:`berg.core.kernels`; a pure function of shape, dtype and device, so runs are bit-reproducible).
This script measures that table: at full size on a quiet machine (``make bench``) it rewrites the shipped
table (``--write-table``; a run on a loaded machine never does), and records per shape each candidate's
GFLOP/s, the best one's fraction of the peak (target >= 0.75) and the engine's choice from the table in
effect before the run (``chosen_of_best``: its GFLOP/s over the best's).

    python benchmarks/readout_kernels.py [--repeats 3] [--smoke] [--write-table PATH|none]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import _harness as H

from berg.core import kernels

log = logging.getLogger("berg.benchmarks")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--write-table",
        default=str(kernels.shipped_table_path()),
        help="where the measured kernel table goes (default: the one shipped in berg); 'none': nowhere. "
        "Never written by --smoke or on a loaded machine.",
    )
    args = H.add_arguments(p).parse_args()
    shapes = list(kernels.QUICK_SHAPES) if args.smoke else list(kernels.DEFAULT_SHAPES)
    repeats = 1 if args.smoke else args.repeats
    rec = H.start("readout_kernels", args)
    peak = H.peak_gflops()  # the run's peak (best of numpy and torch, 2048² float32)
    before = kernels.active_table()  # the table the engine used until now
    table = kernels.measure_table(shapes, repeats=repeats, progress=log.info)
    for entry in table["entries"]:
        b, n_in, n_out = entry["batch"], entry["n_in"], entry["n_out"]
        g, best = entry["gflops"], entry["best"]
        name = f"{b}x{n_in}x{n_out}"
        kind = "readout" if n_out >= n_in else "projection"
        for cand in kernels.CANDIDATES:
            rec.figure(f"{name}.{cand}", g[cand], "GFLOP/s", shape=[b, n_in, n_out], kind=kind)
        rec.figure(
            f"{name}.best_of_peak",
            g[best] / peak,
            "x",
            target=">= 0.75",
            note=f"best: {best}",
            shape=[b, n_in, n_out],
            kind=kind,
        )
        chosen = kernels.lookup(before, n_in, n_out, b)
        if chosen is not None:
            rec.figure(
                f"{name}.chosen_of_best",
                g[chosen.name] / g[best],
                "x",
                target=">= 0.9",
                note=f"engine chose {chosen.name} ({chosen.source}), best measured {best}",
                shape=[b, n_in, n_out],
                kind=kind,
            )
    target = None if args.write_table.lower() == "none" else Path(args.write_table)
    if target is not None and not args.smoke and not rec.loaded:
        table["machine"]["peak_gflops"] = peak
        table["machine"]["run_id"] = rec.run_id
        kernels.write_table(table, target)
        log.info("kernel table written to %s", target)
    elif target is not None:
        log.info("kernel table not written (%s)", "smoke sizes" if args.smoke else "machine loaded")


if __name__ == "__main__":
    main()
