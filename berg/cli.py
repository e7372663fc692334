"""The ``berg`` command line: list, describe, fetch, encode, cache, train.

This is the only module of berg that prints. Errors print one line (``berg: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from berg.errors import BERGError

__all__ = ["main", "build_parser"]


def _client(args: argparse.Namespace):
    from berg.api import BERG

    return BERG(berg_dir=args.berg_dir, cache_dir=args.cache_dir, offline=args.offline, registry=args.registry)


def _subject(value: str) -> Any:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        return value


def cmd_list(args: argparse.Namespace) -> int:
    client = _client(args)
    for model_id in client.list_models(args.pattern):
        spec = client.registry.get(model_id)
        print(f"{model_id:32s} {spec.modality:6s} {spec.dataset:10s} subjects: {len(spec.subjects)}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.json:
        print(json.dumps(client.describe(args.model_id), indent=1, default=str))
    else:
        print(client.describe_text(args.model_id), end="")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    client = _client(args)
    subject = None if args.all or args.subject is None else [_subject(s) for s in args.subject]
    paths = client.fetch(args.model_id, subject=subject, all=args.all)
    total = sum(p.stat().st_size for p in paths.values())
    print(f"{len(paths)} file(s), {total / 1e6:.1f} MB, ready for {args.model_id}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from berg.io import save, save_nifti

    client = _client(args)
    selection = {"roi": args.roi} if args.roi else None
    model = client.get_encoding_model(
        args.model_id, subject=_subject(args.subject), selection=selection, device=args.device,
        batch_size=args.batch_size, backbone_weights=args.backbone_weights,
    )
    responses = client.encode(model, [Path(p) for p in args.inputs], show_progress=not args.quiet)
    out = Path(args.output)
    if out.name.endswith((".nii", ".nii.gz")):
        if isinstance(responses, dict):
            raise BERGError("NIfTI output takes one subject; use .h5 for several")
        save_nifti(out, responses, model)
    elif out.suffix in (".h5", ".hdf5"):
        save(out, responses, model, stimulus_ids=[Path(p).name for p in args.inputs])
    else:
        raise BERGError(f"output must end with .h5, .hdf5, .nii or .nii.gz, got {out.name}")
    shape = {k: v.shape for k, v in responses.items()} if isinstance(responses, dict) else np.shape(responses)
    print(f"wrote {out} {shape}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from berg.store import Store
    from berg.store.cache import cache_clear, cache_list, cache_size, cache_verify

    root = Store(cache_dir=args.cache_dir).cache_dir
    if args.action == "list":
        for e in cache_list(root, args.model_id):
            print(f"{e['model_id']}/{e['key']}  {e['size']:,} B")
    elif args.action == "size":
        sizes = cache_size(root, args.model_id)
        for model_id, size in sizes.items():
            print(f"{model_id:32s} {size / 1e6:10.1f} MB")
        print(f"{'total':32s} {sum(sizes.values()) / 1e6:10.1f} MB  ({root})")
    elif args.action == "verify":
        results = cache_verify(root, args.model_id)
        bad = [r for r in results if r["status"] == "corrupt"]
        for r in bad:
            print(f"corrupt (deleted, will be fetched again): {r['model_id']}/{r['key']}")
        print(f"verified {len(results)} file(s): {len(bad)} corrupt")
        return 1 if bad else 0
    elif args.action == "clear":
        freed = cache_clear(root, args.model_id)
        print(f"freed {freed / 1e6:.1f} MB")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from berg.training.trainer import train_from_config

    result = train_from_config(args.config, out_dir=args.out)
    print(f"trained {result.model_id}: artifact {result.artifact_dir}")
    for line in result.summary_lines():
        print("  " + line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(prog="berg", description="In silico brain responses from published encoding models.")
    p.add_argument("--berg-dir", help="local copy of BERG's bucket tree (used in place)")
    p.add_argument("--cache-dir", help="cache directory (default: $BERG_CACHE or the user cache dir)")
    p.add_argument("--registry", action="append", help="extra registry.yaml (repeatable)")
    p.add_argument("--offline", action="store_true", help="never use the network (also BERG_OFFLINE=1)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="list models (optionally a glob such as 'fmri-*')")
    s.add_argument("pattern", nargs="?")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("describe", help="show a model card")
    s.add_argument("model_id")
    s.add_argument("--json", action="store_true", help="the card as JSON")
    s.set_defaults(func=cmd_describe)

    s = sub.add_parser("fetch", help="download a model's files into the cache")
    s.add_argument("model_id")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--subject", action="append", help="subject (repeatable)")
    g.add_argument("--all", action="store_true", help="every file of the model")
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser("encode", help="encode images/videos into responses (.h5 or .nii.gz)")
    s.add_argument("model_id")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files")
    s.add_argument("--subject", required=True, help="subject id, or 'all' (HDF5 output)")
    s.add_argument("--roi", action="append", help="ROI name (repeatable)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--backbone-weights", default=None, help="path to a state dict, or 'untrained'")
    s.add_argument("-o", "--output", required=True, help="OUT.h5 or OUT.nii.gz")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_encode)

    s = sub.add_parser("cache", help="inspect or clean the cache")
    s.add_argument("action", choices=["list", "size", "verify", "clear"])
    s.add_argument("model_id", nargs="?")
    s.set_defaults(func=cmd_cache)

    s = sub.add_parser("train", help="train and export a model from a config file")
    s.add_argument("config")
    s.add_argument("--out", default=None, help="output directory (default: from the config)")
    s.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BERGError as exc:
        print(f"berg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("berg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
