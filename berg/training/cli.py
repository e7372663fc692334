"""``berg train CONFIG.yaml``: the sub-command, for ``berg.cli`` to attach.

``berg/cli.py`` calls :func:`add_train_subparser` on its sub-parsers; the handler returns the exit
status and writes its report to the stream ``berg.cli`` hands it (stdout by default), so this module
never prints on its own. Importing it is light (no torch, no numpy).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

__all__ = ["add_train_subparser", "cmd_train"]


def cmd_train(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the trainer for ``args.config`` and report where everything went (exit status 0)."""
    from berg.training.trainer import train_from_config

    out = out or sys.stdout
    result = train_from_config(args.config, out_dir=args.out, show_progress=not getattr(args, "quiet", False))
    lines = [
        f"trained {result.model_id}",
        f"  artifact: {result.artifact_dir}",
        f"  card:     {result.card_path}",
        f"  registry: {result.registry_path}  (use: BERG(registry=...) or berg --registry ...)",
    ]
    lines += ["  " + line for line in result.summary_lines()]
    out.write("\n".join(lines) + "\n")
    return 0


def add_train_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` to an argparse sub-parsers object and return its parser."""
    p = subparsers.add_parser(
        "train",
        help="train, evaluate and export a model from a config file",
        description="Train a linear encoding model from a berg HDF5 dataset (docs/training.md) and export a "
        "berg-native artifact, a model card with held-out accuracy and a registry entry.",
    )
    p.add_argument("config", help="YAML config (paths inside are relative to it)")
    p.add_argument("--out", default=None, help="output directory (default: out_dir from the config)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)
    return p
