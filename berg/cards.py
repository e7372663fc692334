"""Model cards: the single source of truth for a model's facts (``model_cards/<id>.yaml``).

Cards are YAML (duplicate keys are an error), validated against ``model_cards/schema.json``, and
rendered as text (``berg describe``) or Markdown (generated docs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from berg._resources import cards_dir
from berg.errors import InvalidParameterError

__all__ = ["load_card", "validate_card", "card_to_text", "card_to_markdown", "schema"]


def schema() -> dict[str, Any]:
    """The JSON Schema cards must satisfy."""
    return json.loads((cards_dir() / "schema.json").read_text(encoding="utf-8"))


def load_card(path_or_id: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a card (a path, or a built-in model id) without validating it."""
    from berg.registry import read_yaml

    path = Path(path_or_id)
    if not path.suffix:
        path = cards_dir() / f"{path_or_id}.yaml"
    return read_yaml(path)


def validate_card(card: dict[str, Any]) -> list[str]:
    """Schema errors of a card (empty list when valid), as ``"path: message"`` strings."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = []
    for err in sorted(validator.iter_errors(card), key=lambda e: list(e.path)):
        where = "/".join(map(str, err.path)) or "(top level)"
        errors.append(f"{where}: {err.message}")
    subjects = [str(s) for s in (card.get("parameters") or {}).get("subjects", [])]
    n_out = ((card.get("parameters") or {}).get("selection") or {}).get("n_outputs") or {}
    missing = [s for s in subjects if s not in {str(k) for k in n_out}]
    if missing:
        errors.append(f"parameters/selection/n_outputs: no entry for subject(s) {missing}")
    return errors


def _fmt(value: Any, indent: int = 2) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines += _fmt(v, indent + 2)
            else:
                lines.append(f"{pad}{k}: {v}")
        return lines
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            text = ", ".join(map(str, value))
            return [f"{pad}{text}"] if len(text) < 400 else [f"{pad}{text[:400]}... ({len(value)} items)"]
        lines = []
        for v in value:
            sub = _fmt(v, indent + 2)
            if sub:
                sub[0] = f"{pad}- {sub[0].strip()}"
            lines += sub
        return lines
    return [f"{pad}{value}"]


_TEXT_SECTIONS = ["description", "dataset", "stimuli", "input", "output", "parameters", "preprocessing",
                  "metadata", "accuracy", "license", "provenance", "caveats", "references"]


def card_to_text(card: dict[str, Any]) -> str:
    """A readable plain-text rendering (what ``berg describe`` prints)."""
    lines = [f"{card.get('id')} — {card.get('name', '')}",
             f"modality: {card.get('modality')}   species: {card.get('species')}   model: {card.get('model_type')}",
             f"creator: {card.get('creator')}", ""]
    for section in _TEXT_SECTIONS:
        if section in card:
            lines.append(section.upper())
            lines += _fmt(card[section]) if not isinstance(card[section], str) else ["  " + card[section]]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def card_to_markdown(card: dict[str, Any]) -> str:
    """Markdown page of a card (generated docs)."""
    out = [f"# {card['id']}", "", f"**{card.get('name', '')}**", "", card.get("description", ""), ""]
    out += ["| | |", "|---|---|"]
    for key in ("modality", "species", "model_type", "creator"):
        out.append(f"| {key.replace('_', ' ')} | {card.get(key, '')} |")
    ds = card.get("dataset", {})
    out.append(f"| dataset | {ds.get('name', '')} ({ds.get('space', '')}) |")
    out.append("")
    for section in _TEXT_SECTIONS[1:]:
        if section in card:
            out += [f"## {section.capitalize()}", "", "```", *_fmt(card[section]), "```", ""]
    out.append("_Generated from `model_cards/" + card["id"] + ".yaml` by `make docs`; do not edit._")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Validate card files: ``python -m berg.cards model_cards/X.yaml ...`` (exit 1 on errors)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise InvalidParameterError("usage: python -m berg.cards CARD.yaml [...]")
    status = 0
    for path in args:
        errors = validate_card(load_card(path))
        for e in errors:
            sys.stderr.write(f"{path}: {e}\n")
        status |= bool(errors)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
