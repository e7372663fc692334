"""Movie provenance survives saving (issue #21): ``encode_movie``'s frame times and frame rule reach
``berg.save``'s provenance and the NIfTI sidecar, and ``load_responses`` gives them back.

End to end on a tiny generated clip and a small synthetic volume model served by the img2fmri model
class (``Bold5000ResNet18``, the class that implements ``encode_movie``), untrained backbone.
"""

from __future__ import annotations

import json
from fractions import Fraction

import nibabel as nib
import numpy as np
import pytest

import berg
from berg.stimuli import decode_video, movie_provenance
from berg.testing.toys import read_card, toy_model, write_card

MODEL_ID = "test-movie-resnet18"
# the options Bold5000ResNet18 reads (its card's model_kwargs), with img2fmri's defaults
OPTIONS = [
    {"name": "space", "type": "str", "default": "subject", "choices": ["subject", "mni"], "description": "space"},
    {"name": "roi_list", "type": "list", "default": None, "description": "ROIs of the group map"},
    {"name": "sigma", "type": "float", "default": 1.0, "description": "smoothing (mm)"},
    {"name": "voxel_order", "type": "str", "default": "c", "choices": ["c", "fortran"], "description": "order"},
    {"name": "zscore_support", "type": "str", "default": "v1.0", "choices": ["v1.0", "v0.2"], "description": "z"},
    {"name": "center_crop", "type": "bool", "default": False, "description": "crop"},
]


def write_clip(path, n_frames=12, rate=Fraction(24000, 1001), size=(24, 32)):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            img = np.full((*size, 3), 20 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("movie-model")
    toy = toy_model(
        root,
        "volume",
        model_id=MODEL_ID,
        subjects=[1],
        n_outputs=10,
        model_class="berg.models.bold5000_resnet18.model:Bold5000ResNet18",
    )
    card = read_card(root, MODEL_ID)
    card["parameters"]["model_kwargs"] = OPTIONS
    write_card(root, card)
    return toy.client().get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")


def test_movie_frame_record_survives_save_sidecar_and_load(model, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4")  # 12 frames at 23.976 fps: 0.5 s
    img = model.encode_movie(clip, fps=5, rule="last", show_progress=False)
    _, _, info = decode_video(clip, fps=5, rule="last", return_info=True)
    expected = movie_provenance(clip, 5, info)
    assert expected["frame_indices"] == [0, 4, 9] and expected["frame_rule"] == "last"
    np.testing.assert_allclose(expected["sample_times"], [0.0, 0.2, 0.4])
    np.testing.assert_allclose(expected["frame_times"], np.array([0, 4, 9]) * 1001 / 24000, atol=1e-6)
    assert img.extra["movie"] == expected and img.shape[3] == 3

    # HDF5: the image as encode_movie returned it
    back = berg.load_responses(berg.save(tmp_path / "movie.h5", img, model))
    assert back["provenance"]["movie"] == expected
    movie = back["movie"]
    np.testing.assert_array_equal(movie["frame_indices"], [0, 4, 9])
    np.testing.assert_allclose(movie["frame_times"], expected["frame_times"])
    assert movie["frame_rule"] == "last" and movie["fps"] == 5.0 and movie["source"] == str(clip)
    assert movie["stream_fps"] == pytest.approx(24000 / 1001)
    data = np.asarray(img.dataobj)
    ijk = model.space().voxel_ijk
    np.testing.assert_array_equal(back["responses"]["1"], data[tuple(ijk.T)].T)  # the image's values

    # NIfTI: the image itself (time step kept) and the record in its sidecar
    out = berg.save_nifti(tmp_path / "movie.nii.gz", img, model)
    saved = nib.load(out)
    assert saved.header.get_zooms()[3] == pytest.approx(0.2) and saved.header.get_xyzt_units() == ("mm", "sec")
    side = json.loads((tmp_path / "movie.json").read_text())
    assert side["movie"] == expected and len(side["volumes"]) == 3

    # "nearest" (img2fmri's rule) is recorded as such
    near = model.encode_movie(clip, fps=5, show_progress=False)
    back = berg.load_responses(berg.save(tmp_path / "near.h5", near, model))
    assert back["movie"]["frame_rule"] == "nearest"
    np.testing.assert_array_equal(back["movie"]["frame_indices"], [0, 5, 10])


def test_movie_record_from_decoded_frames_and_refusals(model, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4")
    frames, _, info = decode_video(clip, fps=10, return_info=True)
    record = movie_provenance(clip, 10, info)
    responses = model.encode(frames, show_progress=False)
    assert len(frames) == 6  # t = 0, 0.1, ..., 0.5 s of a 0.5005 s clip
    back = berg.load_responses(berg.save(tmp_path / "r.h5", responses, model, movie=record))
    np.testing.assert_array_equal(back["movie"]["frame_indices"], info["indices"])
    assert berg.load_responses(berg.save(tmp_path / "plain.h5", responses, model))["movie"] is None
    with pytest.raises(berg.InvalidParameterError, match=r"movie records 6 frame times; the responses have 4"):
        berg.save(tmp_path / "bad.h5", responses[:4], model, movie=record)
    with pytest.raises(berg.InvalidParameterError, match="movie must be a dict"):
        berg.save_nifti(tmp_path / "bad.nii", responses, model, movie=[1, 2])
