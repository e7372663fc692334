"""berg.testing: the one factory of synthetic models, and the benchmark harness's results pipeline."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from berg.errors import InvalidParameterError
from berg.testing import SPACES, reference_features, replica_entry, toy_model

REPO = Path(__file__).resolve().parents[1]


def test_import_is_light():
    code = "import berg.testing, sys; assert not {'torch', 'sklearn', 'h5py'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).integers(0, 256, (3, 40, 44, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def feats(images):
    return reference_features(images, size=32)


@pytest.mark.parametrize("space", SPACES)
def test_every_space_matches_its_ground_truth(space, tmp_path, images, feats):
    toy = toy_model(tmp_path, space, subjects=[1, 3], n_components=6 if space == "volume" else None)
    model = toy.client().get_encoding_model(toy.model_id, subject=[1, 3], device="cpu", backbone_weights="untrained")
    out = model.encode(images, show_progress=False)
    for s in (1, 3):
        expected = toy.predict(feats, s)
        assert out[s].shape == expected.shape
        np.testing.assert_allclose(out[s], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    other = toy.predict(reference_features(images[::-1], size=32), 1)
    assert not np.allclose(out[1], other)  # the check can fail: other stimuli give other outputs


def test_sklearn_readout_and_mlp_in_one_registry(tmp_path, images, feats):
    sk = toy_model(tmp_path, "volume", model_id="test-sk", readout="sklearn", size=32, n_test=2)
    mlp = toy_model(tmp_path, "sensor_time", model_id="test-mlp", readout="mlp")
    assert sk.registry == mlp.registry
    client = mlp.client()
    out = client.get_encoding_model("test-sk", subject=2, backbone_weights="untrained").encode(
        sk.test_images, show_progress=False
    )
    np.testing.assert_allclose(out, sk.expected[2], rtol=1e-4, atol=1e-4 * np.abs(sk.expected[2]).max())
    m = client.get_encoding_model("test-mlp", subject=1, backbone_weights="untrained")
    assert type(m).__name__ == "ToyMLPModel"
    np.testing.assert_allclose(m.encode(images, show_progress=False), mlp.predict(feats, 1), rtol=1e-4, atol=1e-4)
    assert sk.voxel_ijk[1].shape == (30, 3) and mlp.voxel_ijk == {}


def test_bad_input_is_refused_with_the_valid_values(tmp_path):
    with pytest.raises(InvalidParameterError, match="flat, volume, surface, sensor_time"):
        toy_model(tmp_path, "mesh")
    with pytest.raises(InvalidParameterError, match="random, sklearn, mlp"):
        toy_model(tmp_path, "flat", readout="deep")
    toy_model(tmp_path, "flat")
    with pytest.raises(InvalidParameterError, match="already registers 'test-toy-flat'"):
        toy_model(tmp_path, "flat")
    with pytest.raises(InvalidParameterError, match="n_features"):
        toy_model(tmp_path, "flat", model_id="test-x", backbone={"builder": "torchvision.models.alexnet"})


def test_every_card_the_factory_writes_meets_the_schema_of_the_built_in_cards(tmp_path):
    from berg.cards import validate_card
    from berg.testing import sklearn_toy, toy_suite
    from berg.testing.toys import read_card

    ids = [toy_model(tmp_path, space).model_id for space in SPACES]
    ids.append(sklearn_toy.build(tmp_path).model_id)
    suite = toy_suite(tmp_path / "suite")
    assert len(ids) == 5 and len(suite.models) == 3
    for model_id in ids:
        assert validate_card(read_card(tmp_path, model_id)) == [], model_id
    for model_id in ("test-toy-ensemble", "test-toy-recipe", "test-toy-incomplete", *suite.models):
        assert validate_card(read_card(suite.root, model_id)) == [], model_id
    card = read_card(tmp_path, sklearn_toy.MODEL_ID)
    assert card["parameters"]["selection"]["n_outputs"] == sklearn_toy.N_OUT
    # the check can fail: a card with a subject missing from n_outputs is refused
    card["parameters"]["subjects"] = [1, 2, 3]
    assert any("n_outputs" in e for e in validate_card(card))


def test_replica_entry_copies_the_real_entry_and_changes_only_what_it_is_told(tmp_path):
    from berg.registry import Registry

    src = {"kind": "s3", "bucket": "b", "prefix": "p/", "manifest": False}
    path = replica_entry(
        tmp_path,
        "test-bmd-tiny",
        "fmri-bmd-s3d",
        source=src,
        subjects=[1],
        selection={"n_outputs": {1: 7}},
        recipe={"nodes": ["features.2"], "transform": {"size": [32, 32]}},
    )
    real, spec = Registry().get("fmri-bmd-s3d"), Registry(path).get("test-bmd-tiny")
    assert spec.subjects == [1] and spec.source == src and spec.layout == real.layout
    assert spec.recipe["nodes"] == ["features.2"] and spec.recipe["transform"]["size"] == [32, 32]
    assert {k: v for k, v in spec.recipe["transform"].items() if k != "size"} == {
        k: v for k, v in real.recipe["transform"].items() if k != "size"
    }
    assert spec.card["parameters"]["selection"]["n_outputs"] == {1: 7}
    assert spec.roi_names == real.roi_names


# ------------------------------------------------------------------------------------------ harness
def _harness():
    spec = importlib.util.spec_from_file_location("bench_harness", REPO / "benchmarks" / "_harness.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def _rec(figure, value, target=None, loaded=False, unit="x"):
    return {
        "benchmark": "demo",
        "figure": figure,
        "value": value,
        "unit": unit,
        "target": target,
        "loaded": loaded,
        "load_before": 0.2,
        "load_after": 0.3,
        "peak_gflops": 100.0,
        "time": "2026-01-01T00:00:00",
        "git_sha": "abc",
        "note": None,
        "cpu_model": "cpu",
        "threads": {"cores": 2},
    }


def test_results_md_is_generated_from_the_lines_and_judges_each_target(tmp_path):
    h = _harness()
    t = h.parse_target(">= 0.9")
    assert t == {"op": ">=", "value": 0.9}
    with pytest.raises(ValueError, match="'>= number'"):
        h.parse_target("about 1")
    records = [
        _rec("met", 0.95, t),
        _rec("missed", 0.5, t),
        _rec("busy", 0.5, t, loaded=True),
        _rec("gemm", 80.0, unit="GFLOP/s"),
        _rec("met", 0.1, t),  # a later line of the same figure wins
    ]
    assert [h.status(r) for r in records] == ["met", "missed", "loaded", "—", "missed"]
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nhand-written history stays\n")
    text = h.render(md, records)
    assert "hand-written history stays" in text and text.count(h.BEGIN) == 1
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert " | missed | " in rows["met"] and " | loaded | " in rows["busy"] and " | missed | " in rows["missed"]
    assert " | 0.8 | " in rows["gemm"]  # 80 GFLOP/s against the 100 GFLOP/s peak
    again = h.render(md, records[:1])  # regenerating replaces the block, never appends
    assert again.count(h.BEGIN) == 1 and " | met | " in again


def test_figures_are_appended_only_outside_smoke(tmp_path, monkeypatch):
    import argparse

    h = _harness()
    monkeypatch.delenv(h.ENV_RESULTS, raising=False)
    out = tmp_path / "r.jsonl"
    for smoke in (True, False):
        rec = h.start("demo", argparse.Namespace(smoke=smoke, results=out))
        rec.figure("ratio", 1.25, "x", target="<= 2")
    lines = h.read_results([out])
    assert len(lines) == 1 and lines[0]["value"] == 1.25 and lines[0]["smoke"] is False
    for key in ("machine", "cpu_model", "threads", "load_before", "load_after", "versions", "git_sha", "target"):
        assert key in lines[0]
