"""Preprocessing declared with each model (like torchvision's ``Weights.transforms()``).

A model's registry recipe holds a ``transform:`` mapping; :func:`from_recipe` turns it into one of the
transform objects below. The inference engine and the trainer both obtain their preprocessing from
this function, so a model is always run with exactly the preprocessing it was fitted with.

Transforms take a list of ``uint8`` items from :mod:`berg.stimuli` (images ``(H, W, 3)``, videos
``(T, H, W, 3)``) and return one float32 torch tensor: ``(B, 3, H, W)`` or ``(B, 3, T, H, W)``.
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

    def _resize_one(self, img: np.ndarray) -> np.ndarray:
        from PIL import Image

        pil = Image.fromarray(img)
        h, w = self.size
        if self.resize == "shorter":
            short = h
            iw, ih = pil.size
            if iw <= ih:
                w, h = short, int(short * ih / iw)
            else:
                h, w = short, int(short * iw / ih)
        pil = pil.resize((w, h), Image.BILINEAR)
        if self.crop is not None:
            ch, cw = self.crop
            left = int(round((w - cw) / 2.0))
            top = int(round((h - ch) / 2.0))
            pil = pil.crop((left, top, left + cw, top + ch))
        return np.asarray(pil, dtype=np.uint8)

    def __call__(self, items: Sequence[np.ndarray]):
        """Preprocess a list of ``(H, W, 3)`` uint8 images into a ``(B, 3, H', W')`` float32 tensor."""
        import torch

        batch = np.stack([self._resize_one(img) for img in items])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - mean) / std

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

    def __call__(self, items: Sequence[np.ndarray]):
        """Preprocess a list of ``(T, H, W, 3)`` uint8 videos into ``(B, 3, n_frames, H', W')``."""
        import torch
        from torchvision.transforms.v2 import functional as F

        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        out = []
        for video in items:
            if video.shape[0] < self.n_frames:
                log.warning(
                    "clip has %d frames, fewer than %d: padding with its last frame",
                    video.shape[0],
                    self.n_frames,
                )
            frames = video[select_frames(video.shape[0], self.n_frames)]
            x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - mean) / std
            if tuple(x.shape[-2:]) != tuple(self.size):
                x = F.resize(x, list(self.size), antialias=True)
            out.append(x.permute(1, 0, 2, 3))
        return torch.stack(out)

    @property
    def input_size(self) -> tuple[int, int]:
        """Spatial size of the tensor this transform produces."""
        return self.size

    def describe(self) -> dict[str, Any]:
        """Plain-data description (what cards and provenance record)."""
        return asdict(self)


_KINDS = {"image": ImageTransform, "video": VideoTransform}


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
