"""Registry-wide checks: every entry is loadable on paper and validates parameters before any I/O."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import berg
from berg.errors import InvalidParameterError, ModelNotFoundError
from berg.registry import Registry, read_yaml

REGISTRY = Registry()
MODEL_IDS = REGISTRY.ids()


def _import(path: str):
    module, _, name = path.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_registry_is_not_empty():
    assert {"fmri-bmd-s3d", "fmri-bold5000-resnet18"} <= set(MODEL_IDS)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_entry_is_consistent(model_id):
    from torchvision.models import get_weight

    from berg.layouts import ArtifactLayout
    from berg.transforms import from_recipe

    spec = REGISTRY.get(model_id)
    card = spec.card
    assert card["id"] == model_id
    assert [str(s) for s in card["parameters"]["subjects"]] == [str(s) for s in spec.subjects]
    for s in spec.subjects:
        assert spec.n_outputs(s) and spec.n_outputs(s) > 0, f"card lacks n_outputs for subject {s}"
    assert spec.roi_names, "card lists no ROI names"
    from_recipe(spec.recipe["transform"])
    _import(spec.recipe["backbone"]["builder"])
    get_weight(spec.recipe["backbone"]["weights"])
    assert spec.recipe["nodes"]
    if spec.layout != "native":
        assert issubclass(_import(spec.layout), ArtifactLayout)
    if spec.model_class:
        from berg.engine import LinearEncodingModel

        assert issubclass(_import(spec.model_class), LinearEncodingModel)
    assert spec.source["kind"] in ("s3", "pypi_wheel")


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_parameters_validated_before_io(model_id, monkeypatch, tmp_path):
    client = berg.BERG(cache_dir=tmp_path, offline=True)

    def boom(*a, **k):
        raise AssertionError("I/O attempted before validation")

    monkeypatch.setattr(type(client), "_layout", boom)
    spec = REGISTRY.get(model_id)
    first = spec.subjects[0]
    cases = [
        ({"subject": 999}, "valid subjects"),
        ({"subject": first, "selection": {"roi": "NotAnROI"}}, "Valid ROIs"),
        ({"subject": first, "selection": {"voxels": np.ones(spec.n_outputs(first) + 1)}}, f"exactly {spec.n_outputs(first)}"),
        ({"subject": first, "device": "tpu"}, "valid values"),
        ({"subject": first, "batch_size": -1}, "positive integer"),
    ]
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
    p.write_text("format_version: 1\nmodels:\n  fmri-bmd-s3d:\n    card: x.yaml\n    modality: fmri\n"
                 "    dataset: bmd\n    subjects: [1]\n    source: {kind: s3}\n    layout: native\n    recipe: {}\n")
    with pytest.raises(InvalidParameterError, match="already registered"):
        Registry(p)
    with pytest.raises(InvalidParameterError, match="not found"):
        Registry(tmp_path / "missing.yaml")


def test_unknown_model_close_matches():
    with pytest.raises(ModelNotFoundError) as info:
        REGISTRY.get("fmri-bmd-s3")
    assert "fmri-bmd-s3d" in str(info.value)
