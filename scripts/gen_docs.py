"""`make docs`: generate docs/models/<id>.md and the README model table from model_cards/.

The generated files are never edited by hand; tests run ``gen_docs.py --check``, which fails when a
card changed and `make docs` was not run. Running it twice changes nothing (idempotent). Pages of
models that left the registry are deleted (only pages that carry the generated-file footer).

Usage::

    python scripts/gen_docs.py           # write what is stale
    python scripts/gen_docs.py --check   # exit 1 and list what is stale, write nothing
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

START, END = "<!-- models:start -->", "<!-- models:end -->"
GENERATED = "by `make docs`; do not edit._"
DOCS = REPO / "docs" / "models"


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _outputs(card: dict) -> str:
    counts = list(card["parameters"]["selection"]["n_outputs"].values())
    lo, hi = min(counts), max(counts)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def _accuracy(card: dict) -> str:
    return "summary on page" if card["accuracy"].get("summary") else "no summary numbers"


def render() -> dict[Path, str]:
    """Every generated file and its content, from the repository's registry.yaml and model_cards/.

    Reads the checkout's files directly (not ``BERG_REGISTRY`` or an installed copy), so the docs
    always describe exactly what is committed. Invalid cards stop the run with their errors.
    """
    from berg.cards import card_to_markdown, read_card_file
    from berg.registry import read_yaml

    registry = read_yaml(REPO / "registry.yaml") or {}
    pages: dict[Path, str] = {}
    rows = [
        "| model | modality | dataset | subjects | outputs per subject | stimuli | model type | accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    problems = []
    for model_id in sorted(registry.get("models") or {}):
        entry = registry["models"][model_id]
        card = read_card_file(REPO / "model_cards" / entry["card"])
        errors = card.validate()
        if card.get("id") != model_id:
            errors.append(f"card id {card.get('id')!r} differs from registry id {model_id!r}")
        if errors:
            problems += [f"{entry['card']}: {e}" for e in errors]
            continue
        pages[DOCS / f"{model_id}.md"] = card_to_markdown(card)
        rows.append(
            f"| [{model_id}](docs/models/{model_id}.md) | {card['modality']} | {_cell(card['dataset']['name'])} | "
            f"{len(card['parameters']['subjects'])} | {_outputs(card)} | {card['stimuli']['type']} | "
            f"{_cell(card['model_type'])} | {_accuracy(card)} |"
        )
    if problems:
        raise SystemExit("invalid model cards:\n  " + "\n  ".join(problems))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise SystemExit(f"README.md must contain {START} and {END} exactly once")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    pages[REPO / "README.md"] = f"{head}{START}\n" + "\n".join(rows) + f"\n{END}{tail}"
    return pages


def orphans(pages: dict[Path, str]) -> list[Path]:
    """Generated pages whose model is gone."""
    if not DOCS.is_dir():
        return []
    return sorted(p for p in DOCS.glob("*.md") if p not in pages and GENERATED in p.read_text(encoding="utf-8"))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:  # default mode, unlike mkstemp's 0600
        fh.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` only list) stale generated files."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if generated files are out of date; write nothing")
    args = ap.parse_args(argv)
    pages = render()
    stale = [p for p, text in pages.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    gone = orphans(pages)
    if not args.check:
        for path in stale:
            _write(path, pages[path])
        for path in gone:
            path.unlink()
    for path in stale:
        sys.stdout.write(f"{'stale' if args.check else 'wrote'}: {path.relative_to(REPO)}\n")
    for path in gone:
        sys.stdout.write(f"{'orphan' if args.check else 'deleted'}: {path.relative_to(REPO)}\n")
    if args.check and (stale or gone):
        sys.stdout.write("run `make docs` and commit the result\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
