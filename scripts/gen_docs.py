"""`make docs`: generate docs/models/<id>.md and the README model table from model_cards/ (never edit those by hand)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START, END = "<!-- models:start -->", "<!-- models:end -->"


def render() -> dict[Path, str]:
    """Every generated file and its content."""
    from berg.cards import card_to_markdown
    from berg.registry import Registry

    registry = Registry()
    pages: dict[Path, str] = {}
    rows = ["| model | modality | dataset | subjects | stimuli | model type |", "|---|---|---|---|---|---|"]
    for model_id in registry.ids():
        card = registry.get(model_id).card
        pages[REPO / "docs" / "models" / f"{model_id}.md"] = card_to_markdown(card)
        rows.append(
            f"| [{model_id}](docs/models/{model_id}.md) | {card['modality']} | {card['dataset']['name']} | "
            f"{len(card['parameters']['subjects'])} | {card['stimuli']['type']} | {card['model_type']} |"
        )
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    pages[REPO / "README.md"] = f"{head}{START}\n" + "\n".join(rows) + f"\n{END}{tail}"
    return pages


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if generated files are out of date")
    args = ap.parse_args()
    stale = []
    for path, text in render().items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(text, encoding="utf-8")
                tmp.replace(path)
    for path in stale:
        sys.stdout.write(f"{'stale' if args.check else 'wrote'}: {path.relative_to(REPO)}\n")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    raise SystemExit(main())
