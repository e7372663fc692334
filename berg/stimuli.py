"""Stimulus validation and loading: arrays, PIL images, image files (Pillow) and video files (PyAV).

Accepted forms (the same rules are printed in every :class:`~berg.errors.StimulusError`):

* **Image arrays**: integer arrays with values 0-255 (``uint8`` is best), 4-D, channels-first
  ``(B, C, H, W)`` or channels-last ``(B, H, W, C)`` with ``C`` = 3 (RGB), 1 (greyscale), 2
  (greyscale + alpha) or 4 (RGBA). Arrays are converted to RGB by the rule Pillow's
  ``Image.convert("RGB")`` applies to files of the same kind: greyscale is copied into R, G and B and
  alpha is dropped (not composited). The channel axis is the one of size 3 when only one is; if both
  axis 1 and axis 3 could be channels, channels-first is assumed (torch convention) with a warning.
* **Video arrays**: ``uint8`` 5-D ``(B, T, 3, H, W)`` (BERG's layout).
* **Files**: a path (``str`` or :class:`os.PathLike`), a **folder** (its image or video files, by
  suffix, sorted by name; hidden files and sub-folders skipped), a **glob pattern** (``"stimuli/*.png"``, sorted), or a
  list/tuple mixing those. Image files are opened with Pillow (restricted to common raster formats) and
  converted with ``convert("RGB")``; videos are decoded with PyAV. Files are checked when the
  stimuli are loaded (existence, readable header, pixel limit) and decoded lazily, one batch at a time.
* **PIL images** (open ones; a closed image is refused), alone or in a list.
* A :class:`Stimuli` object (what :func:`load_stimuli` returns) is passed through.

Limits: every image or video frame may hold at most ``max_pixels`` pixels (keyword, else the
``BERG_MAX_PIXELS`` environment variable, else Pillow's default of 178,956,970), so a small file that
claims 20000 x 20000 pixels is refused before it is decoded. Arrays with an empty axis (a 0 x 0
image, a clip with 0 frames) are refused.

A still image given to a video model is refused ("this model takes videos") unless
``allow_still_images=True``; then each still becomes a clip of ``max(min_frames, 1)`` identical frames.

Items come out as ``np.uint8`` arrays ``(H, W, 3)`` for images and ``(T, H, W, 3)`` for videos.
:func:`check_kind` runs the cheap checks (kind, existence) without opening any file, so a caller can
refuse a wrong stimulus before downloading or loading a model.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from berg.errors import StimulusError, close_matches

__all__ = [
    "Stimuli",
    "load_stimuli",
    "check_kind",
    "expand_paths",
    "decode_video",
    "load_image",
    "max_pixels_limit",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
]

log = logging.getLogger(__name__)

Kind = Literal["image", "video"]

#: File suffixes a folder or glob expands to for image models (``.gif`` gives its first frame).
IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".jp2",
        ".qoi",
        ".avif",
    }
)
#: File suffixes a folder or glob expands to for video models (``.gif`` is read as a clip).
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".ogv", ".wmv", ".flv", ".gif"}
)
# Pillow plugins berg lets open a file: raster formats only. Others (EPS runs Ghostscript, WMF, PSD
# and the scientific containers) are a needless attack surface for files downloaded from the internet.
_PIL_FORMATS = (
    "JPEG",
    "PNG",
    "GIF",
    "BMP",
    "DIB",
    "TIFF",
    "WEBP",
    "PPM",
    "TGA",
    "JPEG2000",
    "QOI",
    "AVIF",
    "MPO",
    "ICO",
    "SGI",
    "PCX",
)
# Pillow's own default limit, also berg's default (the variable changes it).
_PIL_DEFAULT_MAX_PIXELS = 178_956_970
# Pillow checks its module-level limit inside Image.open; berg raises it (never lowers it) under this
# lock when a caller asks for a larger limit, so berg's limit is the one that decides.
_PIL_LIMIT_LOCK = threading.Lock()

_IMAGE_FORM = (
    "images must be an integer array (B, 3, H, W) or (B, H, W, 3) with values 0-255 (1, 2 or 4 "
    "channels are converted to RGB), a PIL image, an image file, a folder or glob of image files, "
    "or a list of those"
)
_VIDEO_FORM = (
    "videos must be a uint8 array (B, T, 3, H, W) with values 0-255, a video file, a folder or glob "
    "of video files, or a list of those"
)
_STILL_HINT = "pass allow_still_images=True to load_stimuli to show each still as a clip of identical frames"


def _form(kind: Kind) -> str:
    return _IMAGE_FORM if kind == "image" else _VIDEO_FORM


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else ``BERG_MAX_PIXELS``, else Pillow's default.

    Parameters
    ----------
    max_pixels : int, optional
        An explicit limit (pixels per image or video frame, ``width * height``).

    Returns
    -------
    int
    """
    from berg.env import env_int

    limit = env_int("BERG_MAX_PIXELS", _PIL_DEFAULT_MAX_PIXELS, minimum=1) if max_pixels is None else max_pixels
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise StimulusError(f"max_pixels must be a positive integer (pixels per image), got {limit!r}")
    return int(limit)


def _check_pixels(width: int, height: int, limit: int, what: str) -> None:
    if width < 1 or height < 1:
        raise StimulusError(f"{what} is {width} x {height} pixels; an image needs at least 1 x 1")
    if width * height > limit:
        raise StimulusError(
            f"{what} is {width} x {height} = {width * height:,} pixels, above the limit of {limit:,} "
            "(a guard against decompression bombs); if the file is genuine, raise the limit with "
            "max_pixels=N or the BERG_MAX_PIXELS environment variable"
        )


def _open_image(path: str | os.PathLike[str], limit: int):
    """Open an image file lazily (header only) with berg's formats and pixel limit; caller closes it."""
    from PIL import Image, UnidentifiedImageError

    Image.init()
    formats = [f for f in _PIL_FORMATS if f in Image.OPEN]
    with _PIL_LIMIT_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
            log.debug("raising PIL.Image.MAX_IMAGE_PIXELS to berg's limit %d", limit)
            Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            # berg's own limit below is the policy; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=formats)
    except FileNotFoundError:
        raise StimulusError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise StimulusError(f"{path} is a folder, not an image file") from None
    except Image.DecompressionBombError as exc:
        raise StimulusError(
            f"image {path} is too large to decode safely ({exc}); raise the limit with max_pixels=N or "
            "BERG_MAX_PIXELS if the file is genuine"
        ) from None
    except UnidentifiedImageError:
        raise StimulusError(
            f"cannot read image {path}: not an image file berg opens ({', '.join(formats)}), or it is corrupt"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow plugins raise all three on bad headers
        raise StimulusError(f"cannot read image {path}: {exc} (the file is truncated or corrupt)") from None
    try:
        _check_pixels(img.width, img.height, limit, f"image {path}")
    except StimulusError:
        img.close()
        raise
    return img


def load_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as an RGB ``uint8`` array ``(H, W, 3)``.

    Parameters
    ----------
    path : str or path-like
        A raster image Pillow reads (JPEG, PNG, GIF, BMP, TIFF, WebP, PPM, ...). Greyscale, palette,
        RGBA and CMYK images are converted with ``convert("RGB")`` (alpha is dropped).
    max_pixels : int, optional
        Largest ``width * height`` accepted (see :func:`max_pixels_limit`).

    Raises
    ------
    StimulusError
        Missing, unreadable, truncated or corrupt file, or one above the pixel limit; the message names
        the file.
    """
    limit = max_pixels_limit(max_pixels)
    img = _open_image(path, limit)
    try:
        with img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated/corrupt data (zlib, struct...)
        raise StimulusError(f"cannot decode image {path}: {exc} (the file is truncated or corrupt)") from None


def _check_video_file(path: str | os.PathLike[str], limit: int) -> None:
    """Open a video's header: it must hold a video stream of positive size within the pixel limit."""
    import av

    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise StimulusError(f"video file not found: {path}") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:  # type: ignore[attr-defined]
        raise StimulusError(f"cannot decode video {path}: {exc}") from None
    with container:
        if not container.streams.video:
            raise StimulusError(f"cannot decode video {path}: it has no video stream")
        ctx = container.streams.video[0].codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width and height:  # some containers only know the size once a frame is decoded
            _check_pixels(width, height, limit, f"video {path} (frame size)")


def decode_video(
    path: str | os.PathLike[str], *, fps: float | None = None, rule: str = "last", return_info: bool = False
) -> tuple[np.ndarray, float] | tuple[np.ndarray, float, dict[str, Any]]:
    """Decode a video file with PyAV into RGB frames.

    Parameters
    ----------
    path : str or path-like
        Video file (any container/codec FFmpeg in PyAV reads).
    fps : float, optional
        If given, resample to this rate: one frame for each output time ``t = i / fps`` (``t`` below
        the clip duration), chosen by ``rule``. If ``None``, all frames are returned at the stream's
        average rate.
    rule : {"last", "nearest"}
        ``"last"``: the last decoded frame whose presentation time is ``<= t`` (what a viewer sees at
        ``t``). ``"nearest"``: frame ``round(t * stream_fps)`` (halves up), what OpenCV's millisecond
        seek returns and so what img2fmri predicted; on a 23.976 fps clip sampled at 2 Hz the two
        rules differ by one frame for 14 of 15 samples.
    return_info : bool
        Also return ``{"indices", "times", "rule", "stream_fps"}``: the decoded-frame index and its
        presentation time (s, from the first frame) of every returned frame.

    Returns
    -------
    frames : np.ndarray
        ``uint8`` array ``(T, H, W, 3)``.
    rate : float
        Frame rate of the returned frames (frames per second).
    info : dict
        Only with ``return_info=True``.
    """
    if rule not in ("last", "nearest"):
        raise StimulusError(f"rule={rule!r}; valid: 'last' (frame shown at t), 'nearest' (img2fmri/OpenCV seek)")
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
    t = np.asarray(times) - times[0]
    if fps is None:
        info = {"indices": np.arange(len(video)), "times": t, "rule": "all", "stream_fps": rate}
        return (video, rate, info) if return_info else (video, rate)
    if fps <= 0:
        raise StimulusError(f"fps must be > 0, got {fps}")
    duration = t[-1] + 1.0 / rate
    out_times = np.arange(0.0, duration - 1e-9, 1.0 / fps)
    if rule == "nearest":
        idx = np.floor(out_times * rate + 0.5 + 1e-9).astype(np.int64)
    else:
        idx = np.searchsorted(t, out_times + 1e-9, side="right") - 1
    idx = np.clip(idx, 0, len(video) - 1)
    if return_info:
        return video[idx], float(fps), {"indices": idx, "times": t[idx], "rule": rule, "stream_fps": rate}
    return video[idx], float(fps)


class _Still:
    """A still image (path, PIL image or ``(H, W, 3)`` array) shown to a video model as a clip."""

    __slots__ = ("source", "n_frames")

    def __init__(self, source: Any, n_frames: int):
        self.source = source
        self.n_frames = n_frames


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
    max_pixels : int, optional
        Largest image or frame (``width * height``) decoded; see :func:`max_pixels_limit`.
    """

    def __init__(self, items: Sequence[Any], kind: Kind, *, min_frames: int = 1, max_pixels: int | None = None):
        self._items = items
        self.kind = kind
        self.min_frames = min_frames
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Stimuli(self._items[i], self.kind, min_frames=self.min_frames, max_pixels=self.max_pixels)
        return self._materialise(self._items[i], i)

    def _image(self, item: Any, i: int) -> np.ndarray:
        if isinstance(item, np.ndarray):
            return item
        if isinstance(item, (str, os.PathLike)):
            return load_image(item, max_pixels=self.max_pixels)
        try:  # PIL image
            arr = np.asarray(item.convert("RGB"), dtype=np.uint8)
        except ValueError as exc:  # "Operation on closed image"
            raise StimulusError(f"stimulus {i}: cannot read the PIL image ({exc}); pass it open, or its path") from None
        except OSError as exc:  # a lazily opened, truncated file
            raise StimulusError(f"stimulus {i}: cannot decode the PIL image ({exc})") from None
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise StimulusError(f"stimulus {i} is a {arr.shape[1]} x {arr.shape[0]} PIL image; it needs at least 1 x 1")
        return arr

    def _video(self, path: Any) -> np.ndarray:
        import av

        try:
            return decode_video(path)[0]
        except StimulusError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:  # type: ignore[attr-defined]
            raise StimulusError(f"cannot decode video {path}: {exc} (the file is truncated or corrupt)") from None

    def _materialise(self, item: Any, i: int) -> np.ndarray:
        if isinstance(item, _Still):
            frame = self._image(item.source, i)
            arr = np.broadcast_to(frame[None], (item.n_frames, *frame.shape))
        elif self.kind == "image":
            arr = self._image(item, i)
        elif isinstance(item, np.ndarray):
            arr = item
        else:
            arr = self._video(item)
        if self.kind == "video" and arr.shape[0] < self.min_frames:
            raise StimulusError(f"video {i} has {arr.shape[0]} frames; this model needs at least {self.min_frames}")
        return arr

    def describe_item(self, i: int) -> str:
        """A short label for stimulus ``i`` (its path, or its index)."""
        item = self._items[i]
        if isinstance(item, _Still):
            item = item.source
        return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"#{i}"

    def ids(self) -> list[str]:
        """One label per stimulus (file paths as given or expanded, else ``#i``), e.g. for ``stimulus_ids``."""
        return [self.describe_item(i) for i in range(len(self))]


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(obj, Image.Image)


def _pil_is_closed(img: Any) -> bool:
    try:  # Pillow marks a closed image with a DeferredError in place of its core image
        from PIL._util import DeferredError
    except ImportError:  # pragma: no cover - other Pillow versions: decoding will say so instead
        return False
    return isinstance(img.__dict__.get("_im", img.__dict__.get("im")), DeferredError)


def _check_integers(arr: np.ndarray, kind: Kind) -> None:
    if arr.dtype == np.uint8:
        return
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise StimulusError(f"stimulus values range {arr.min()}..{arr.max()}, outside 0-255; {_form(kind)}")
        return
    if arr.dtype == np.bool_:
        raise StimulusError(f"stimulus dtype is bool; {_form(kind)} (convert masks with arr.astype(np.uint8) * 255)")
    raise StimulusError(
        f"stimulus dtype is {arr.dtype}; {_form(kind)} (convert floats in [0, 1] with "
        "(x * 255).round().astype(np.uint8))"
    )


_CHANNELS = (1, 2, 3, 4)


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    """``(..., C)`` uint8 with C in 1-4 -> ``(..., 3)``: Pillow's ``convert("RGB")`` rule for L, LA, RGBA."""
    c = arr.shape[-1]
    if c == 3:
        return arr
    if c in (1, 2):  # L / LA: the grey level in R, G and B; alpha dropped
        return np.repeat(arr[..., :1], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])  # RGBA: alpha dropped, not composited


def _image_channel_axis(shape: tuple[int, ...]) -> int:
    """1 (channels-first) or 3 (channels-last) for a 4-D image batch; raises if neither fits."""
    first, last = shape[1] in _CHANNELS, shape[3] in _CHANNELS
    if first and last:
        if shape[1] == 3 and shape[3] != 3:
            return 1
        if shape[3] == 3 and shape[1] != 3:
            return 3
        log.warning("image array %s is ambiguous; assuming channels-first (B, C, H, W)", shape)
        return 1
    if first:
        return 1
    if last:
        return 3
    raise StimulusError(
        f"image array {shape} has no RGB axis (size 3, or 1/2/4 for greyscale/alpha) at position 1 or 3; {_IMAGE_FORM}"
    )


def _shape_error(arr: np.ndarray, kind: Kind, allow_still_images: bool) -> StimulusError | None:
    """The kind/dimension problem of an array stimulus, or None (no data is read)."""
    if kind == "image":
        if arr.ndim == 5:
            return StimulusError(
                f"got a 5-D array {arr.shape}, which is a batch of videos (B, T, 3, H, W), but this model "
                f"takes images: {_IMAGE_FORM}"
            )
        if arr.ndim == 3:
            return StimulusError(
                f"got a 3-D array {arr.shape}: add the batch axis (arr[None]) for one image (H, W, 3), or "
                f"the channel axis (arr[..., None]) for a batch of greyscale images (B, H, W). {_IMAGE_FORM}"
            )
        if arr.ndim != 4:
            return StimulusError(f"image array has shape {arr.shape} (ndim {arr.ndim}); {_IMAGE_FORM}")
        return None
    if arr.ndim == 4 and not allow_still_images:
        return StimulusError(
            f"this model takes videos, but got a 4-D array {arr.shape} (a batch of still images); "
            f"{_VIDEO_FORM}; or {_STILL_HINT}"
        )
    if arr.ndim == 5 and arr.shape[2] != 3:
        hint = " (channels-last: use arr.transpose(0, 1, 4, 2, 3))" if arr.shape[4] == 3 else ""
        return StimulusError(f"video array has shape {arr.shape}{hint}; {_VIDEO_FORM}")
    if arr.ndim not in (4, 5):
        return StimulusError(f"video array has shape {arr.shape}; {_VIDEO_FORM}")
    return None


def _check_not_empty(shape: tuple[int, ...], kind: Kind, what: str) -> None:
    if 0 in shape:
        raise StimulusError(f"{what} has shape {shape} with an empty axis (e.g. a 0 x 0 image); {_form(kind)}")


def _image_batch(arr: np.ndarray) -> list[np.ndarray]:
    """A validated 4-D image batch -> list of ``(H, W, 3)`` uint8 items."""
    axis = _image_channel_axis(arr.shape)
    if axis == 1:
        arr = arr.transpose(0, 2, 3, 1)
    arr = _to_rgb(arr.astype(np.uint8, copy=False))
    _check_not_empty(arr.shape, "image", "image array")
    return list(arr)


def _array_items(
    arr: np.ndarray, kind: Kind, min_frames: int, *, allow_still_images: bool = False
) -> list[np.ndarray | _Still]:
    """Validate a batch array and split it into per-stimulus items."""
    error = _shape_error(arr, kind, allow_still_images)
    if error is not None:
        raise error
    _check_not_empty(arr.shape, kind, f"{kind} array")
    _check_integers(arr, kind)
    if kind == "image":
        return _image_batch(arr)
    if arr.ndim == 4:  # stills, allowed by the caller
        return [_Still(img, max(min_frames, 1)) for img in _image_batch(arr)]
    if arr.shape[1] < min_frames:
        raise StimulusError(f"videos have {arr.shape[1]} frames; this model needs at least {min_frames}. {_VIDEO_FORM}")
    return list(arr.astype(np.uint8, copy=False).transpose(0, 1, 3, 4, 2))


def _item_array(item: np.ndarray, kind: Kind, min_frames: int, i: int, allow_still_images: bool):
    """One array inside a list: an image ``(H, W, C)`` / ``(C, H, W)`` / ``(H, W)``, or a video ``(T, 3, H, W)``."""
    if kind == "image" and item.ndim == 2:
        item = item[..., None]  # a single greyscale image (H, W)
    if kind == "image" and item.ndim != 3:
        raise StimulusError(f"stimulus {i} is an array of shape {item.shape}; one image is (H, W, 3) or (3, H, W)")
    if kind == "video" and item.ndim == 3 and allow_still_images:
        return _array_items(item[None], kind, min_frames, allow_still_images=True)[0]
    if kind == "video" and item.ndim != 4:
        if item.ndim == 3:
            raise StimulusError(
                f"stimulus {i} is an array of shape {item.shape}, a still image, but this model takes videos "
                f"(T, 3, H, W); or {_STILL_HINT}"
            )
        raise StimulusError(f"stimulus {i} is an array of shape {item.shape}; one video is (T, 3, H, W)")
    try:
        return _array_items(item[None], kind, min_frames)[0]
    except StimulusError as exc:
        raise StimulusError(f"stimulus {i}: {exc}") from None


# ------------------------------------------------------------------------------------------ paths


def _suffixes(kind: Kind) -> frozenset[str]:
    return IMAGE_SUFFIXES if kind == "image" else VIDEO_SUFFIXES


def _has_magic(text: str) -> bool:
    return glob.has_magic(text)


def _not_found(path: Path, i: int | None) -> StimulusError:
    where = f"stimulus {i}: " if i is not None else ""
    hint = ""
    parent = path.parent
    try:
        if parent.is_dir():
            near = close_matches(path.name, [p.name for p in parent.iterdir()])
            if near:
                hint = f"; did you mean {', '.join(repr(n) for n in near)}?"
    except OSError:
        pass
    return StimulusError(f"{where}file not found: {path}{hint}")


def _expand_one(item: str | os.PathLike[str], kind: Kind, i: int | None) -> list[Any]:
    """A path, folder or glob -> the files it names (folders and globs: model-kind suffixes, sorted)."""
    text = os.fspath(item)
    if "\x00" in text:
        raise StimulusError(f"stimulus path {text!r} contains a NUL byte; pass a file, folder or glob path")
    path = Path(text).expanduser()
    suffixes = _suffixes(kind)
    listed = ", ".join(sorted(suffixes))
    try:
        if path.is_dir():
            found = sorted(
                (
                    p
                    for p in path.iterdir()
                    if not p.name.startswith(".") and p.suffix.lower() in suffixes and p.is_file()
                ),
                key=lambda p: p.name,
            )
            if not found:
                raise StimulusError(f"folder {path} has no {kind} files (looked for {listed})")
            return found
        if path.is_file():
            return [item]
    except OSError as exc:  # permission denied on the folder, too long a name...
        raise StimulusError(f"cannot read {path}: {exc}") from None
    if isinstance(item, str) and _has_magic(text):
        matched = sorted(Path(p) for p in glob.glob(os.path.expanduser(text)) if os.path.isfile(p))
        found = [p for p in matched if p.suffix.lower() in suffixes]
        if not found:
            seen = f" (it matched {len(matched)} other file(s), e.g. {matched[0].name})" if matched else ""
            extra = ""
            if matched and kind == "video" and all(p.suffix.lower() in IMAGE_SUFFIXES for p in matched):
                extra = f"; this model takes videos, these are images: {_STILL_HINT}"
            raise StimulusError(f"glob {text!r} matches no {kind} files (looked for {listed}){seen}{extra}")
        return found
    raise _not_found(path, i)


def expand_paths(stimulus: Any, kind: Kind) -> list[Any]:
    """Expand folders and glob patterns in a path or list of paths (other items are kept as they are).

    Parameters
    ----------
    stimulus : path, glob, folder, or list of those (other items pass through)
    kind : {"image", "video"}
        Folders expand to files with this kind's suffixes (:data:`IMAGE_SUFFIXES` /
        :data:`VIDEO_SUFFIXES`), sorted by name, hidden files skipped; glob matches are sorted by path
        and filtered by the same suffixes.

    Returns
    -------
    list
        Files (as given for plain files, :class:`~pathlib.Path` for expanded ones) and other items.

    Raises
    ------
    StimulusError
        A path that does not exist (with close matches from its folder), an empty folder, a glob that
        matches no file of the kind.
    """
    if isinstance(stimulus, (str, os.PathLike)):
        return _expand_one(stimulus, kind, None)
    out: list[Any] = []
    for i, item in enumerate(stimulus):
        out += _expand_one(item, kind, i) if isinstance(item, (str, os.PathLike)) else [item]
    return out


def _kind_of_path(path: Any) -> str | None:
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix == ".gif":
        return None  # a GIF is a still for image models and a clip for video models
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return None


def _check_items(items: Sequence[Any], kind: Kind, allow_still_images: bool) -> None:
    """Kind and form of every list item, without opening files or converting arrays."""
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            found = _kind_of_path(item)
            if found == "video" and kind == "image":
                raise StimulusError(
                    f"stimulus {i} ({item}) is a video file, but this model takes images; {_IMAGE_FORM}"
                )
            if found == "image" and kind == "video" and not allow_still_images:
                raise StimulusError(
                    f"this model takes videos, but stimulus {i} ({item}) is a still image; {_VIDEO_FORM}; "
                    f"or {_STILL_HINT}"
                )
        elif _is_pil(item):
            if kind == "video" and not allow_still_images:
                raise StimulusError(
                    f"this model takes videos, but stimulus {i} is a PIL image (a still); {_VIDEO_FORM}; "
                    f"or {_STILL_HINT}"
                )
            if _pil_is_closed(item):
                raise StimulusError(
                    f"stimulus {i} is a closed PIL image; pass it open (before img.close()) or its path"
                )
            if item.width < 1 or item.height < 1:
                raise StimulusError(
                    f"stimulus {i} is a {item.width} x {item.height} PIL image; it needs at least 1 x 1"
                )
        elif not isinstance(item, np.ndarray):
            raise StimulusError(f"stimulus {i} has unsupported type {type(item).__name__}; {_form(kind)}")


def _as_items(stimulus: Any, kind: Kind) -> list[Any] | np.ndarray:
    """The user's stimulus as an array or a list of items (folders and globs expanded)."""
    if isinstance(stimulus, np.ndarray):
        return stimulus
    if isinstance(stimulus, (str, os.PathLike)) or _is_pil(stimulus):
        stimulus = [stimulus]
    if not isinstance(stimulus, (list, tuple)):
        raise StimulusError(f"unsupported stimulus type {type(stimulus).__name__}; {_form(kind)}")
    if not stimulus:
        raise StimulusError(f"empty stimulus list; {_form(kind)}")
    return expand_paths(list(stimulus), kind)


def _check_kind_arg(kind: Any) -> None:
    if kind not in ("image", "video"):
        raise StimulusError(f"unknown stimulus kind {kind!r}; valid: 'image', 'video'")


def check_kind(stimulus: Any, kind: Kind, *, allow_still_images: bool = False) -> None:
    """Refuse a stimulus of the wrong kind or form, cheaply: no file is opened, no array converted.

    Call it before downloading or loading a model: it checks array dimensions, path existence
    (folders and globs expanded), file suffixes (a ``.jpg`` for a video model, an ``.mp4`` for an image
    model), and PIL images (closed, empty, or given to a video model).

    Parameters
    ----------
    stimulus : any form :func:`load_stimuli` accepts
    kind : {"image", "video"}
        What the model takes (``spec.input_kind``).
    allow_still_images : bool, default False
        Accept still images for a video model.

    Raises
    ------
    StimulusError
        With the accepted forms in the message.
    """
    _check_kind_arg(kind)
    if isinstance(stimulus, Stimuli):
        if stimulus.kind != kind:
            raise StimulusError(f"these stimuli were loaded as {stimulus.kind}s, but this model takes {kind}s")
        return
    items = _as_items(stimulus, kind)
    if isinstance(items, np.ndarray):
        error = _shape_error(items, kind, allow_still_images)
        if error is not None:
            raise error
        _check_not_empty(items.shape, kind, f"{kind} array")
        if items.ndim == 4:
            _image_channel_axis(items.shape)
        return
    _check_items(items, kind, allow_still_images)


def load_stimuli(
    stimulus: Any,
    kind: Kind,
    *,
    min_frames: int = 1,
    allow_still_images: bool = False,
    max_pixels: int | None = None,
) -> Stimuli:
    """Validate a user's stimulus and return a :class:`Stimuli` sequence.

    Parameters
    ----------
    stimulus : array, PIL image, path, folder, glob, list of those, or Stimuli
        See the module docstring for the accepted forms.
    kind : {"image", "video"}
        What the model expects.
    min_frames : int, default 1
        Videos with fewer frames are refused (arrays now, files when decoded).
    allow_still_images : bool, default False
        For video models: accept still images (files, PIL images, 4-D image arrays), each shown as a
        clip of ``max(min_frames, 1)`` identical frames. Without it they are refused.
    max_pixels : int, optional
        Largest image or frame (``width * height``) decoded; default ``BERG_MAX_PIXELS`` or Pillow's
        178,956,970.

    Returns
    -------
    Stimuli
        Validated batch; files are checked now (existence, readable header, pixel limit) and decoded
        lazily.

    Raises
    ------
    StimulusError
        With the expected form in the message, naming the stimulus (index or file) at fault.
    """
    _check_kind_arg(kind)
    limit = max_pixels_limit(max_pixels)
    if isinstance(stimulus, Stimuli):
        check_kind(stimulus, kind)
        if stimulus.min_frames >= min_frames:
            return stimulus
        return Stimuli(stimulus._items, kind, min_frames=min_frames, max_pixels=stimulus.max_pixels)
    items = _as_items(stimulus, kind)
    if isinstance(items, np.ndarray):
        return Stimuli(
            _array_items(items, kind, min_frames, allow_still_images=allow_still_images),
            kind,
            min_frames=min_frames,
            max_pixels=limit,
        )
    _check_items(items, kind, allow_still_images)
    out: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            out.append(_item_array(item, kind, min_frames, i, allow_still_images))
            continue
        still = kind == "video" and (_is_pil(item) or _kind_of_path(item) == "image")
        if isinstance(item, (str, os.PathLike)):
            # Headers now (cheap), pixels later: a corrupt file or a decompression bomb is refused before
            # any backbone runs, a large folder is still decoded one batch at a time.
            if kind == "image" or still:
                _open_image(item, limit).close()
            else:
                _check_video_file(item, limit)
        out.append(_Still(item, max(min_frames, 1)) if still else item)
    return Stimuli(out, kind, min_frames=min_frames, max_pixels=limit)
