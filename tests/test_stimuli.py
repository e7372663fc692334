"""Stimulus loading: PyAV video decoding, frame-rate resampling, lazy file decoding, the accepted forms
(arrays converted by Pillow's rule, folders, globs, PIL images, stills for video models) and check_kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from berg.errors import StimulusError
from berg.stimuli import decode_video, load_stimuli


def write_video(path, n_frames=30, fps=10, size=(32, 48)):
    """A test clip whose frame i is uniformly grey level 8*i (so decoded frames can be identified)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full(size + (3,), 8 * i, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _levels(frames):
    return np.round(frames.reshape(len(frames), -1).mean(axis=1) / 8).astype(int)


def test_decode_all_frames(tmp_path):
    frames, rate = decode_video(write_video(tmp_path / "a.mp4"))
    assert frames.shape == (30, 32, 48, 3) and frames.dtype == np.uint8
    assert rate == pytest.approx(10)
    np.testing.assert_array_equal(_levels(frames), np.arange(30))


def test_decode_resamples_to_rate(tmp_path):
    path = write_video(tmp_path / "b.mp4", n_frames=30, fps=10)  # 3 s
    frames, rate = decode_video(path, fps=2)
    assert rate == 2 and len(frames) == 6  # t = 0, 0.5, ..., 2.5 s
    np.testing.assert_array_equal(_levels(frames), [0, 5, 10, 15, 20, 25])


def test_video_paths_are_decoded_lazily_and_checked(tmp_path):
    short = write_video(tmp_path / "short.mp4", n_frames=5)
    stimuli = load_stimuli([short], "video", min_frames=14)  # existence checked now, frames on access
    with pytest.raises(StimulusError, match="at least 14"):
        stimuli[0]
    with pytest.raises(StimulusError, match="file not found"):
        load_stimuli([tmp_path / "missing.mp4"], "video")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(StimulusError, match="cannot decode"):
        load_stimuli([bad], "video")[0]


# --------------------------------------------------------------------------- arrays: one conversion rule


def _pil_rgb(arr, mode):
    from PIL import Image

    return np.asarray(Image.fromarray(arr, mode).convert("RGB"))


@pytest.mark.parametrize("channels, mode", [(1, "L"), (2, "LA"), (4, "RGBA")])
def test_greyscale_and_alpha_arrays_follow_pillows_rule_for_files(tmp_path, channels, mode):
    """An array and the same pixels saved as a PNG file give the same RGB items."""
    from PIL import Image

    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 256, size=(2, 9, 7, channels), dtype=np.uint8)
    expected = [_pil_rgb(p[..., 0] if channels == 1 else p, mode) for p in pixels]
    last = load_stimuli(pixels, "image")  # channels-last
    first = load_stimuli(pixels.transpose(0, 3, 1, 2), "image")  # channels-first
    paths = []
    for i, p in enumerate(pixels):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(p[..., 0] if channels == 1 else p, mode).save(paths[-1])
    files = load_stimuli(paths, "image")
    for i in range(2):
        np.testing.assert_array_equal(last[i], expected[i])
        np.testing.assert_array_equal(first[i], expected[i])
        np.testing.assert_array_equal(files[i], expected[i])
        assert last[i].shape == (9, 7, 3) and last[i].dtype == np.uint8


def test_single_array_items_in_lists_including_greyscale():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(5, 6), dtype=np.uint8)
    out = load_stimuli([rgb, rgb.transpose(2, 0, 1), grey], "image")
    np.testing.assert_array_equal(out[0], rgb)
    np.testing.assert_array_equal(out[1], rgb)
    np.testing.assert_array_equal(out[2], np.repeat(grey[..., None], 3, axis=-1))


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((1, 3, 0, 0), np.uint8), "empty axis"),
        (np.zeros((1, 0, 0, 3), np.uint8), "empty axis"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
        (np.zeros((4, 8, 3), np.uint8), "add the batch axis"),
        (np.zeros((2, 8, 8, 5), np.uint8), "no RGB axis"),
        (np.zeros((2, 8, 8, 3), bool), "bool"),
        (np.zeros((2, 8, 8, 3), np.float32), "dtype is float32"),
        (np.zeros((1, 4, 3, 8, 8), np.uint8), "takes images"),
    ],
)
def test_bad_image_arrays(array, fragment):
    with pytest.raises(StimulusError, match=fragment):
        load_stimuli(array, "image")


def test_empty_items_inside_lists():
    from PIL import Image

    with pytest.raises(StimulusError, match="stimulus 1"):
        load_stimuli([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 0, 3), np.uint8)], "image")
    with pytest.raises(StimulusError, match="0 x 0 PIL image"):
        load_stimuli([Image.new("RGB", (0, 0))], "image")
    with pytest.raises(StimulusError, match="0 frames|empty axis"):
        load_stimuli(np.zeros((1, 0, 3, 8, 8), np.uint8), "video")


def test_closed_pil_image_is_refused_open_one_works():
    from PIL import Image

    img = Image.fromarray(np.full((4, 5, 3), 7, np.uint8))
    assert load_stimuli(img, "image")[0].shape == (4, 5, 3)
    img.close()
    with pytest.raises(StimulusError, match="closed PIL image"):
        load_stimuli([img], "image")


# --------------------------------------------------------------------------- folders and globs


@pytest.fixture
def folder(tmp_path):
    from PIL import Image

    d = tmp_path / "stim"
    d.mkdir()
    for i, name in enumerate(["b.png", "a.jpg", "c10.png", "c2.png"]):
        Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8)).save(d / name)
    (d / "notes.txt").write_text("not an image")
    (d / ".hidden.png").write_bytes(b"junk")
    (d / "sub").mkdir()
    write_video(d / "clip.mp4", n_frames=3)
    return d


def test_folder_expands_to_sorted_images_of_the_models_kind(folder):
    stimuli = load_stimuli(folder, "image")
    assert [Path(p).name for p in stimuli.ids()] == ["a.jpg", "b.png", "c10.png", "c2.png"]
    assert np.asarray(stimuli[1]).mean() == 0  # b.png was written first (level 0)
    videos = load_stimuli(str(folder), "video")
    assert [Path(p).name for p in videos.ids()] == ["clip.mp4"]


def test_glob_expands_sorted_and_filters_by_kind(folder):
    from berg.stimuli import expand_paths

    assert [p.name for p in expand_paths(str(folder / "c*.png"), "image")] == ["c10.png", "c2.png"]
    assert [p.name for p in expand_paths(str(folder / "*"), "image")] == ["a.jpg", "b.png", "c10.png", "c2.png"]
    mixed = load_stimuli([str(folder / "a.jpg"), str(folder / "c*.png")], "image")
    assert len(mixed) == 3
    with pytest.raises(StimulusError, match="matches no image files"):
        load_stimuli(str(folder / "*.bmp"), "image")
    with pytest.raises(StimulusError, match="this model takes videos"):
        load_stimuli(str(folder / "*.png"), "video")


def test_missing_file_suggests_close_names(folder):
    with pytest.raises(StimulusError, match=r"file not found: .*b\.pgn.*did you mean 'b\.png'"):
        load_stimuli(folder / "b.pgn", "image")
    with pytest.raises(StimulusError, match="has no image files"):
        load_stimuli(folder / "sub", "image")


# --------------------------------------------------------------------------- kind: stills, videos


def test_still_image_for_a_video_model_is_refused_unless_allowed(folder):
    from PIL import Image

    from berg.stimuli import check_kind

    still = folder / "b.png"
    for stimulus in (still, [str(still)], Image.open(still), np.zeros((2, 8, 8, 3), np.uint8)):
        with pytest.raises(StimulusError, match="this model takes videos"):
            check_kind(stimulus, "video")
        with pytest.raises(StimulusError, match="allow_still_images=True"):
            load_stimuli(stimulus, "video")
    clips = load_stimuli([still, np.zeros((8, 8, 3), np.uint8)], "video", min_frames=3, allow_still_images=True)
    assert clips[0].shape == (3, 4, 4, 3) and clips[1].shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(clips[0][2], clips[0][0])
    batch = load_stimuli(np.zeros((2, 8, 8, 3), np.uint8), "video", allow_still_images=True)
    assert batch[1].shape == (1, 8, 8, 3)


def test_check_kind_opens_no_file_and_catches_wrong_kinds(tmp_path, folder):
    from berg.stimuli import check_kind

    fake = tmp_path / "x.mp4"
    fake.write_bytes(b"")  # not a video at all: check_kind only looks at the name
    check_kind(fake, "video")
    with pytest.raises(StimulusError, match="is a video file, but this model takes images"):
        check_kind([fake], "image")
    with pytest.raises(StimulusError, match="takes images"):
        check_kind(np.zeros((1, 2, 3, 8, 8), np.uint8), "image")
    with pytest.raises(StimulusError, match="file not found"):
        check_kind(tmp_path / "nope.mp4", "video")
    with pytest.raises(StimulusError, match="unknown stimulus kind"):
        check_kind(fake, "audio")
    check_kind(np.zeros((1, 2, 3, 8, 8), np.uint8), "video")
    check_kind(folder, "image")


def test_stimuli_pass_through_and_kind_mismatch(folder):
    images = load_stimuli(folder, "image")
    assert load_stimuli(images, "image") is images
    with pytest.raises(StimulusError, match="loaded as images"):
        load_stimuli(images, "video")


def test_channels_last_video_array_shows_the_transpose():
    with pytest.raises(StimulusError, match=r"transpose\(0, 1, 4, 2, 3\)"):
        load_stimuli(np.zeros((1, 5, 8, 8, 3), np.uint8), "video")
