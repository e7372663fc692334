"""Registry-wide checks: every entry is loadable on paper and validates parameters before any I/O."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import berg
from berg.errors import InvalidParameterError, ModelNotFoundError
from berg.registry import Registry
from berg.yamlio import read_yaml

REGISTRY = Registry()
MODEL_IDS = REGISTRY.ids()


def _import(path: str):
    module, _, name = path.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_registry_is_not_empty():
    assert {"fmri-bmd-s3d", "fmri-bold5000-resnet18"} <= set(MODEL_IDS)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_entry_is_consistent(model_id):
    """Every entry is loadable on paper: card valid, classes importable and implementing the contract."""
    check_entry(REGISTRY, model_id)


def check_entry(registry, model_id):
    """The registry-wide checks for one entry (tests/test_contract.py runs them on the toy registry too)."""
    from torchvision.models import get_weight

    from berg.core.contract import check_model_class
    from berg.core.layouts import ArtifactLayout
    from berg.core.spaces import SPACE_KINDS
    from berg.transforms import from_recipe

    spec = registry.get(model_id)
    card = spec.card
    assert card["id"] == model_id
    assert spec.subjects, "card lists no subjects"
    assert spec.output_space_kind in SPACE_KINDS
    if {"voxels", "outputs"} & set(spec.selection_keys):
        for s in spec.subjects:
            assert spec.n_outputs(s) and spec.n_outputs(s) > 0, f"card lacks n_outputs for subject {s}"
    if "roi" in spec.selection_keys:
        assert spec.roi_names, "card lists no ROI names"
    if spec.model_class:
        check_model_class(_import(spec.model_class), model_id)
    if spec.ensemble:
        members = [m["model"] for m in spec.ensemble["members"]]
        assert members and all(m in registry for m in members), members
        assert {registry.get(m).output_space_kind for m in members} == {spec.output_space_kind}
        return
    if spec.recipe.get("transform"):
        from_recipe(spec.recipe["transform"])
    backbone = spec.recipe.get("backbone") or {}
    if backbone.get("builder"):
        _import(backbone["builder"])
    if backbone.get("weights"):
        get_weight(backbone["weights"])
    if spec.layout not in ("native", "none"):
        assert issubclass(_import(spec.layout), ArtifactLayout)
    kind = spec.source["kind"]
    assert kind in ("s3", "pypi_wheel", "build") or ":" in kind, kind
    if spec.build:
        _import(spec.build["creator"])
        assert kind == "build", "a recipe model's files come from `berg build` (source kind: build)"


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_parameters_validated_before_io(model_id, monkeypatch, tmp_path):
    client = berg.BERG(cache_dir=tmp_path, offline=True)

    def boom(*a, **k):
        raise AssertionError("I/O attempted before validation")

    monkeypatch.setattr(type(client), "_layout", boom)
    monkeypatch.setattr(type(client), "load", boom)  # everything below must fail in load_request (no I/O)
    spec = REGISTRY.get(model_id)
    first = spec.subjects[0]
    keys = spec.selection_keys
    cases = [
        ({"subject": 999}, "valid subjects"),
        ({"subject": first, "selection": {"bogus_key": 1}}, "valid keys"),
        ({"subject": first, "device": "tpu"}, "valid values"),
        ({"subject": first, "batch_size": -1}, "positive integer"),
        ({"subject": first, "no_such_option": 1}, "valid options"),
    ]
    if "roi" in keys:
        cases.append(({"subject": first, "selection": {"roi": "NotAnROI"}}, "Valid ROIs"))
    if "voxels" in keys:
        n = spec.n_outputs(first)
        cases.append(({"subject": first, "selection": {"voxels": np.ones(n + 1)}}, f"exactly {n}"))
    if "channels" in keys:
        cases.append(({"subject": first, "selection": {"channels": ["NoSuchChannel"]}}, "Valid channels"))
    for key in ("lh_vertices", "rh_vertices", "timepoints"):
        if key in keys:
            cases.append(({"subject": first, "selection": {key: np.ones(3)}}, "exactly"))
    for kwargs, fragment in cases:
        with pytest.raises(InvalidParameterError) as info:
            client.get_encoding_model(model_id, **kwargs)
        assert fragment in str(info.value)
    assert not any(tmp_path.iterdir()), "validation wrote into the cache"


def test_duplicate_yaml_keys_are_refused(tmp_path):
    import yaml

    p = tmp_path / "dup.yaml"
    p.write_text("models:\n  a: 1\n  a: 2\n")
    with pytest.raises(yaml.YAMLError, match="duplicate key"):
        read_yaml(p)


def test_extra_registry_file_and_duplicates(tmp_path):
    p = tmp_path / "registry.yaml"
    p.write_text(
        "format_version: 1\nmodels:\n  fmri-bmd-s3d:\n    card: x.yaml\n    modality: fmri\n"
        "    dataset: bmd\n    subjects: [1]\n    source: {kind: s3}\n    layout: native\n    recipe: {}\n"
    )
    with pytest.raises(InvalidParameterError, match="defined by more than one registry") as info:
        Registry(p)
    assert "'berg'" in str(info.value) and str(p) in str(info.value)  # both sources named
    assert Registry(p, prefer={"fmri-bmd-s3d": str(p)}).get("fmri-bmd-s3d").card_path == tmp_path / "x.yaml"
    with pytest.raises(InvalidParameterError, match="not found"):
        Registry(tmp_path / "missing.yaml")


def test_unknown_model_close_matches():
    with pytest.raises(ModelNotFoundError) as info:
        REGISTRY.get("fmri-bmd-s3")
    assert "fmri-bmd-s3d" in str(info.value)


# --------------------------------------------------------------------------- one fact in one place


def _write(tmp_path, text: str, name: str = "registry.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_families_versions_and_weights_transforms(tmp_path):
    """`extends` deep-merges a family (chained), versions merge over the entry, weights bring transforms."""
    p = _write(
        tmp_path,
        """format_version: 1
defaults:
  base: {modality: fmri, dataset: d, layout: native, source: {kind: s3, bucket: b, prefix: p/},
         recipe: {readout: linear, backbone: {builder: torchvision.models.alexnet, weights: AlexNet_Weights.IMAGENET1K_V1}}}
  squash: {extends: base, recipe: {transform: {kind: image, size: [64, 64], resize: squash, crop: null}}}
models:
  m-a:
    extends: squash
    source: {prefix: q/}
  m-b:
    extends: base
    recipe: {transform: {kind: image}}
    versions:
      1: {source: {prefix: v1/}}
      2: {source: {prefix: v2/}, dataset: d2}
""",
    )
    reg = Registry(p, outside=[])
    a = reg.get("m-a")
    assert a.source == {"kind": "s3", "bucket": "b", "prefix": "q/"}
    assert a.card_path == tmp_path / "m-a.yaml"  # the card of an entry is <id>.yaml by default
    assert a.recipe["transform"] == {
        "kind": "image",
        "size": [64, 64],
        "resize": "squash",
        "crop": None,  # stated: wins over the weights' crop
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    b = reg.get("m-b")
    assert (b.version, b.model_id, b.dataset, b.source["prefix"]) == (2, "m-b@2", "d2", "v2/")
    assert reg.get("m-b@1").dataset == "d" and reg.get("m-b@1").source["prefix"] == "v1/"
    assert reg.versions("m-b") == [1, 2] and reg.ids("m-*") == ["m-a", "m-b"]
    assert b.recipe["transform"] == {
        "kind": "image",
        "size": [256, 256],
        "resize": "shorter",
        "crop": [224, 224],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    with pytest.raises(ModelNotFoundError, match="versions: 1, 2"):
        reg.get("m-b@3")


@pytest.mark.parametrize(
    "text, match",
    [
        ("models: {m: {extends: nope, card: c.yaml}}", "does not define"),
        ("defaults: {a: {extends: b}, b: {extends: a}}\nmodels: {m: {extends: a}}", "circle"),
        ("models: {m: {modality: f, dataset: d, source: {}, layout: native, recipe: {}, versions: {0: {}}}}", ">= 1"),
        ("models: {'../m': {card: c.yaml}}", "not valid"),
        ("models: [1, 2]", "mapping"),
        ("models: {m: 1}", "mapping"),
        ("models: {a: 1", "not valid YAML"),
    ],
)
def test_bad_registry_files_are_one_clear_error(tmp_path, text, match):
    with pytest.raises(InvalidParameterError, match=match):
        Registry(_write(tmp_path, text), outside=[])


def test_shipped_entries_state_preprocessing_once():
    """No entry restates what its weights declare; the BERG catalogue entries are short (a family each)."""
    raw = read_yaml(berg._resources.registry_path())
    for model_id, entry in raw["models"].items():
        transform = (entry.get("recipe") or {}).get("transform") or {}
        weights = ((entry.get("recipe") or {}).get("backbone") or {}).get("weights")
        if weights or transform.get("from_weights"):
            assert "mean" not in transform and "std" not in transform, model_id
    families = [m for m, e in raw["models"].items() if str(e.get("extends", "")).startswith("berg_catalogue")]
    assert len(families) == 6
    for model_id in families:
        assert set(raw["models"][model_id]) <= {"extends", "card", "modality", "dataset", "source", "recipe"}, model_id


def test_build_defaults_live_in_the_registry():
    """creation_code's defaults of fmri-bold5000-alexnet are the registry's build options (one place)."""
    from creation_code.bold5000_alexnet.build import DEFAULTS

    options = REGISTRY.get("fmri-bold5000-alexnet").build["options"]
    assert {k: v for k, v in DEFAULTS.items() if k not in ("work_dir", "model_id")} == options


def test_registry_layering_and_dead_code():
    """berg.registry needs neither berg.features nor torch; the dead helpers are gone."""
    import subprocess
    import sys

    import berg.registry as registry
    import berg.yamlio as yamlio

    code = (
        "import sys, berg.registry; "
        "print(sorted(m for m in ('berg.features', 'torch', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert not hasattr(registry, "load_registry") and not hasattr(yamlio, "parse_yaml")


def test_list_models_refuses_bad_patterns():
    client = berg.BERG()
    with pytest.raises(InvalidParameterError, match="glob string"):
        client.list_models(5)
    assert client.list_models("fmri-bmd-*") == ["fmri-bmd-s3d"]


def test_cli_registry_errors_are_one_line(tmp_path, capsys):
    from berg.cli import main

    broken = _write(tmp_path, "models: {a: 1", "broken.yaml")
    assert main(["--registry", str(broken), "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("berg: error:") and "not valid YAML" in err
    assert "Traceback" not in err
