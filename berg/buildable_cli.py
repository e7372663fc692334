"""``berg build``: the command line of :mod:`berg.buildable`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from berg.buildable import build_model
from berg.errors import InvalidParameterError


def cmd_build(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``berg build ID --data DIR [--out DIR] [--option k=v] [--force]``."""
    import yaml

    from berg.api import BERG

    out = out or sys.stdout
    options: dict[str, Any] = {}
    for pair in args.option or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidParameterError(f"--option takes KEY=VALUE, got {pair!r}")
        options[key] = yaml.safe_load(value)
    client = BERG(cache_dir=getattr(args, "cache_dir", None), registry=getattr(args, "registry", None) or None)
    path = build_model(args.model_id, args.data, out_dir=args.out, options=options, force=args.force, client=client)
    out.write(f"built {args.model_id}: {path}\n")
    if args.out:
        out.write(f"load it with BERG(berg_dir={str(Path(args.out))!r}) or --berg-dir {args.out}\n")
    return 0


def add_build_subparser(sub: argparse._SubParsersAction) -> None:
    """Attach ``berg build`` to the CLI."""
    p = sub.add_parser(
        "build",
        help="build a buildable model (no published weights) from its dataset",
        description="Build a model that has no published weights once on this machine, from its dataset.",
    )
    p.add_argument("model_id", help="a buildable model id (see `berg list`)")
    p.add_argument("--data", required=True, metavar="DIR", help="the dataset folder the model is built from")
    p.add_argument("--out", metavar="DIR", help="write DIR/<id>/ instead of the cache (load with --berg-dir DIR)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="creator option (repeatable)")
    p.add_argument("--force", action="store_true", help="rebuild even if a verified artifact exists")
    p.set_defaults(func=cmd_build)
