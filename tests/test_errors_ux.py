"""Errors that say what to do (issue 17): in one or two lines, in the caller's words (Python keyword or
CLI flag), before any download where possible, without chained tracebacks; and the untrained warning."""

from __future__ import annotations

import json
import sys
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest

from berg.cli import main
from berg.errors import (
    BackboneWeightsError,
    BERGError,
    InvalidParameterError,
    MissingExtraError,
    UntrainedBackboneWarning,
    in_cli_words,
    require_extra,
)
from berg.features import build_backbone, validate_backbone_weights
from berg.testing.sklearn_toy import MODEL_ID

RESNET = {"builder": "torchvision.models.resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"}
REAL = "fmri-bold5000-resnet18"


def _one_line_error(err: str, *parts: str) -> None:
    assert err.startswith("berg: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for p in parts:
        assert p in err, err


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("BERG_OFFLINE", raising=False)
    return home


# --------------------------------------------------------------------------- missing backbone weights


def _check_weights_message(text: str, home: Path) -> None:
    folder = str(home / "hub" / "checkpoints")
    assert "\n" not in text and len(text.replace(folder, "")) < 600, text  # one (long) line, not a traceback
    for part in (
        "ResNet18_Weights.IMAGENET1K_V1",
        "resnet18-f37072fd.pth",
        str(home / "hub" / "checkpoints"),
        "TORCH_HOME",
        "get_weight('ResNet18_Weights.IMAGENET1K_V1').get_state_dict()",
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    ):
        assert part in text, (part, text)


def test_offline_missing_weights_names_file_folder_command_and_untrained(empty_torch_home):
    with pytest.raises(BackboneWeightsError) as info:
        build_backbone(RESNET, None, offline=True)
    text = str(info.value)
    _check_weights_message(text, empty_torch_home)
    assert 'backbone_weights="untrained"' in text and "offline" in text
    cli = in_cli_words(info.value)
    assert "--backbone-weights untrained" in cli and "backbone_weights=" not in cli and "--offline" in cli


def test_failed_download_is_one_message_without_the_urllib_chain(empty_torch_home, monkeypatch):
    import torchvision.models._api as tv_api

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network)  # where torchvision's weights look it up
    with pytest.raises(BackboneWeightsError) as info:
        build_backbone(RESNET, None, offline=False)
    _check_weights_message(str(info.value), empty_torch_home)
    assert "could not be downloaded (44.7 MB): no network (the host name cannot be resolved)" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("untrainde", "did you mean 'untrained'?"),
        ("Untrained", "did you mean 'untrained'?"),
        ("pretraned", "did you mean 'pretrained'?"),
        ("zzz", "neither a keyword nor an existing file"),
        ("weights/missing.pth", "backbone_weights file not found"),
        (3, "is not valid"),
        (b"untrained", "is not valid"),
    ],
)
def test_misspelt_backbone_weights(value, fragment):
    with pytest.raises(InvalidParameterError) as info:
        validate_backbone_weights(value)
    assert fragment in str(info.value)
    assert (
        "'untrained' (a seeded random control)" in str(info.value)
        or "file not found" in str(info.value)
        or "did you mean" in str(info.value)
    )


def test_valid_backbone_weights_forms(tmp_path):
    assert validate_backbone_weights(None) is None
    assert validate_backbone_weights("pretrained") is None
    assert validate_backbone_weights("untrained") == "untrained"
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    assert validate_backbone_weights(f) == f
    with pytest.raises(InvalidParameterError, match="is a folder"):
        validate_backbone_weights(tmp_path)


# --------------------------------------------------------------------------- the CLI's words


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from test_cli import synthetic_model

    return synthetic_model(tmp_path_factory)


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    p = tmp_path / "in.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(p)
    return p


def test_cli_missing_weights_uses_the_flag(synth, image, tmp_path, empty_torch_home, capsys):
    argv = [
        "--berg-dir",
        str(synth.berg_dir),
        "--cache-dir",
        str(tmp_path / "c"),
        "--registry",
        str(synth.registry),
        "--offline",
        "encode",
        MODEL_ID,
        "--subject",
        "1",
        "--device",
        "cpu",
        str(image),
        "-o",
        str(tmp_path / "o.h5"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    _one_line_error(err, "resnet18-f37072fd.pth", "--backbone-weights untrained", "--offline", "TORCH_HOME")
    assert "backbone_weights" not in err
    assert main(["-v", *argv]) == 2  # -v: the traceback, then the same line
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().splitlines()[-1].startswith("berg: error: ")


def test_cli_misspelt_weights_fail_before_any_io(image, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "--cache-dir",
                str(cache),
                "encode",
                REAL,
                "--subject",
                "1",
                "--backbone-weights",
                "untrainde",
                str(image),
                "-o",
                str(tmp_path / "o.h5"),
            ]
        )
        == 2
    )
    _one_line_error(capsys.readouterr().err, "did you mean 'untrained'?", "--backbone-weights")
    assert not cache.exists()


@pytest.mark.parametrize(
    "argv, part",
    [
        (["encdoe", REAL], "did you mean 'encode'?"),
        (["encode", REAL, "--subject", "all", "--spce", "mni", "a.jpg", "-o", "o.h5"], "did you mean '--space'"),
        (["encode", REAL, "--subject", "all", "--space", "mnii", "a.jpg", "-o", "o.h5"], "did you mean 'mni'?"),
        (["encode", REAL, "--subject", "1", "--voxel-order", "C", "a.jpg", "-o", "o.h5"], "did you mean 'c'?"),
        (
            ["encode", "fmri-bold5000-resnet81", "--subject", "all", "--space", "mni", "a.jpg", "-o", "o.h5"],
            "model options need a known model: unknown model 'fmri-bold5000-resnet81'. Did you mean",
        ),
    ],
)
def test_misspelt_commands_flags_and_choices_get_close_matches(capsys, argv, part):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    _one_line_error(capsys.readouterr().err, part)


def test_misspelt_option_in_python_gets_close_matches():
    import berg

    with pytest.raises(InvalidParameterError, match="did you mean 'sigma'"):
        berg.BERG(offline=True).load_request(REAL, subject="all", options={"sigmaa": 2.0})


@pytest.mark.parametrize(
    "output, part",
    [
        ("o\x00ut.h5", "NUL byte"),
        ("DIR", "is a folder; give a file path"),
        ("DIR/", "is a folder; give a file path"),
        ("o.txt", "-o must end with .h5, .hdf5, .nii, .nii.gz"),
    ],
)
def test_cli_refuses_bad_output_paths_before_any_io(image, tmp_path, capsys, output, part):
    cache = tmp_path / "cache"
    (tmp_path / "DIR").mkdir()
    out = output.replace("DIR", str(tmp_path / "DIR")) if "DIR" in output else str(tmp_path / output)
    assert main(["--cache-dir", str(cache), "encode", REAL, "--subject", "1", str(image), "-o", out]) == 2
    _one_line_error(capsys.readouterr().err, part)
    assert not cache.exists()


def test_cli_disk_full_is_one_line_with_errno_and_exit_1(synth, image, tmp_path, capsys, monkeypatch):
    import errno

    import berg.io

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(berg.io, "save", full)
    out = tmp_path / "o.h5"
    assert (
        main(
            [
                "--berg-dir",
                str(synth.berg_dir),
                "--cache-dir",
                str(tmp_path / "c"),
                "--registry",
                str(synth.registry),
                "--offline",
                "-q",
                "encode",
                MODEL_ID,
                "--subject",
                "1",
                "--device",
                "cpu",
                "--backbone-weights",
                "untrained",
                str(image),
                "-o",
                str(out),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.splitlines()
    assert (
        err[-1] == f"berg: error: cannot write the responses ({out}): [Errno 28] No space left on device; "
        "free some space, or choose a path on another disk"
    )


def test_wrong_stimulus_kind_is_refused_before_any_download(tmp_path, capsys, image):
    """A still image for the video model, an .mp4 for an image model: refused before the store is touched."""
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "--cache-dir",
                str(cache),
                "encode",
                "fmri-bmd-s3d",
                "--subject",
                "1",
                str(image),
                "-o",
                str(tmp_path / "o.h5"),
            ]
        )
        == 2
    )
    _one_line_error(capsys.readouterr().err, "this model takes videos", "allow_still_images")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    assert (
        main(["--cache-dir", str(cache), "encode", REAL, "--subject", "1", str(clip), "-o", str(tmp_path / "o.h5")])
        == 2
    )
    _one_line_error(capsys.readouterr().err, "is a video file, but this model takes images")
    assert not cache.exists()


# --------------------------------------------------------------------------- missing extras


def test_require_extra_names_the_pip_command():
    with pytest.raises(MissingExtraError) as info:
        require_extra("berg_no_such_dependency.sub", "convert", "the MNI conversion", package="fslpy")
    assert str(info.value) == (
        "the MNI conversion needs fslpy, which is not installed: pip install 'berg[convert]' (or pip install fslpy)"
    )
    assert isinstance(info.value, ImportError) and isinstance(info.value, BERGError)
    assert require_extra("json", "x", "y") is json


def test_img2fmri_conversion_without_fslpy_says_which_extra(monkeypatch, tmp_path):
    from berg.models.bold5000_resnet18 import mni

    for name in [m for m in sys.modules if m == "fsl" or m.startswith("fsl.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fsl", None)  # import fsl -> ModuleNotFoundError
    with pytest.raises(MissingExtraError, match=r"pip install 'berg\[convert\]'"):
        mni.nn_index_map(
            coeff=tmp_path / "c.nii.gz",
            ref=tmp_path / "r.nii.gz",
            t1=tmp_path / "t.nii.gz",
            premat=tmp_path / "p.mat",
            func_shape=(2, 2, 2),
            func_affine=np.eye(4),
        )


# --------------------------------------------------------------------------- untrained backbone: warning + provenance


def test_untrained_backbone_warns_once_and_records_it():
    import torch

    from berg.features import FeatureExtractor
    from berg.testing import image_recipe

    recipe = image_recipe(RESNET, ["avgpool"], size=32, mean=[0.5] * 3, std=[0.25] * 3)
    ex = FeatureExtractor(recipe, backbone_weights="untrained", seed=3)
    x = torch.zeros(1, 3, 32, 32)
    with pytest.warns(UntrainedBackboneWarning, match="UNTRAINED backbone .*seed 3"):
        ex(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex(x)  # once per extractor, not per batch
    prov = ex.provenance()
    assert prov["backbone_weights"] == "untrained" and prov["seed"] == 3
    assert prov["warnings"] == [ex.untrained_warning] and "not the published model" in prov["warnings"][0]


def test_model_provenance_carries_the_untrained_warning(synth):
    import berg

    client = berg.BERG(berg_dir=synth.berg_dir, registry=synth.registry, offline=True)
    model = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")
    with pytest.warns(UntrainedBackboneWarning):
        client.encode(model, synth.test_images[:1], show_progress=False)
    prov = model.provenance()
    assert "UNTRAINED" in json.dumps(prov, default=str), prov


# --------------------------------------------------------------------------- the guide's examples run


def test_errors_and_inputs_guide_examples_run(capsys):
    import re

    guide = Path(__file__).resolve().parents[1] / "docs" / "guide" / "errors-and-inputs.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), re.S)
    assert len(blocks) >= 6
    for code in blocks:
        exec(compile(code, str(guide), "exec"), {"__name__": "guide_example"})
    out = capsys.readouterr().out
    assert "['img10.png', 'img2.png']" in out and "(14, 64, 64, 3)" in out and "above the limit of 5,000" in out
