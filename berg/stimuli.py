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
  list/tuple mixing those. Image files are opened with Pillow (restricted to common raster formats);
  videos are decoded with PyAV. Files are checked when the stimuli are loaded (existence, readable
  header, pixel budget) and decoded lazily, one batch at a time.
* **PIL images** (open ones; a closed image is refused), alone or in a list.
* A :class:`Stimuli` object (what :func:`load_stimuli` returns) is passed through.

Pixel values: 8-bit images go through Pillow's ``convert("RGB")``. Deeper images are scaled from
the range of their format, never clipped: 16-bit greyscale (PNG, TIFF, PIL ``I;16``) by
``round(v * 255 / 65535)`` (the PNG specification's rescaling), 32-bit integer TIFFs from ``2**32 - 1``
(unsigned) or ``2**31 - 1`` (signed), float images (PIL mode ``F``) from [0, 1]. Floats outside
[0, 1], NaN, negative integers and 32-bit images of unknown range are refused with the conversion to
use. EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so images come out as displayed.

Budgets (no stimulus costs more than about 200 MB):

* every image or video frame may hold at most ``max_pixels`` pixels (keyword, else the
  ``BERG_MAX_PIXELS`` environment variable, else 40,000,000 = a 120 MB RGB array), checked from the
  file header, so a small file that claims 13000 x 13000 pixels is refused before it is decoded. A
  JPEG above the budget is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's draft mode) when the caller
  says which size the model resizes to (``target_size``) and that scale fits; images within the
  budget are always decoded in full. Conversion runs in strips, so it never holds a second full copy.
* videos are decoded as a stream: with ``fps`` (:func:`decode_video`) or a model's ``n_frames``
  (:func:`load_stimuli`) only the frames sampled are kept; the kept frames may take at most
  ``BERG_MAX_VIDEO_MB`` MiB (default 200).

Arrays with an empty axis (a 0 x 0 image, a clip with 0 frames) and empty paths are refused.

A still image given to a video model is refused ("this model takes videos") unless
``allow_still_images=True``; then each still becomes a clip of ``max(min_frames, 1)`` identical frames.

Items come out as ``np.uint8`` arrays ``(H, W, 3)`` for images and ``(T, H, W, 3)`` for videos.
:func:`check_kind` runs the cheap checks (kind, existence) without opening any file, so a caller can
refuse a wrong stimulus before downloading or loading a model.
"""

from __future__ import annotations

import glob
import logging
import math
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
    "max_video_bytes",
    "movie_provenance",
    "MAX_FPS",
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
# berg's default pixel budget per image or video frame (BERG_MAX_PIXELS changes it). 40 MP decodes to
# a 120 MB RGB array; Pillow's own default (~179 MP) lets a 160 KiB PNG cost ~1.8 GB.
_DEFAULT_MAX_PIXELS = 40_000_000
# Decoded frames berg keeps for one video (BERG_MAX_VIDEO_MB changes it).
_DEFAULT_MAX_VIDEO_MB = 200
#: Highest sampling rate ``decode_video(fps=...)`` accepts (frames per second); no camera or display
#: format is faster, and above a clip's own rate sampling only repeats frames.
MAX_FPS = 1000.0
# Pillow checks its module-level limit inside Image.open; berg raises it (never lowers it) under this
# lock when a caller asks for a larger limit, so berg's limit is the one that decides.
_PIL_LIMIT_LOCK = threading.Lock()
# Images are converted to RGB in strips of about this many bytes, so a conversion never holds a second
# full-size copy (Pillow's ``np.asarray(img)`` builds the whole image as bytes, joined, then copied).
_STRIP_BYTES = 1 << 20
_EXIF_ORIENTATION = 0x0112
# Pillow's JPEG decoder can scale by 1/2, 1/4 or 1/8 while decoding (libjpeg's DCT scaling).
_DRAFT_FORMATS = ("JPEG", "MPO")
_FLOAT_HINT = (
    "convert it to 8 bits first, e.g. Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)) for "
    "values in [0, 1], or scale your own range to 0-255"
)

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
    """The pixel budget in force: ``max_pixels`` if given, else ``BERG_MAX_PIXELS``, else 40,000,000.

    Parameters
    ----------
    max_pixels : int, optional
        An explicit limit (pixels per image or video frame, ``width * height``).

    Returns
    -------
    int
    """
    from berg.env import env_int

    limit = env_int("BERG_MAX_PIXELS", _DEFAULT_MAX_PIXELS, minimum=1) if max_pixels is None else max_pixels
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise StimulusError(f"max_pixels must be a positive integer (pixels per image), got {limit!r}")
    return int(limit)


def max_video_bytes(max_bytes: int | None = None) -> int:
    """The video budget in force: bytes of decoded RGB frames kept for one video.

    Parameters
    ----------
    max_bytes : int, optional
        An explicit limit in bytes; default ``BERG_MAX_VIDEO_MB`` MiB, else 200 MiB.

    Returns
    -------
    int
    """
    from berg.env import env_int

    if max_bytes is None:
        return env_int("BERG_MAX_VIDEO_MB", _DEFAULT_MAX_VIDEO_MB, minimum=1) << 20
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
        raise StimulusError(f"max_bytes must be a positive integer (bytes of decoded frames), got {max_bytes!r}")
    return int(max_bytes)


def _check_pixels(width: int, height: int, limit: int, what: str) -> None:
    if width < 1 or height < 1:
        raise StimulusError(f"{what} is {width} x {height} pixels; an image needs at least 1 x 1")
    if width * height > limit:
        raise StimulusError(
            f"{what} is {width} x {height} = {width * height:,} pixels, above the limit of {limit:,} (berg's pixel budget: "
            "a guard against decompression bombs and out-of-memory); if the file is genuine, raise the "
            "budget with max_pixels=N or the BERG_MAX_PIXELS environment variable, or downscale the file"
        )


def _draft(img: Any, target_size: tuple[int, int] | None, limit: int) -> None:
    """Let a JPEG above the budget decode at 1/2, 1/4 or 1/8 scale, never below the model's input size.

    Only for images the model resizes anyway (``target_size`` given) and only above the budget, so
    every image berg could decode in full is still decoded in full (no change of any result).
    """
    if target_size is None or img.width * img.height <= limit or img.format not in _DRAFT_FORMATS:
        return
    side = max(int(s) for s in target_size)
    before = img.size
    img.draft(img.mode, (side, side))  # picks the largest scale that keeps both sides >= side
    if img.size != before:
        log.info(
            "decoding %s at %d x %d (JPEG draft of %d x %d; the model resizes to %s)",
            img.filename,
            *img.size,
            *before,
            target_size,
        )


def _open_image(path: str | os.PathLike[str], limit: int, target_size: tuple[int, int] | None = None):
    """Open an image file lazily (header only) with berg's formats and pixel budget; caller closes it."""
    from PIL import Image, UnidentifiedImageError

    Image.init()
    formats = [f for f in _PIL_FORMATS if f in Image.OPEN]
    with _PIL_LIMIT_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
            log.debug("raising PIL.Image.MAX_IMAGE_PIXELS to berg's limit %d", limit)
            Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            # berg's own budget below is the policy; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=formats)
    except FileNotFoundError:
        raise StimulusError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise StimulusError(f"{path} is a folder, not an image file") from None
    except Image.DecompressionBombError as exc:
        raise StimulusError(
            f"image {path} is too large to decode safely ({exc}); raise the budget with max_pixels=N or "
            "BERG_MAX_PIXELS if the file is genuine"
        ) from None
    except UnidentifiedImageError:
        raise StimulusError(
            f"cannot read image {path}: not an image file berg opens ({', '.join(formats)}), or it is corrupt"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow plugins raise all three on bad headers
        raise StimulusError(f"cannot read image {path}: {exc} (the file is truncated or corrupt)") from None
    try:
        _draft(img, target_size, limit)
        _check_pixels(img.width, img.height, limit, f"image {path}")
    except StimulusError:
        img.close()
        raise
    except (OSError, ValueError) as exc:  # draft on a corrupt JPEG header
        img.close()
        raise StimulusError(f"cannot read image {path}: {exc} (the file is truncated or corrupt)") from None
    return img


def _oriented(img: Any, *, owned: bool) -> Any:
    """The image as displayed: its EXIF orientation applied (``PIL.ImageOps.exif_transpose``).

    ``owned`` images (opened by berg) are turned in place; a caller's PIL image is left as it is.
    """
    import struct

    from PIL import ImageOps

    img.load()  # decode errors surface here, not inside getexif (which would leave a half-loaded PNG)
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION)
    except (SyntaxError, ValueError, TypeError, KeyError, struct.error) as exc:  # a corrupt EXIF block
        log.warning("ignoring an unreadable EXIF block (%s); the image is used as stored", exc)
        return img
    if orientation not in (2, 3, 4, 5, 6, 7, 8):  # 1 = as stored; other values are invalid
        return img
    if owned:
        ImageOps.exif_transpose(img, in_place=True)
        return img
    return ImageOps.exif_transpose(img)


def _integer_range(img: Any) -> tuple[int, bool] | None:
    """``(maximum, signed)`` of a 32-bit Pillow ``I`` image's samples, from its file's tags, or None."""
    if img.format == "PNG":  # Pillow reads 16-bit greyscale PNGs as I (or I;16)
        return 65535, False
    tags = getattr(img, "tag_v2", None)  # TIFF only (BitsPerSample 258, SampleFormat 339)
    if tags is None:
        return None
    bits = tags.get(258, (32,))
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    fmt = tags.get(339, (1,))
    signed = int(fmt[0] if isinstance(fmt, tuple) else fmt) == 2
    if not 8 < bits <= 32:
        return None
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1, signed


def _strips(img: Any):
    """Row strips ``(y0, y1, strip_image)`` of about :data:`_STRIP_BYTES` each."""
    width, height = img.size
    rows = max(1, _STRIP_BYTES // max(1, width * 4))
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        yield y0, y1, img.crop((0, y0, width, y1))


def _pil_to_rgb(img: Any, what: str, *, owned: bool) -> np.ndarray:
    """An open PIL image -> ``(H, W, 3)`` uint8, orientation applied, deep images scaled by their range.

    * 8-bit modes (L, P, RGB, RGBA, CMYK, ...): Pillow's ``convert("RGB")``.
    * 16-bit greyscale (``I;16``, 16-bit PNG): ``round(v * 255 / 65535)``, the PNG specification's
      sample-depth rescaling. 32-bit integer TIFFs likewise from the range of their sample format
      (``2**32 - 1`` unsigned, ``2**31 - 1`` signed; negative values are refused).
    * Float (mode ``F``): values must be finite and within [0, 1]; they become ``round(v * 255)``.
    Anything else (NaN, floats outside [0, 1], integers of unknown range) is refused with the
    conversion to use.
    """
    img = _oriented(img, owned=owned)
    width, height = img.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    mode = img.mode
    if mode.startswith("I;16") and not mode.endswith("S"):
        top, signed = 65535, False
    elif mode == "I":
        found = _integer_range(img)
        if found is None:
            raise StimulusError(
                f"{what} holds 32-bit integers of unknown range (PIL mode I); convert it to 8 bits first, "
                "e.g. Image.fromarray(np.round(x / x.max() * 255).astype(np.uint8)) for your own range"
            )
        top, signed = found
    elif mode == "F":
        top, signed = 0, False
    else:
        for y0, y1, strip in _strips(img):
            rgb = strip if strip.mode == "RGB" else strip.convert("RGB")
            out[y0:y1] = np.frombuffer(rgb.tobytes(), dtype=np.uint8).reshape(y1 - y0, width, 3)
        return out
    low, high = np.inf, -np.inf
    for y0, y1, strip in _strips(img):
        values = np.asarray(strip)
        if mode == "I" and not signed:  # Pillow keeps 32 unsigned bits in a signed int32 sample
            values = values.view(np.uint32) if values.dtype.itemsize == 4 else values
        if mode == "F":
            if not np.isfinite(values).all():
                raise StimulusError(f"{what} is a float image (PIL mode F) with NaN or infinite values; {_FLOAT_HINT}")
            low, high = min(low, float(values.min())), max(high, float(values.max()))
            grey = np.round(np.clip(values, 0.0, 1.0).astype(np.float64) * 255.0)
        else:
            low = min(low, int(values.min()))
            wide = np.clip(values.astype(np.int64), 0, None).astype(np.uint64)
            grey = (wide * 255 + top // 2) // top  # exact integer rounding of v * 255 / top
        out[y0:y1] = grey.astype(np.uint8)[..., None]
    if mode == "F" and (low < 0.0 or high > 1.0):
        raise StimulusError(
            f"{what} is a float image (PIL mode F) with values {low:g}..{high:g}; berg reads float images as "
            f"intensities in [0, 1]; {_FLOAT_HINT}"
        )
    if mode != "F" and low < 0:
        raise StimulusError(
            f"{what} holds signed integers with negative values (min {low}); convert it to 8 bits first, "
            "e.g. Image.fromarray(np.round((x - x.min()) / np.ptp(x) * 255).astype(np.uint8))"
        )
    return out


def load_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = None, target_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Read an image file as an RGB ``uint8`` array ``(H, W, 3)``, as displayed (EXIF orientation applied).

    Parameters
    ----------
    path : str or path-like
        A raster image Pillow reads (JPEG, PNG, GIF, BMP, TIFF, WebP, PPM, ...). Greyscale, palette,
        RGBA and CMYK images are converted with ``convert("RGB")`` (alpha is dropped); 16-bit, 32-bit
        and float images are scaled from their own range (see :mod:`berg.stimuli`).
    max_pixels : int, optional
        Largest ``width * height`` decoded (see :func:`max_pixels_limit`).
    target_size : (int, int), optional
        ``(height, width)`` the caller resizes the image to. A JPEG above the pixel budget is then
        decoded at 1/2, 1/4 or 1/8 scale (never below this size) instead of being refused.

    Raises
    ------
    StimulusError
        Missing, unreadable, truncated or corrupt file, one above the pixel budget, or pixel values
        berg cannot map to 0-255; the message names the file.
    """
    limit = max_pixels_limit(max_pixels)
    img = _open_image(path, limit, target_size)
    try:
        with img:
            return _pil_to_rgb(img, f"image {path}", owned=True)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated/corrupt data (zlib, struct...)
        if isinstance(exc, StimulusError):
            raise
        raise StimulusError(f"cannot decode image {path}: {exc} (the file is truncated or corrupt)") from None


# ------------------------------------------------------------------------------------------ videos


def _check_fps(fps: Any) -> float | None:
    if fps is None:
        return None
    ok = not isinstance(fps, bool) and isinstance(fps, (int, float, np.integer, np.floating))
    if not ok or not math.isfinite(float(fps)) or not 0 < float(fps) <= MAX_FPS:
        raise StimulusError(
            f"fps={fps!r} is out of range; valid: a number with 0 < fps <= {MAX_FPS:g} (samples per second of "
            "the clip), or None for every frame"
        )
    return float(fps)


def _open_video(path: str | os.PathLike[str], limit: int):
    """Open a video container; its first video stream's frame size is checked from the header."""
    import av

    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise StimulusError(f"video file not found: {path}") from None
    except IsADirectoryError:
        raise StimulusError(f"{path} is a folder, not a video file") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:  # type: ignore[attr-defined]
        raise StimulusError(f"cannot decode video {path}: {exc}") from None
    try:
        if not container.streams.video:
            raise StimulusError(f"cannot decode video {path}: it has no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width and height:  # some containers only know the size once a frame is decoded
            _check_pixels(width, height, limit, f"video {path} (frame size)")
    except BaseException:
        container.close()
        raise
    return container, stream


def _check_video_file(path: str | os.PathLike[str], limit: int) -> None:
    """Open a video's header: it must hold a video stream of positive size within the pixel budget."""
    container, _ = _open_video(path, limit)
    container.close()


def _decoded_frames(container: Any, stream: Any, limit: int, path: Any):
    """``(index, time_s, av.VideoFrame)`` in presentation order; a frame above the budget is refused
    before it is converted (PyAV has decoded it by then, at the codec's own size, ~1.5 B/pixel)."""
    size = None
    for k, frame in enumerate(container.decode(stream)):
        if (frame.width, frame.height) != size:
            _check_pixels(frame.width, frame.height, limit, f"video {path} (frame {k})")
            if size is not None:
                raise StimulusError(
                    f"video {path} changes frame size at frame {k} ({size[0]} x {size[1]} -> "
                    f"{frame.width} x {frame.height}); re-encode it at one size (e.g. ffmpeg -vf scale=W:H)"
                )
            size = (frame.width, frame.height)
        yield k, (float(frame.time) if frame.time is not None else k / 25.0), frame


class _Frames:
    """A growing ``(n, H, W, 3)`` uint8 buffer that refuses to pass the video byte budget."""

    def __init__(self, budget: int, path: Any, hint: str, expected: int = 0):
        self.budget, self.path, self.hint, self.expected = budget, path, hint, expected
        self.buf: np.ndarray | None = None
        self.n = 0

    def append(self, frame: np.ndarray) -> None:
        if self.buf is None:
            most = max(1, self.budget // frame.nbytes)
            self.buf = np.empty((min(max(self.expected, 8), most), *frame.shape), dtype=np.uint8)
        if self.n == len(self.buf):
            most = self.budget // frame.nbytes
            if self.n + 1 > most:
                raise StimulusError(
                    f"video {self.path}: more than {most:,} frames of {frame.shape[1]} x {frame.shape[0]} "
                    f"({(self.n + 1) * frame.nbytes / 2**20:,.0f} MiB decoded) would pass the video budget of "
                    f"{self.budget / 2**20:,.0f} MiB; {self.hint}, or raise the budget with max_bytes=N or "
                    "BERG_MAX_VIDEO_MB"
                )
            grown = np.empty((min(max(2 * self.n, 8), most), *frame.shape), dtype=np.uint8)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n] = frame
        self.n += 1

    def array(self) -> np.ndarray:
        assert self.buf is not None
        return self.buf[: self.n]

    def check_header(self, stream: Any) -> None:
        """Refuse before decoding when the header already says the frames pass the budget."""
        ctx = stream.codec_context
        frame_bytes = int(ctx.width or 0) * int(ctx.height or 0) * 3
        # one frame of slack: a header's duration or count can be one frame off what decoding finds
        if frame_bytes and self.expected > 1 and (self.expected - 1) * frame_bytes > self.budget:
            raise StimulusError(
                f"video {self.path}: {self.expected:,} frames of {ctx.width} x {ctx.height} "
                f"({self.expected * frame_bytes / 2**20:,.0f} MiB decoded) would pass the video budget of "
                f"{self.budget / 2**20:,.0f} MiB; {self.hint}, or raise the budget with max_bytes=N or "
                "BERG_MAX_VIDEO_MB"
            )


def _rate(stream: Any, times: list[float]) -> float:
    """The stream's average rate, else the rate its frame times show, else 25."""
    rate = float(stream.average_rate) if stream.average_rate else 0.0
    if rate > 0:
        return rate
    if len(times) > 1 and times[-1] > times[0]:
        return (len(times) - 1) / (times[-1] - times[0])
    return 25.0


def _expected_frames(stream: Any, fps: float | None) -> int:
    """Frames the header promises (all frames, or samples at ``fps``); 0 when it does not say."""
    if fps is None:
        return int(stream.frames or 0)
    if stream.duration and stream.time_base:
        return int(math.ceil(float(stream.duration * stream.time_base) * fps))
    return 0


def _decode_all(container: Any, stream: Any, limit: int, budget: int, path: Any):
    frames = _Frames(budget, path, "pass fps= to decode_video to sample fewer frames", _expected_frames(stream, None))
    frames.check_header(stream)
    times: list[float] = []
    for _, t, frame in _decoded_frames(container, stream, limit, path):
        frames.append(frame.to_ndarray(format="rgb24"))
        times.append(t)
    if not times:
        raise StimulusError(f"{path} contains no decodable frames")
    return frames.array(), times


def _sample(container: Any, stream: Any, limit: int, budget: int, path: Any, fps: float, rule: str, rate: float):
    """Frames at ``t = j / fps`` chosen by ``rule`` while decoding; only the sampled frames are kept.

    The choice is the one of "decode every frame, then index": ``"last"`` takes frame
    ``searchsorted(t_frames, t + 1e-9, "right") - 1``, ``"nearest"`` frame ``floor(t * rate + 0.5 + 1e-9)``
    (``rate`` is the stream's), both clipped to the clip and for ``t < duration - 1e-9``, where the
    duration is the last frame's time plus one frame.
    """
    step = 1.0 / fps
    hint = f"lower fps (now {fps:g})"
    frames = _Frames(budget, path, hint, _expected_frames(stream, fps))
    frames.check_header(stream)
    indices: list[int] = []
    times: list[float] = []
    t0 = None
    j = 0
    pending: tuple[int, Any] | None = None  # "last": a frame waits until the next one's time is known
    for k, t_abs, frame in _decoded_frames(container, stream, limit, path):
        t0 = t_abs if t0 is None else t0
        t = t_abs - t0
        if rule == "last":
            if pending is not None:
                pk, pframe = pending
                arr = None
                while j * step + 1e-9 < t:
                    arr = pframe.to_ndarray(format="rgb24") if arr is None else arr
                    frames.append(arr)
                    indices.append(pk)
                    j += 1
            pending = (k, frame)
        else:
            arr = None
            while math.floor(j * step * rate + 0.5 + 1e-9) <= k:
                arr = frame.to_ndarray(format="rgb24") if arr is None else arr
                frames.append(arr)
                indices.append(k)
                j += 1
            pending = (k, frame)
        times.append(t)
    if pending is None:
        raise StimulusError(f"{path} contains no decodable frames")
    rate = _rate(stream, times) if rule == "last" else rate
    n_out = len(np.arange(0.0, times[-1] + 1.0 / rate - 1e-9, step))
    last_k, last_frame = pending
    arr = None
    while j < n_out:  # samples after the last frame's start show the last frame
        arr = last_frame.to_ndarray(format="rgb24") if arr is None else arr
        frames.append(arr)
        indices.append(last_k)
        j += 1
    idx = np.asarray(indices[:n_out], dtype=np.int64)
    return frames.array()[:n_out], idx, np.asarray(times)[idx], rate


def _times_only(path: Any, limit: int) -> list[float]:
    """Presentation times of every frame (frames decoded, never converted: constant memory)."""
    container, stream = _open_video(path, limit)
    with container:
        return [t for _, t, _ in _decoded_frames(container, stream, limit, path)]


def _video_errors():
    import av

    return (av.error.FFmpegError, OSError, ValueError, EOFError)  # type: ignore[attr-defined]


def decode_video(
    path: str | os.PathLike[str],
    *,
    fps: float | None = None,
    rule: str = "last",
    return_info: bool = False,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
) -> tuple[np.ndarray, float] | tuple[np.ndarray, float, dict[str, Any]]:
    """Decode a video file with PyAV into RGB frames, as a stream: only the returned frames are kept.

    Parameters
    ----------
    path : str or path-like
        Video file (any container/codec FFmpeg in PyAV reads).
    fps : float, optional
        If given (``0 < fps <= 1000``), resample to this rate while decoding: one frame for each output
        time ``t = i / fps`` (``t`` below the clip duration), chosen by ``rule``. If ``None``, all frames
        are returned at the stream's average rate.
    rule : {"last", "nearest"}
        ``"last"``: the last decoded frame whose presentation time is ``<= t`` (what a viewer sees at
        ``t``). ``"nearest"``: frame ``round(t * stream_fps)`` (halves up), what OpenCV's millisecond
        seek returns and so what img2fmri predicted; on a 23.976 fps clip sampled at 2 Hz the two
        rules differ by one frame for 14 of 15 samples.
    return_info : bool
        Also return ``{"indices", "times", "rule", "stream_fps"}``: the decoded-frame index and its
        presentation time (s, from the first frame) of every returned frame.
    max_pixels : int, optional
        Largest frame (``width * height``), checked from the stream header before decoding; see
        :func:`max_pixels_limit`.
    max_bytes : int, optional
        Largest size of the returned frames (bytes); see :func:`max_video_bytes` (default 200 MiB).

    Returns
    -------
    frames : np.ndarray
        ``uint8`` array ``(T, H, W, 3)``.
    rate : float
        Frame rate of the returned frames (frames per second).
    info : dict
        Only with ``return_info=True``.

    Raises
    ------
    StimulusError
        A missing or corrupt file, a frame above the pixel budget, returned frames above the byte
        budget (the message says which ``fps`` fits), ``fps`` out of range, an unknown ``rule``.
    """
    if rule not in ("last", "nearest"):
        raise StimulusError(f"rule={rule!r}; valid: 'last' (frame shown at t), 'nearest' (img2fmri/OpenCV seek)")
    rate_out = _check_fps(fps)
    limit = max_pixels_limit(max_pixels)
    budget = max_video_bytes(max_bytes)
    try:
        container, stream = _open_video(path, limit)
        with container:
            if rate_out is None:
                video, times = _decode_all(container, stream, limit, budget, path)
                rate = _rate(stream, times)
                t = np.asarray(times) - times[0]
                info = {"indices": np.arange(len(video)), "times": t, "rule": "all", "stream_fps": rate}
                return (video, rate, info) if return_info else (video, rate)
            rate = float(stream.average_rate) if stream.average_rate else 0.0
            if rule == "nearest" and rate <= 0:  # the rule needs the rate before the first sample
                rate = _rate(stream, _times_only(path, limit))
            video, idx, t_idx, rate = _sample(container, stream, limit, budget, path, rate_out, rule, rate)
    except StimulusError:
        raise
    except _video_errors() as exc:
        raise StimulusError(f"cannot decode video {path}: {exc} (the file is truncated or corrupt)") from None
    if return_info:
        return video, rate_out, {"indices": idx, "times": t_idx, "rule": rule, "stream_fps": rate}
    return video, rate_out


def movie_provenance(path: str | os.PathLike[str], fps: float | None, info: dict[str, Any]) -> dict[str, Any]:
    """The record of how a movie's frames were sampled, as plain JSON data.

    What ``encode_movie`` attaches to its image (``img.extra["movie"]``) and :func:`berg.save` /
    :func:`berg.save_nifti` store (provenance and NIfTI sidecar), so a response can be traced to its
    frame.

    Parameters
    ----------
    path : path
        The movie file.
    fps : float or None
        The sampling rate given to :func:`decode_video` (``None``: every frame).
    info : dict
        :func:`decode_video`'s ``info`` (``return_info=True``).

    Returns
    -------
    dict
        ``{"source", "fps", "frame_rule", "stream_fps", "sample_times", "frame_indices", "frame_times"}``:
        sample ``j`` is at ``sample_times[j] = j / fps`` s and shows decoded frame
        ``frame_indices[j]``, presented at ``frame_times[j]`` s (from the first frame), chosen by
        ``frame_rule`` (``"last"``, ``"nearest"``; ``"all"`` without ``fps``).
    """
    indices = np.asarray(info["indices"], dtype=np.int64)
    times = np.asarray(info["times"], dtype=np.float64)
    rate = float(info["stream_fps"]) if fps is None else float(fps)
    samples = times if fps is None else np.arange(len(indices)) * (1.0 / rate)
    return {
        "source": os.fspath(path),
        "fps": rate,
        "frame_rule": str(info["rule"]),
        "stream_fps": float(info["stream_fps"]),
        "sample_times": samples.tolist(),
        "frame_indices": indices.tolist(),
        "frame_times": times.tolist(),
    }


def _decode_for_model(path: Any, n_frames: int, limit: int, budget: int) -> tuple[np.ndarray, int]:
    """The frames a video model samples (``select_frames(T, n_frames)``), decoded as a stream.

    Returns the distinct sampled frames in order and the clip's frame count ``T``: the model's own
    ``select_frames`` over these gives the frames it would pick from the whole clip. The header's
    frame count decides what to keep; if the stream holds another number, a second pass keeps the
    right ones.
    """
    from berg.transforms import select_frames

    def keep(wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
        kept: dict[int, np.ndarray] = {}
        count = 0
        container, stream = _open_video(path, limit)
        with container:
            for k, _, frame in _decoded_frames(container, stream, limit, path):
                if k in wanted:
                    kept[k] = frame.to_ndarray(format="rgb24")
                    if len(kept) * kept[k].nbytes > budget:
                        raise StimulusError(
                            f"video {path}: {len(wanted)} sampled frames of {frame.width} x {frame.height} pass "
                            f"the video budget of {budget / 2**20:,.0f} MiB; raise it with BERG_MAX_VIDEO_MB"
                        )
                count += 1
        return kept, count

    container, stream = _open_video(path, limit)
    header = int(stream.frames or 0)
    container.close()
    try:
        kept, count = keep(set(select_frames(header, n_frames).tolist()) if header else set())
        if count == 0:
            raise StimulusError(f"{path} contains no decodable frames")
        needed = sorted(set(select_frames(count, n_frames).tolist()))
        if any(i not in kept for i in needed):  # the header's count was wrong (or missing)
            kept, count = keep(set(needed))
    except StimulusError:
        raise
    except _video_errors() as exc:
        raise StimulusError(f"cannot decode video {path}: {exc} (the file is truncated or corrupt)") from None
    return np.stack([kept[i] for i in needed]), count


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
    target_size : (int, int), optional
        ``(height, width)`` the model resizes images to (lets JPEGs above the budget draft-decode).
    n_frames : int, optional
        Frames a video model samples with :func:`berg.transforms.select_frames`; video files are then
        decoded keeping only those. Without it every frame is decoded, under :func:`max_video_bytes`.
    """

    def __init__(
        self,
        items: Sequence[Any],
        kind: Kind,
        *,
        min_frames: int = 1,
        max_pixels: int | None = None,
        target_size: tuple[int, int] | None = None,
        n_frames: int | None = None,
    ):
        self._items = items
        self.kind = kind
        self.min_frames = min_frames
        self.max_pixels = max_pixels
        self.target_size = target_size
        self.n_frames = n_frames

    def __len__(self) -> int:
        return len(self._items)

    def _like(self, items: Sequence[Any], **changes: Any) -> Stimuli:
        kw = {
            "min_frames": self.min_frames,
            "max_pixels": self.max_pixels,
            "target_size": self.target_size,
            "n_frames": self.n_frames,
        }
        return Stimuli(items, self.kind, **{**kw, **changes})

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self._like(self._items[i])
        return self._materialise(self._items[i], i)

    def _image(self, item: Any, i: int) -> np.ndarray:
        if isinstance(item, np.ndarray):
            return item
        if isinstance(item, (str, os.PathLike)):
            return load_image(item, max_pixels=self.max_pixels, target_size=self.target_size)
        try:  # PIL image
            _check_pixels(item.width, item.height, max_pixels_limit(self.max_pixels), f"stimulus {i} (PIL image)")
            arr = _pil_to_rgb(item, f"stimulus {i} (PIL image)", owned=False)
        except StimulusError:
            raise
        except ValueError as exc:  # "Operation on closed image"
            raise StimulusError(f"stimulus {i}: cannot read the PIL image ({exc}); pass it open, or its path") from None
        except OSError as exc:  # a lazily opened, truncated file
            raise StimulusError(f"stimulus {i}: cannot decode the PIL image ({exc})") from None
        return arr

    def _video(self, path: Any) -> tuple[np.ndarray, int]:
        limit = max_pixels_limit(self.max_pixels)
        if self.n_frames:
            return _decode_for_model(path, int(self.n_frames), limit, max_video_bytes())
        video = decode_video(path, max_pixels=limit)[0]
        return video, len(video)

    def _materialise(self, item: Any, i: int) -> np.ndarray:
        if isinstance(item, _Still):
            frame = self._image(item.source, i)
            arr = np.broadcast_to(frame[None], (item.n_frames, *frame.shape))
        elif self.kind == "image":
            arr = self._image(item, i)
        elif isinstance(item, np.ndarray):
            arr = item
        else:
            arr, count = self._video(item)
            if count < self.min_frames:
                raise StimulusError(f"video {i} has {count} frames; this model needs at least {self.min_frames}")
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
    if not text:  # Path("") is the current folder: never encode it by accident
        where = f"stimulus {i}: " if i is not None else ""
        raise StimulusError(f"{where}the stimulus path is empty; pass a file, folder or glob path. {_form(kind)}")
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


def _check_count_arg(name: str, value: Any, minimum: int, *, allow_none: bool = False) -> int | None:
    """A frame count given as ``'16'`` or ``16.0`` is refused here, not as a TypeError deep in decoding."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise StimulusError(
            f"{name} must be an integer >= {minimum}{' or None' if allow_none else ''}, got "
            f"{type(value).__name__} {value!r}"
            + (
                f"; pass {name}={int(float(value))}"
                if not isinstance(value, (int, np.integer)) and _integral_text(value)
                else ""
            )
        )
    return int(value)


def _integral_text(value: Any) -> bool:
    """``'16'`` or ``16.0``: what the caller most likely meant is an integer (named in the message)."""
    try:
        return not isinstance(value, bool) and float(value) == int(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


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
    target_size: tuple[int, int] | None = None,
    n_frames: int | None = None,
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
        Largest image or frame (``width * height``) decoded; default ``BERG_MAX_PIXELS`` or
        40,000,000.
    target_size : (int, int), optional
        ``(height, width)`` the model resizes every image to (its transform's input size). A JPEG above
        the pixel budget is then decoded at 1/2, 1/4 or 1/8 scale, never below this size, instead of
        being refused.
    n_frames : int, optional
        Frames a video model samples over each clip (:func:`berg.transforms.select_frames`); video
        files are then decoded keeping only those frames. Without it every frame is decoded, within
        :func:`max_video_bytes`.

    Returns
    -------
    Stimuli
        Validated batch; files are checked now (existence, readable header, pixel budget) and decoded
        lazily.

    Raises
    ------
    StimulusError
        With the expected form in the message, naming the stimulus (index or file) at fault.
    """
    _check_kind_arg(kind)
    min_frames = _check_count_arg("min_frames", min_frames, 0)
    n_frames = _check_count_arg("n_frames", n_frames, 1, allow_none=True)
    limit = max_pixels_limit(max_pixels)
    if isinstance(stimulus, Stimuli):
        check_kind(stimulus, kind)
        changes: dict[str, Any] = {}
        if stimulus.min_frames < min_frames:
            changes["min_frames"] = min_frames
        if target_size is not None and stimulus.target_size is None:
            changes["target_size"] = tuple(target_size)
        if n_frames is not None and stimulus.n_frames is None:
            changes["n_frames"] = n_frames
        return stimulus._like(stimulus._items, **changes) if changes else stimulus
    size = None if target_size is None else tuple(int(v) for v in target_size)
    items = _as_items(stimulus, kind)
    if isinstance(items, np.ndarray):
        return Stimuli(
            _array_items(items, kind, min_frames, allow_still_images=allow_still_images),
            kind,
            min_frames=min_frames,
            max_pixels=limit,
            target_size=size,
            n_frames=n_frames,
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
                _open_image(item, limit, size).close()
            else:
                _check_video_file(item, limit)
        else:  # an open PIL image: already in memory, but its RGB copy must fit the budget too
            _check_pixels(item.width, item.height, limit, f"stimulus {i} (PIL image)")
        out.append(_Still(item, max(min_frames, 1)) if still else item)
    return Stimuli(out, kind, min_frames=min_frames, max_pixels=limit, target_size=size, n_frames=n_frames)
