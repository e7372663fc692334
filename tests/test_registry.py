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
    with pytest.raises(InvalidParameterError, match="already registered"):
        Registry(p)
    with pytest.raises(InvalidParameterError, match="not found"):
        Registry(tmp_path / "missing.yaml")


def test_unknown_model_close_matches():
    with pytest.raises(ModelNotFoundError) as info:
        REGISTRY.get("fmri-bmd-s3")
    assert "fmri-bmd-s3d" in str(info.value)
