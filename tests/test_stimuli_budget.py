"""Stimuli under budgets and by their real pixel range (issue #24).

* Images: the pixel budget (default 40 MP) is checked from the header, before any pixel is allocated
  (tracemalloc peaks); JPEGs above it draft-decode when the model resizes anyway; conversion never
  holds a second full copy.
* Videos: decoded as a stream (only sampled frames kept), frames above the pixel budget refused
  from the header, a byte budget, ``fps`` range checked; results equal "decode all, then index".
* Pixel values: 16-bit, 32-bit and float images scaled from their range, NaN refused, EXIF
  orientation applied, empty paths refused.
"""

from __future__ import annotations

import math
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from berg.errors import StimulusError
from berg.stimuli import decode_video, load_image, load_stimuli, max_pixels_limit, max_video_bytes
from berg.transforms import select_frames


def _peak(fn):
    """``(result, peak bytes)`` of ``fn()`` as tracemalloc sees it (numpy and Python allocations)."""
    tracemalloc.start()
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


def _refused(fn, match):
    def call():
        with pytest.raises(StimulusError, match=match):
            fn()

    return _peak(call)[1]


def png_bomb(path: Path, side: int) -> Path:
    """A valid greyscale PNG of ``side`` x ``side`` black pixels, written in rows (never in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------------------ images


def test_default_budget_is_40_megapixels(monkeypatch):
    monkeypatch.delenv("BERG_MAX_PIXELS", raising=False)
    assert max_pixels_limit() == 40_000_000
    monkeypatch.setenv("BERG_MAX_PIXELS", "1234")
    assert max_pixels_limit() == 1234


def test_13000_squared_png_is_refused_before_allocation(tmp_path, monkeypatch):
    """The issue's bomb: a ~170 KiB PNG of 13,000 x 13,000 pixels (169 MP, below Pillow's own limit)."""
    monkeypatch.delenv("BERG_MAX_PIXELS", raising=False)
    bomb = png_bomb(tmp_path / "bomb.png", 13_000)
    assert bomb.stat().st_size < 400_000
    match = r"13000 x 13000 = 169,000,000 pixels, above the limit of 40,000,000"
    # a few MB (Pillow's first import of its plugins), never the 169 MB of pixels
    assert _refused(lambda: load_stimuli(bomb, "image"), match) < 8_000_000
    assert _refused(lambda: load_image(bomb), match) < 1_000_000
    # a model's input size does not help a PNG: only JPEG decoders scale while decoding
    assert _refused(lambda: load_stimuli(bomb, "image", target_size=(224, 224)), match) < 1_000_000


def _jpeg(path: Path, size=(2400, 1600)) -> Path:
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) % 256)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=95)
    return path


def test_jpeg_above_the_budget_draft_decodes_when_the_model_resizes(tmp_path):
    path = _jpeg(tmp_path / "big.jpg")  # 2400 x 1600 = 3.84 MP
    budget = 1_000_000
    with pytest.raises(StimulusError, match="above the limit of 1,000,000"):
        load_stimuli(path, "image", max_pixels=budget)  # no target size: refused as before
    stimuli = load_stimuli(path, "image", max_pixels=budget, target_size=(224, 224))
    arr, peak = _peak(lambda: stimuli[0])
    # largest libjpeg scale keeping both sides >= 224: 1/4 -> 600 x 400
    assert arr.shape == (400, 600, 3) and arr.dtype == np.uint8
    assert peak < 2400 * 1600 * 3 / 4  # far below one full-size RGB copy (11.5 MB)
    with Image.open(path) as full:
        reference = np.asarray(full.convert("RGB").reduce(4), dtype=np.float64)
    assert np.abs(arr - reference).mean() < 3.0  # same picture, scaled while decoding
    # a target that needs more pixels than the budget allows is still refused
    with pytest.raises(StimulusError, match="above the limit of 1,000,000"):
        load_stimuli(path, "image", max_pixels=budget, target_size=(1500, 1500))


def test_images_within_the_budget_are_decoded_in_full(tmp_path):
    path = _jpeg(tmp_path / "ok.jpg", size=(640, 480))
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    got = load_stimuli(path, "image", target_size=(224, 224))[0]
    np.testing.assert_array_equal(got, expected)  # no draft below the budget: results do not change


def test_conversion_holds_no_second_full_copy(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "p.png", compress_level=1)
    Image.fromarray(rgb[..., 0]).convert("P").save(tmp_path / "pal.png", compress_level=1)
    got, peak = _peak(lambda: load_image(tmp_path / "p.png"))
    np.testing.assert_array_equal(got, rgb)
    assert peak < rgb.nbytes + 4 * 2**20  # the output (9 MB) plus ~1 MB strips; np.asarray(img) took 2x
    with Image.open(tmp_path / "pal.png") as img:
        expected = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(load_image(tmp_path / "pal.png"), expected)


# ------------------------------------------------------------------------------------- pixel values

DEPTH16 = np.array([[0, 128, 257, 1000], [32768, 65535, 65280, 12345]], dtype=np.uint16)
SCALED16 = np.array([[0, 0, 1, 4], [128, 255, 254, 48]], dtype=np.uint8)  # round(v * 255 / 65535)


def _grey(arr):
    assert arr.ndim == 3 and arr.shape[-1] == 3
    np.testing.assert_array_equal(arr[..., 0], arr[..., 1])
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])
    return arr[..., 0]


def test_16_bit_greyscale_png_file_and_pil_image_are_scaled_not_clipped(tmp_path):
    Image.fromarray(DEPTH16).save(tmp_path / "g16.png")
    Image.fromarray(DEPTH16).save(tmp_path / "g16.tif")
    for source in (tmp_path / "g16.png", tmp_path / "g16.tif", Image.fromarray(DEPTH16)):
        np.testing.assert_array_equal(_grey(load_stimuli(source, "image")[0]), SCALED16)
    with Image.open(tmp_path / "g16.png") as opened:  # an opened file passed as a PIL image
        assert opened.mode.startswith("I")
        np.testing.assert_array_equal(_grey(load_stimuli([opened], "image")[0]), SCALED16)


def test_32_bit_integer_tiff_is_scaled_from_its_sample_range(tmp_path):
    top = 2**31 - 1
    values = np.array([[0, 1 << 23, top // 2, top]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "i32.tif")  # Pillow writes SampleFormat 2 (signed)
    expected = np.array([[0, 1, 127, 255]], dtype=np.uint8)  # round(v * 255 / (2**31 - 1))
    np.testing.assert_array_equal(_grey(load_image(tmp_path / "i32.tif")), expected)
    # the same bits marked unsigned (SampleFormat 1): read as uint32, scaled from 2**32 - 1
    unsigned = np.array([[0, 5, 3_000_000_000, 2**32 - 1]], dtype=np.uint32)
    Image.fromarray(unsigned.view(np.int32)).save(tmp_path / "u.tif")
    data = (tmp_path / "u.tif").read_bytes()
    entry = b"\x53\x01\x03\x00\x01\x00\x00\x00\x02\x00"  # tag 339 SHORT x1 = 2
    assert data.count(entry) == 1
    (tmp_path / "u32.tif").write_bytes(data.replace(entry, entry[:-2] + b"\x01\x00"))
    np.testing.assert_array_equal(_grey(load_image(tmp_path / "u32.tif")), [[0, 0, 178, 255]])
    negative = np.array([[-5, 0], [10, 20]], dtype=np.int32)
    Image.fromarray(negative).save(tmp_path / "neg.tif")
    with pytest.raises(StimulusError, match=r"negative values \(min -5\).*np.ptp"):
        load_image(tmp_path / "neg.tif")
    with pytest.raises(StimulusError, match="unknown range.*x.max"):  # an in-memory mode I image
        load_stimuli(Image.fromarray(values), "image")[0]


def test_float_images_in_0_1_are_scaled_nan_and_out_of_range_refused(tmp_path):
    values = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 0.1]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    expected = np.round(values.astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(expected, [[0, 64, 128], [191, 255, 26]])
    np.testing.assert_array_equal(_grey(load_image(tmp_path / "f.tif")), expected)
    np.testing.assert_array_equal(_grey(load_stimuli(Image.fromarray(values), "image")[0]), expected)
    nan = np.full((4, 4), np.nan, dtype=np.float32)
    with pytest.raises(StimulusError, match=r"NaN or infinite.*np.clip\(x, 0, 1\) \* 255"):
        load_stimuli([Image.fromarray(nan)], "image")[0]
    Image.fromarray(values * 255).save(tmp_path / "f255.tif")
    with pytest.raises(StimulusError, match=r"values 0\.\.255; berg reads float images as intensities in \[0, 1\]"):
        load_image(tmp_path / "f255.tif")


@pytest.mark.parametrize("orientation, turn", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1))])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    stored = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "o.png", exif=exif)
    expected = turn(stored)  # 6 = "rotate 90 degrees clockwise to display"
    got = load_stimuli(tmp_path / "o.png", "image")[0]
    np.testing.assert_array_equal(got, expected)
    with Image.open(tmp_path / "o.png") as opened:
        np.testing.assert_array_equal(load_stimuli(opened, "image")[0], expected)
        assert opened.size == (6, 4)  # the caller's image is not turned in place
    Image.fromarray(stored).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(load_image(tmp_path / "plain.png"), stored)


def test_empty_path_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "here.png")
    monkeypatch.chdir(tmp_path)  # "" used to expand to this folder's images
    with pytest.raises(StimulusError, match="stimulus path is empty"):
        load_stimuli("", "image")
    with pytest.raises(StimulusError, match="stimulus 1: the stimulus path is empty"):
        load_stimuli(["here.png", ""], "image")
    with pytest.raises(StimulusError, match="stimulus path is empty"):
        load_stimuli("", "video")


# ------------------------------------------------------------------------------------------ videos


def write_video(path: Path, n_frames: int, rate, size=(32, 48)) -> Path:
    """Frame i is uniformly grey level (7 * i) % 250, so decoded frames can be identified."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(n_frames):
            img = np.full((*size, 3), (7 * i) % 250, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def reference_decode(path, fps=None, rule="last"):
    """berg's former decode_video (every frame kept, then indexed): what the stream must equal."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time) if frame.time is not None else len(times) / 25.0)
        rate = float(stream.average_rate) if stream.average_rate else 0.0
    video = np.stack(frames)
    t = np.asarray(times) - times[0]
    if fps is None:
        return video, rate, np.arange(len(video)), t
    duration = t[-1] + 1.0 / rate
    out_times = np.arange(0.0, duration - 1e-9, 1.0 / fps)
    if rule == "nearest":
        idx = np.floor(out_times * rate + 0.5 + 1e-9).astype(np.int64)
    else:
        idx = np.searchsorted(t, out_times + 1e-9, side="right") - 1
    idx = np.clip(idx, 0, len(video) - 1)
    return video[idx], float(fps), idx, t[idx]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from fractions import Fraction

    root = tmp_path_factory.mktemp("clips")
    return {
        "10fps": write_video(root / "a.mp4", 30, 10),
        "ntsc": write_video(root / "b.mp4", 25, Fraction(24000, 1001)),
        "one": write_video(root / "c.mp4", 1, 5),
    }


@pytest.mark.parametrize("clip", ["10fps", "ntsc", "one"])
@pytest.mark.parametrize("rule", ["last", "nearest"])
@pytest.mark.parametrize("fps", [None, 0.7, 2, 3, 10, 24, 60])
def test_streamed_sampling_equals_decode_all_then_index(clips, clip, rule, fps):
    frames, rate, info = decode_video(clips[clip], fps=fps, rule=rule, return_info=True)
    ref, ref_rate, ref_idx, ref_times = reference_decode(clips[clip], fps, rule)
    np.testing.assert_array_equal(frames, ref)
    assert rate == pytest.approx(ref_rate)
    np.testing.assert_array_equal(info["indices"], ref_idx)
    np.testing.assert_allclose(info["times"], ref_times)
    assert info["rule"] == (rule if fps is not None else "all")


@pytest.mark.parametrize("bad", [1e9, 1000.5, 0, -2, math.nan, math.inf, True, "2"])
def test_fps_out_of_range_is_refused_naming_the_range(clips, bad):
    with pytest.raises(StimulusError, match=r"valid: a number with 0 < fps <= 1000"):
        decode_video(clips["10fps"], fps=bad)


def test_sampled_decoding_keeps_only_the_sampled_frames(tmp_path):
    path = write_video(tmp_path / "long.mp4", 60, 30, size=(240, 320))  # 60 frames of 230 KB = 13.8 MB
    (frames, _), peak = _peak(lambda: decode_video(path, fps=1))
    assert frames.shape == (2, 240, 320, 3)
    assert peak < 10 * frames[0].nbytes  # not 60 frames
    with pytest.raises(StimulusError, match=r"video budget of 1 MiB; pass fps= .*BERG_MAX_VIDEO_MB"):
        decode_video(path, max_bytes=1 << 20)
    assert decode_video(path, max_bytes=1 << 20, fps=2)[0].shape == (4, 240, 320, 3)
    with pytest.raises(StimulusError, match=r"lower fps \(now 30\)"):
        decode_video(path, fps=30, max_bytes=1 << 20)


def test_video_budget_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("BERG_MAX_VIDEO_MB", raising=False)
    assert max_video_bytes() == 200 << 20
    monkeypatch.setenv("BERG_MAX_VIDEO_MB", "1")
    path = write_video(tmp_path / "v.mp4", 30, 10, size=(240, 320))
    with pytest.raises(StimulusError, match="video budget of 1 MiB"):
        decode_video(path)
    with pytest.raises(StimulusError, match="video budget of 1 MiB"):
        load_stimuli(path, "video")[0]


def test_frame_above_the_pixel_budget_is_refused_from_the_header(tmp_path, monkeypatch):
    path = write_video(tmp_path / "big.mp4", 3, 10, size=(64, 96))

    def no_decoding(*args, **kwargs):  # the header decides: no frame may be decoded
        raise AssertionError("a frame was decoded")

    import berg.stimuli as st

    monkeypatch.setattr(st, "_decoded_frames", no_decoding)
    match = r"\(frame size\) is 96 x 64 = 6,144 pixels, above the limit of 5,000"
    with pytest.raises(StimulusError, match=match):
        decode_video(path, max_pixels=5000)
    with pytest.raises(StimulusError, match=match):
        load_stimuli(path, "video", max_pixels=5000)


@pytest.mark.parametrize("n_frames", [4, 16, 30, 45])
def test_video_model_frames_are_sampled_while_decoding(clips, n_frames):
    path = clips["10fps"]  # 30 frames
    full = reference_decode(path)[0]
    stimuli = load_stimuli([path], "video", n_frames=n_frames)
    got, peak = _peak(lambda: stimuli[0])
    # what the model's select_frames picks from these equals its pick from the whole clip
    np.testing.assert_array_equal(got[select_frames(len(got), n_frames)], full[select_frames(len(full), n_frames)])
    assert len(got) == min(n_frames, 30)
    if n_frames < 30:
        assert peak < (n_frames + 4) * full[0].nbytes + 200_000
    short = load_stimuli([path], "video", n_frames=4, min_frames=31)
    with pytest.raises(StimulusError, match="has 30 frames; this model needs at least 31"):
        short[0]


def test_frames_over_the_budget_are_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = write_video(tmp_path / "long.mp4", 60, 30, size=(240, 320))  # 60 frames of 230 KB
    import berg.stimuli as st

    def no_decoding(*args, **kwargs):
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(st, "_decoded_frames", no_decoding)
    with pytest.raises(StimulusError, match=r"60 frames of 320 x 240 \(13 MiB decoded\) would pass the video budget"):
        decode_video(path, max_bytes=1 << 20)
    with pytest.raises(StimulusError, match=r"60 frames of 320 x 240.*lower fps \(now 30\)"):
        decode_video(path, fps=30, max_bytes=1 << 20)
