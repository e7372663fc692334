"""Sohn et al.'s VGG-16 kernel time series: spatial means per kernel, frames averaged within TRs."""

from __future__ import annotations

import numpy as np
import pytest

from berg.errors import InvalidParameterError
from berg.experiments.kernels import VGG16_LAYERS, VGG16Kernels, kernel_time_series

SIZE = 32  # VGG-16 is size-agnostic up to conv5_3; small frames keep the tests fast


@pytest.fixture(scope="module")
def net():
    return VGG16Kernels(backbone_weights="untrained", size=SIZE)


def test_thirteen_layers_4224_kernels(net):
    assert len(VGG16_LAYERS) == 13 and net.n_kernels == 4224
    assert list(net.layers)[:2] == ["conv1_1", "conv1_2"] and net.layers["conv5_3"] == (3712, 4224)
    with pytest.raises(InvalidParameterError, match="conv3_1"):
        VGG16Kernels(["conv3_l"], backbone_weights="untrained")


def test_columns_are_spatial_means_of_the_relu_maps(net):
    import torch

    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    got = net.extract(frames)
    x = net.transform(list(frames))
    maps = {}
    with torch.inference_mode():
        h = x
        for i, m in enumerate(net.features):
            h = m(h)
            maps[i] = h.clone()
    for name in ("conv1_1", "conv3_2", "conv5_3"):
        idx, n = VGG16_LAYERS[name]
        a, b = net.layers[name]
        np.testing.assert_allclose(got[:, a:b], maps[idx + 1].mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
        assert (got[:, a:b] >= 0).all()  # after the ReLU
    conv = VGG16Kernels(["conv1_1"], activation="conv", backbone_weights="untrained", size=SIZE)
    np.testing.assert_allclose(conv.extract(frames), maps[0].mean(dim=(2, 3)).numpy()[:, :64], rtol=1e-5, atol=1e-6)


def test_frames_are_averaged_within_each_tr_and_first_trs_dropped(net):
    rng = np.random.default_rng(1)
    fps, tr = 2.0, 2.0  # 4 frames per volume
    movie = rng.integers(0, 256, (4 * 5 + 3, 24, 24, 3), dtype=np.uint8)  # 5 whole volumes + 3 frames
    ts = kernel_time_series(movie, tr, fps=fps, n_drop=2, extractor=net, batch_size=5)
    assert ts.data.shape == (3, 4224) and ts.frames_per_tr.tolist() == [4, 4, 4]
    np.testing.assert_allclose(ts.data[1], net.extract(movie[12:16]).mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ts.times(), [4.0, 6.0, 8.0])
    assert ts.layer("conv2_1").shape == (3, 128) and ts.kernel_names[64] == "conv1_2:0"
    assert ts.column("conv4_1", 3) == ts.layers["conv4_1"][0] + 3
    with pytest.raises(InvalidParameterError, match="cannot drop 5"):
        kernel_time_series(movie, tr, fps=fps, n_drop=5, extractor=net)
    with pytest.raises(InvalidParameterError, match="fps="):
        kernel_time_series(movie, tr, extractor=net)


def test_streamed_file_equals_decoded_frames(net, tmp_path):
    from berg.experiments.movies import make_synthetic_movie
    from berg.stimuli import decode_video

    path = make_synthetic_movie(tmp_path / "m.mp4", boundaries=[2.0], duration=4.0, fps=3, size=(32, 32))
    frames, rate = decode_video(path)
    ts = kernel_time_series(path, 1.0, extractor=net, batch_size=7)
    ref = kernel_time_series(frames, 1.0, fps=rate, extractor=net)
    assert ts.data.shape == (4, 4224) and ts.fps == pytest.approx(3.0)
    np.testing.assert_allclose(ts.data, ref.data, rtol=1e-5, atol=1e-6)
    # The scene change at 2 s shows in the early-layer time series.
    early = ts.layer("conv1_1").astype(float)
    assert np.abs(early[2] - early[1]).mean() > 3 * np.abs(early[1] - early[0]).mean()
    fig = ts.plot("conv1_1", [0, 5], out_path=tmp_path / "k.png")
    assert fig is not None and ts.to_frame().shape == (4, 4224)
