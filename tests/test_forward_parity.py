"""The differentiable path equals encode: ``forward_pixels(x)`` == ``encode`` of the same images (issue 21).

Gradient-based synthesis (berg.experiments.synthesis) optimises images through ``model.forward_pixels``;
users score them with ``encode``. Both must run the same preprocessing, so:

* every transform of every registered model (as its model class builds it, including the BERG
  catalogue's training and BERG-inference variants) gives the same model input from ``pixels_to_input``
  on float pixels as from decoding the same 8-bit images;
* for each model family that offers ``forward_pixels`` (native engine, BERG catalogue NSD and EEG with
  averaged repetitions, AlexNet-style shorter-side resize + centre crop), ``forward_pixels(x)`` equals
  ``encode`` to 1e-4 of the responses' scale, and gradients reach the pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import berg
from berg.registry import Registry
from berg.testing import replica_entry, toy_model
from berg.testing import write_catalogue_replica as write_replica

RNG = np.random.default_rng(0)
#: Odd sizes and aspect ratios, so resize, crop and rounding rules all matter.
IMAGES = [RNG.integers(0, 256, (97, 131, 3), dtype=np.uint8) for _ in range(3)]


def _pixels(images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def _registry_transforms():
    """(model id, transform) for every registered model whose class builds its preprocessing from the recipe."""
    from berg.api import model_class_for
    from berg.core.contract import LoadRequest
    from berg.core.engine import LinearEncodingModel

    out = []
    registry = Registry()
    for model_id in registry.ids():
        spec = registry.get(model_id)
        if spec.ensemble or "transform" not in spec.recipe:
            continue
        cls = model_class_for(spec)
        if not issubclass(cls, LinearEncodingModel):
            continue  # models without a differentiable path (Algonauts CLIP+SAM: BaseModelInterface only)
        variants = spec.options.get("preprocessing", {}).get("choices") or [None]
        for variant in variants:
            options = cls.validate_options(spec, {} if variant is None else {"preprocessing": variant})
            request = LoadRequest(
                spec=spec, subjects=(spec.subjects[0],), selections={}, device="cpu", batch_size=2, options=options
            )
            out.append((f"{model_id}[{variant or 'default'}]", request, cls))
    return out


TRANSFORMS = _registry_transforms()


@pytest.mark.parametrize("case", TRANSFORMS, ids=[c[0] for c in TRANSFORMS])
def test_every_registered_transform_is_differentiable_and_equals_the_encode_path(case):
    name, request, cls = case
    request = request.replace(backbone_weights="untrained")
    transform = cls.extractor_for(request).transform
    if transform.kind == "video":
        clips = [RNG.integers(0, 256, (9, 41, 57, 3), dtype=np.uint8) for _ in range(2)]
        expected = transform(clips)
        pixels = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 255.0
    else:
        expected = transform(IMAGES)
        pixels = _pixels(IMAGES)
    pixels.requires_grad_(True)
    got = transform.pixels_to_input(pixels)
    assert got.shape == expected.shape
    if "berg_inference" in name:
        # BERG's own inference preset resizes 8-bit tensors (kept to reproduce BERG's numbers): one level
        assert (got - expected).abs().max() <= 1.0 / 255 / 0.224 + 1e-5
    else:
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    got.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_the_parity_check_can_fail():
    """A resize straight to the input size (the old forward_pixels) is caught by the same comparison."""
    import torch.nn.functional as F

    from berg.transforms import ImageTransform

    t = ImageTransform(size=(64, 64), resize="shorter", crop=(56, 56), mean=(0.5,) * 3, std=(0.25,) * 3)
    naive = (F.interpolate(_pixels(IMAGES), size=(56, 56), mode="bilinear", antialias=True) - 0.5) / 0.25
    assert (naive - t(IMAGES)).abs().max() > 0.1


def _assert_parity(model, images=IMAGES):
    encoded = model.encode(images, show_progress=False)
    pixels = _pixels(images).requires_grad_(True)
    out = model.forward_pixels(pixels)
    scale = float(np.std(encoded)) or 1.0
    np.testing.assert_allclose(out.detach().numpy(), encoded, rtol=0, atol=1e-4 * scale)
    out.sum().backward()
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0


def test_native_engine_forward_pixels_equals_encode(tmp_path):
    toy = toy_model(tmp_path, "volume", subjects=[1], n_components=6)
    model = toy.client().get_encoding_model(toy.model_id, subject=1, backbone_weights="untrained")
    _assert_parity(model)


N_VERT, CH, T = 30, ["O1", "Oz", "O2"], 5


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    common = dict(subjects=(1,), n_features=576, n_components=5, n_train=20)
    nsd = write_replica(root / "bucket", "nsd_fsaverage", "vit_b_32", n_vertices=N_VERT, **common)
    eeg = write_replica(root / "bucket", "things_eeg_2", "alexnet", channels=CH, n_times=T, **common)
    small = {"builder": "torchvision.models.mobilenet_v3_small", "weights": None}
    inference = {"inference": {"resize_size": 72, "crop_size": 64}}
    replica_entry(
        root,
        "test-nsd",
        "fmri-nsd_fsaverage-vit_b_32",
        source={"kind": "s3", "bucket": "absent", "prefix": nsd.prefix, "manifest": False},
        subjects=[1],
        selection={"lengths": {"lh_vertices": N_VERT, "rh_vertices": N_VERT}, "n_outputs": {1: 2 * N_VERT}},
        recipe={"backbone": small, "nodes": ["avgpool"], "transform": {"size": [64, 64]}, "berg_catalogue": inference},
    )
    n = 4 * len(CH) * T
    reg = replica_entry(
        root,
        "test-eeg",
        "eeg-things_eeg_2-alexnet",
        source={"kind": "s3", "bucket": "absent", "prefix": eeg.prefix, "manifest": False},
        subjects=[1],
        selection={"channels": CH, "lengths": {"timepoints": T}, "n_outputs": {1: n}},
        recipe={
            "backbone": small,
            "nodes": ["avgpool"],
            "transform": {"size": [72, 72], "crop": [64, 64]},
            "berg_catalogue": inference,
        },
    )
    return berg.BERG(berg_dir=root / "bucket", cache_dir=root / "cache", registry=reg, offline=True)


@pytest.mark.parametrize("preprocessing", ["training", "berg_inference"])
def test_catalogue_nsd_forward_pixels_equals_encode(catalogue, preprocessing):
    model = catalogue.get_encoding_model(
        "test-nsd", subject=1, backbone_weights="untrained", preprocessing=preprocessing
    )
    if preprocessing == "training":
        _assert_parity(model)
    else:  # the 8-bit preset: encode and forward differ by its rounding only
        encoded = model.encode(IMAGES, show_progress=False)
        out = model.forward_pixels(_pixels(IMAGES)).detach().numpy()
        assert np.abs(out - encoded).max() <= 0.05 * float(np.std(encoded))


def test_catalogue_eeg_averaged_repetitions_forward_equals_encode(catalogue):
    model = catalogue.get_encoding_model("test-eeg", subject=1, backbone_weights="untrained", average_repetitions=True)
    assert model.forward_pixels(_pixels(IMAGES)).shape == (len(IMAGES), len(CH), T)
    _assert_parity(model)
