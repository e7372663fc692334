"""Stimulus validation and loading: arrays, PIL images, image files (Pillow) and video files (PyAV).

Rules (also printed in every :class:`~berg.errors.StimulusError`):

* Images as arrays: ``uint8``, 4-D, either channels-first ``(B, 3, H, W)`` or channels-last
  ``(B, H, W, 3)``. The layout is decided by which axis has size 3; if both axis 1 and axis 3 have
  size 3 the array is ambiguous and channels-first is assumed (torch convention) with a warning.
* Videos as arrays: ``uint8``, 5-D ``(B, T, 3, H, W)`` (BERG's layout).
* Lists/tuples of file paths (``str`` or :class:`os.PathLike`), of PIL images, or a single path / PIL
  image. Images are opened with Pillow and converted to RGB (greyscale, RGBA, CMYK all work).
  Videos are decoded with PyAV, lazily, one batch at a time.

Items come out as ``np.uint8`` arrays ``(H, W, 3)`` for images and ``(T, H, W, 3)`` for videos.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from berg.errors import StimulusError

__all__ = ["Stimuli", "load_stimuli", "decode_video", "load_image"]

log = logging.getLogger(__name__)

Kind = Literal["image", "video"]

_IMAGE_FORM = (
    "images must be a uint8 array (B, 3, H, W) or (B, H, W, 3) with values 0-255, "
    "a PIL image, an image file path, or a list of those"
)
_VIDEO_FORM = (
    "videos must be a uint8 array (B, T, 3, H, W) with values 0-255, a video file path, "
    "or a list of video file paths"
)


def _form(kind: Kind) -> str:
    return _IMAGE_FORM if kind == "image" else _VIDEO_FORM


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an RGB ``uint8`` array ``(H, W, 3)``.

    Parameters
    ----------
    path : str or path-like
        Any format Pillow reads. Greyscale, palette, RGBA and CMYK images are converted to RGB.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise StimulusError(f"image file not found: {path}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise StimulusError(f"cannot read image {path}: {exc}") from exc


def decode_video(
    path: str | os.PathLike[str], *, fps: float | None = None
) -> tuple[np.ndarray, float]:
    """Decode a video file with PyAV into RGB frames.

    Parameters
    ----------
    path : str or path-like
        Video file (any container/codec FFmpeg in PyAV reads).
    fps : float, optional
        If given, resample to this rate by taking, for each output time ``t = i / fps`` (``t`` below the
        clip duration), the last decoded frame whose presentation time is ``<= t`` (what a viewer sees
        at ``t``). If ``None``, all frames are returned at the stream's average rate.

    Returns
    -------
    frames : np.ndarray
        ``uint8`` array ``(T, H, W, 3)``.
    rate : float
        Frame rate of the returned frames (frames per second).
    """
    import av

    try:
        container = av.open(str(path))
    except FileNotFoundError as exc:
        raise StimulusError(f"video file not found: {path}") from exc
    except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
        raise StimulusError(f"cannot decode video {path}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise StimulusError(f"{path} has no video stream")
        stream = container.streams.video[0]
        frames: list[np.ndarray] = []
        times: list[float] = []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time) if frame.time is not None else len(times) / 25.0)
        rate = float(stream.average_rate) if stream.average_rate else 0.0
    if not frames:
        raise StimulusError(f"{path} contains no decodable frames")
    if rate <= 0:
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 25.0
    video = np.stack(frames)
    if fps is None:
        return video, rate
    if fps <= 0:
        raise StimulusError(f"fps must be > 0, got {fps}")
    t = np.asarray(times) - times[0]
    duration = t[-1] + 1.0 / rate
    out_times = np.arange(0.0, duration - 1e-9, 1.0 / fps)
    idx = np.searchsorted(t, out_times + 1e-9, side="right") - 1
    return video[np.clip(idx, 0, len(video) - 1)], float(fps)


class Stimuli(Sequence):
    """A validated batch of stimuli; item ``i`` is a ``uint8`` array, decoded on access.

    Parameters
    ----------
    items : sequence
        Arrays (already validated) or paths / PIL images (decoded lazily).
    kind : {"image", "video"}
        What the items are.
    min_frames : int
        For videos, the minimum number of frames accepted.
    """

    def __init__(self, items: Sequence[Any], kind: Kind, *, min_frames: int = 1):
        self._items = items
        self.kind = kind
        self.min_frames = min_frames

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Stimuli(self._items[i], self.kind, min_frames=self.min_frames)
        return self._materialise(self._items[i], i)

    def _materialise(self, item: Any, i: int) -> np.ndarray:
        if isinstance(item, np.ndarray):
            arr = item
        elif isinstance(item, (str, os.PathLike)):
            arr = load_image(item) if self.kind == "image" else decode_video(item)[0]
        else:  # PIL image
            arr = np.asarray(item.convert("RGB"), dtype=np.uint8)
        if self.kind == "video" and arr.shape[0] < self.min_frames:
            raise StimulusError(
                f"video {i} has {arr.shape[0]} frames; this model needs at least {self.min_frames}"
            )
        return arr

    def describe_item(self, i: int) -> str:
        """A short label for stimulus ``i`` (its path, or its index)."""
        item = self._items[i]
        return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"#{i}"


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(obj, Image.Image)


def _check_uint8(arr: np.ndarray, kind: Kind) -> None:
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer) and arr.size and (arr.min() < 0 or arr.max() > 255):
            raise StimulusError(
                f"stimulus values range {arr.min()}..{arr.max()}, outside 0-255; {_form(kind)}"
            )
        if np.issubdtype(arr.dtype, np.integer):
            return
        raise StimulusError(
            f"stimulus dtype is {arr.dtype}; {_form(kind)} (convert floats in [0, 1] with "
            "(x * 255).round().astype(np.uint8))"
        )


def _array_items(arr: np.ndarray, kind: Kind, min_frames: int) -> list[np.ndarray]:
    _check_uint8(arr, kind)
    arr = arr.astype(np.uint8, copy=False)
    if kind == "image":
        if arr.ndim == 3 and 3 in (arr.shape[0], arr.shape[2]):
            raise StimulusError(
                f"got a 3-D array {arr.shape}; add the batch axis (arr[None]). {_IMAGE_FORM}"
            )
        if arr.ndim != 4:
            raise StimulusError(f"image array has shape {arr.shape} (ndim {arr.ndim}); {_IMAGE_FORM}")
        if arr.shape[1] == 3:
            if arr.shape[3] == 3:
                log.warning("image array %s is ambiguous; assuming channels-first (B, 3, H, W)", arr.shape)
            arr = arr.transpose(0, 2, 3, 1)
        elif arr.shape[3] != 3:
            raise StimulusError(
                f"image array {arr.shape} has no RGB axis of size 3 at position 1 or 3; {_IMAGE_FORM}"
            )
        return list(arr)
    if arr.ndim != 5 or arr.shape[2] != 3:
        raise StimulusError(f"video array has shape {arr.shape}; {_VIDEO_FORM}")
    if arr.shape[1] < min_frames:
        raise StimulusError(
            f"videos have {arr.shape[1]} frames; this model needs at least {min_frames}. {_VIDEO_FORM}"
        )
    return list(arr.transpose(0, 1, 3, 4, 2))


def load_stimuli(stimulus: Any, kind: Kind, *, min_frames: int = 1) -> Stimuli:
    """Validate a user's stimulus and return a :class:`Stimuli` sequence.

    Parameters
    ----------
    stimulus : array, PIL image, path, or list of those
        See the module docstring for the accepted forms.
    kind : {"image", "video"}
        What the model expects.
    min_frames : int, default 1
        Videos with fewer frames are refused (arrays now, files when decoded).

    Returns
    -------
    Stimuli
        Validated batch; files are checked for existence now and decoded lazily.

    Raises
    ------
    StimulusError
        With the expected form in the message.
    """
    if kind not in ("image", "video"):
        raise StimulusError(f"unknown stimulus kind {kind!r}; valid: 'image', 'video'")
    if isinstance(stimulus, np.ndarray):
        if stimulus.size == 0:
            raise StimulusError(f"empty stimulus array {stimulus.shape}; {_form(kind)}")
        return Stimuli(_array_items(stimulus, kind, min_frames), kind, min_frames=min_frames)
    if isinstance(stimulus, (str, os.PathLike)) or _is_pil(stimulus):
        stimulus = [stimulus]
    if not isinstance(stimulus, (list, tuple)):
        raise StimulusError(f"unsupported stimulus type {type(stimulus).__name__}; {_form(kind)}")
    if not stimulus:
        raise StimulusError(f"empty stimulus list; {_form(kind)}")
    for i, item in enumerate(stimulus):
        if isinstance(item, (str, os.PathLike)):
            if not Path(item).is_file():
                raise StimulusError(f"stimulus {i}: file not found: {item}")
        elif _is_pil(item):
            if kind == "video":
                raise StimulusError(f"stimulus {i} is a PIL image but this model takes videos; {_VIDEO_FORM}")
        elif isinstance(item, np.ndarray):
            stimulus = list(stimulus)
            stimulus[i] = _array_items(item[None], kind, min_frames)[0]
        else:
            raise StimulusError(f"stimulus {i} has unsupported type {type(item).__name__}; {_form(kind)}")
    return Stimuli(list(stimulus), kind, min_frames=min_frames)
