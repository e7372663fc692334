"""Model cards: schema, duplicate keys, cross-field rules, registry agreement, rendering, generated docs."""

from __future__ import annotations

import copy
import datetime
import importlib.util
import re
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
    "published figure without source": (
        _set("published", [{"figure": 0.5, "metric": "r", "split": "test"}]),
        "published/0",
    ),
    "published figure without split": (
        _set("published", [{"figure": 0.5, "metric": "r", "source": "x"}]),
        "published/0",
    ),
    "published figure and none at once": (_set("published.0.none", "nothing stated"), "published/0"),
    "published empty": (_set("published", []), "published"),
    "published unknown key": (_set("published.0.page_guess", 3), "published/0"),
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


# --------------------------------------------------------------------------- published accuracy (#21)

SEEDS = REPO.parent / "shared" / "seeds"
#: the source text each card's published figures are quoted from
SEED_OF = {
    "fmri-algonauts_2023-clip_sam": "algonauts2023-clip-sam-report.txt",
    "fmri-bold5000-resnet18": "img2fmri-paper.txt",
    "fmri-luminance-baseline": "img2fmri-paper.txt",
}


def _plain(text: str) -> str:
    """Seed text as read: markdown escapes and math markers dropped, whitespace collapsed."""
    # the seed's inline math ("$p < 0.05$ )", "$p < 0.01$ ,") leaves a space before ")" and ","
    return re.sub(r"\s+([),])", r"\1", " ".join(text.replace("\\", "").replace("$", "").split()))


@pytest.mark.parametrize("model_id", REGISTRY_IDS)
def test_every_registered_card_says_what_is_published(model_id):
    card = load_card(model_id)
    entries = card.get("published")
    assert entries, f"{model_id}: no published block (list the figures, or one entry saying the source states none)"
    assert all(e["source"] for e in entries)
    assert all(("figure" in e) != ("none" in e) for e in entries)


@pytest.mark.parametrize("model_id", sorted(SEED_OF))
def test_published_figures_are_quoted_from_their_source(model_id):
    if not SEEDS.is_dir():
        pytest.skip(f"{SEEDS} is absent (the sources live beside the checkout, not in CI)")
    seed = _plain((SEEDS / SEED_OF[model_id]).read_text(encoding="utf-8"))
    figures = [e for e in load_card(model_id)["published"] if "figure" in e]
    assert figures
    for e in figures:
        assert e.get("quote"), f"{model_id}: figure {e['figure']} carries no quote of its source"
        assert _plain(e["quote"]) in seed, e["quote"]
        if isinstance(e["figure"], (int, float)):  # the number is the source's, digit for digit
            assert re.search(rf"(?<![\d.]){re.escape(str(e['figure']))}0*(?!\d)", e["quote"]), e


def test_breil_table_1_every_variant_has_its_row():
    card = load_card("fmri-algonauts_2023-clip_sam")
    by_variant = {e.get("variant"): e["figure"] for e in card["published"] if "Table 1" in e["source"]}
    variants = next(k for k in card["parameters"]["model_kwargs"] if k["name"] == "variant")["choices"]
    assert set(variants) <= set(by_variant)
    assert by_variant == {
        "clip_sam": 50.632,
        "per_roi_class": 48.006,
        "image_only": 42.006,
        "image_text": 41.93,
        "sam": 39.814,
        "text_only": 36.591,
        None: 48.053,  # the neural-network row berg does not serve
    }


def _accuracy_line(text: str) -> str:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  accuracy:"))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 22):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


@pytest.mark.parametrize("model_id", REGISTRY_IDS)
def test_describe_shows_an_accuracy_line_with_its_source_or_command(model_id, tmp_path, capsys, monkeypatch):
    from berg.accuracy import compute_command
    from berg.cli import main

    monkeypatch.delenv("BERG_REGISTRY", raising=False)
    assert main(["--cache-dir", str(tmp_path / "cache"), "--offline", "describe", model_id]) == 0
    line = _accuracy_line(capsys.readouterr().out)
    card = load_card(model_id)
    figures = [e for e in card["published"] if "figure" in e]
    src = " ".join(str((figures or card["published"])[0]["source"]).split())
    if figures:
        assert line.startswith(f"accuracy: published {figures[0]['figure']}") and f"source: {src}" in line
    else:
        assert line.startswith(f"accuracy: none published (source: {src}")
    command = compute_command(Registry().get(model_id))
    if command:
        assert f"with: {command}" in line
    assert figures or command, f"{model_id}: neither a published figure nor a command that computes one"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))  # nothing fetched


# --------------------------------------------------------------------------- BMD's grid affine (#21)


def test_bmd_card_says_how_to_pass_an_affine():
    text = " ".join(load_card("fmri-bmd-s3d").to_text().split())
    assert load_card("fmri-bmd-s3d")["output"]["space"]["affine"] is None  # no citable source found for it
    assert "NIfTI affine: none declared on this card" in text
    assert "model.to_nifti(responses, affine=A)" in text and "berg.save_nifti(path, responses, model, affine=A)" in text
    assert "NIfTI affine" not in load_card("fmri-nsd_fsaverage-alexnet").to_text()  # surfaces need none


@pytest.fixture
def bmd_local(tmp_path):
    """A BMD replica in a local berg_dir (files without affines), registered as ``test-bmd-grid``."""
    from berg.testing import replica_entry, write_bmd_replica
    from creation_code.bmd_s3d.replica import PREFIX

    rep = write_bmd_replica(tmp_path / "bucket", subjects=(1,), n_features=32, k=4, grid=(8, 9, 7))
    reg = replica_entry(
        tmp_path,
        "test-bmd-grid",
        "fmri-bmd-s3d",
        source={"kind": "s3", "bucket": "absent", "prefix": PREFIX, "manifest": False},
        subjects=[1],
        selection={"n_outputs": {1: int(rep.masks[1].sum())}},
    )
    return tmp_path, rep, reg, tmp_path / "bucket" / PREFIX / "metadata" / "metadata_sub-01.npy"


def _bmd_client(root, reg):
    import berg

    return berg.BERG(berg_dir=root / "bucket", cache_dir=root / "cache", registry=reg, offline=True)


def test_bmd_affine_from_the_card_when_the_files_have_none(bmd_local):
    import numpy as np

    from berg.errors import InvalidParameterError
    from berg.models.bmd_s3d import BMDLegacyLayout

    root, rep, reg, _ = bmd_local
    meta = _bmd_client(root, reg).get_model_metadata("test-bmd-grid", subject=1)
    assert "affine" not in meta["fmri"]
    client = _bmd_client(root, reg)
    space = BMDLegacyLayout(client.registry.get("test-bmd-grid"), client.store).output_space(1)
    with pytest.raises(InvalidParameterError, match=r"record no affine.*pass one: to_nifti\(responses, affine=A\)"):
        space.to_nifti(np.zeros((1, space.n_outputs), np.float32))

    declared = [[-2.5, 0, 0, 76.0], [0, 2.5, 0, -112.0], [0, 0, 2.5, -70.0], [0, 0, 0, 1]]
    card_path = root / "model_cards" / "test-bmd-grid.yaml"
    card = yaml.safe_load(card_path.read_text())
    card["output"]["space"]["affine"] = declared
    card_path.write_text(yaml.safe_dump(card, sort_keys=False))
    assert validate_card(card) == []
    client = _bmd_client(root, reg)
    assert "NIfTI affine" not in card_to_text(client.describe("test-bmd-grid"))
    meta = client.get_model_metadata("test-bmd-grid", subject=1)
    np.testing.assert_array_equal(meta["fmri"]["affine"], np.asarray(declared))
    space = BMDLegacyLayout(client.registry.get("test-bmd-grid"), client.store).output_space(1)
    img = space.to_nifti(np.zeros((1, space.n_outputs), np.float32))
    np.testing.assert_array_equal(img.affine, np.asarray(declared))


def test_bmd_affine_from_a_pickled_mask_image_wins_over_the_card(bmd_local):
    import nibabel as nib
    import numpy as np

    root, rep, reg, meta_path = bmd_local
    file_affine = np.array([[2.5, 0, 0, -76.0], [0, 2.5, 0, -112.0], [0, 0, 2.75, -78.0], [0, 0, 0, 1]])
    meta = np.load(meta_path, allow_pickle=True).item()  # the test's own replica file
    meta["fmri"]["sub_mask_header"] = nib.Nifti1Image(rep.masks[1].astype(np.uint8), file_affine)
    np.save(meta_path, meta, allow_pickle=True)
    card_path = root / "model_cards" / "test-bmd-grid.yaml"
    card = yaml.safe_load(card_path.read_text())
    card["output"]["space"]["affine"] = np.eye(4).tolist()
    card_path.write_text(yaml.safe_dump(card, sort_keys=False))
    got = _bmd_client(root, reg).get_model_metadata("test-bmd-grid", subject=1)["fmri"]["affine"]
    np.testing.assert_array_equal(got, file_affine)  # read as inert state: nibabel code never runs
