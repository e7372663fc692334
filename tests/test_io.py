"""berg.save (HDF5 with provenance) and save_nifti, on a small stand-in model with real output spaces.

The engine itself is exercised end to end through ``berg encode`` in test_cli.py; here the model is a
minimal implementation of the model contract (``BaseModelInterface``: spaces, provenance, the card's
units) that never encodes, so every branch of the writer can be checked quickly and without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import h5py
import nibabel as nib
import numpy as np
import pytest

import berg
from berg import io as bio
from berg.core.contract import BaseModelInterface
from berg.core.spaces import FlatSpace, VolumeSpace
from berg.errors import InvalidParameterError

GRID = (5, 6, 4)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


class StandIn(BaseModelInterface):
    """A loaded model as io.py sees it: the contract's spaces and provenance; it never encodes."""

    @classmethod
    def load(cls, request):  # pragma: no cover - built directly, never through the registry
        raise NotImplementedError

    def encode(self, stimulus, *, show_progress=True):  # pragma: no cover - io never encodes
        raise NotImplementedError

    def get_metadata(self):  # pragma: no cover
        return {}

    def __init__(self, n_outputs: dict, *, volume: bool = True, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.model_id = "test-io-model"
        self.spec = SimpleNamespace(card={"output": {"units": "a.u."}})
        self.subjects = list(n_outputs)
        self.spaces = {}
        for s, n in n_outputs.items():
            if volume:
                flat = rng.choice(int(np.prod(GRID)), size=n, replace=False)
                self.spaces[s] = VolumeSpace(GRID, AFFINE, np.stack(np.unravel_index(flat, GRID), axis=1))
            else:
                self.spaces[s] = FlatSpace(n)
        self.group_space = FlatSpace(7)

    def space(self, subject=None):
        if subject is None:
            return self.spaces[self.subjects[0]] if len(self.subjects) == 1 else self.group_space
        return self.spaces[subject]

    def provenance(self):
        return {
            "model_id": self.model_id,
            "subjects": self.subjects,
            "berg_version": berg.__version__,
            "selection": {str(s): ({"roi": ["A"]} if s == 2 else {}) for s in self.subjects},
            "artifacts": {"readout/sub-01.safetensors": {"sha256": "ab" * 32, "size": 123}},
        }


def _responses(n_stim: int, n_out: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_stim, n_out)).astype(np.float32)


def test_single_subject_layout_and_provenance(tmp_path):
    model = StandIn({1: 12})
    r = _responses(3, 12)
    out = berg.save(tmp_path / "r.h5", r, model, stimulus_ids=["a.jpg", "b.jpg", "c.jpg"])
    assert out == tmp_path / "r.h5"
    with h5py.File(out) as f:
        assert f.attrs["format"] == "berg-responses" and f.attrs["format_version"] == 2
        assert f.attrs["model_id"] == "test-io-model" and f.attrs["berg_version"] == berg.__version__
        assert json.loads(f.attrs["provenance"]) == json.loads(json.dumps(model.provenance()))
        assert json.loads(f.attrs["artifacts"])["readout/sub-01.safetensors"]["sha256"] == "ab" * 32
        assert json.loads(f.attrs["subjects"]) == [1]
        assert list(f) == ["stimulus_ids", "sub-01"]
        ds = f["sub-01/responses"]
        assert ds.dtype == np.float32 and ds.shape == (3, 12) and ds.compression is None
        np.testing.assert_array_equal(ds[()], r)
        assert list(ds.attrs["dims"]) == ["stimulus", "output"]
        assert [d.label for d in ds.dims] == ["stimulus", "output"]
        np.testing.assert_array_equal(f["sub-01/output_ids"][()], model.spaces[1].voxel_ijk)
        assert f["sub-01"].attrs["subject"] == "1" and f["sub-01"].attrs["n_outputs"] == 12
        assert [s.decode() for s in f["stimulus_ids"][()]] == ["a.jpg", "b.jpg", "c.jpg"]
    back = bio.load_responses(out)
    np.testing.assert_array_equal(back["responses"]["1"], r)
    assert back["stimulus_ids"] == ["a.jpg", "b.jpg", "c.jpg"] and back["model_id"] == "test-io-model"


def test_multi_subject_dict_one_group_each(tmp_path):
    model = StandIn({1: 12, 2: 9}, volume=False)
    r = {1: _responses(4, 12, 1), 2: _responses(4, 9, 2)}
    out = bio.save(tmp_path / "multi.hdf5", r, model, compression="lzf")
    with h5py.File(out) as f:
        assert sorted(k for k in f) == ["sub-01", "sub-02"]
        assert f["sub-01/responses"].compression == "lzf"
        assert json.loads(f["sub-02"].attrs["selection"]) == {"roi": ["A"]}
        np.testing.assert_array_equal(f["sub-02/output_ids"][()], np.arange(9))
        assert f["sub-01/output_ids"].attrs["meaning"] == "output index"
    back = bio.load_responses(out)
    for s in (1, 2):
        np.testing.assert_array_equal(back["responses"][str(s)], r[s])
    assert back["stimulus_ids"] is None


def test_one_array_from_a_multi_subject_model_is_a_group_output(tmp_path):
    model = StandIn({1: 12, 2: 9})
    r = _responses(2, 7)
    with h5py.File(bio.save(tmp_path / "g.h5", r, model)) as f:
        assert list(f) == ["group"] and f["group/responses"].shape == (2, 7)
        np.testing.assert_array_equal(f["group/output_ids"][()], np.arange(7))


def test_float64_responses_are_stored_as_float32(tmp_path):
    model = StandIn({1: 12})
    r = _responses(2, 12).astype(np.float64) + 1e-12
    with h5py.File(bio.save(tmp_path / "r.h5", r, model)) as f:
        assert f["sub-01/responses"].dtype == np.float32


@pytest.mark.parametrize(
    "case, match",
    [
        ("suffix", "must end with .h5, .hdf5"),
        ("unknown subject", r"subject\(s\) \[3\] that the model did not load; loaded subjects: \[1, 2\]"),
        ("1-D", "returns \\(n_stimuli, 12\\)"),
        ("int dtype", "expected float32"),
        ("wrong outputs", "have shape \\(3, 12\\); this model returns \\(n_stimuli, 9\\)"),
        ("stimulus ids", "stimulus_ids has 1 entries; responses have 3"),
        ("stimulus counts", "different numbers of stimuli"),
        ("empty dict", "nothing to save"),
        ("compression", "compression must be"),
    ],
)
def test_bad_input_raises_before_writing(tmp_path, case, match):
    model = StandIn({1: 12, 2: 9})
    good = {1: _responses(3, 12), 2: _responses(3, 9)}
    path, kwargs, responses = tmp_path / "r.h5", {}, good
    if case == "suffix":
        path = tmp_path / "r.nii.gz"
    elif case == "unknown subject":
        responses = {**good, 3: _responses(3, 4)}
    elif case == "1-D":
        responses = {1: good[1][0]}
    elif case == "int dtype":
        responses = {1: np.ones((3, 12), dtype=np.int64)}
    elif case == "wrong outputs":
        responses = {2: good[1]}
    elif case == "stimulus ids":
        kwargs = {"stimulus_ids": ["only-one"]}
    elif case == "stimulus counts":
        responses = {1: good[1], 2: good[2][:2]}
    elif case == "empty dict":
        responses = {}
    elif case == "compression":
        kwargs = {"compression": "zstd"}
    with pytest.raises(InvalidParameterError, match=match):
        bio.save(path, responses, model, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic(tmp_path, monkeypatch):
    model = StandIn({1: 12})
    path = tmp_path / "r.h5"
    bio.save(path, _responses(2, 12, 1), model)
    before = path.read_bytes()

    def explode(subject):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(bio, "_label", explode)  # fails half-way through writing the file
    with pytest.raises(RuntimeError, match="disk on fire"):
        bio.save(path, _responses(2, 12, 2), model)
    assert path.read_bytes() == before, "a failed save must leave the previous file intact"
    assert [p.name for p in tmp_path.iterdir()] == ["r.h5"], "no temp file left behind"


def test_save_nifti_places_values_on_the_grid(tmp_path):
    model = StandIn({1: 12, 2: 9})
    r = {1: _responses(3, 12), 2: _responses(1, 9)}
    img = nib.load(bio.save_nifti(tmp_path / "s1.nii.gz", r, model, subject=1))
    data = np.asarray(img.dataobj)
    assert data.shape == GRID + (3,) and data.dtype == np.float32
    np.testing.assert_allclose(img.affine, AFFINE)
    ijk = model.spaces[1].voxel_ijk
    np.testing.assert_array_equal(data[tuple(ijk.T)], r[1].T)
    mask = np.zeros(GRID, bool)
    mask[tuple(ijk.T)] = True
    assert np.isnan(data[~mask]).all()  # not predicted: NaN, not 0
    one = nib.load(bio.save_nifti(tmp_path / "s2.nii", r[2], StandIn({2: 9}), subject=2))
    assert one.shape == GRID  # one stimulus -> 3-D
    # Every image gets a sidecar saying which stimulus each volume is, with the model's provenance.
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["s1.json", "s1.nii.gz", "s2.json", "s2.nii"]
    side = json.loads((tmp_path / "s1.json").read_text())
    assert side["volumes"] == ["stimulus-0000", "stimulus-0001", "stimulus-0002"] and side["subject"] == "1"
    assert side["outside_outputs"].startswith("NaN") and side["units"] == "a.u."
    assert side["berg_sidecar"] == {"image": "s1.nii.gz", "berg_version": berg.__version__}
    assert side["provenance"] == json.loads(json.dumps(model.provenance()))
    assert json.loads((tmp_path / "s2.json").read_text())["volumes"] == ["stimulus-0000"]


def test_save_nifti_errors(tmp_path):
    model = StandIn({1: 12, 2: 9})
    r = {1: _responses(3, 12), 2: _responses(3, 9)}
    with pytest.raises(InvalidParameterError, match=r"pass subject= one of them"):
        bio.save_nifti(tmp_path / "x.nii.gz", r, model)
    with pytest.raises(InvalidParameterError, match="not in responses"):
        bio.save_nifti(tmp_path / "x.nii.gz", r, model, subject=5)
    with pytest.raises(InvalidParameterError, match=r"must end with \.nii, \.nii\.gz"):
        bio.save_nifti(tmp_path / "x.h5", r[1], StandIn({1: 12}))
    with pytest.raises(InvalidParameterError, match="no volumetric space"):
        bio.save_nifti(tmp_path / "x.nii", r[1], StandIn({1: 12}, volume=False))
    assert list(Path(tmp_path).iterdir()) == []
