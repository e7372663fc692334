"""`make docs`: generate the documentation pages that come from data, and the site navigation.

Generated (never edit them by hand; tests run ``gen_docs.py --check``, which fails when a card changed
and `make docs` was not run; running it twice changes nothing):

* ``docs/models/<id>.md`` — one page per registry model, from its card (``berg.cards.card_to_markdown``);
  pages of models that left the registry are deleted (only pages that carry the generated-file footer);
* the model table of ``README.md`` (between ``<!-- models:start -->`` and ``<!-- models:end -->``) and
  ``docs/catalogue.md`` (the same table for the site);
* ``docs/citing.md`` — how to cite berg (from ``CITATION.cff``) and every model (from the cards);
* ``docs/errors/<Class>.md`` — one page per error class of ``berg.errors``: when berg raises it, what to
  do (:data:`ERROR_ADVICE`, checked to cover every class), how to catch it;
* the ``nav:`` block of ``mkdocs.yml`` (between its ``# nav:start`` and ``# nav:end`` lines): the fixed
  pages plus whatever tutorials (``docs/tutorials/*.ipynb``), guides (``docs/guide/*.md``) and CLI page
  exist, so a page that is not written yet is never a broken link.

Usage::

    python scripts/gen_docs.py           # write what is stale
    python scripts/gen_docs.py --check   # exit 1 and list what is stale, write nothing
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

START, END = "<!-- models:start -->", "<!-- models:end -->"
NAV_START, NAV_END = "# nav:start", "# nav:end"
GENERATED = "by `make docs`; do not edit._"
DOCS = REPO / "docs" / "models"

# The fixed part of the site; (title, page) or (title, [entries]). "@tutorials", "@guides", "@models",
# "@cli" are filled from the files that exist.
NAV: list = [
    ("Home", "index.md"),
    ("Getting started", "getting-started.md"),
    ("Concepts", "concepts.md"),
    ("Tutorials", "@tutorials"),
    ("Guides", [("Training a model", "training.md"), "@guides"]),
    ("Models", [("Catalogue", "catalogue.md"), "@models"]),
    ("Command line", "@cli"),
    (
        "API reference",
        [
            ("Overview", "reference/index.md"),
            ("berg (BERG, encode, save)", "reference/api.md"),
            ("Models and spaces", "reference/models.md"),
            ("Stimuli and preprocessing", "reference/stimuli.md"),
            ("Model cards", "reference/cards.md"),
            ("Metrics and HRFs", "reference/metrics.md"),
            ("Plotting", "reference/plotting.md"),
            ("Training", "reference/training.md"),
            ("Errors", "reference/errors.md"),
        ],
    ),
    ("Errors and what to do", "@errors"),
    ("Citing berg", "citing.md"),
    ("For developers", [("Architecture", "architecture.md"), ("Building and publishing this site", "docs-site.md")]),
]

# What to do about each error class of berg.errors: (when berg raises it, [what to do, ...]). A class
# without an entry stops `make docs`, so a new error cannot ship without its page.
ERROR_ADVICE: dict[str, tuple[str, list[str]]] = {
    "BERGError": (
        "Never raised itself: the base class of every error berg raises on purpose.",
        [
            "Catch it to handle any berg error in one place: `except berg.BERGError as exc: print(exc)`; the "
            "message already says what was wrong and what to do.",
            "An exception that is *not* a `BERGError` is a bug in berg: please report it with the traceback "
            "(`berg -v ...` prints it on the command line).",
        ],
    ),
    "ModelNotFoundError": (
        "The model id is not in the registry (a typo, or a model from a registry file that was not loaded).",
        [
            "Read the suggestions in the message (`did you mean ...`), or list the models: `berg list` / "
            "`BERG().list_models()`.",
            "A model you trained or built yourself lives in its own registry file: pass it with "
            "`BERG(registry=...)` or `berg --registry FILE ...`.",
        ],
    ),
    "InvalidParameterError": (
        "A parameter is not valid for this model: subject, selection (ROI names, one-hot lengths), device, "
        "batch size, a model option, an output path.",
        [
            "The message lists the valid values; `berg describe ID` shows the model's subjects, ROIs and options.",
            "On the command line, `berg encode ID --help` lists every option of model ID as a flag.",
        ],
    ),
    "StimulusError": (
        "A stimulus does not have the form the model expects: wrong shape or dtype, an unreadable or too large "
        "image, a still image given to a video model.",
        [
            "Give `uint8` arrays `(n, H, W, 3)` / `(n, 3, H, W)` (videos `(n, T, 3, H, W)`), PIL images, file "
            "paths, folders or globs; the message names the stimulus and what was wrong with it.",
            "Very large images are refused before decoding (`BERG_MAX_PIXELS` raises the limit).",
        ],
    ),
    "ModelLoadError": (
        "A model's files or backbone could not be loaded, or do not fit together (its subclasses say which).",
        [
            "Follow the message; `berg cache verify ID` re-checks the cached files and deletes damaged ones so "
            "they are fetched again.",
        ],
    ),
    "ArtifactError": (
        "A model file could not be fetched, verified or safely read (its subclasses say which).",
        [
            "Where there is network, `berg fetch ID --subject N` downloads what a model needs; with a local copy "
            "of BERG's bucket pass `berg_dir=` / `--berg-dir`.",
        ],
    ),
    "ArtifactNotFoundError": (
        "A file the model needs does not exist at its source (HTTP 404) or in `berg_dir`.",
        [
            "Check `berg_dir` points at the bucket's root (the folder holding `encoding_models/`).",
            "If the source changed its layout, update berg (`pip install -U berg`).",
        ],
    ),
    "IntegrityError": (
        "A downloaded or cached file's size or sha256 differs from the one recorded for it (a damaged "
        "download or an edited file).",
        [
            "Run `berg cache verify ID`: damaged files are deleted and fetched again on next use.",
            "In a read-only shared cache, ask its owner to run the same command.",
        ],
    ),
    "OfflineError": (
        "berg is offline (`BERG_OFFLINE=1`, `BERG(offline=True)`, `--offline`) and a file a call needs is not "
        "in `berg_dir` or the cache.",
        [
            "On a connected machine run the `berg fetch ...` command the message gives, then copy the cache "
            "(`BERG_CACHE`) here.",
            "Or point `berg_dir=` / `--berg-dir` at a local copy of BERG's bucket.",
        ],
    ),
    "UnsafeArtifactError": (
        "A legacy pickle asked for a Python object that is not on berg's allow-list: berg never runs code "
        "from downloaded files.",
        [
            "Do not loosen the check. Report the file and model: berg's converter for that release needs the "
            "new class, or the file is not what it claims to be.",
        ],
    ),
    "ModelNotBuiltError": (
        "The model has no published weights and has not been built on this machine yet.",
        [
            "Build it once with the command the message gives: `berg build ID --data DIR` (Python: "
            "`berg.build(ID, data_dir=DIR)`), where DIR holds the dataset named in the model's card.",
        ],
    ),
    "MissingExtraError": (
        "An optional dependency is not installed (nilearn for plots, zarr/dask for `berg run`, open_clip for "
        "CLIP, ...).",
        ['Run the `pip install ...` the message names, e.g. `pip install -e ".[scale]"`.'],
    ),
    "FileAccessError": (
        "The operating system refused to read or write a file: permission denied, disk full, read-only file "
        "system. It is also an `OSError` (with `errno` and `filename`).",
        [
            "The message names the file and the reason: choose a writable path (`-o`, `cache_dir=`, "
            "`BERG_CACHE`) or free space.",
        ],
    ),
    "BackboneWeightsError": (
        "The pretrained backbone weights are not in torch's cache and could not be downloaded (no network, "
        "offline), or the cached file is damaged.",
        [
            "Where there is internet, run the download command the message gives (or let berg download them "
            "once), then copy the file into `$TORCH_HOME/hub/checkpoints/` on the offline machine.",
            "Or pass `backbone_weights=PATH` (a local copy of the state dict, `.safetensors` or `torch.save` "
            'file), or `backbone_weights="untrained"` for a seeded random-weights control.',
        ],
    ),
    "UntrainedBackboneWarning": (
        "A warning, not an error: responses come from a randomly initialised backbone "
        '(`backbone_weights="untrained"`), a control that is not the published model. Shown once per model '
        "per process; results' provenance and figures (a red stamp) record it.",
        [
            'Nothing, if you asked for the control. Otherwise drop `backbone_weights="untrained"`.',
            'To silence it: `warnings.simplefilter("ignore", berg.errors.UntrainedBackboneWarning)`.',
        ],
    ),
}


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _outputs(card: dict) -> str:
    counts = list((card["parameters"]["selection"].get("n_outputs") or {}).values())
    if not counts:
        return "see page"
    lo, hi = min(counts), max(counts)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def _accuracy(card: dict) -> str:
    from berg.cards import published_headline  # the card's first published figure and its source

    return published_headline(card)


def _table(cards: dict[str, dict], link: str) -> list[str]:
    rows = [
        "| model | modality | dataset | subjects | outputs per subject | stimuli | model type | accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model_id, card in cards.items():
        rows.append(
            f"| [{model_id}]({link.format(id=model_id)}) | {card['modality']} | {_cell(card['dataset']['name'])} | "
            f"{len(card['parameters']['subjects'])} | {_outputs(card)} | {card['stimuli']['type']} | "
            f"{_cell(card['model_type'])} | {_accuracy(card)} |"
        )
    return rows


def _plain_brackets(markdown: str) -> str:
    """Keep card text such as ``meta["rois"]["PPA"]`` plain: ``[a][b]`` is Markdown's reference-link form.

    Outside code fences and code spans, ``][`` becomes ``]\\[`` (renders as ``][``), so neither Markdown
    nor mkdocs-autorefs reads Python subscripts in a card as a link to resolve.
    """
    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and "][" in line:
            parts = line.split("`")
            line = "`".join(part.replace("][", "]\\[") if i % 2 == 0 else part for i, part in enumerate(parts))
        out.append(line)
    return "\n".join(out)


def _title(path: Path) -> str:
    """A page's title: its first Markdown heading (first markdown cell of a notebook), else its name."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":
        cells = json.loads(text).get("cells", [])
        text = "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "markdown")
    match = re.search(r"^#\s+(.+?)\s*$", text, flags=re.M)
    # nav titles are plain text: drop Markdown code marks (`berg run` -> berg run)
    return match.group(1).replace("`", "").strip() if match else path.stem.replace("-", " ")


def _nav_entries(value, model_ids: list[str]) -> list:
    docs = REPO / "docs"
    if value == "@tutorials":
        return [(_title(p), f"tutorials/{p.name}") for p in sorted((docs / "tutorials").glob("*.ipynb"))]
    if value == "@guides":
        return [(_title(p), f"guide/{p.name}") for p in sorted((docs / "guide").glob("*.md"))]
    if value == "@models":
        return [(m, f"models/{m}.md") for m in model_ids]
    if value == "@cli":
        return [("Command line", "cli.md")] if (docs / "cli.md").is_file() else []
    if value == "@errors":
        return [("Overview", "errors/index.md")] + [(n, f"errors/{n}.md") for n in _error_classes()]
    return [value]


def _nav_yaml(model_ids: list[str]) -> str:
    lines = [NAV_START, "nav:"]
    for title, target in NAV:
        if isinstance(target, str) and not target.startswith("@"):
            lines.append(f"  - {json.dumps(title)}: {target}")
            continue
        entries = []
        for item in target if isinstance(target, list) else [target]:
            entries += _nav_entries(item, model_ids) if isinstance(item, str) else [item]
        if not entries:
            continue  # a section none of whose pages exist yet
        if target in ("@cli",):
            lines.append(f"  - {json.dumps(title)}: {entries[0][1]}")
            continue
        lines.append(f"  - {json.dumps(title)}:")
        lines += [f"      - {json.dumps(t)}: {p}" for t, p in entries]
    lines.append(NAV_END)
    return "\n".join(lines)


def _berg_bibtex() -> str | None:
    """BibTeX for berg itself, from CITATION.cff (None where the file is absent)."""
    path = REPO / "CITATION.cff"
    if not path.is_file():
        return None
    from berg.yamlio import read_yaml

    cff = read_yaml(path)
    authors = " and ".join(
        f"{{{a['name']}}}" if "name" in a else f"{a['family-names']}, {a['given-names']}" for a in cff["authors"]
    )
    fields = [
        ("author", authors),
        ("title", cff["title"].replace("berg", "{berg}", 1)),
        ("version", cff["version"]),
        ("license", cff.get("license", "")),
    ]
    if cff.get("repository-code") or cff.get("url"):
        fields.append(("url", cff.get("repository-code") or cff["url"]))
    if cff.get("date-released"):
        fields.append(("year", str(cff["date-released"])[:4]))
    body = ",\n".join(f"  {k:<7} = {{{v}}}" for k, v in fields if v)
    return f"@software{{berg,\n{body}\n}}"


def _citing(cards: dict[str, dict]) -> str | None:
    bib = _berg_bibtex()
    if bib is None:
        return None
    out = [
        "# Citing berg",
        "",
        "If berg helps your work, cite berg **and** the papers behind every model you used: the model's "
        "authors built it, berg only serves it. The same text is in `CITATION.cff` (GitHub shows it as "
        '"Cite this repository") and in each model\'s card (`berg describe MODEL`).',
        "",
        "## berg",
        "",
        "```bibtex",
        bib,
        "```",
        "",
    ]
    for model_id, card in cards.items():
        if not card.get("citations"):
            continue
        out += [f"## {model_id}", "", f"[{card['name']}](models/{model_id}.md)", ""]
        for c in card["citations"]:
            out += [f"For {c['for']}:", "", "```bibtex", c["bibtex"].rstrip(), "```", ""]
    out += ["_Generated from `CITATION.cff` and `model_cards/` by `make docs`; do not edit._"]
    return "\n".join(out) + "\n"


def _error_classes() -> list[str]:
    """The exception and warning classes berg.errors exports, in its order."""
    import inspect

    import berg.errors

    return [n for n in berg.errors.__all__ if inspect.isclass(getattr(berg.errors, n))]


def _error_pages() -> dict[Path, str]:
    """docs/errors/: an overview and one page per class of berg.errors (what it means, what to do)."""
    import inspect

    import berg.errors

    names = _error_classes()
    missing = [n for n in names if n not in ERROR_ADVICE]
    if missing:
        raise SystemExit(f"scripts/gen_docs.py: ERROR_ADVICE has no entry for {', '.join(missing)}")
    footer = "_Generated from `berg/errors.py` and `scripts/gen_docs.py` by `make docs`; do not edit._"
    pages, rows = {}, []
    for name in names:
        cls = getattr(berg.errors, name)
        when, todo = ERROR_ADVICE[name]
        parents = [b.__name__ for b in cls.__mro__[1:] if b not in (object, BaseException)]
        doc = inspect.getdoc(cls) or ""
        kind = "warning" if issubclass(cls, Warning) else "error"
        lines = [
            f"# {name}",
            "",
            f"`berg.errors.{name}` is {'a warning' if kind == 'warning' else 'an error'}; `except` any of "
            f"{', '.join(f'`{p}`' for p in parents)} catches it too.",
            "",
            "## When berg raises it" if kind == "error" else "## When berg emits it",
            "",
            when,
            "",
            "## What to do",
            "",
            *[f"- {t}" for t in todo],
            "",
        ]
        if doc and doc.split("\n")[0] not in when:
            lines += ["## Reference", "", doc, ""]
        if kind == "error":
            lines += [
                "## Catching it",
                "",
                "```python",
                "import berg",
                "",
                "try:",
                '    model = berg.BERG().get_encoding_model("fmri-bold5000-resnet18", subject=1)',
                f"except berg.errors.{name} as exc:",
                "    print(exc)  # one line: what was wrong and what to do",
                "```",
                "",
                "On the command line the same message is one line on stderr: `berg: error: ...` (exit status 2; "
                "1 for errors of the operating system).",
                "",
            ]
        pages[REPO / "docs" / "errors" / f"{name}.md"] = "\n".join([*lines, footer, ""])
        rows.append(f"| [{name}]({name}.md) | {_cell(when.split('. ')[0].rstrip('.'))} |")
    pages[REPO / "docs" / "errors" / "index.md"] = "\n".join(
        [
            "# Errors and what to do",
            "",
            "Every error berg raises on purpose is a `berg.BERGError`; its message says what was wrong, the valid "
            "values, and what to do, in one line. Each class has a page:",
            "",
            "| class | when |",
            "|---|---|",
            *rows,
            "",
            footer,
            "",
        ]
    )
    return pages


def render() -> dict[Path, str]:
    """Every generated file and its content, from the repository's registry.yaml, model_cards/ and docs/.

    Reads the checkout's files directly (not ``BERG_REGISTRY`` or an installed copy), so the docs
    always describe exactly what is committed. Invalid cards stop the run with their errors.
    """
    from berg.cards import card_to_markdown, read_card_file
    from berg.cli import reference_markdown
    from berg.yamlio import read_yaml

    registry = read_yaml(REPO / "registry.yaml") or {}
    pages: dict[Path, str] = {REPO / "docs" / "cli.md": reference_markdown()}
    cards: dict[str, dict] = {}
    problems = []
    for model_id in sorted(registry.get("models") or {}):
        entry = registry["models"][model_id]
        path = REPO / "model_cards" / entry["card"]
        if not path.is_file():
            problems.append(f"{entry['card']}: no such card for registry entry {model_id!r}")
            continue
        card = read_card_file(path)
        errors = card.validate()
        if card.get("id") != model_id:
            errors.append(f"card id {card.get('id')!r} differs from registry id {model_id!r}")
        if errors:
            problems += [f"{entry['card']}: {e}" for e in errors]
            continue
        cards[model_id] = card
        pages[DOCS / f"{model_id}.md"] = _plain_brackets(card_to_markdown(card))
    if problems:
        raise SystemExit("invalid model cards:\n  " + "\n  ".join(problems))

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise SystemExit(f"README.md must contain {START} and {END} exactly once")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    pages[REPO / "README.md"] = f"{head}{START}\n" + "\n".join(_table(cards, "docs/models/{id}.md")) + f"\n{END}{tail}"

    docs = REPO / "docs"
    if (REPO / "mkdocs.yml").is_file():  # the site's own pages (absent in a copy that only has the cards)
        pages[docs / "catalogue.md"] = "\n".join(
            [
                "# Model catalogue",
                "",
                "Every model berg serves, with its card's key facts. Each page gives the subjects, valid "
                "selections, input and output, preprocessing, accuracy, download sizes and how to cite it.",
                "",
                *_table(cards, "models/{id}.md"),
                "",
                "_Generated from `model_cards/` by `make docs`; do not edit._",
                "",
            ]
        )
        citing = _citing(cards)
        if citing is not None:
            pages[docs / "citing.md"] = citing
        pages.update(_error_pages())
        mk = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
        if mk.count(NAV_START) != 1 or mk.count(NAV_END) != 1:
            raise SystemExit(f"mkdocs.yml must contain {NAV_START!r} and {NAV_END!r} lines exactly once")
        head, rest = mk.split(NAV_START, 1)
        _, tail = rest.split(NAV_END, 1)
        pages[REPO / "mkdocs.yml"] = head + _nav_yaml(list(cards)) + tail
    return pages


def orphans(pages: dict[Path, str]) -> list[Path]:
    """Generated pages whose model (or error class) is gone."""
    found = [p for folder in (DOCS, REPO / "docs" / "errors") if folder.is_dir() for p in folder.glob("*.md")]
    return sorted(p for p in found if p not in pages and GENERATED in p.read_text(encoding="utf-8"))


def _write(path: Path, text: str) -> None:
    from berg.fsutil import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text, fsync=False)


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
        sys.stdout.write("run `make docs` (or python scripts/gen_docs.py) and commit the result\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
