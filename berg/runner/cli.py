"""``berg run PLAN.yaml [--shard I --of N]``, ``berg status RUN``, ``berg export RUN --to out.h5``.

:func:`add_run_subparser` adds the three sub-commands for :mod:`berg.cli`; the handlers write their report
to the stream they are given (stdout by default); everything else in :mod:`berg.runner` only returns data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["add_run_subparser", "cmd_export", "cmd_run", "cmd_status", "format_status"]

_EPILOG = """examples:
  berg run plan.yaml                              # run or resume (local, or the plan's Dask executor)
  berg run plan.yaml --shard $SLURM_ARRAY_TASK_ID --of 16   # one slice of a Slurm array
  berg status runs/nsd.zarr                       # done / pending / stale shards, failed stimuli, ETA
  berg export runs/nsd.zarr --to nsd.h5           # one HDF5 file (small runs)"""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_status(status: dict[str, Any]) -> str:
    """A readable table of :meth:`berg.runner.zarr_store.RunStore.status`."""
    lines = [
        (
            f"run {status['root']}: {status['n_stimuli']} stimuli in {status['n_shards']} shards of "
            f"{status['shard_size']}"
        )
    ]
    width = max([len(k) for k in status["targets"]] + [6])
    lines.append(f"  {'target':{width}s}  {'done':>6s} {'stale':>6s} {'damaged':>7s} {'pending':>7s}")
    for key, t in status["targets"].items():
        lines.append(f"  {key:{width}s}  {t['done']:6d} {t['stale']:6d} {t['damaged']:7d} {t['pending']:7d}")
    damaged = [(k, d) for k, t in status["targets"].items() for d in t["damaged_shards"]]
    if damaged:
        lines.append(f"{len(damaged)} damaged shard(s) (recomputed by the next 'berg run'):")
        lines += [f"  {k} shard {d['shard']}: {d['reason']}" for k, d in damaged[:20]]
        if len(damaged) > 20:
            lines.append(f"  ... and {len(damaged) - 20} more (berg status --json)")
    lines.append(f"checked: {status.get('verified', 'sizes and modification times')}")
    if status["complete"]:
        lines.append("complete")
    else:
        rate = status.get("units_per_second")
        lines.append(
            f"{status['pending_units']} shard(s) to compute; rate {rate * 60:.1f} shards/min"
            if rate
            else f"{status['pending_units']} shard(s) to compute; rate unknown"
        )
        lines[-1] += f"; ETA {_duration(status.get('eta_seconds'))}"
    running = status.get("holders") or []
    lines.append(
        "running: " + ", ".join(f"pid {h['pid']} on {h['host']} ({h['mode']})" for h in running)
        if running
        else "not running"
    )
    if status["failed"]:
        lines.append(f"{len(status['failed'])} stimulus(es) could not be decoded (NaN rows):")
        lines += [f"  {f['index']}: {f['id']}" for f in status["failed"][:20]]
        if len(status["failed"]) > 20:
            lines.append(f"  ... and {len(status['failed']) - 20} more (berg status --json)")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run or resume a plan."""
    from berg.errors import InvalidParameterError
    from berg.runner.executors import run
    from berg.runner.plan import EncodePlan

    out = out or sys.stdout
    if (args.shard is None) != (args.of is None):
        raise InvalidParameterError("--shard I and --of N go together (0 <= I < N)")
    plan = EncodePlan.from_yaml(args.plan)
    overrides = {
        "berg_dir": getattr(args, "berg_dir", None),
        "cache_dir": getattr(args, "cache_dir", None),
        "registry": getattr(args, "registry", None),
    }
    for key, value in overrides.items():
        if value is not None:
            plan.berg[key] = (
                [os.fspath(Path(v).resolve()) for v in value] if key == "registry" else os.fspath(Path(value).resolve())
            )
    if getattr(args, "offline", False):
        plan.berg["offline"] = True
    if args.store:
        plan.store = Path(args.store).resolve()
    if args.executor:
        plan.executor = {**plan.executor, "kind": args.executor}
    if args.device:
        plan.device = args.device
    shard = (args.shard, args.of) if args.shard is not None else None
    report = run(plan, shard=shard, show_progress=not args.quiet, prepare_only=args.prepare_only)
    if args.prepare_only:
        out.write(
            f"{report.store}: prepared; {report.n_shards - report.skipped_units} shard(s) pending or stale "
            f"(see 'berg status {report.store}')\n"
        )
        return 0
    out.write(
        f"{report.store}: computed {report.computed_units} shard(s), skipped {report.skipped_units} "
        f"finished, in {_duration(report.seconds)}"
        + (f" ({report.stimuli_per_second:.1f} stimuli/s)" if report.computed_units else "")
        + "\n"
    )
    if report.failed:
        out.write(
            f"{len(report.failed)} stimulus(es) could not be decoded and have NaN rows "
            f"(see 'berg status {report.store}')\n"
        )
    return 0


def cmd_status(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Show a run's progress; exit status 0 when complete, 3 when shards remain."""
    from berg.runner.zarr_store import RunStore

    out = out or sys.stdout
    status = RunStore.open(args.run).status(verify=args.verify)
    out.write((json.dumps(status, indent=1, default=str) if args.json else format_status(status)) + "\n")
    return 0 if status["complete"] else 3


def cmd_export(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Export a run to one HDF5 file."""
    import h5py

    from berg.runner.export import export_hdf5

    out = out or sys.stdout
    path = export_hdf5(
        args.run, args.to, allow_incomplete=args.allow_incomplete, verify=args.verify, overwrite=args.force
    )
    nan: dict[str, int] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                nan.__setitem__(name.rsplit("/", 1)[0], int(obj.attrs["n_nan_rows"]))
                if name.endswith("/responses") and obj.attrs.get("n_nan_rows", 0)
                else None
            )
        )
    out.write(f"wrote {path}\n")
    if nan:
        out.write(
            f"incomplete: {sum(nan.values())} row(s) are NaN (shards pending, stale or damaged): "
            + ", ".join(f"{k} {v}" for k, v in sorted(nan.items()))
            + "\n"
        )
    return 0


def _index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def add_run_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``run``, ``status`` and ``export`` to an argparse sub-parsers object; returns the ``run`` parser."""
    p = subparsers.add_parser(
        "run",
        help="run or resume a sharded encoding PLAN.yaml into a zarr store",
        description="Encode a stimulus collection with the plan's models into a resumable zarr store: "
        "finished shards are never recomputed; stale ones (the plan changed) are.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("plan", metavar="PLAN.yaml")
    p.add_argument("--shard", type=_index, metavar="I", help="Slurm-array slice index, 0-based (with --of)")
    p.add_argument("--of", type=_index, metavar="N", help="number of slices (with --shard)")
    p.add_argument("--store", metavar="RUN", help="override the plan's store folder")
    p.add_argument("--executor", choices=["local", "dask"], help="override the plan's executor kind")
    p.add_argument("--device", help="override the plan's device (cpu, cuda, ...)")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="create/update the store for this plan (stale shards show in 'berg status'); compute nothing",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    s = subparsers.add_parser(
        "status",
        help="done / pending / stale shards of a run, failed stimuli, ETA",
        description="Progress of a run folder (exit status 3 while shards remain).",
    )
    s.add_argument("run", metavar="RUN")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument(
        "--verify", action="store_true", help="hash every chunk against its marker (default: sizes and times)"
    )
    s.set_defaults(func=cmd_status)

    e = subparsers.add_parser(
        "export",
        help="export a run to one HDF5 file (small runs)",
        description="Copy a finished run into one HDF5 file (berg.save's layout, one group per model).",
    )
    e.add_argument("run", metavar="RUN")
    e.add_argument("--to", required=True, metavar="OUT.h5")
    e.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="export even if shards are pending, stale or damaged (their rows are NaN; the count is printed)",
    )
    e.add_argument(
        "--verify", action="store_true", help="hash every chunk against its marker first (default: sizes and times)"
    )
    e.add_argument("--force", action="store_true", help="overwrite OUT.h5 if it exists")
    e.set_defaults(func=cmd_export)
    return p
