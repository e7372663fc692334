"""Core API end to end on a synthetic native artifact, against scikit-learn computed independently."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import berg
from berg.errors import (
    InvalidParameterError,
    ModelNotFoundError,
    StimulusError,
)
from berg.testing.sklearn_toy import MODEL_ID, N_OUT, build


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return build(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def client(synth, tmp_path_factory):
    return berg.BERG(
        berg_dir=synth.berg_dir, cache_dir=tmp_path_factory.mktemp("cache"), offline=True, registry=synth.registry
    )


@pytest.fixture(scope="module")
def model1(client):
    return client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_import_berg_is_light():
    code = "import sys, berg; print(sorted(m for m in ('torch', 'torchvision', 'berg.core.engine', 'berg.models.bmd_s3d') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_encode_matches_sklearn_pipeline(client, model1, synth):
    out = client.encode(model1, synth.test_images, show_progress=False)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (len(synth.test_images), N_OUT[1])
    assert _rel(out, synth.expected[1]) < 1e-5


def test_channels_first_paths_and_pil_agree(client, model1, synth, tmp_path):
    from PIL import Image

    base = client.encode(model1, synth.test_images, show_progress=False)
    cf = client.encode(model1, synth.test_images.transpose(0, 3, 1, 2), show_progress=False)
    paths = []
    for i, img in enumerate(synth.test_images[:3]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    from_files = client.encode(model1, paths, show_progress=False)
    pil = client.encode(
        model1, [Image.fromarray(img).convert("L") for img in synth.test_images[:2]], show_progress=False
    )
    np.testing.assert_array_equal(cf, base)
    np.testing.assert_allclose(from_files, base[:3], rtol=1e-6, atol=1e-6)
    assert pil.shape == (2, N_OUT[1])  # greyscale converted to RGB, not a crash


def test_batch_size_does_not_change_results(client, synth):
    m = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained", batch_size=2)
    out = m.encode(synth.test_images, show_progress=False)
    assert _rel(out, synth.expected[1]) < 1e-5


def test_return_metadata_is_always_a_tuple(client, model1, synth):
    res = client.encode(model1, synth.test_images[:2], return_metadata=True, show_progress=False)
    assert isinstance(res, tuple) and len(res) == 2
    responses, meta = res
    assert responses.shape == (2, N_OUT[1])
    assert set(meta["rois"]) == {"A", "B"}
    assert meta["n_outputs"] == N_OUT[1]


def test_roi_selection_equals_slicing(client, model1, synth):
    full = model1.encode(synth.test_images, show_progress=False)
    for roi in ("A", "B", ["A", "B"]):
        m = client.get_encoding_model(
            MODEL_ID, subject=1, selection={"roi": roi}, device="cpu", backbone_weights="untrained"
        )
        names = [roi] if isinstance(roi, str) else roi
        rows = np.unique(np.concatenate([synth.roi_rows[n] for n in names]))
        np.testing.assert_allclose(
            m.encode(synth.test_images, show_progress=False), full[:, rows], rtol=1e-6, atol=1e-6
        )


def test_one_hot_selection_equals_slicing(client, model1, synth):
    full = model1.encode(synth.test_images, show_progress=False)
    vec = np.zeros(N_OUT[1], dtype=int)
    vec[[0, 3, 29]] = 1
    m = client.get_encoding_model(
        MODEL_ID, subject=1, selection={"voxels": vec}, device="cpu", backbone_weights="untrained"
    )
    np.testing.assert_allclose(
        m.encode(synth.test_images, show_progress=False), full[:, [0, 3, 29]], rtol=1e-6, atol=1e-6
    )
    # ROI wins over the vector, as in BERG
    m2 = client.get_encoding_model(
        MODEL_ID, subject=1, selection={"roi": "A", "voxels": vec}, device="cpu", backbone_weights="untrained"
    )
    assert m2.n_outputs[1] == 10


def test_multi_subject_equals_separate(client, model1, synth):
    multi = client.get_encoding_model(MODEL_ID, subject=[1, 2], device="cpu", backbone_weights="untrained")
    out = client.encode(multi, synth.test_images, show_progress=False)
    assert isinstance(out, dict) and set(out) == {1, 2}
    single2 = client.get_encoding_model(MODEL_ID, subject=2, device="cpu", backbone_weights="untrained")
    np.testing.assert_allclose(out[1], model1.encode(synth.test_images, show_progress=False), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[2], single2.encode(synth.test_images, show_progress=False), rtol=1e-6, atol=1e-6)
    assert _rel(out[2], synth.expected[2]) < 1e-5
    everyone = client.get_encoding_model(MODEL_ID, subject="all", device="cpu", backbone_weights="untrained")
    assert everyone.subjects == [1, 2]


def test_to_nifti_places_outputs(model1, synth):
    out = model1.encode(synth.test_images[:3], show_progress=False)
    img4 = model1.to_nifti(out)
    img3 = model1.to_nifti(out[0])
    assert img4.shape == (6, 7, 5, 3) and img3.shape == (6, 7, 5)
    data = np.asarray(img4.dataobj)
    ijk = synth.voxel_ijk[1]
    np.testing.assert_array_equal(data[ijk[:, 0], ijk[:, 1], ijk[:, 2], :], out.T)
    assert np.isfinite(np.asarray(img3.dataobj)).sum() == N_OUT[1]  # NaN outside the outputs


def test_get_model_metadata_without_model(client, synth):
    meta = client.get_model_metadata(MODEL_ID, subject=2)
    assert meta["n_outputs"] == N_OUT[2]
    np.testing.assert_array_equal(meta["voxel_ijk"], synth.voxel_ijk[2])
    both = client.get_model_metadata(MODEL_ID, subject=[1, 2])
    assert set(both) == {1, 2}


def test_provenance(model1):
    prov = model1.provenance()
    assert prov["model_id"] == MODEL_ID and prov["subjects"] == [1]
    assert prov["backbone"]["backbone_weights"] == "untrained"
    assert prov["transform"]["size"] == (64, 64)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def no_io(client, monkeypatch):
    """Any attempt to reach artifacts fails the test: validation must happen before I/O."""

    def boom(*a, **k):
        raise AssertionError("I/O attempted before validation")

    monkeypatch.setattr(type(client), "_layout", boom)
    return client


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"subject": 3}, InvalidParameterError, "valid subjects: 1, 2"),
        ({"subject": None}, InvalidParameterError, "valid subjects: 1, 2"),
        ({"subject": [1, 1]}, InvalidParameterError, "twice"),
        ({"subject": 1, "selection": {"roi": "C"}}, InvalidParameterError, "Valid ROIs: A, B"),
        ({"subject": 1, "selection": {"region": "A"}}, InvalidParameterError, "valid keys: ['roi', 'voxels']"),
        ({"subject": 1, "selection": {"voxels": np.ones(29)}}, InvalidParameterError, "exactly 30"),
        ({"subject": 1, "selection": {"voxels": np.zeros(30)}}, InvalidParameterError, "selects no output"),
        ({"subject": 1, "selection": {"voxels": np.full(30, 2)}}, InvalidParameterError, "0/1"),
        ({"subject": [1, 2], "selection": {"voxels": np.ones(30)}}, InvalidParameterError, "one vector per subject"),
        ({"subject": 1, "device": "gpu"}, InvalidParameterError, "'auto', 'cpu', 'cuda'"),
        ({"subject": 1, "batch_size": 0}, InvalidParameterError, "positive integer"),
        ({"subject": 1, "colour": True}, InvalidParameterError, "valid options"),
    ],
)
def test_bad_parameters_fail_before_io(no_io, kwargs, error, fragment):
    with pytest.raises(error) as info:
        no_io.get_encoding_model(MODEL_ID, **kwargs)
    assert fragment in str(info.value)


def test_unknown_model_suggests(no_io):
    with pytest.raises(ModelNotFoundError) as info:
        no_io.get_encoding_model("test-synthetic-resnet19", subject=1)
    assert "Did you mean 'test-synthetic-resnet18'" in str(info.value)
    assert "fmri-bmd-s3d" in str(info.value)  # the valid ids are listed
    with pytest.raises(InvalidParameterError, match="valid subjects"):
        no_io.get_model_metadata(MODEL_ID, subject=7)


@pytest.mark.parametrize(
    ("stimulus", "fragment"),
    [
        (np.zeros((2, 32, 32, 3), dtype=np.float32), "dtype is float32"),
        (np.zeros((32, 32, 3), dtype=np.uint8), "add the batch axis"),
        (np.full((1, 8, 8, 3), 300, dtype=np.int32), "outside 0-255"),
        (np.zeros((1, 2, 3, 8, 8), dtype=np.uint8), "(B, 3, H, W)"),
        (["/nonexistent/image.png"], "file not found"),
        ([], "empty"),
        (42, "unsupported stimulus type"),
    ],
)
def test_bad_stimuli(model1, stimulus, fragment):
    with pytest.raises(StimulusError) as info:
        model1.encode(stimulus, show_progress=False)
    assert fragment in str(info.value)


def test_video_stimulus_rules():
    from berg.stimuli import load_stimuli

    with pytest.raises(StimulusError, match="at least 14"):
        load_stimuli(np.zeros((1, 5, 3, 8, 8), dtype=np.uint8), "video", min_frames=14)
    with pytest.raises(StimulusError, match=r"\(B, T, 3, H, W\)"):
        load_stimuli(np.zeros((1, 5, 8, 8, 3), dtype=np.uint8), "video")
    ok = load_stimuli(np.zeros((2, 5, 3, 8, 10), dtype=np.uint8), "video")
    assert ok[0].shape == (5, 8, 10, 3)


def test_catalog_and_describe(client):
    assert MODEL_ID in client.list_models()
    assert client.list_models("fmri-*") == [m for m in client.list_models() if m.startswith("fmri-")]
    catalog = client.get_model_catalog()
    assert "synthetic" in catalog["fmri"]
    assert client.describe(MODEL_ID)["id"] == MODEL_ID
