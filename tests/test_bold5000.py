"""fmri-bold5000-resnet18 against the real img2fmri 1.0 wheel and img2fmri's published outputs."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import berg
from berg.models.bold5000_resnet18.convert import CONVERTER_VERSION, ROIS, WHEEL_SHA256, convert_wheel
from berg.models.bold5000_resnet18.mni import MNI_SHAPE
from berg.registry import Registry
from berg.store.artifacts import read_tensors

MODEL_ID = "fmri-bold5000-resnet18"
TEST_CACHE = Path(os.environ.get("BERG_TEST_CACHE", Path.home() / ".cache" / "berg-test"))


@pytest.fixture(scope="session")
def wheel() -> Path:
    """img2fmri 1.0's wheel, fetched once through berg's own PyPI source (pinned sha256) and kept."""
    from berg.store import Store
    from berg.store.sources import source_for

    spec = Registry().get(MODEL_ID)
    try:
        return source_for(spec.source).wheel_path(Store(cache_dir=TEST_CACHE))
    except berg.BERGError as exc:  # pragma: no cover - only without network and without a cached wheel
        pytest.skip(f"img2fmri wheel unavailable: {exc}")


@pytest.fixture(scope="session")
def artifact(wheel) -> Path:
    out = TEST_CACHE / "artifacts" / f"{WHEEL_SHA256[:12]}-v{CONVERTER_VERSION}"
    if not (out / "manifest.json").is_file():
        convert_wheel(wheel, out)
    return out


@pytest.fixture(scope="session")
def extracted(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("img2fmri")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root)
    return root / "img2fmri"


@pytest.fixture(scope="session")
def client(artifact, tmp_path_factory):
    # a converted artifact is a berg_dir for this model (its source has no prefix)
    return berg.BERG(berg_dir=artifact, cache_dir=tmp_path_factory.mktemp("cache"), offline=True)


def test_converted_coefficients_equal_sklearn_ridge(extracted, artifact):
    import joblib  # test-only cross-check of the pinned-hash wheel's pickles; berg itself never unpickles

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 3, (6, 512)).astype(np.float32)
    for s in (1, 2, 3):
        ro = read_tensors(artifact / f"readout/sub-{s:02d}.safetensors", mmap=False)
        md = read_tensors(artifact / f"metadata/sub-{s:02d}.safetensors", mmap=False)
        for roi in ROIS:
            ridge = joblib.load(extracted / "models" / f"subj{s}_{roi}_model.pkl")
            rows = md[f"roi/{roi}"]
            ours = x @ ro["weight"][rows].T + ro["bias"][rows]
            np.testing.assert_allclose(ours, ridge.predict(x), rtol=1e-5, atol=1e-5)
    counts = {s: json.loads((artifact / f"metadata/sub-{s:02d}.json").read_text())["n_outputs"] for s in (1, 2, 3)}
    assert counts == {s: Registry().get(MODEL_ID).n_outputs(s) for s in (1, 2, 3)}


def _reference_features(paths) -> np.ndarray:
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms as T

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    net.eval()
    # torchvision's tensor pipeline: float pixels, antialiased bilinear resize (berg resizes before any
    # 8-bit rounding; Pillow's 8-bit pipeline is within one level, tests/test_transforms.py)
    prep = T.Compose(
        [T.ToTensor(), T.Resize((224, 224), antialias=True), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    with torch.no_grad():
        return net(torch.stack([prep(Image.open(p).convert("RGB")) for p in paths])).numpy()


def test_subject_space_encode_equals_direct_computation(client, artifact, img2fmri_data):
    IMAGES = sorted(img2fmri_data.glob("*.jpg"))
    feats = _reference_features(IMAGES)
    model = client.get_encoding_model(MODEL_ID, subject=[1, 2, 3], device="cpu", backbone_weights="untrained")
    out = client.encode(model, IMAGES, show_progress=False)
    for s in (1, 2, 3):
        ro = read_tensors(artifact / f"readout/sub-{s:02d}.safetensors", mmap=False)
        np.testing.assert_allclose(out[s], feats @ ro["weight"].T + ro["bias"], rtol=1e-4, atol=1e-4)
    ppa = client.get_encoding_model(
        MODEL_ID, subject=1, selection={"roi": "LHPPA"}, device="cpu", backbone_weights="untrained"
    )
    rows = read_tensors(artifact / "metadata/sub-01.safetensors", mmap=False)["roi/LHPPA"]
    np.testing.assert_allclose(client.encode(ppa, IMAGES, show_progress=False), out[1][:, rows], rtol=1e-5, atol=1e-5)
    img = model.to_nifti(out)[1]
    assert img.shape == (71, 89, 72, 4)


def test_group_map_is_zscored_on_support(client, img2fmri_data):
    IMAGES = sorted(img2fmri_data.glob("*.jpg"))
    model = client.get_encoding_model(MODEL_ID, subject="all", space="mni", device="cpu", backbone_weights="untrained")
    maps = model.encode(IMAGES, show_progress=False)
    assert maps.shape == (4, model.mni_space.n_outputs)
    np.testing.assert_allclose(maps.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(maps.std(axis=1), 1, atol=1e-4)
    img = model.to_nifti(maps)
    data = np.asarray(img.dataobj)
    assert img.shape == (*MNI_SHAPE, 4)
    np.testing.assert_array_equal(img.affine, np.array([[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]]))
    assert np.isfinite(data[..., 0]).sum() <= model.mni_space.n_outputs  # NaN outside the support
    v02 = client.get_encoding_model(
        MODEL_ID,
        subject="all",
        space="mni",
        zscore_support="v0.2",
        sigma=1.25,
        roi_list=["EarlyVis", "OPA", "LOC", "RSC"],
        device="cpu",
        backbone_weights="untrained",
    )
    m2 = v02.encode(IMAGES[:1], show_progress=False)
    assert m2.shape == (1, 41515)  # img2fmri v0.2's published support for these ROIs and sigma
    with pytest.raises(berg.InvalidParameterError, match="subject='all'"):
        client.get_encoding_model(MODEL_ID, subject=1, space="mni", backbone_weights="untrained")
    with pytest.raises(berg.InvalidParameterError, match="valid: .EarlyVis"):
        client.get_encoding_model(MODEL_ID, subject="all", space="mni", roi_list=["FFA"], backbone_weights="untrained")


def test_voxel_order_and_center_crop_options(client, artifact):
    c = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")
    f = client.get_encoding_model(
        MODEL_ID, subject=1, voxel_order="fortran", device="cpu", backbone_weights="untrained"
    )
    md = read_tensors(artifact / "metadata/sub-01.safetensors", mmap=False)
    np.testing.assert_array_equal(f.spaces[1].voxel_ijk, md["voxel_ijk_fortran"])
    np.testing.assert_array_equal(c.spaces[1].voxel_ijk, md["voxel_ijk"])
    crop = client.get_encoding_model(MODEL_ID, subject=1, center_crop=True, device="cpu", backbone_weights="untrained")
    assert crop.extractor.transform.crop == (224, 224) and crop.extractor.transform.resize == "shorter"
    img = np.random.default_rng(0).integers(0, 256, (300, 420, 3), dtype=np.uint8)  # not square
    assert not np.allclose(crop.extractor.transform([img]).numpy(), c.extractor.transform([img]).numpy())


def test_movie_to_4d_nifti_with_time(client, extracted):
    model = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")
    img = model.encode_movie(extracted / "tests" / "test_data" / "landscape.mp4", fps=2, show_progress=False)
    assert img.ndim == 4 and img.shape[:3] == (71, 89, 72) and img.shape[3] >= 2
    assert img.header.get_zooms()[3] == pytest.approx(0.5)
    assert img.header.get_xyzt_units() == ("mm", "sec")


def test_pypi_source_downloads_converts_and_caches(wheel, tmp_path):
    """The registry's "PyPI wheel + converter" source through the store (wheel pre-seeded: no network)."""
    cache = tmp_path / "cache"
    (cache / "_wheels").mkdir(parents=True)
    shutil.copy(wheel, cache / "_wheels" / wheel.name)
    client = berg.BERG(cache_dir=cache)
    meta = client.get_model_metadata(MODEL_ID, subject=2)
    assert set(meta["rois"]) >= {"EarlyVis", "LHPPA", "RHPPA"}
    assert (cache / MODEL_ID / "manifest.json").is_file()
    offline = berg.BERG(cache_dir=cache, offline=True)
    assert offline.get_model_metadata(MODEL_ID, subject=3)["n_outputs"] == 3104
