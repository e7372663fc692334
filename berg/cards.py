"""Model cards: the single source of truth for a model's facts (``model_cards/<id>.yaml``).

Cards are YAML read with a loader that refuses duplicate keys (plain YAML silently keeps the last one,
which is how a card drifts unnoticed), validated against ``model_cards/schema.json`` plus a few
cross-field rules that JSON Schema cannot express, and rendered as text (``berg describe``) or
Markdown (the generated ``docs/models/<id>.md``).

Validate cards while editing them::

    python -m berg.cards model_cards/my-model.yaml
"""

from __future__ import annotations

import functools
import json
import math
import os
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from berg._resources import cards_dir
from berg.errors import ModelLoadError, ModelNotFoundError, close_matches

__all__ = [
    "Card",
    "load_card",
    "read_card_file",
    "validate_card",
    "card_to_text",
    "card_to_markdown",
    "accuracy_line",
    "published_lines",
    "published_headline",
    "schema",
]

_WIDTH = 100


class Card(dict):
    """A model card: a plain ``dict`` (what :meth:`berg.BERG.describe` returns) plus renderers.

    Parameters
    ----------
    data : mapping
        The card's content.
    path : path, optional
        The YAML file it was read from (used in error messages).
    """

    def __init__(self, data: Mapping[str, Any], path: str | os.PathLike[str] | None = None):
        super().__init__(data)
        self.path = Path(path) if path is not None else None

    def validate(self) -> list[str]:
        """Schema and consistency errors (empty when valid); see :func:`validate_card`."""
        return validate_card(self, path=self.path)

    def to_text(self) -> str:
        """Readable plain-text summary (what ``berg describe`` prints)."""
        return card_to_text(self)

    def to_markdown(self) -> str:
        """Markdown page (what ``make docs`` writes to ``docs/models/<id>.md``)."""
        return card_to_markdown(self)


@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return (cards_dir() / "schema.json").read_text(encoding="utf-8")


def schema() -> dict[str, Any]:
    """The JSON Schema cards must satisfy (a fresh copy; ``model_cards/schema.json``)."""
    return json.loads(_schema_text())


def read_card_file(path: str | os.PathLike[str]) -> Card:
    """Read a card file without validating it.

    Raises
    ------
    ModelLoadError
        The file is missing, is not YAML, has a duplicate key, or is not a mapping.
    """
    import yaml

    from berg.yamlio import read_yaml  # the one duplicate-refusing YAML loader of berg

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model card not found: {path}")
    try:
        data = read_yaml(path)
    except yaml.YAMLError as exc:
        # The loader's message carries the duplicate key and its line; keep it on one line.
        raise ModelLoadError(f"model card {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"model card {path} must be a YAML mapping, got {type(data).__name__}")
    return Card(data, path)


def _card_path(path_or_id: str | os.PathLike[str]) -> Path:
    text = os.fspath(path_or_id)
    if text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text:
        return Path(text)
    path = cards_dir() / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in cards_dir().glob("*.yaml"))
        hint = close_matches(text, known)
        extra = f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
        raise ModelNotFoundError(f"no model card for {text!r}.{extra} Cards: {', '.join(known)}")
    return path


def load_card(path_or_id: str | os.PathLike[str], *, validate: bool = True) -> Card:
    """Load a card by model id (built-in cards) or by file path, validated by default.

    Parameters
    ----------
    path_or_id : str or path
        A built-in model id (``"fmri-bmd-s3d"``) or the path of a ``.yaml`` card.
    validate : bool, default True
        Check the schema and cross-field rules; invalid cards raise.

    Returns
    -------
    Card

    Raises
    ------
    ModelNotFoundError
        Unknown id (with close matches and the known cards).
    ModelLoadError
        Unreadable YAML, duplicate keys, or (``validate=True``) schema errors, all listed.
    """
    card = read_card_file(_card_path(path_or_id))
    if validate:
        errors = card.validate()
        if errors:
            raise ModelLoadError(f"model card {card.path} is invalid: " + "; ".join(errors))
    return card


def _jsonable(value: Any, where: str, errors: list[str]) -> Any:
    """Card -> JSON types (mapping keys become strings), recording values JSON cannot represent.

    YAML happily produces dates, sets or NaN from innocent-looking text; a card must stay plain data.
    """
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}/{k}", errors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}/{i}", errors) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        errors.append(f"{where or '(top level)'}: {value} is not a finite number")
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    errors.append(f"{where or '(top level)'}: {type(value).__name__} value {value!r} is not plain data (quote it)")
    return str(value)


def validate_card(card: Mapping[str, Any], *, path: str | os.PathLike[str] | None = None) -> list[str]:
    """All problems of a card, as ``"location: message"`` strings (empty list when valid).

    Besides the JSON Schema: ``parameters.selection.n_outputs`` must have exactly one entry per
    subject, ``input.type`` must equal ``stimuli.type``, and a card read from a file must be named
    ``<id>.yaml``.
    """
    import jsonschema

    errors: list[str] = []
    doc = _jsonable(card, "", errors)
    errors = [e.lstrip("/") for e in errors]
    validator = jsonschema.Draft202012Validator(schema())
    for err in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(map(str, err.absolute_path)) or "(top level)"
        errors.append(f"{where}: {err.message}")

    params = card.get("parameters") if isinstance(card.get("parameters"), Mapping) else {}
    subjects = params.get("subjects") if isinstance(params.get("subjects"), list) else []
    selection = params.get("selection") if isinstance(params.get("selection"), Mapping) else {}
    n_out = selection.get("n_outputs") if isinstance(selection.get("n_outputs"), Mapping) else {}
    as_text = [str(s) for s in subjects]
    if len(set(as_text)) != len(as_text):
        errors.append(f"parameters/subjects: subjects repeat once written as text: {as_text}")
    keys = [str(k) for k in n_out]
    if len(set(keys)) != len(keys):
        errors.append(f"parameters/selection/n_outputs: a subject appears twice (e.g. 1 and '1'): {keys}")
    missing = [s for s in as_text if s not in keys]
    extra = [k for k in keys if k not in as_text]
    if subjects and n_out and missing:  # n_outputs is optional (fixed-size spaces need none)
        errors.append(f"parameters/selection/n_outputs: no entry for subject(s) {', '.join(missing)}")
    if subjects and extra:
        errors.append(
            f"parameters/selection/n_outputs: subject(s) {', '.join(extra)} are not in parameters/subjects "
            f"({', '.join(as_text)})"
        )
    stim, inp = card.get("stimuli"), card.get("input")
    if isinstance(stim, Mapping) and isinstance(inp, Mapping) and stim.get("type") != inp.get("type"):
        errors.append(f"input/type: {inp.get('type')!r} differs from stimuli/type {stim.get('type')!r}")
    if path is not None and "id" in card and Path(path).stem != card["id"]:
        errors.append(f"id: {card['id']!r} but the file is named {Path(path).name} (must be <id>.yaml)")
    return errors


# ---------------------------------------------------------------------------------------- rendering


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list)) for v in value):
        return ", ".join(_scalar(v) for v in value)
    return str(value)


def _wrap(text: str, indent: int, first: str = "") -> list[str]:
    pad = " " * indent
    words = " ".join(str(text).split())
    if len(pad) + len(first) > _WIDTH // 2 and words:
        # a very long key: its value goes below it (aligned after the key it would be one letter a line)
        return [pad + first.rstrip()] + _wrap(words, indent + 4)
    return textwrap.wrap(
        words,
        width=_WIDTH,
        break_on_hyphens=False,  # model ids and commands stay whole ("fmri-nsd_fsaverage-alexnet")
        initial_indent=pad + first,
        subsequent_indent=pad + " " * len(first),
    ) or [pad + first.rstrip()]


def _fmt(value: Any, indent: int = 2) -> list[str]:
    """Nested plain data as indented, wrapped text."""
    pad = " " * indent
    if isinstance(value, Mapping):
        lines: list[str] = []
        for k, v in value.items():
            if isinstance(v, Mapping) and v or (isinstance(v, list) and any(isinstance(i, (dict, list)) for i in v)):
                lines.append(f"{pad}{k}:")
                lines += _fmt(v, indent + 2)
            else:
                lines += _wrap(_scalar(v) if v not in ({}, []) else "-", indent, f"{k}: ")
        return lines
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return _wrap(_scalar(value), indent)
        lines = []
        for v in value:
            sub = _fmt(v, indent + 2)
            if sub:
                sub[0] = f"{pad}- {sub[0].lstrip()}"
            lines += sub
        return lines
    return _wrap(_scalar(value), indent)


def _subjects_text(card: Mapping[str, Any]) -> str:
    params = card.get("parameters", {})
    subjects = params.get("subjects", [])
    counts = params.get("selection", {}).get("n_outputs", {})
    by_key = {str(k): v for k, v in counts.items()}
    return ", ".join(f"{s} ({by_key[str(s)]:,})" if str(s) in by_key else str(s) for s in subjects)


def _summary_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Accuracy summary as a table: rows = first-level keys, columns = second-level keys."""
    cols: list[str] = []
    for v in summary.values():
        if isinstance(v, Mapping):
            cols += [str(c) for c in v if str(c) not in cols]
    rows = []
    for k, v in summary.items():
        if isinstance(v, Mapping):
            by = {str(c): x for c, x in v.items()}
            rows.append([str(k)] + [_scalar(by[c]) if c in by else "" for c in cols])
        else:
            rows.append([str(k), _scalar(v)])
    return (cols or ["value"]), rows


def _published(card: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The card's ``published`` entries split into (figures, statements that the source states none)."""
    entries = [e for e in (card.get("published") or []) if isinstance(e, Mapping)]
    return [e for e in entries if "figure" in e], [e for e in entries if "none" in e]


def _where(entry: Mapping[str, Any]) -> str:
    link = entry.get("url") or (f"doi:{entry['doi']}" if entry.get("doi") else "")
    return f"{entry['source']}" + (f" ({link})" if link else "")


def _figure(entry: Mapping[str, Any]) -> str:
    extra = [f"{k} {entry[k]}" for k in ("variant", "roi") if entry.get(k)]
    # str(), not _scalar(): a published figure is shown with every digit its source prints
    return f"{entry['figure']}" + (f" ({', '.join(extra)})" if extra else "")


def _affine_note(card: Mapping[str, Any]) -> str | None:
    """How to write NIfTI when a volume model declares no affine (its files may still carry one)."""
    space = (card.get("output") or {}).get("space") or {}
    if not isinstance(space, Mapping) or space.get("kind") != "volume" or space.get("affine") is not None:
        return None
    return (
        "none declared on this card; when the model's files carry none either, NIfTI output needs yours: "
        "model.to_nifti(responses, affine=A) or berg.save_nifti(path, responses, model, affine=A), with A the "
        "4 x 4 voxel-to-mm affine of the training data's grid (e.g. nibabel.load(mask).affine)"
    )


def _short_source(source: Any) -> str:
    """``"Author & Author (2023)"`` from a source text, else its first clause."""
    import re

    text = str(source)
    match = re.match(r"^(.*?\(\d{4}\))", text)
    return match.group(1) if match else text.split(",")[0]


def published_headline(card: Mapping[str, Any]) -> str:
    """The card's first published figure and its source, short (the README table's accuracy cell)."""
    figures, none = _published(card)
    if figures:
        first = figures[0]
        more = f", +{len(figures) - 1} more" if len(figures) > 1 else ""
        return f"{_figure(first)}; {_short_source(first['source'])}{more}"
    if none:
        return f"none stated by {_short_source(none[0]['source'])}"
    return "not stated"


def accuracy_line(card: Mapping[str, Any], *, computed: str | None = None, command: str | None = None) -> str:
    """The one accuracy line ``berg describe`` shows for every model.

    Parameters
    ----------
    card : mapping
        The model card (its ``published`` entries).
    computed : str, optional
        A summary computed from the model's files and cached (:func:`berg.accuracy.headline`).
    command : str, optional
        The command that computes the summary (:func:`berg.accuracy.compute_command`).

    Returns
    -------
    str
        The published figure and its source, or that the source states none; then the computed
        summary, or the exact command that computes it.
    """
    figures, none = _published(card)
    parts = []
    if figures:
        first = figures[0]
        more = f" (+{len(figures) - 1} more under PUBLISHED ACCURACY)" if len(figures) > 1 else ""
        parts.append(f"published {_figure(first)}: {first['metric']}; source: {_where(first)}{more}")
    elif none:
        parts.append(f"none published (source: {_where(none[0])})")
    else:
        parts.append("no published figure on this card")
    if computed:
        parts.append(f"computed from the model's files (cached): {computed}")
    elif command:
        parts.append(f"compute a per-ROI summary from the model's metadata files with: {command}")
    return "; ".join(parts)


def published_lines(card: Mapping[str, Any]) -> list[str]:
    """The ``PUBLISHED ACCURACY`` section: every figure (or statement of none) with its location."""
    figures, none = _published(card)
    lines: list[str] = []
    for e in figures:
        lines += _wrap(f"{_figure(e)} — {e['metric']}", 2, "- ")
        details = [("split", e.get("split")), ("n", e.get("n")), ("quote", e.get("quote") and f'"{e["quote"]}"')]
        details += [("source", _where(e)), ("notes", e.get("notes"))]
        for k, v in details:
            if v not in (None, ""):
                lines += _wrap(str(v), 4, f"{k}: ")
    for e in none:
        lines += _wrap(str(e["none"]), 2, "- none stated: ")
        lines += _wrap(_where(e), 4, "source: ")
    return lines


def card_to_text(card: Mapping[str, Any], *, computed: str | None = None, command: str | None = None) -> str:
    """A readable plain-text rendering (what ``berg describe`` prints).

    Parameters
    ----------
    card : mapping
        A card (validated or not; missing sections are skipped).
    computed, command : str, optional
        A cached computed accuracy summary, or the command that computes one (see :func:`accuracy_line`).

    Returns
    -------
    str
    """
    ds = card.get("dataset", {}) if isinstance(card.get("dataset"), Mapping) else {}
    lines = [f"{card.get('id')} — {card.get('name', '')}", ""]
    facts = [
        ("modality", card.get("modality")),
        ("species", card.get("species")),
        ("stimuli", (card.get("stimuli") or {}).get("type")),
        ("dataset", ds.get("name")),
        ("space", ds.get("space")),
        ("model", card.get("model_type")),
        ("creator", card.get("creator")),
        ("subjects (outputs)", _subjects_text(card)),
        ("ROIs", _scalar(card.get("parameters", {}).get("selection", {}).get("rois", []))),
        ("accuracy", accuracy_line(card, computed=computed, command=command)),
        ("NIfTI affine", _affine_note(card)),
    ]
    for key, value in facts:
        if value:
            lines += _wrap(str(value), 2, f"{key + ':':20s}")
    lines.append("")
    if card.get("published"):
        lines += ["PUBLISHED ACCURACY (as the source states it)", *published_lines(card), ""]
    if card.get("description"):
        lines += ["DESCRIPTION", *_wrap(card["description"], 2), ""]
    for section in ("input", "output", "preprocessing", "metadata", "accuracy", "license", "provenance"):
        if card.get(section):
            lines += [section.upper(), *_fmt(card[section]), ""]
    kwargs = card.get("parameters", {}).get("model_kwargs") or []
    if kwargs:
        lines += ["MODEL KWARGS", *_fmt(kwargs), ""]
    if card.get("caveats"):
        lines.append("CAVEATS")
        for c in card["caveats"]:
            lines += _wrap(c, 2, "- ")
        lines.append("")
    if card.get("download"):
        lines += ["DOWNLOAD (MB)", *_fmt(card["download"]), ""]
    if card.get("citations"):
        lines.append("CITATIONS (BibTeX; cite berg too: CITATION.cff)")
        for c in card["citations"]:
            lines += [f"  % {c['for']}", *("  " + line for line in c["bibtex"].splitlines())]
        lines.append("")
    if card.get("references"):
        lines.append("REFERENCES")
        for ref in card["references"]:
            where = ref.get("url") or (f"doi:{ref['doi']}" if ref.get("doi") else "")
            lines += _wrap(f"{ref.get('title', '')} {where}".strip(), 2, "- ")
    return "\n".join(lines).rstrip() + "\n"


def _md(text: Any) -> str:
    """One table cell: no line breaks, pipes escaped."""
    return " ".join(_scalar(text).split()).replace("|", "\\|")


def _md_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    out = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return out


def _usage(card: Mapping[str, Any]) -> list[str]:
    model_id = card.get("id")
    params = card.get("parameters", {})
    subject = (params.get("subjects") or [1])[0]
    rois = params.get("selection", {}).get("rois") or []
    kind = (card.get("input") or {}).get("type", "image")
    # files that ship in the repository's examples/ folder, so the snippet runs as written from a clone
    files = (
        ["examples/clips/shapes.mp4"]
        if kind == "video"
        else ["examples/images/horse1.jpg", "examples/images/amusement1.jpg"]
    )
    roi_py = f', selection={{"roi": "{rois[0]}"}}' if rois else ""
    roi_cli = f" --roi {rois[0]}" if rois else ""
    return [
        "```python",
        "from berg import BERG",
        "",
        "b = BERG()",
        f'model = b.get_encoding_model("{model_id}", subject={subject!r}{roi_py})',
        f"responses = b.encode(model, {json.dumps(files)})   # float32 (n_stimuli, n_outputs)",
        "```",
        "",
        "```bash",
        f"berg describe {model_id}",
        f"berg encode {model_id} --subject {subject}{roi_cli} {' '.join(files)} -o responses.h5",
        "```",
        "",
    ]


def card_to_markdown(card: Mapping[str, Any]) -> str:
    """Markdown page of a card (``docs/models/<id>.md``, generated by ``make docs``).

    Parameters
    ----------
    card : mapping
        A valid card.

    Returns
    -------
    str
    """
    ds = card.get("dataset", {})
    params = card.get("parameters", {})
    selection = params.get("selection", {})
    out = [
        f"# {card['id']}",
        "",
        f"**{card.get('name', '')}**",
        "",
        " ".join(str(card.get("description", "")).split()),
        "",
    ]
    out += _md_table(
        ["", ""],
        [
            ("modality", card.get("modality")),
            ("species", card.get("species")),
            ("stimuli", f"{card['stimuli']['type']}: {card['stimuli']['description']}"),
            ("dataset", f"{ds.get('name')} — {ds.get('citation')}"),
            ("space", ds.get("space")),
            ("model type", card.get("model_type")),
            ("creator", card.get("creator")),
            ("licence (code)", card["license"]["code"]),
            ("licence (weights)", card["license"]["weights"]),
        ],
    )
    out += ["", "## Usage", "", *_usage(card)]

    out += ["## Subjects and selection", ""]
    n_outputs = selection.get("n_outputs") or {}  # optional: spaces with fixed sizes declare "lengths"
    if n_outputs:
        out += _md_table(
            ["subject", "outputs (length of a one-hot voxel selection)"],
            [(s, f"{n_outputs.get(s, n_outputs.get(str(s), 0)):,}") for s in params["subjects"]],
        )
    else:
        out += ["Subjects: " + ", ".join(str(s) for s in params["subjects"])]
    out += ["", "Valid ROI names: " + ", ".join(f"`{r}`" for r in selection.get("rois", [])), ""]
    if selection.get("roi_descriptions"):
        out += _md_table(["ROI", "description"], selection["roi_descriptions"].items()) + [""]
    if selection.get("notes"):
        out += [" ".join(str(selection["notes"]).split()), ""]
    if params.get("model_kwargs"):
        out += ["Model keyword arguments:", ""]
        out += _md_table(
            ["name", "type", "default", "choices", "description"],
            [
                (k["name"], k["type"], k.get("default", ""), k.get("choices", ""), k["description"])
                for k in params["model_kwargs"]
            ],
        ) + [""]

    inp = card["input"]
    out += ["## Input", "", " ".join(str(inp["description"]).split()), ""]
    out += _md_table(["", ""], [(k, v) for k, v in inp.items() if k != "description"]) + [""]
    output = card["output"]
    out += ["## Output", "", f"`{output['dtype']}` array, units: {output['units']}.", ""]
    out += _md_table(["dimension", "description"], [(d["name"], d["description"]) for d in output["dims"]]) + [""]

    out += ["## Preprocessing", "", "```", *_fmt(card["preprocessing"], 0), "```", ""]
    out += ["## Metadata (`get_model_metadata`)", ""]
    out += _md_table(["key", "description"], card["metadata"].items()) + [""]

    acc = card["accuracy"]
    out += ["## Accuracy", ""]
    figures, none = _published(card)
    if figures:
        out += ["Published (as the source states it):", ""]
        out += _md_table(
            ["figure", "metric", "split", "source", "quote"],
            [
                # a quote's "* p < 0.05" markers are text, not Markdown emphasis
                (_figure(e), e["metric"], e["split"], _where(e), str(e.get("quote", "")).replace("*", "\\*"))
                for e in figures
            ],
        ) + [""]
    for e in none:
        out += [f"Published: none. {' '.join(str(e['none']).split())} (source: {_where(e)})", ""]
    out += [f"Split: {' '.join(str(acc['split']).split())}", ""]
    if acc.get("metric_definitions"):
        out += ["Metrics: " + " ".join(_fmt(acc["metric_definitions"], 0)), ""]
    if acc.get("summary"):
        cols, rows = _summary_rows(acc["summary"])
        out += _md_table(["", *cols], rows) + [""]
    elif not figures:
        out += ["No accuracy numbers are published for this model.", ""]
    if acc.get("per_roi"):
        out += ["Per ROI:", "", "```", *_fmt(acc["per_roi"], 0), "```", ""]
    if acc.get("notes"):
        out += [" ".join(str(acc["notes"]).split()), ""]
    if acc.get("plots"):
        out += ["Plots (artifact keys): " + ", ".join(f"`{p}`" for p in acc["plots"]), ""]

    out += ["## Provenance", ""]
    out += _md_table(["", ""], card["provenance"].items()) + [""]
    if card["license"].get("credit"):
        out += [f"Credit: {card['license']['credit']}", ""]
    if card.get("caveats"):
        out += ["## Caveats", ""] + [f"- {' '.join(str(c).split())}" for c in card["caveats"]] + [""]
    if card.get("download"):
        dl = card["download"]
        out += ["## Download", ""]
        rows = [("shared files", f"{dl['shared_mb']:,} MB")] if "shared_mb" in dl else []
        rows += [(f"subject {s}", f"{mb:,} MB") for s, mb in (dl.get("per_subject_mb") or {}).items()]
        rows += [("backbone weights", f"{dl['backbone_mb']:,} MB")] if "backbone_mb" in dl else []
        if rows:
            out += _md_table(["files", "size"], rows) + [""]
        if dl.get("notes"):
            out += [" ".join(str(dl["notes"]).split()), ""]
    if card.get("citations"):
        out += ["## How to cite", "", "Cite these works when you use this model, and cite berg (CITATION.cff).", ""]
        for c in card["citations"]:
            out += [f"For {c['for']}:", "", "```bibtex", c["bibtex"].rstrip(), "```", ""]
    out += ["## References", ""]
    for ref in card["references"]:
        target = ref.get("url") or f"https://doi.org/{ref['doi']}"
        out.append(f"- [{ref['title']}]({target})")
    out += ["", f"_Generated from `model_cards/{card['id']}.yaml` by `make docs`; do not edit._"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Validate card files: ``python -m berg.cards model_cards/X.yaml ...``; exit 1 on any error."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write("usage: python -m berg.cards CARD.yaml [CARD.yaml ...]  (validates model cards)\n")
        return 0 if args else 2
    status = 0
    for arg in args:
        try:
            errors = read_card_file(_card_path(arg)).validate()
        except (ModelLoadError, ModelNotFoundError) as exc:
            errors = [str(exc)]
        for e in errors:
            sys.stdout.write(f"{arg}: {e}\n")
        if not errors:
            sys.stdout.write(f"{arg}: ok\n")
        status |= bool(errors)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
