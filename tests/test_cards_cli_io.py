"""Model cards (schema, duplicates, docs up to date), the CLI, and HDF5 output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from berg.cards import card_to_text, load_card, validate_card
from berg.cli import main
from berg.registry import Registry

from synthetic_native import MODEL_ID, N_OUT, build

REPO = Path(__file__).resolve().parents[1]
CARDS = sorted((REPO / "model_cards").glob("*.yaml"))


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_every_card_is_valid_and_matches_registry(path):
    card = load_card(path)
    assert validate_card(card) == []
    spec = Registry().get(card["id"])
    assert [str(s) for s in spec.subjects] == [str(s) for s in card["parameters"]["subjects"]]
    assert card["input"]["type"] == spec.input_kind
    assert card_to_text(card).startswith(card["id"])


def test_schema_rejects_broken_cards():
    card = load_card(CARDS[0])
    broken = dict(card, surprise=1)
    assert any("surprise" in e for e in validate_card(broken))
    no_counts = json.loads(json.dumps(card))
    no_counts["parameters"]["selection"]["n_outputs"].pop(next(iter(no_counts["parameters"]["selection"]["n_outputs"])))
    assert any("n_outputs" in e for e in validate_card(no_counts))
    del no_counts["license"]
    assert any("license" in e for e in validate_card(no_counts))


def test_duplicate_keys_in_cards_are_errors(tmp_path):
    import yaml

    p = tmp_path / "x.yaml"
    p.write_text("id: a\nid: b\n")
    with pytest.raises(yaml.YAMLError, match="duplicate"):
        load_card(p)


def test_generated_docs_are_up_to_date():
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, f"run `make docs`: {res.stdout}"


def test_cli_list_describe_and_errors(capsys):
    assert main(["list", "fmri-*"]) == 0
    out = capsys.readouterr().out
    assert "fmri-bmd-s3d" in out and "fmri-bold5000-resnet18" in out
    assert main(["describe", "fmri-bmd-s3d"]) == 0
    assert "BMDgeneral" in capsys.readouterr().out
    assert main(["describe", "fmri-bmd-s3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("berg: error:") and "fmri-bmd-s3d" in err and err.count("\n") == 1


def test_cli_help_runs():
    res = subprocess.run([sys.executable, "-m", "berg.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "encode" in res.stdout and "cache" in res.stdout


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return build(tmp_path_factory.mktemp("synthetic-cli"))


def test_cli_encode_h5_and_nifti(synth, tmp_path, capsys):
    import h5py
    import nibabel as nib
    from PIL import Image

    paths = []
    for i, img in enumerate(synth.test_images[:3]):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    common = ["--berg-dir", str(synth.berg_dir), "--cache-dir", str(tmp_path / "c"), "--registry", str(synth.registry), "--offline"]
    h5 = tmp_path / "out.h5"
    assert main([*common, "encode", MODEL_ID, "--subject", "1", "--backbone-weights", "untrained", "--device", "cpu", "-q", *paths, "-o", str(h5)]) == 0
    with h5py.File(h5) as f:
        r = f["sub-01/responses"][()]
        assert r.shape == (3, N_OUT[1]) and r.dtype == np.float32
        np.testing.assert_allclose(r, synth.expected[1][:3], rtol=1e-4, atol=1e-4)
        prov = json.loads(f.attrs["provenance"])
        assert prov["model_id"] == MODEL_ID and prov["artifacts"]
        assert f["sub-01/output_ids"].shape == (N_OUT[1], 3)
        assert [s.decode() for s in f["stimulus_ids"][()]] == [Path(p).name for p in paths]
    nii = tmp_path / "out.nii.gz"
    assert main([*common, "encode", MODEL_ID, "--subject", "1", "--roi", "A", "--backbone-weights", "untrained", "-q", *paths, "-o", str(nii)]) == 0
    assert nib.load(nii).shape == (6, 7, 5, 3)
    assert main([*common, "encode", MODEL_ID, "--subject", "9", *paths, "-o", str(nii)]) == 2
    assert "valid subjects: 1, 2" in capsys.readouterr().err
