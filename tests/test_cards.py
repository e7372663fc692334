"""Model cards: schema, duplicate keys, cross-field rules, registry agreement, rendering, generated docs."""

from __future__ import annotations

import copy
import datetime
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from berg.cards import Card, card_to_markdown, card_to_text, load_card, main, read_card_file, schema, validate_card
from berg.errors import ModelLoadError, ModelNotFoundError
from berg.registry import Registry

REPO = Path(__file__).resolve().parents[1]
CARDS = sorted((REPO / "model_cards").glob("*.yaml"))
REGISTRY_IDS = sorted((yaml.safe_load((REPO / "registry.yaml").read_text()) or {}).get("models") or {})


@pytest.fixture
def builtin_registry(monkeypatch):
    monkeypatch.delenv("BERG_REGISTRY", raising=False)
    return Registry()


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["additionalProperties"] is False


def test_there_are_cards():
    assert len(CARDS) >= 2 and REGISTRY_IDS


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_every_card_is_valid(path):
    card = read_card_file(path)
    assert card.validate() == []
    assert card["id"] == path.stem
    assert load_card(path)["id"] == path.stem  # validating loader accepts it too


@pytest.mark.parametrize("model_id", REGISTRY_IDS)
def test_every_registry_entry_has_a_matching_card(model_id, builtin_registry):
    spec = builtin_registry.get(model_id)
    card = load_card(spec.card_path)
    assert card["id"] == model_id
    assert [str(s) for s in card["parameters"]["subjects"]] == [str(s) for s in spec.subjects]
    assert sorted(map(str, card["parameters"]["selection"]["n_outputs"])) == sorted(map(str, spec.subjects))
    assert card["modality"] == spec.modality
    assert card["input"]["type"] == card["stimuli"]["type"] == spec.input_kind


def test_every_card_file_belongs_to_a_registry_entry(builtin_registry):
    used = {builtin_registry.get(m).card_path.resolve() for m in REGISTRY_IDS}
    assert {p.resolve() for p in CARDS} <= used, "a card in model_cards/ has no registry entry"


def test_synthetic_test_card_is_valid():
    # The card the core tests register must satisfy the same schema as the built-in ones.
    from synthetic_native import N_OUT, _card

    assert validate_card(_card(N_OUT)) == []


# --------------------------------------------------------------------------- the schema catches drift


def _base() -> dict:
    return copy.deepcopy(dict(load_card("fmri-bold5000-resnet18")))


def _set(path: str, value):
    def apply(card):
        *parents, leaf = path.split(".")
        node = card
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value

    return apply


def _chain(*edits):
    def apply(card):
        for edit in edits:
            edit(card)

    return apply


def _n_outputs(update):
    def apply(card):
        update(card["parameters"]["selection"]["n_outputs"])

    return apply


BROKEN = {
    "unknown top-level key": (_set("surprise", 1), "surprise"),
    "unknown nested key": (_set("license.price", "free"), "license"),
    "missing section": (_set("license", KeyError), "license"),
    "missing accuracy split": (_set("accuracy.split", KeyError), "split"),
    "bad modality": (_set("modality", "pet"), "modality"),
    "bad id": (_set("id", "Bold5000"), "id"),
    "empty subjects": (_set("parameters.subjects", []), "subjects"),
    "repeated subject": (_set("parameters.subjects", [1, 2, 2, 3]), "subjects"),
    "subject missing from n_outputs": (_n_outputs(lambda d: d.pop(3)), "no entry for subject(s) 3"),
    "n_outputs for an unknown subject": (_n_outputs(lambda d: d.update({4: 10})), "4 are not in parameters/subjects"),
    "n_outputs not an integer": (_n_outputs(lambda d: d.update({1: "many"})), "n_outputs/1"),
    "n_outputs zero": (_n_outputs(lambda d: d.update({1: 0})), "n_outputs/1"),
    "same subject as int and str": (_n_outputs(lambda d: d.update({"1": 5})), "appears twice"),
    "empty roi list": (_set("parameters.selection.rois", []), "rois"),
    "float input": (_set("input.dtype", "float32"), "input/dtype"),
    "input type differs from stimuli": (_set("input.type", "video"), "input/type"),
    "min_frames on an image model": (_set("input.min_frames", 4), "input"),
    "first output dim not n_stimuli": (_set("output.dims.0.name", "n_voxels"), "output/dims/0"),
    "no accuracy numbers and no notes": (
        _chain(_set("accuracy.summary", {}), _set("accuracy.notes", KeyError)),
        "notes",
    ),
    "accuracy summary not numbers": (_set("accuracy.summary", {"1": "good"}), "accuracy/summary/1"),
    "reference without url or doi": (_set("references", [{"title": "a paper"}]), "references/0"),
    "no references": (_set("references", []), "references"),
    "caveat not text": (_set("caveats", [{"a": 1}]), "caveats/0"),
    "yaml date value": (_set("dataset.citation", datetime.date(2020, 1, 1)), "not plain data"),
}


def test_unmodified_base_card_is_valid():
    assert validate_card(_base()) == []  # the control for the mutations below


@pytest.mark.parametrize("name", list(BROKEN))
def test_schema_rejects_broken_card(name):
    mutate, where = BROKEN[name]
    card = _base()
    mutate(card)
    errors = validate_card(card)
    assert errors, f"{name}: accepted"
    assert any(where in e for e in errors), f"{name}: {errors}"


def test_card_file_must_be_named_after_its_id(tmp_path):
    p = tmp_path / "other-name.yaml"
    p.write_text(yaml.safe_dump(_base(), sort_keys=False))
    errors = read_card_file(p).validate()
    assert any("must be <id>.yaml" in e for e in errors)
    with pytest.raises(ModelLoadError, match="other-name.yaml"):
        load_card(p)


# --------------------------------------------------------------------------- YAML reading


@pytest.mark.parametrize(
    "text, key",
    [
        ("id: a\nname: x\nid: b\n", "'id'"),
        ("parameters:\n  selection:\n    n_outputs: {1: 5, 2: 6, 1: 7}\n", "1"),
        ("license:\n  code: MIT\n  weights: x\n  code: GPL\n", "'code'"),
    ],
)
def test_duplicate_keys_are_errors(tmp_path, text, key):
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    with pytest.raises(ModelLoadError, match="duplicate key") as info:
        read_card_file(p)
    assert key in str(info.value) and "line" in str(info.value) and "\n" not in str(info.value)


def test_non_mapping_and_missing_cards(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ModelLoadError, match="mapping"):
        read_card_file(p)
    with pytest.raises(ModelLoadError, match="not found"):
        read_card_file(tmp_path / "nope.yaml")


def test_load_card_by_id_and_unknown_id():
    card = load_card("fmri-bmd-s3d")
    assert isinstance(card, Card) and isinstance(card, dict) and card["id"] == "fmri-bmd-s3d"
    with pytest.raises(ModelNotFoundError, match="Did you mean 'fmri-bmd-s3d'"):
        load_card("fmri-bmd-s3")


def test_load_card_lists_all_schema_errors(tmp_path):
    card = _base()
    card["surprise"] = 1
    del card["license"]
    p = tmp_path / f"{card['id']}.yaml"
    p.write_text(yaml.safe_dump(card, sort_keys=False))
    with pytest.raises(ModelLoadError) as info:
        load_card(p)
    assert "surprise" in str(info.value) and "license" in str(info.value)
    assert load_card(p, validate=False)["surprise"] == 1


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_text_and_markdown_carry_the_facts(path):
    card = load_card(path)
    text = card.to_text()
    assert text == card_to_text(card) and text.startswith(f"{card['id']} — ")
    selection = card["parameters"]["selection"]
    for roi in selection.get("rois") or []:  # surfaces/sensor x time models may declare none
        assert roi in text
    flat = " ".join(text.split())  # long lists wrap
    for s, n in (selection.get("n_outputs") or {}).items():
        assert f"{s} ({n:,})" in flat
    assert card["license"]["weights"].split()[0] in text
    # wrapped for a terminal (BibTeX entries are pasted verbatim, so they may be wider)
    prose = [
        line
        for line in text.splitlines()
        if not line.lstrip().startswith(("@", "author", "title", "journal", "booktitle", "url", "doi", "note"))
    ]
    assert max(len(line) for line in prose) <= 110, max(prose, key=len)

    md = card.to_markdown()
    assert md == card_to_markdown(card) and md.startswith(f"# {card['id']}\n")
    for ref in card["references"]:
        assert f"[{ref['title']}](" in md
    assert f'get_encoding_model("{card["id"]}"' in md and "do not edit" in md
    for line in md.splitlines():
        if line.startswith("|"):  # a table row: cell separators must not leak from the text
            assert line.endswith("|")


def test_validate_tool(tmp_path, capsys):
    assert main([str(p) for p in CARDS]) == 0
    assert capsys.readouterr().out.count(": ok") == len(CARDS)
    bad = _base()
    bad["parameters"]["selection"]["n_outputs"].pop(2)
    p = tmp_path / f"{bad['id']}.yaml"
    p.write_text(yaml.safe_dump(bad, sort_keys=False))
    assert main([str(p)]) == 1
    assert "no entry for subject(s) 2" in capsys.readouterr().out


def test_validate_tool_as_module():
    res = subprocess.run([sys.executable, "-m", "berg.cards", str(CARDS[0])], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip().endswith(": ok"), res.stdout + res.stderr


# --------------------------------------------------------------------------- generated docs


def test_committed_docs_and_readme_table_are_up_to_date():
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True
    )
    assert res.returncode == 0, f"run `make docs`:\n{res.stdout}{res.stderr}"


@pytest.fixture
def gen_docs(tmp_path, monkeypatch):
    """scripts/gen_docs.py pointed at a copy of the repository's inputs."""
    for name in ("README.md", "registry.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "model_cards", tmp_path / "model_cards")
    spec = importlib.util.spec_from_file_location("gen_docs_under_test", REPO / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "REPO", tmp_path)
    monkeypatch.setattr(module, "DOCS", tmp_path / "docs" / "models")
    return module


def test_gen_docs_is_idempotent_and_tracks_cards(gen_docs, capsys):
    root = gen_docs.REPO
    assert gen_docs.main([]) == 0
    readme = (root / "README.md").read_text()
    pages = sorted(p.name for p in (root / "docs" / "models").glob("*.md"))
    assert pages == sorted(f"{m}.md" for m in REGISTRY_IDS)
    for m in REGISTRY_IDS:
        assert f"[{m}](docs/models/{m}.md)" in readme
    assert readme.count("<!-- models:start -->") == 1
    capsys.readouterr()
    assert gen_docs.main([]) == 0 and capsys.readouterr().out == ""  # second run: nothing to write
    assert gen_docs.main(["--check"]) == 0

    card_path = root / "model_cards" / "fmri-bold5000-resnet18.yaml"
    card_path.write_text(card_path.read_text().replace("name: img2fmri", "name: Renamed img2fmri", 1))
    orphan = root / "docs" / "models" / "gone-model.md"
    orphan.write_text("old\n_Generated from `model_cards/gone-model.yaml` by `make docs`; do not edit._\n")
    handwritten = root / "docs" / "models" / "notes.md"
    handwritten.write_text("hand-written notes\n")
    assert gen_docs.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "stale: docs/models/fmri-bold5000-resnet18.md" in out and "orphan: docs/models/gone-model.md" in out
    assert (
        "Renamed" not in (root / "docs" / "models" / "fmri-bold5000-resnet18.md").read_text()
    )  # --check writes nothing
    assert gen_docs.main([]) == 0
    assert "**Renamed img2fmri" in (root / "docs" / "models" / "fmri-bold5000-resnet18.md").read_text()
    assert not orphan.exists() and handwritten.exists()
    assert gen_docs.main(["--check"]) == 0


def test_gen_docs_refuses_invalid_cards(gen_docs):
    card_path = gen_docs.REPO / "model_cards" / "fmri-bmd-s3d.yaml"
    card_path.write_text(card_path.read_text() + "surprise: 1\n")
    with pytest.raises(SystemExit, match="surprise"):
        gen_docs.render()
