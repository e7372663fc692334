"""Stimulus loading: PyAV video decoding, frame-rate resampling, lazy file decoding."""

from __future__ import annotations

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
