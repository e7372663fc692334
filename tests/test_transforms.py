"""Declared preprocessing: exact agreement with the reference pipelines it stands for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from berg.errors import InvalidParameterError
from berg.transforms import ImageTransform, VideoTransform, from_recipe, select_frames

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


#: berg resizes float pixels (the differentiable path's function) where Pillow rounds to 8 bits after
#: resizing: pixels agree within one 8-bit level, i.e. 1/255/std after normalisation.
ONE_LEVEL = 1.0 / 255 / min(STD) + 1e-6


def _close_to_pil(got, expected):
    diff = (got - expected).abs()
    assert diff.max() <= ONE_LEVEL, float(diff.max())
    assert diff.mean() <= 0.4 * ONE_LEVEL, float(diff.mean())  # rounding error, not a shifted or blurred image


def test_image_transform_equals_torchvision_pil_pipeline():
    from PIL import Image
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)]
    ref = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize(MEAN, STD)])
    expected = torch.stack([ref(Image.fromarray(i)) for i in imgs])
    got = ImageTransform(size=(224, 224), mean=MEAN, std=STD)(imgs)
    assert got.shape == (2, 3, 224, 224) and got.dtype == torch.float32
    _close_to_pil(got, expected)


def test_image_transform_shorter_side_and_crop_equals_torchvision():
    from PIL import Image
    from torchvision import transforms as T

    img = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    got = ImageTransform(size=(256, 256), resize="shorter", crop=(224, 224), mean=MEAN, std=STD)([img])
    _close_to_pil(got[0], ref(Image.fromarray(img)))
    # a crop offset or resize rule off by one pixel moves content by a pixel: far more than one level
    shifted = ImageTransform(size=(256, 256), resize="shorter", crop=(224, 222), mean=MEAN, std=STD)([img])
    assert shifted.shape[-1] == 222


def test_select_frames_linspace_and_padding():
    np.testing.assert_array_equal(select_frames(90, 14), np.linspace(0, 89, 14, dtype=int))
    np.testing.assert_array_equal(select_frames(5, 8), [0, 1, 2, 3, 4, 4, 4, 4])
    with pytest.raises(InvalidParameterError):
        select_frames(0, 14)


def test_video_transform_layout_and_values(caplog):
    rng = np.random.default_rng(2)
    video = rng.integers(0, 256, (30, 20, 24, 3), dtype=np.uint8)
    t = VideoTransform(n_frames=14, size=(20, 24), mean=MEAN, std=STD)
    out = t([video, video[:10]])
    assert out.shape == (2, 3, 14, 20, 24)
    idx = np.linspace(0, 29, 14, dtype=int)
    manual = (torch.from_numpy(video[idx]).float() / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out[0], manual.permute(3, 0, 1, 2), rtol=0, atol=1e-6)
    assert "padding with its last frame" in caplog.text
    resized = VideoTransform(n_frames=14, size=(16, 16), mean=MEAN, std=STD)([video])
    assert resized.shape == (1, 3, 14, 16, 16)


def test_from_recipe_validates():
    t = from_recipe({"kind": "image", "size": [32, 32], "mean": list(MEAN), "std": list(STD)})
    assert isinstance(t, ImageTransform) and t.size == (32, 32)
    with pytest.raises(InvalidParameterError, match="valid"):
        from_recipe({"kind": "audio"})
    with pytest.raises(InvalidParameterError, match="unknown image transform field"):
        from_recipe({"kind": "image", "size": [32, 32], "mean": MEAN, "std": STD, "flip": True})
