"""Preprocessing declared with each model (like torchvision's ``Weights.transforms()``).

A model's registry recipe holds a ``transform:`` mapping; :func:`from_recipe` turns it into one of the
transform objects below. The inference engine and the trainer both obtain their preprocessing from
this function, so a model is always run with exactly the preprocessing it was fitted with.

Transforms take a list of ``uint8`` items from :mod:`berg.stimuli` (images ``(H, W, 3)``, videos
``(T, H, W, 3)``) and return one float32 torch tensor: ``(B, 3, H, W)`` or ``(B, 3, T, H, W)``.

Every transform also has :meth:`~ImageTransform.pixels_to_input`, the same preprocessing as torch ops on
``[0, 1]`` float pixels, differentiable: ``encode`` and the gradient path (``model.forward_pixels``,
:mod:`berg.experiments.synthesis`) run the *same* function, so an image optimised for a model is scored
with exactly the preprocessing users encode with. Resizing is bilinear with antialiasing on float pixels
(PyTorch's antialiased kernel is Pillow's bilinear filter, computed without rounding to 8 bits).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError

__all__ = ["ImageTransform", "VideoTransform", "from_recipe", "select_frames"]

log = logging.getLogger(__name__)

_RESIZE_MODES = ("squash", "shorter")


def _normalise_cfg_numbers(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    return value


@dataclass(frozen=True)
class ImageTransform:
    """Resize, optionally centre-crop, scale to [0, 1] and normalise RGB images.

    Resizing uses Pillow's bilinear filter (antialiased), which is what ``torchvision.transforms.Resize``
    does on PIL images, so models fitted on PIL pipelines (e.g. img2fmri) see identical pixels.

    Parameters
    ----------
    size : (int, int)
        ``(height, width)`` after resizing. With ``resize="squash"`` the image is resized to exactly
        this size (aspect ratio not kept). With ``resize="shorter"`` the shorter side is resized to
        ``size[0]`` keeping the aspect ratio (``size[1]`` is ignored).
    resize : {"squash", "shorter"}
    crop : (int, int) or None
        Centre crop ``(height, width)`` after resizing.
    mean, std : (float, float, float)
        Per-channel normalisation after scaling to [0, 1].
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "squash"
    crop: tuple[int, int] | None = None
    kind: str = field(default="image", init=False)

    def __post_init__(self) -> None:
        if self.resize not in _RESIZE_MODES:
            raise InvalidParameterError(f"resize={self.resize!r}; valid: {', '.join(_RESIZE_MODES)}")

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` an image of this size is resized to (before the crop)."""
        h, w = self.size
        if self.resize == "shorter":
            short = h
            if width <= height:
                w, h = short, int(short * height / width)
            else:
                h, w = short, int(short * width / height)
        return h, w

    def pixels_to_input(self, pixels):
        """The preprocessing as differentiable torch ops: ``(B, 3, H, W)`` pixels in [0, 1] -> model input.

        ``encode`` runs this same function on each decoded image (see the module docstring).
        """
        h, w = self.resized_size(int(pixels.shape[-2]), int(pixels.shape[-1]))
        return _normalise(_crop(_resize(pixels, (h, w)), self.crop), self.mean, self.std)

    def __call__(self, items: Sequence[np.ndarray]):
        """Preprocess a list of ``(H, W, 3)`` uint8 images into a ``(B, 3, H', W')`` float32 tensor."""
        import torch

        return torch.cat([self.pixels_to_input(_image_pixels(img, self.resized_size)) for img in items])

    @property
    def input_size(self) -> tuple[int, int]:
        """Spatial size of the tensor this transform produces."""
        return self.crop if self.crop is not None else self.size

    def describe(self) -> dict[str, Any]:
        """Plain-data description (what cards and provenance record)."""
        return asdict(self)


def select_frames(n_available: int, n_frames: int) -> np.ndarray:
    """Frame indices used by video models: ``np.linspace(0, T - 1, n_frames, dtype=int)``.

    Clips shorter than ``n_frames`` are padded with their last frame (indices ``0..T-1`` then
    ``T-1`` repeated), which is how BERG's training code prepared BMD clips.
    """
    if n_available < 1:
        raise InvalidParameterError("a video needs at least 1 frame")
    if n_available < n_frames:
        return np.concatenate([np.arange(n_available), np.full(n_frames - n_available, n_available - 1)]).astype(int)
    return np.linspace(0, n_available - 1, n_frames, dtype=int)


@dataclass(frozen=True)
class VideoTransform:
    """Sample frames, scale to [0, 1], normalise and resize RGB videos.

    Parameters
    ----------
    n_frames : int
        Frames sampled over the whole clip with :func:`select_frames`.
    size : (int, int)
        ``(height, width)`` every frame is resized to (bilinear, antialiased; no crop, aspect ratio
        not kept: non-square clips are squashed, as in BMD training).
    mean, std : (float, float, float)
        Per-channel normalisation after scaling to [0, 1].

    Notes
    -----
    The output layout is ``(B, 3, T, H, W)`` (what torchvision's video models take).
    """

    n_frames: int
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    kind: str = field(default="video", init=False)

    def pixels_to_input(self, pixels):
        """The preprocessing as differentiable torch ops: ``(B, 3, T, H, W)`` pixels in [0, 1] -> model input.

        Samples ``n_frames`` of the ``T`` frames with :func:`select_frames`, normalises, then resizes
        every frame; ``encode`` runs this same function on each decoded clip.
        """
        import torch

        b, c, t, h, w = pixels.shape
        index = torch.as_tensor(select_frames(int(t), self.n_frames), device=pixels.device)
        x = pixels.index_select(2, index).permute(0, 2, 1, 3, 4).reshape(b * self.n_frames, c, h, w)
        x = _resize(_normalise(x, self.mean, self.std), tuple(self.size))
        return x.reshape(b, self.n_frames, c, *x.shape[-2:]).permute(0, 2, 1, 3, 4)

    def __call__(self, items: Sequence[np.ndarray]):
        """Preprocess a list of ``(T, H, W, 3)`` uint8 videos into ``(B, 3, n_frames, H', W')``."""
        import torch

        out = []
        for video in items:
            if video.shape[0] < self.n_frames:
                log.warning(
                    "clip has %d frames, fewer than %d: padding with its last frame",
                    video.shape[0],
                    self.n_frames,
                )
            frames = video[select_frames(video.shape[0], self.n_frames)]  # decode only what is used
            x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div_(255.0)
            out.append(self.pixels_to_input(x[None]))
        return torch.cat(out)

    @property
    def input_size(self) -> tuple[int, int]:
        """Spatial size of the tensor this transform produces."""
        return self.size

    def describe(self) -> dict[str, Any]:
        """Plain-data description (what cards and provenance record)."""
        return asdict(self)


_KINDS = {"image": ImageTransform, "video": VideoTransform}

#: Images larger than this many times the size they are resized to are first reduced in 8 bits by an
#: integer box factor (Pillow's ``reduce``), so a large photo never becomes a huge float tensor.
_PRE_REDUCE_RATIO = 4


def _image_pixels(img: np.ndarray, resized_size: Any):
    """A decoded ``(H, W, 3)`` uint8 image as ``(1, 3, H, W)`` float pixels in [0, 1].

    An image more than ``_PRE_REDUCE_RATIO`` times larger than its resized size (each side) is first
    box-reduced by an integer factor that keeps it at least twice that size, as Pillow's draft mode
    does for JPEGs; the antialiased resize then works on at most ~4x the target's pixels.
    """
    import torch

    h, w = img.shape[:2]
    rh, rw = resized_size(h, w)
    ratio = min(h / max(rh, 1), w / max(rw, 1))
    if ratio > _PRE_REDUCE_RATIO:
        from PIL import Image

        factor = int(ratio // 2)
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).reduce(factor))
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    return x.float().div_(255.0)


def _resize(x, size: tuple[int, int]):
    """Bilinear, antialiased resize of ``(N, C, H, W)`` float tensors (identity when already that size)."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def _crop(x, crop: tuple[int, int] | None):
    """Centre crop ``(height, width)`` (offsets rounded half to even, as Pillow's crop box was)."""
    if crop is None:
        return x
    h, w = x.shape[-2:]
    ch, cw = crop
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return x[..., top : top + ch, left : left + cw]


def _normalise(x, mean: Sequence[float], std: Sequence[float]):
    import torch

    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def from_recipe(cfg: Mapping[str, Any], **overrides: Any) -> ImageTransform | VideoTransform:
    """Build the transform a registry recipe declares.

    Parameters
    ----------
    cfg : mapping
        The recipe's ``transform:`` entry; ``kind`` is ``"image"`` or ``"video"``, the other keys are
        the fields of :class:`ImageTransform` / :class:`VideoTransform`.
    **overrides
        Field values replacing those of ``cfg`` (e.g. a model option such as a centre crop).

    Raises
    ------
    InvalidParameterError
        Unknown kind or field, naming the valid ones.
    """
    cfg = {**dict(cfg), **overrides}
    kind = cfg.pop("kind", None)
    if kind not in _KINDS:
        raise InvalidParameterError(f"transform kind {kind!r}; valid: {', '.join(_KINDS)}")
    cls = _KINDS[kind]
    valid = {f.name for f in fields(cls) if f.init}
    unknown = set(cfg) - valid
    if unknown:
        raise InvalidParameterError(f"unknown {kind} transform field(s) {sorted(unknown)}; valid: {sorted(valid)}")
    return cls(**{k: _normalise_cfg_numbers(v) for k, v in cfg.items()})
