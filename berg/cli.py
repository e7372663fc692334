"""The ``berg`` command line: list, describe, fetch, encode, cache, train.

This is the only module of berg that prints. Results go to stdout; errors are one line on stderr
(``berg: error: ...``) with exit status 2 for bad input and berg errors, 1 for system errors (disk,
permissions), 130 on Ctrl-C.

``berg cache`` and ``berg train`` are contributed by :mod:`berg.store.cli` and
:mod:`berg.training.cli`: each provides ``add_<name>_subparser(subparsers)``, which adds its parser
and sets ``func=handler`` where ``handler(args) -> int``. The global options ``--berg-dir``,
``--cache-dir``, ``--registry`` and ``--offline`` are defined here and reach the handlers in ``args``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from berg.errors import BERGError, InvalidParameterError

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)

_OUTPUT_SUFFIXES = (".h5", ".hdf5", ".nii", ".nii.gz")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif"}

# name -> (module, function, help shown when the module is missing)
_PLUGINS = {
    "cache": ("berg.store.cli", "add_cache_subparser", "inspect, verify or clear the artifact cache"),
    "train": ("berg.training.cli", "add_train_subparser", "train and export a model from a CONFIG.yaml"),
}

_EPILOG = """examples:
  berg list "fmri-*"
  berg describe fmri-bold5000-resnet18
  berg fetch fmri-bmd-s3d --subject 1
  berg encode fmri-bold5000-resnet18 --subject 1 --roi PPA images/*.jpg -o responses.h5
  berg encode fmri-bold5000-resnet18 --subject 1 images/ -o responses.nii.gz

environment: BERG_CACHE (cache dir), BERG_OFFLINE=1, BERG_S3_ENDPOINT, BERG_REGISTRY, TORCH_HOME"""


class _Parser(argparse.ArgumentParser):
    """argparse with berg's one-line errors (``berg: error: ...``, exit 2) instead of usage dumps."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        sys.stderr.write(f"berg: error: {message}{hint}\n")
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _one_subject(text: str) -> Any:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _subjects(values: Sequence[str] | None) -> Any:
    """``["1"]`` -> 1, ``["1,2", "3"]`` -> [1, 2, 3], ``["all"]`` -> "all" (as the API takes them)."""
    if not values:
        return None
    items = [_one_subject(v) for value in values for v in value.split(",") if v.strip()]
    if "all" in items:
        if len(items) > 1:
            raise InvalidParameterError("--subject all cannot be combined with other subjects")
        return "all"
    if not items:
        raise InvalidParameterError("--subject needs a value: a subject id, a comma list, or 'all'")
    return items[0] if len(items) == 1 else items


def _model_kwargs(pairs: Sequence[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidParameterError(f"--model-kwarg takes KEY=VALUE, got {pair!r}")
        try:  # "2.0" -> 2.0, "true" -> True, "mni" -> "mni": values typed as in YAML
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
    return out


def _client(args: argparse.Namespace):
    from berg.api import BERG

    return BERG(berg_dir=args.berg_dir, cache_dir=args.cache_dir, offline=args.offline, registry=args.registry)


# ---------------------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    """``berg list [PATTERN]``."""
    client = _client(args)
    pattern = args.pattern
    if pattern and not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"  # a bare word matches anywhere in the id, like `grep`
    ids = client.list_models(pattern)
    if not ids:
        sys.stderr.write(
            f"berg: no model matches {args.pattern!r}; available: {', '.join(client.list_models())}\n"
        )
        return 1
    rows = []
    for model_id in ids:
        spec = client.registry.get(model_id)
        card = spec.card
        rows.append({
            "id": model_id, "modality": spec.modality, "dataset": spec.dataset,
            "subjects": list(spec.subjects), "input": spec.input_kind, "name": card.get("name", ""),
        })
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    width = max(len(r["id"]) for r in rows)
    print(f"{'ID':{width}s}  {'MODALITY':8s}  {'DATASET':10s}  {'SUBJ':>4s}  {'INPUT':5s}  NAME")
    for r in rows:
        print(f"{r['id']:{width}s}  {r['modality']:8s}  {r['dataset']:10s}  {len(r['subjects']):4d}  "
              f"{r['input']:5s}  {r['name']}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    """``berg describe ID``."""
    from berg.cards import card_to_markdown, card_to_text

    card = _client(args).describe(args.model_id)
    if args.json:
        print(json.dumps(card, indent=1, default=str))
    elif args.markdown:
        print(card_to_markdown(card), end="")
    else:
        print(card_to_text(card), end="")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """``berg fetch ID [--subject N | --all]``."""
    client = _client(args)
    subject = None if args.all else _subjects(args.subject)
    client.registry.get(args.model_id)  # unknown ids fail before the store is touched
    paths = client.fetch(args.model_id, subject=subject, all=args.all or subject is None)
    total = sum(p.stat().st_size for p in paths.values())
    roots = sorted({str(p.parent) for p in paths.values()}, key=len)
    print(f"{args.model_id}: {len(paths)} file(s), {total / 1e6:.1f} MB available locally"
          + (f" (under {roots[0]})" if roots else ""))
    return 0


def _expand_inputs(inputs: Sequence[str], kind: str) -> list[Path]:
    """Files as given, directories expanded to their image/video files (sorted); all must exist."""
    suffixes = _VIDEO_SUFFIXES if kind == "video" else _IMAGE_SUFFIXES
    out: list[Path] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise InvalidParameterError(
                    f"directory {path} has no {kind} files (looked for {', '.join(sorted(suffixes))})"
                )
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise InvalidParameterError(f"input not found: {path}")
    return out


def cmd_encode(args: argparse.Namespace) -> int:
    """``berg encode ID --subject N INPUT... -o OUT``: everything is checked before any download."""
    import numpy as np

    from berg.io import save, save_nifti

    out = Path(args.output)
    if not out.name.endswith(_OUTPUT_SUFFIXES):
        raise InvalidParameterError(f"-o must end with {', '.join(_OUTPUT_SUFFIXES)}; got {out.name!r}")
    nifti = out.name.endswith((".nii", ".nii.gz"))
    subject = _subjects(args.subject)
    if nifti and (subject == "all" or isinstance(subject, list)):
        raise InvalidParameterError("NIfTI output takes one subject; use -o OUT.h5 for several subjects")
    rois = [r for value in args.roi or [] for r in value.split(",") if r]
    client = _client(args)
    spec = client.registry.get(args.model_id)
    inputs = _expand_inputs(args.inputs, spec.input_kind)
    model = client.get_encoding_model(
        args.model_id, subject=subject, selection={"roi": rois} if rois else None, device=args.device,
        batch_size=args.batch_size, backbone_weights=args.backbone_weights, **_model_kwargs(args.model_kwarg),
    )
    if nifti and np.ndim(model.output_ids()) != 2:
        raise InvalidParameterError(f"{args.model_id} has no volumetric output space; use -o OUT.h5")
    log.info("encoding %d %s(s) with %r", len(inputs), spec.input_kind, model)
    responses = client.encode(model, [str(p) for p in inputs], show_progress=not args.quiet)
    if nifti:
        save_nifti(out, responses, model)
    else:
        save(out, responses, model, stimulus_ids=[str(p) for p in inputs])
    per_subject = responses if isinstance(responses, dict) else {model.subjects[0]: responses}
    shapes = ", ".join(f"subject {s}: {r.shape[0]} x {r.shape[1]}" for s, r in per_subject.items())
    print(f"wrote {out} ({shapes}, float32)")
    return 0


# ---------------------------------------------------------------------------------------- parser


def _add_plugin(sub: argparse._SubParsersAction, name: str) -> None:
    """Let the owning package add its subcommand; if it cannot, a stub that says why."""
    module, function, help_text = _PLUGINS[name]
    try:
        adder = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as exc:
        reason = (f"{module} is not part of this installation" if exc.name == module
                  else f"{module} needs {exc.name!r}, which is not installed")
    except (ImportError, AttributeError) as exc:
        reason = f"{module}.{function} could not be loaded ({exc})"
    else:
        adder(sub)
        return

    def unavailable(args: argparse.Namespace) -> int:
        raise BERGError(f"'berg {name}' is unavailable: {reason}")

    stub = sub.add_parser(name, help=f"{help_text} [unavailable]", add_help=False)
    stub.add_argument("rest", nargs=argparse.REMAINDER)
    stub.set_defaults(func=unavailable)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = _Parser(
        prog="berg", description="In silico brain responses from published encoding models.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from berg._version import __version__

    p.add_argument("--version", action="version", version=f"berg {__version__}")
    p.add_argument("--berg-dir", metavar="DIR", help="local copy of BERG's bucket tree (used in place, read-only)")
    p.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: $BERG_CACHE or the user cache dir)")
    p.add_argument("--registry", action="append", metavar="FILE",
                   help="extra registry.yaml, e.g. written by 'berg train' (repeatable)")
    p.add_argument("--offline", action="store_true", help="never use the network (also BERG_OFFLINE=1)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log progress (-v info, -vv debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("list", help="list models, optionally matching a glob ('fmri-*') or a word",
                       description="List the models of the registry.")
    s.add_argument("pattern", nargs="?", metavar="PATTERN", help="glob such as 'fmri-*', or a word in the id")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("describe", help="show a model card", description="Show a model's card.")
    s.add_argument("model_id", metavar="ID")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="the card as JSON")
    g.add_argument("--markdown", action="store_true", help="the card as Markdown")
    s.set_defaults(func=cmd_describe)

    s = sub.add_parser(
        "fetch", help="download a model's files into the cache (for offline use)",
        description="Download (or find in --berg-dir/cache) a model's files. Without --subject, every "
                    "file of the model is fetched.",
    )
    s.add_argument("model_id", metavar="ID")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--subject", action="append", metavar="N", help="subject id or comma list (repeatable)")
    g.add_argument("--all", action="store_true", help="every file of the model (the default)")
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser(
        "encode", help="encode image/video files into responses (.h5 or .nii.gz)",
        description="Encode stimuli (files, or directories of files) and write the responses: HDF5 with "
                    "output ids and provenance, or a NIfTI image (3-D for one stimulus, 4-D for several).",
    )
    s.add_argument("model_id", metavar="ID")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image/video files or directories")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.h5 / OUT.hdf5 or OUT.nii[.gz]")
    s.add_argument("--subject", required=True, action="append", metavar="N",
                   help="subject id, comma list, or 'all' (several subjects: HDF5 only)")
    s.add_argument("--roi", action="append", metavar="R", help="ROI name (repeatable or comma list); default all outputs")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    s.add_argument("--batch-size", type=_positive_int, default=None, metavar="B", help="stimuli per forward pass")
    s.add_argument("--backbone-weights", default=None, metavar="W",
                   help="path to a local state dict, or 'untrained' (seeded random control)")
    s.add_argument("--model-kwarg", action="append", metavar="KEY=VALUE",
                   help="model-specific option from the card's parameters.model_kwargs (repeatable)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_encode)

    for name in _PLUGINS:
        _add_plugin(sub, name)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``berg``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except BERGError as exc:
        sys.stderr.write(f"berg: error: {' '.join(str(exc).split())}\n")
        return 2
    except BrokenPipeError:  # `berg list | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except OSError as exc:
        sys.stderr.write(f"berg: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("berg: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
