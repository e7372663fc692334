"""The ``berg`` command line: list, describe, fetch, encode, plot, and the plug-in sub-commands.

This is the only module of berg that prints. Results go to stdout; errors are one line on stderr
(``berg: error: ...``) with exit status 2 for bad input and berg errors, 1 for system errors (disk,
permissions), 130 on Ctrl-C. ``-v`` logs progress and prints the traceback of an error before its
line (``-vv`` debug logs); ``-q`` (or ``BERG_QUIET=1``) hides every progress bar.

``berg cache``, ``berg train``, ``berg run`` (+ ``status``, ``export``) and ``berg build`` are
contributed by their packages: each provides ``add_<name>_subparser(subparsers)``, which adds its
parser(s) and sets ``func=handler`` where ``handler(args) -> int``; register one in :data:`_PLUGINS`.
The global options ``--berg-dir``, ``--cache-dir``, ``--registry``, ``--offline`` are defined here and
reach the handlers in ``args``.

``berg encode ID ...`` turns every option the model's card declares (``parameters.model_kwargs``)
into a flag (``--space mni``, ``--center-crop``); ``berg encode ID --help`` lists them.
:func:`reference_markdown` renders the whole reference (docs/cli.md is generated from it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from berg.errors import BERGError, InvalidParameterError, close_matches, in_cli_words

__all__ = ["main", "build_parser", "reference_markdown"]

log = logging.getLogger(__name__)

_OUTPUT_SUFFIXES = (".h5", ".hdf5", ".nii", ".nii.gz")
_PLOT_INPUTS = (".h5", ".hdf5", ".nii", ".nii.gz")

# name -> (module, function, help shown when the module is missing)
_PLUGINS = {
    "cache": ("berg.store.cli", "add_cache_subparser", "inspect, verify or clear the artifact cache"),
    "train": ("berg.training.cli", "add_train_subparser", "train and export a model from a CONFIG.yaml"),
    "build": ("berg.buildable_cli", "add_build_subparser", "build a model without published weights from its dataset"),
    "run": ("berg.runner.cli", "add_run_subparser", "run a sharded, resumable encoding PLAN.yaml (+ status, export)"),
    "publish": ("berg.hub.cli", "add_publish_subparser", "publish a built or trained model so others load it by name"),
    "registry": ("berg.hub.cli", "add_registry_subparser", "add, list, update or remove registries of other labs"),
    "tune": ("berg.tune_cli", "add_tune_subparser", "measure the GEMM kernels on this machine (kernel table)"),
}

_EPILOG = """examples:
  berg list "fmri-*"
  berg describe fmri-bold5000-resnet18
  berg fetch fmri-bmd-s3d --subject 1
  berg encode fmri-bold5000-resnet18 --subject 1 --roi PPA images/ -o responses.h5
  berg encode fmri-bold5000-resnet18 --subject all --space mni "images/*.jpg" -o group.nii.gz
  berg plot group.nii.gz -o group.png

environment: BERG_CACHE (cache dir), BERG_OFFLINE=1, BERG_QUIET=1, BERG_MAX_PIXELS, BERG_S3_ENDPOINT,
BERG_REGISTRY, TORCH_HOME (backbone weights)"""

# Option names of `encode` that a card's model option may not take over (they stay --model-kwarg only).
_RESERVED = {
    "subject",
    "roi",
    "device",
    "batch_size",
    "backbone_weights",
    "backbone_seed",
    "output",
    "model_kwarg",
    "quiet",
    "allow_still_images",
    "force",
    "help",
}


class _Parser(argparse.ArgumentParser):
    """argparse with berg's one-line errors (``berg: error: ...``, exit 2) and close-match hints."""

    known_flags: list[str] = []
    #: Why an ``encode`` command line has no model options (its model id is unknown), for the message.
    no_model_options: str = ""

    def error(self, message: str) -> NoReturn:
        hint = ""
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [a.split("=")[0] for a in unknown.group(1).split() if a.startswith("--")]
            near = {f: close_matches(f, _Parser.known_flags, n=1) for f in flags}
            hint = "".join(f"; did you mean {n[0]!r} for {f!r}?" for f, n in near.items() if n)
            if _Parser.no_model_options:  # e.g. --space of a misspelt model id
                hint += f" (model options need a known model: {_Parser.no_model_options})"
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2)) or [c.strip() for c in choice.group(2).split(",")]
            near_choice = close_matches(choice.group(1), options, n=1)
            if near_choice:
                hint = f"; did you mean {near_choice[0]!r}?"
        sys.stderr.write(f"berg: error: {message}{hint} (see '{self.prog} --help')\n")
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


def _yaml_value(text: str) -> Any:
    import yaml

    try:  # "2.0" -> 2.0, "true" -> True, "mni" -> "mni": values typed as in YAML
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _model_kwargs(pairs: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidParameterError(f"--model-kwarg takes KEY=VALUE, got {pair!r}")
        out[key] = _yaml_value(value)
    return out


def _client(args: argparse.Namespace):
    from berg.api import BERG

    return BERG(berg_dir=args.berg_dir, cache_dir=args.cache_dir, offline=args.offline, registry=args.registry)


def _quiet(args: argparse.Namespace) -> bool:
    from berg.env import env_flag

    return bool(getattr(args, "quiet_global", False) or getattr(args, "quiet", False) or env_flag("BERG_QUIET"))


# ---------------------------------------------------------------------------------------- commands


def _megabytes(mb: float) -> str:
    return f"{mb / 1000:.1f} GB" if mb >= 1000 else f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB"


def _download_size(card: Mapping[str, Any]) -> tuple[str, float | None]:
    """``(text, backbone MB)`` of a card's download section: shared + per subject (``~``: the card's estimate)."""
    download = card.get("download") or {}
    per = download.get("per_subject_mb")
    shared = float(download.get("shared_mb") or 0)
    if isinstance(per, Mapping) and per:
        lo, hi = min(per.values()), max(per.values())
        each = _megabytes(lo) if lo == hi else f"{_megabytes(lo)[:-3]}-{_megabytes(hi)}"
        text = (f"{_megabytes(shared)} + " if shared else "") + f"{each}/subj"
    else:
        # cards that only estimate the per-subject file give it in their notes: "per subject: ... ~540 MB"
        found = re.search(r"per subject[^~]{0,60}~\s*([\d,.]+)\s*(MB|GB)", str(download.get("notes", "")), re.I)
        if found:
            mb = float(found.group(1).replace(",", "")) * (1000 if found.group(2).upper() == "GB" else 1)
            text = (f"{_megabytes(shared)} + " if shared else "") + f"~{_megabytes(mb)}/subj"
        elif shared:
            text = _megabytes(shared)
        else:  # a card without numbers: "nothing is downloaded" (built locally) or only prose
            text = "none" if "nothing is downloaded" in str(download.get("notes", "")).lower() else "see card"
    backbone = download.get("backbone_mb")
    return text, (float(backbone) if backbone is not None else None)


def _availability(client: Any, spec: Any, cached: Mapping[str, int]) -> str:
    """Whether a model's files are here (cached/built), can be fetched, or must be built first."""
    kind = (spec.source or {}).get("kind") if isinstance(spec.source, Mapping) else None
    if getattr(spec, "build", None):  # no published weights: `berg build ID --data DIR` first
        from berg.buildable import is_built

        return "built" if is_built(spec, client.store) else "build first"
    if cached.get(spec.model_id, 0) > 0:
        return "cached"
    if kind == "build":
        return "made on load"  # fixed models berg writes itself on first load (no download)
    if client.berg_dir is not None and kind == "s3":
        return "berg_dir"
    return "not cached" if client.offline else "downloadable"


def cmd_list(args: argparse.Namespace) -> int:
    """``berg list [PATTERN]``: id, modality, dataset, subjects, input, availability, sizes, name."""
    from berg.store.cache import cache_size

    client = _client(args)
    pattern = args.pattern
    if pattern and not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"  # a bare word matches anywhere in the id, like `grep`
    ids = client.list_models(pattern)
    if not ids:
        sys.stderr.write(f"berg: no model matches {args.pattern!r}; available: {', '.join(client.list_models())}\n")
        return 1
    cached = cache_size(client.store.cache_dir)
    rows = []
    for model_id in ids:
        spec = client.registry.get(model_id)
        card = spec.card
        download, backbone = _download_size(card)
        rows.append(
            {
                "id": model_id,
                "modality": spec.modality,
                "dataset": spec.dataset,
                "subjects": list(spec.subjects),
                "input": spec.input_kind,
                "status": _availability(client, spec, cached),
                "cached_bytes": int(cached.get(model_id, 0)),
                "download": download,
                "backbone_mb": backbone,
                "registry": spec.registry,
                "name": card.get("name", ""),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    table = [
        [
            r["id"],
            r["modality"],
            r["dataset"],
            str(len(r["subjects"])),
            r["input"],
            r["status"],
            _megabytes(r["cached_bytes"] / 1e6) if r["cached_bytes"] else "-",
            r["download"],
            "-" if not r["backbone_mb"] else _megabytes(r["backbone_mb"]),
            r["registry"],
            r["name"],
        ]
        for r in rows
    ]
    header = [
        "ID", "MODALITY", "DATASET", "SUBJ", "INPUT", "STATUS", "CACHED", "DOWNLOAD", "BACKBONE", "REGISTRY", "NAME"
    ]  # fmt: skip
    right = {3, 6, 8}  # numbers line up on their right edge
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header) - 1)]
    for row in [header, *table]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join([*cells, row[-1]]))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    """``berg describe ID [--accuracy [--subject S]]``."""
    from berg import accuracy
    from berg.cards import card_to_markdown, card_to_text

    client = _client(args)
    card = client.describe(args.model_id)
    if args.subject is not None and not args.accuracy:
        raise InvalidParameterError("--subject goes with --accuracy (berg describe ID --accuracy --subject S)")
    spec = client.registry.get(args.model_id)
    block = None
    if args.accuracy:  # the metadata files only, never the weights
        block = accuracy.compute_accuracy(client, args.model_id, _one_subject(args.subject) if args.subject else None)
        try:
            where = accuracy.write_cached(client, args.model_id, block)
            block_note = f"cached in {where}"
        except OSError as exc:  # a read-only cache must not hide the numbers just computed
            block_note = f"not cached ({exc})"
    if args.json:
        print(json.dumps({"card": card, "computed": block} if block else card, indent=1, default=str))
        return 0
    if args.markdown:
        print(card_to_markdown(card), end="")
        return 0
    by_subject = (accuracy.read_cached(client, args.model_id) or {}).get("subjects") or {}
    cached = block or next(iter(by_subject.values()), None)
    print(
        card_to_text(
            card,
            computed=accuracy.headline(cached) if cached else None,
            command=accuracy.compute_command(spec),
        ),
        end="",
    )
    version = f", version {spec.version}" if spec.version is not None else ""
    print(f"REGISTRY\n  {spec.registry} ({spec.origin}){version}")
    if block:
        print(f"\nCOMPUTED ACCURACY ({block_note})")
        print("\n".join(accuracy.computed_lines(block)))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """``berg fetch ID [--subject N | --all]``."""
    client = _client(args)
    subject = None if args.all else _subjects(args.subject)
    client.registry.get(args.model_id)  # unknown ids fail before the store is touched
    paths = client.fetch(args.model_id, subject=subject, all=args.all or subject is None)
    total = sum(p.stat().st_size for p in paths.values())
    roots = sorted({str(p.parent) for p in paths.values()}, key=len)
    print(
        f"{args.model_id}: {len(paths)} file(s), {total / 1e6:.1f} MB available locally"
        + (f" (under {roots[0]})" if roots else "")
    )
    return 0


def _option_values(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """Model options from their flags and from ``--model-kwarg`` (a key given both ways is an error)."""
    options = _model_kwargs(args.model_kwarg)
    for name in _flag_options(spec):
        value = getattr(args, f"opt_{name}", None)
        if value is None:
            continue
        if name in options:
            raise InvalidParameterError(f"{_flag(name)} and --model-kwarg {name}=... both given; use one")
        options[name] = value
    return options


def _group_hint(spec: Any) -> str:
    space = _options_of(spec).get("space") or {}
    if "mni" in (space.get("choices") or []):
        return f"; for {spec.model_id}'s group map on MNI152 use --subject all --space mni"
    return ""


def _check_nifti_request(spec: Any, subject: Any, options: Mapping[str, Any]) -> None:
    """NIfTI needs a volume space and one map per stimulus: one subject, or a group map (before I/O)."""
    if spec.output_space_kind != "volume":
        raise InvalidParameterError(
            f"{spec.model_id}'s outputs are a {spec.output_space_kind} space, not a volume; use -o OUT.h5"
        )
    several = subject == "all" or isinstance(subject, list)
    if several and not options:  # only a model option (e.g. space='mni') can combine subjects into one map
        raise InvalidParameterError(
            "NIfTI output takes one subject or a group map; use -o OUT.h5 for several subjects" + _group_hint(spec)
        )


def _save(out: Path, responses: Any, model: Any, stimulus_ids: list[str], nifti: bool) -> None:
    from berg import io as bio

    try:
        if nifti:
            if isinstance(responses, Mapping) and len(responses) > 1:
                raise InvalidParameterError(
                    f"NIfTI output takes one subject or a group map, got subjects {list(responses)}; use -o OUT.h5"
                )
            bio.save_nifti(out, responses, model, stimulus_ids=stimulus_ids)
        else:
            bio.save(out, responses, model, stimulus_ids=stimulus_ids)
    except BERGError:
        raise
    except OSError as exc:
        from berg.errors import os_error

        raise os_error(exc, "write the responses", out) from exc


def _summary(out: Path, responses: Any, model: Any) -> str:
    subjects = list(getattr(model, "subjects", []) or [])
    if isinstance(responses, Mapping):
        parts = {f"subject {s}": r for s, r in responses.items()}
    elif len(subjects) > 1:  # one array from several subjects: a group-level output
        parts = {f"group of subjects {', '.join(map(str, subjects))}": responses}
    else:
        parts = {f"subject {subjects[0]}" if subjects else "responses": responses}
    shapes = ", ".join(f"{label}: {' x '.join(map(str, r.shape))}" for label, r in parts.items())
    return f"wrote {out} ({shapes}, float32)"


def cmd_encode(args: argparse.Namespace) -> int:
    """``berg encode ID --subject N INPUT... -o OUT``: everything is checked before any download."""
    from berg.errors import check_output_path
    from berg.features import validate_backbone_weights
    from berg.stimuli import expand_paths, load_stimuli

    out = check_output_path(args.output, _OUTPUT_SUFFIXES, what="-o")
    if not args.force and (out.exists() or out.is_symlink()):  # Python's berg.save overwrites; a shell user
        raise InvalidParameterError(  # re-running a command should not lose earlier results silently
            f"-o {out} exists; pass --force to overwrite it, or choose another output name"
        )
    nifti = out.name.lower().endswith((".nii", ".nii.gz"))
    subject = _subjects(args.subject)
    rois = [r for value in args.roi or [] for r in value.split(",") if r]
    client = _client(args)
    spec = client.registry.get(args.model_id)
    options = _option_values(args, spec)
    if nifti:
        _check_nifti_request(spec, subject, options)
    weights = validate_backbone_weights(args.backbone_weights)
    # Stimuli before the model: a wrong kind, a missing or corrupt file, a decompression bomb are
    # refused before any download (headers only; pixels are decoded batch by batch later).
    inputs = expand_paths(list(args.inputs), spec.input_kind)
    stimuli = load_stimuli(
        inputs, spec.input_kind, min_frames=spec.min_frames, allow_still_images=args.allow_still_images
    )
    model = client.get_encoding_model(
        args.model_id,
        subject=subject,
        selection={"roi": rois} if rois else None,
        device=args.device,
        batch_size=args.batch_size,
        backbone_weights=weights,
        backbone_seed=args.backbone_seed,
        **options,
    )
    if nifti and len(getattr(model, "subjects", [])) > 1:
        try:  # a group map has one space for all subjects; separate subjects have one each
            model.space(None)
        except InvalidParameterError:
            raise InvalidParameterError(
                "NIfTI output takes one subject or a group map; these options give one map per subject: use "
                "-o OUT.h5" + _group_hint(spec)
            ) from None
    log.info("encoding %d %s(s) with %r", len(stimuli), spec.input_kind, model)
    responses = client.encode(model, stimuli, show_progress=not _quiet(args))
    _save(out, responses, model, [str(p) for p in stimuli.ids()], nifti)
    line = _summary(out, responses, model)
    if nifti:
        import nibabel as nib

        shape = nib.load(str(out)).shape  # the header only
        line = line[:-1] + f"; image {' x '.join(map(str, shape))})"
    print(line)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """``berg plot RESPONSES -o OUT.png``: a brain map of one stimulus' responses (nilearn)."""
    from berg.errors import check_output_path
    from berg.plotting import plot_file

    source = Path(args.responses).expanduser()
    if not source.name.lower().endswith(_PLOT_INPUTS):
        raise InvalidParameterError(f"berg plot reads {', '.join(_PLOT_INPUTS)} files; got {source.name!r}")
    if not source.is_file():
        raise InvalidParameterError(f"responses file not found: {source}")
    out = check_output_path(args.output, (".png", ".svg", ".pdf"), what="-o")
    subject = _one_subject(args.subject) if args.subject is not None else None
    try:
        info = plot_file(
            source,
            out,
            kind=args.kind,
            index=args.index,
            subject=subject,
            threshold=args.threshold,
            title=args.title,
            units=args.units,
        )
    except OSError as exc:
        if isinstance(exc, BERGError):
            raise
        from berg.errors import os_error

        raise os_error(exc, "write the plot", out) from exc
    print(f"wrote {out} ({info})")
    return 0


# ---------------------------------------------------------------------------------------- model options


def _options_of(spec: Any) -> dict[str, dict[str, Any]]:
    options = getattr(spec, "options", None)
    if isinstance(options, Mapping):
        return dict(options)
    card = getattr(spec, "card", {}) or {}
    return {o["name"]: dict(o) for o in (card.get("parameters") or {}).get("model_kwargs") or []}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _flag_options(spec: Any) -> list[str]:
    return [n for n in _options_of(spec) if n not in _RESERVED]


def _comma_list(text: str) -> list[Any]:
    return [_yaml_value(v.strip()) for v in text.split(",") if v.strip()]


def _add_model_options(parser: argparse.ArgumentParser, spec: Any) -> None:
    """One flag per option the card declares; values reach ``get_encoding_model`` only when given."""
    names = _flag_options(spec)
    if not names:
        return
    group = parser.add_argument_group(
        f"options of {spec.model_id}", "from the card's parameters.model_kwargs; unset = the model's default"
    )
    for name in names:
        opt = _options_of(spec)[name]
        kind = str(opt.get("type") or "").lower()
        choices = opt.get("choices")
        default = opt.get("default")
        text = " ".join(str(opt.get("description") or "").split()).replace("%", "%%")
        text += f" (default: {default!r})" if default is not None else ""
        kw: dict[str, Any] = {"dest": f"opt_{name}", "default": None, "help": text}
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind == "list":
            kw.update(type=_comma_list, metavar=",".join(map(str, choices[:2])) + ",..." if choices else "A,B,...")
        else:
            kw["type"] = {"int": int, "float": float, "str": str}.get(kind, _yaml_value)
            if choices and kind in ("str", "int", "float"):
                kw["choices"] = choices
            else:
                kw["metavar"] = name.upper()
        group.add_argument(_flag(name), **kw)


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.option_strings and a.nargs != 0 for s in a.option_strings}


def _scan(argv: Sequence[str], top: argparse.ArgumentParser, encode: argparse.ArgumentParser):
    """``(registries, model id)`` of an ``encode`` command line, without parsing it (None if not encode)."""
    top_values, enc_values = _value_options(top), _value_options(encode)
    registries: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items) and items[i].startswith("-"):
        flag, _, inline = items[i].partition("=")
        if flag in top_values:
            value = inline or (items[i + 1] if i + 1 < len(items) else "")
            if flag == "--registry":
                registries.append(value)
            i += 1 if inline else 2
        else:
            i += 1
    if i >= len(items) or items[i] != "encode":
        return None
    i += 1
    while i < len(items):
        flag, _, inline = items[i].partition("=")
        if not items[i].startswith("-"):
            return registries, items[i]
        i += 1 if (inline or flag not in enc_values) else 2
    return None


def _spec_for(argv: Sequence[str], top: argparse.ArgumentParser, encode: argparse.ArgumentParser) -> Any:
    found = _scan(argv, top, encode)
    if found is None:
        return None
    registries, model_id = found
    try:
        from berg.registry import Registry

        return Registry(registries or None).get(model_id)
    except BERGError as exc:  # an unknown id is reported (with suggestions) when the command runs
        _Parser.no_model_options = " ".join(str(exc).split())
        return None


# ---------------------------------------------------------------------------------------- parser


def _add_plugin(sub: argparse._SubParsersAction, name: str) -> None:
    """Let the owning package add its subcommand; if it cannot, a stub that says why."""
    module, function, help_text = _PLUGINS[name]
    try:
        adder = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as exc:
        reason = (
            f"{module} is not part of this installation"
            if exc.name == module
            else f"{module} needs {exc.name!r}, which is not installed"
        )
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


def _add_encode(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "encode",
        allow_abbrev=False,  # `--out` is not -o/--output, `--spa` not a model's --space: refused, not guessed
        help="encode image/video files into responses (.h5 or .nii.gz)",
        description="Encode stimuli and write the responses: HDF5 with output ids and provenance, or a "
        "NIfTI image (3-D for one stimulus, 4-D for several) for one subject or a group map. "
        "INPUT may be files, folders (their image or video files, sorted by name) or quoted "
        "glob patterns ('images/*.png'). Everything is checked before any download.",
        epilog="model options: 'berg encode ID --help' lists the options of model ID (from its card) as flags.",
    )
    s.add_argument("model_id", metavar="ID")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image/video files, folders or glob patterns")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.h5 / OUT.hdf5 or OUT.nii[.gz]")
    s.add_argument(
        "--subject",
        required=True,
        action="append",
        metavar="N",
        help="subject id, comma list, or 'all' (several subjects: HDF5, or a group map)",
    )
    s.add_argument(
        "--roi", action="append", metavar="R", help="ROI name (repeatable or comma list); default all outputs"
    )
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    s.add_argument("--batch-size", type=_positive_int, default=None, metavar="B", help="stimuli per forward pass")
    s.add_argument(
        "--backbone-weights",
        default=None,
        metavar="W",
        help="'pretrained' (default: the published weights via torch's cache, TORCH_HOME), "
        "'untrained' (seeded random-weights control), or a local state-dict file",
    )
    s.add_argument("--backbone-seed", type=int, default=0, metavar="S", help="seed of --backbone-weights untrained")
    s.add_argument(
        "--allow-still-images",
        action="store_true",
        help="video models: show each still image as a clip of identical frames",
    )
    s.add_argument(
        "--model-kwarg",
        action="append",
        metavar="KEY=VALUE",
        help="model option from the card's parameters.model_kwargs (repeatable; flags are easier)",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.add_argument("--force", action="store_true", help="overwrite OUT if it exists (else refused)")
    s.set_defaults(func=cmd_encode)
    return s


def _add_plot(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "plot",
        help="draw a brain map of responses (.nii.gz or .h5) to a PNG",
        description="Draw one stimulus' responses with nilearn: MNI volumes as a statistical map on the "
        "MNI152 template (or a glass brain), subject volumes on their own grid, surface "
        "responses on the template mesh. Orientation marks and a colour bar with units.",
    )
    s.add_argument("responses", metavar="RESPONSES", help="a file written by 'berg encode' (.nii[.gz] or .h5)")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.png (or .svg, .pdf)")
    s.add_argument(
        "--kind",
        default="auto",
        choices=["auto", "stat", "glass", "surface"],
        help="auto: stat map for volumes, surface for surfaces (default)",
    )
    s.add_argument("--index", type=int, default=0, metavar="I", help="stimulus (volume) to draw (default 0)")
    s.add_argument("--subject", default=None, metavar="N", help="subject group of an .h5 file with several")
    s.add_argument("--threshold", type=float, default=None, metavar="T", help="hide |values| below T")
    s.add_argument("--units", default=None, metavar="TEXT", help="colour-bar label (default: from the file)")
    s.add_argument("--title", default=None, metavar="TEXT", help="figure title")
    s.set_defaults(func=cmd_plot)
    return s


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests).

    Parameters
    ----------
    argv : sequence of str, optional
        The command line about to be parsed: for ``encode ID`` the model's card options become flags.
    """
    p = _Parser(
        prog="berg",
        description="In silico brain responses from published encoding models.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--of` or `--cache` must not silently mean --offline / --cache-dir
    )
    from berg._version import __version__

    p.add_argument("--version", action="version", version=f"berg {__version__}")
    p.add_argument("--berg-dir", metavar="DIR", help="local copy of BERG's bucket tree (used in place, read-only)")
    p.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: $BERG_CACHE or the user cache dir)")
    p.add_argument(
        "--registry",
        action="append",
        metavar="FILE",
        help="extra registry.yaml, e.g. written by 'berg train' (repeatable)",
    )
    p.add_argument("--offline", action="store_true", help="never use the network (also BERG_OFFLINE=1)")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log progress (-v info, -vv debug); errors also print their traceback",
    )
    p.add_argument(
        "-q", "--quiet", dest="quiet_global", action="store_true", help="no progress bars (also BERG_QUIET=1)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser(
        "list",
        help="list models, optionally matching a glob ('fmri-*') or a word",
        description="List the models of the registry.",
    )
    s.add_argument("pattern", nargs="?", metavar="PATTERN", help="glob such as 'fmri-*', or a word in the id")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("describe", help="show a model card", description="Show a model's card.")
    s.add_argument("model_id", metavar="ID")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="the card as JSON")
    g.add_argument("--markdown", action="store_true", help="the card as Markdown")
    s.add_argument(
        "--accuracy",
        action="store_true",
        help="summarise the model's accuracy per ROI from its metadata files only (no weights are "
        "downloaded) and cache it in <cache>/ID/accuracy.json",
    )
    s.add_argument("--subject", metavar="S", help="the subject --accuracy summarises (default: the first)")
    s.set_defaults(func=cmd_describe)

    s = sub.add_parser(
        "fetch",
        help="download a model's files into the cache (for offline use)",
        description="Download (or find in --berg-dir/cache) a model's files. Without --subject, every "
        "file of the model is fetched.",
    )
    s.add_argument("model_id", metavar="ID")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--subject", action="append", metavar="N", help="subject id or comma list (repeatable)")
    g.add_argument("--all", action="store_true", help="every file of the model (the default)")
    s.set_defaults(func=cmd_fetch)

    encode = _add_encode(sub)
    _Parser.no_model_options = ""
    spec = _spec_for(argv, p, encode) if argv is not None else None
    if spec is not None:
        _add_model_options(encode, spec)
    _add_plot(sub)

    for name in _PLUGINS:
        _add_plugin(sub, name)
    _Parser.known_flags = sorted(
        {
            s
            for parser in [p, *sub.choices.values()]
            for a in parser._actions
            for s in a.option_strings
            if s.startswith("--")
        }
    )
    return p


# ---------------------------------------------------------------------------------------- running


@contextlib.contextmanager
def _env_flags(**flags: bool) -> Iterator[None]:
    """Set ``BERG_<NAME>=1`` for the flags that are on, restoring the environment afterwards.

    ``-q`` reaches every progress bar in berg through ``BERG_QUIET``; ``--offline`` reaches every part
    that could download (artifacts, and torchvision's backbone weights) through ``BERG_OFFLINE``.
    """
    from berg.env import temporarily

    with temporarily({f"BERG_{name.upper()}": "1" for name, on in flags.items() if on}):
        yield


@contextlib.contextmanager
def _berg_warnings() -> Iterator[None]:
    """berg's own warnings (an untrained backbone...) as one ``berg: warning:`` line each."""
    from berg.errors import UntrainedBackboneWarning
    from berg.features import CLI_WORDS

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UntrainedBackboneWarning):
            from tqdm.auto import tqdm

            # through tqdm, so a progress bar on stderr is cleared first instead of cut in two
            tqdm.write(f"berg: warning: {in_cli_words(str(message), CLI_WORDS)}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UntrainedBackboneWarning)  # each model load announces it; others untouched
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous


def _flag_spelling(text: str) -> str:
    """``subject='all'`` -> ``--subject all``, ``space='mni'`` -> ``--space mni``: keyword words of the
    Python API turned into this command line's flags (only for flags that exist, quoted or numeric values)."""
    names = {f[2:].replace("-", "_"): f for f in _Parser.known_flags}

    def swap(match: re.Match) -> str:
        flag = names.get(match.group(1))
        return f"{flag} {match.group(3) or match.group(4) or match.group(5)}" if flag else match.group(0)

    return re.sub(r"\b([a-z][a-z0-9_]*)=('([^']*)'|\"([^\"]*)\"|(-?\d+(?:\.\d+)?)\b)", swap, text)


def _error_line(exc: BaseException) -> str:
    return f"berg: error: {' '.join(_flag_spelling(in_cli_words(exc)).split())}\n"


def _check_global_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> None:
    """Refuse an unknown option before the command (``berg --cache DIR list``) by its own name.

    argparse would take ``DIR`` for the command and report an "invalid choice", or accept an option of a
    sub-command in the wrong place; this names the option and the nearest global one instead.
    """
    actions = {s: a for a in parser._actions for s in a.option_strings}
    shorts = {s[1] for s, a in actions.items() if len(s) == 2 and a.nargs == 0}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        token = argv[i]
        if token == "--":
            return
        flag, inline = token.split("=", 1)[0], "=" in token
        if flag in actions:
            i += 1 if inline or actions[flag].nargs == 0 else 2
            continue
        if re.fullmatch(r"-[A-Za-z]+", token) and set(token[1:]) <= shorts:  # -vq
            i += 1
            continue
        globals_ = sorted(f for f in actions if f.startswith("--"))
        near = close_matches(flag, globals_, n=1)
        where = [f for f in _Parser.known_flags if f == flag]
        hint = (
            f" (did you mean {near[0]!r}?)"
            if near
            else " (an option of a command: put it after the command)"
            if where
            else ""
        )
        parser.error(f"unknown global option {flag!r}{hint}; global options: {', '.join(globals_)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``berg``); returns the exit status."""
    try:
        status = _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C at any moment (building the parser, encoding, writing) is one line;
        sys.stderr.write("berg: interrupted\n")  # outputs are written atomically, so none is left half-made
        if argv is None:
            _end_by_sigint()
        return 130
    if argv is None:
        # The process's own entry point, and the work is done and written: a Ctrl-C landing while the
        # interpreter shuts down (joining worker threads) must not turn a success into death by SIGINT.
        import signal

        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


def _end_by_sigint() -> None:
    """End the process the way an interrupted Unix program should: killed by SIGINT (the shell's ``$?`` is 130).

    A calling shell script stops its loop only when its child died of SIGINT, not when it exited with
    status 130; and CPython may itself re-raise SIGINT at exit when the interrupt landed inside code a C
    extension ran with ``PyRun_String`` (pybind11 in ``import torch``), so ending this way every time is
    also what makes the outcome the same whenever Ctrl-C lands. Outputs are already cleaned up: the
    atomic writes undo themselves while the ``KeyboardInterrupt`` unwinds.
    """
    import signal

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not turn the interrupt into a traceback
            stream.flush()
    if os.name != "posix":
        return
    with contextlib.suppress(ValueError, OSError):  # not the main thread, or no signals here: exit with 130
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


def _main(argv: list[str]) -> int:
    parser = build_parser(argv)
    _check_global_flags(argv, parser)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    def fail(exc: BaseException, status: int) -> int:
        if args.verbose:  # expected errors stay one line; -v adds the traceback for a bug report
            traceback.print_exception(exc, file=sys.stderr)
        sys.stderr.write(_error_line(exc))
        return status

    try:
        with _env_flags(quiet=_quiet(args), offline=bool(getattr(args, "offline", False))), _berg_warnings():
            return int(args.func(args) or 0)
    except BERGError as exc:  # bad input: 2; the operating system refused (disk, permissions): 1
        return fail(exc, 1 if isinstance(exc, OSError) else 2)
    except BrokenPipeError:  # `berg list | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except OSError as exc:
        return fail(exc, 1)


# ---------------------------------------------------------------------------------------- reference


def reference_markdown(width: int = 100) -> str:
    """The CLI reference as Markdown: ``berg --help`` and every sub-command's ``--help``.

    ``docs/cli.md`` is this text (``python -c "from berg.cli import reference_markdown as r; print(r())"``).
    """
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps help to the terminal width
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        lines = [
            "# Command line reference",
            "",
            "Generated from berg's argument parser (`berg.cli.reference_markdown`); do not edit by hand.",
            "Every command accepts the global options shown under `berg`. Errors are one line on stderr",
            "(`berg: error: ...`; `-v` adds the traceback); exit status 0 on success, 2 for bad input,",
            "1 for disk or permission errors, 130 when interrupted (berg ends by SIGINT, as a shell expects).",
            "",
            "## berg",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
        ]
        for name, child in sub.choices.items():
            lines += ["", f"## berg {name}", "", "```text", child.format_help().rstrip(), "```"]
        return "\n".join(lines) + "\n"
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


if __name__ == "__main__":
    raise SystemExit(main())
