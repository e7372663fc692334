"""Hostile and odd inputs berg must refuse with a :class:`~berg.errors.BERGError` (issue 10, "Inputs and outputs").

The cases are built here once, for berg's test suite (``tests/test_inputs_hostile.py``) and the
``hostile_inputs`` benchmark alike, so both run the very same inputs: decompression-bomb headers (PNG,
GIF, BMP), truncated and corrupt images, EPS (never handed to Ghostscript), empty, random and truncated
videos, symlink loops, NUL bytes, closed and empty PIL images, odd arrays, and output paths berg must
refuse before writing anything. Use them on code of your own that hands user files to berg::

    >>> from berg.testing.hostile import stimulus_cases
    >>> for name, call in stimulus_cases(tmp_path / "stim"):       # doctest: +SKIP
    ...     with pytest.raises(BERGError):
    ...         call()

Pillow and PyAV are imported when a file is written, not when this module is imported.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MB",
    "png_claiming",
    "gif_claiming",
    "bmp_claiming",
    "image_bytes",
    "write_bytes",
    "write_video",
    "decoded",
    "with_env",
    "stimulus_cases",
    "output_path_cases",
]

MB = 1 << 20

#: ``(name, call)``: calling ``call()`` must raise a BERGError
Case = tuple[str, Callable[[], object]]


# ------------------------------------------------------------------------------------------ crafted files
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims ``width x height`` RGB pixels (the data is 10 zero bytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + _chunk(b"IEND", b"")
    )


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF header + one image descriptor claiming ``width x height``."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;"
    return screen + image


def bmp_claiming(width: int, height: int) -> bytes:
    """A 24-bit BMP header claiming ``width x height`` with no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def image_bytes(fmt: str, size: tuple[int, int] = (64, 64), seed: int = 0) -> bytes:
    """A valid image of seeded random RGB pixels, encoded as ``fmt`` (``"PNG"``, ``"JPEG"``, ...) by Pillow."""
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` as is and return ``path``.

    Not atomic on purpose: a hostile case wants exactly these bytes at exactly this name (a symlink
    loop, a folder named ``.png``), which a temporary-file-and-rename would change.
    """
    path.write_bytes(data)
    return path


def write_video(path: Path, n_frames: int = 6, size: tuple[int, int] = (48, 64)) -> Path:
    """A valid MPEG-4 clip of ``n_frames`` flat grey frames of ``size`` (height, width) at 10 fps."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded(stimulus: Any, kind: str = "image", **kw: Any) -> list[np.ndarray]:
    """Validate and decode every item of ``stimulus`` (what encode does batch by batch)."""
    from berg.stimuli import load_stimuli

    stimuli = load_stimuli(stimulus, kind, **kw)
    return [stimuli[i] for i in range(len(stimuli))]


def with_env(name: str, value: str, call: Callable[[], object]) -> object:
    """``call()`` with the environment variable ``name`` set to ``value``, restored afterwards."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        return call()
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


# ------------------------------------------------------------------------------------------ the cases
def stimulus_cases(root: Path) -> list[Case]:
    """Hostile stimuli: ``(name, call)`` pairs; each call must raise a :class:`~berg.errors.BERGError`.

    Parameters
    ----------
    root : Path
        Folder the crafted files are written to (created).

    Returns
    -------
    list of (str, callable)
    """
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    f = lambda name, data: write_bytes(root / name, data)  # noqa: E731
    png = image_bytes("PNG")
    jpg = image_bytes("JPEG")
    gif = image_bytes("GIF")
    tif = image_bytes("TIFF")
    ok = f("ok.png", png)
    trunc_pil = Image.open(f("trunc_lazy.jpg", jpg[: len(jpg) // 2]))
    closed = Image.new("RGB", (4, 4))
    closed.close()
    loop = root / "loop.png"
    if not loop.is_symlink():
        os.symlink(loop, loop)
    (root / "folder.png").mkdir(exist_ok=True)
    video = write_video(root / "clip.mp4")
    return [
        ("png claiming 20000 x 20000", lambda: decoded(f("bomb.png", png_claiming(20000, 20000)))),
        ("png claiming 65535 x 65535", lambda: decoded(f("bomb2.png", png_claiming(65535, 65535)))),
        ("png claiming 0 x 0", lambda: decoded(f("zero.png", png_claiming(0, 0)))),
        ("gif claiming 65535 x 65535", lambda: decoded(f("bomb.gif", gif_claiming(65535, 65535)))),
        ("bmp claiming 30000 x 30000", lambda: decoded(f("bomb.bmp", bmp_claiming(30000, 30000)))),
        ("png above max_pixels=1000", lambda: decoded(ok, max_pixels=1000)),
        ("png above BERG_MAX_PIXELS", lambda: with_env("BERG_MAX_PIXELS", "4000", lambda: decoded(ok))),
        ("max_pixels=0", lambda: decoded(ok, max_pixels=0)),
        ("truncated png", lambda: decoded(f("trunc.png", png[: len(png) // 2]))),
        ("truncated jpeg", lambda: decoded(f("trunc.jpg", jpg[: len(jpg) // 2]))),
        ("truncated gif", lambda: decoded(f("trunc.gif", gif[: len(gif) // 2]))),
        ("truncated tiff", lambda: decoded(f("trunc.tif", tif[: len(tif) // 2]))),
        ("jpeg header only", lambda: decoded(f("hdr.jpg", jpg[:20]))),
        ("corrupt png data", lambda: decoded(f("corrupt.png", png[:60] + b"\xff" * 40 + png[100:]))),
        ("empty file .png", lambda: decoded(f("empty.png", b""))),
        ("text file .jpg", lambda: decoded(f("text.jpg", b"hello, not an image\n" * 10))),
        (
            "EPS (would run Ghostscript)",
            lambda: decoded(f("doc.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n")),
        ),
        ("lazily opened truncated PIL image", lambda: decoded([trunc_pil])),
        ("closed PIL image", lambda: decoded([closed])),
        ("0 x 0 PIL image", lambda: decoded(Image.new("RGB", (0, 0)))),
        ("folder named .png", lambda: decoded(root / "folder.png")),
        ("symlink loop", lambda: decoded(loop)),
        ("NUL byte in path", lambda: decoded("bad\x00name.png")),
        ("path of 5000 characters", lambda: decoded("x" * 5000 + ".png")),
        ("missing file", lambda: decoded(root / "nope.png")),
        ("glob matching nothing", lambda: decoded(str(root / "*.webp"))),
        ("video file to an image model", lambda: decoded(video)),
        ("empty file .mp4", lambda: decoded(f("empty.mp4", b""), "video")),
        ("random bytes .mp4", lambda: decoded(f("random.mp4", np.random.default_rng(0).bytes(4096)), "video")),
        ("truncated mp4", lambda: decoded(f("trunc.mp4", video.read_bytes()[:300]), "video")),
        ("video frames above max_pixels", lambda: decoded(video, "video", max_pixels=1000)),
        ("still image to a video model", lambda: decoded(ok, "video")),
        ("0 x 0 image array", lambda: decoded(np.zeros((1, 3, 0, 0), np.uint8))),
        ("0-frame video array", lambda: decoded(np.zeros((1, 0, 3, 8, 8), np.uint8), "video")),
        ("object-dtype array", lambda: decoded(np.empty((1, 4, 4, 3), dtype=object))),
        ("negative int array", lambda: decoded(np.full((1, 4, 4, 3), -1, np.int16))),
        ("NaN float array", lambda: decoded(np.full((1, 4, 4, 3), np.nan, np.float32))),
        ("6-D array", lambda: decoded(np.zeros((1, 1, 1, 3, 4, 4), np.uint8))),
        ("5 channels", lambda: decoded(np.zeros((1, 8, 8, 5), np.uint8))),
        ("dict", lambda: decoded({"a": 1})),
        ("bytes", lambda: decoded(b"\x89PNG")),
        ("nested list", lambda: decoded([[str(ok)]])),
        ("generator", lambda: decoded(p for p in [ok])),
        ("empty list", lambda: decoded([])),
    ]


def output_path_cases(root: Path, suffixes: Sequence[str] = (".h5", ".nii.gz")) -> list[Case]:
    """Output paths berg must refuse with :class:`~berg.errors.InvalidParameterError` before writing anything.

    Parameters
    ----------
    root : Path
        Folder the paths point into (created, with one sub-folder ``out_dir``; nothing else may appear).
    suffixes : sequence of str
        The suffixes the writer under test accepts.

    Returns
    -------
    list of (str, callable)
    """
    from berg.errors import check_output_path

    suffixes = tuple(suffixes)
    (root / "out_dir").mkdir(parents=True, exist_ok=True)
    return [
        ("NUL byte in output path", lambda: check_output_path(str(root / "a\x00b.h5"), suffixes)),
        ("existing folder as output", lambda: check_output_path(root / "out_dir", suffixes)),
        ("trailing separator", lambda: check_output_path(str(root / "new") + "/", suffixes)),
        ("wrong suffix", lambda: check_output_path(root / "out.txt", suffixes)),
        ("bytes path", lambda: check_output_path(b"/tmp/x.h5", suffixes)),
        ("int path", lambda: check_output_path(3, suffixes)),
        ("empty path", lambda: check_output_path("", suffixes)),
    ]
