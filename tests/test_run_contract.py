"""berg run writes every output space of the model contract: sensor x time with repetitions (a non-linear toy
model that subclasses nothing of berg's), surfaces with two hemispheres, and a declared ensemble."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import toy_models as toys

import berg
from berg.core.engine import LinearEncodingModel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toys.build(tmp_path_factory.mktemp("toys-run"))


@pytest.fixture(scope="module")
def opts(toy, tmp_path_factory):
    return {
        "berg_dir": str(toy.berg_dir),
        "cache_dir": str(tmp_path_factory.mktemp("cache")),
        "offline": True,
        "registry": str(toy.registry),
    }


@pytest.fixture(scope="module")
def brick(tmp_path_factory):
    import h5py

    images = np.random.default_rng(2).integers(0, 256, (10, 40, 36, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("brick") / "stim.hdf5"
    with h5py.File(path, "w") as f:
        f["imgBrick"] = images
    return path, images


def _encode(opts, model_id, images, subjects):
    client = berg.BERG(**opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = client.get_encoding_model(
            model_id, subject=list(subjects), device="cpu", backbone_weights="untrained", batch_size=4
        )
        return model, model.encode(images, show_progress=False)


@pytest.mark.parametrize(
    ("model_id", "shape", "coord"),
    [
        ("test-toy-mlp", (2, 5, 7), "channel"),  # sensor x time, 2 repetitions, non-linear model
        ("test-toy-surface-a", (20,), "hemisphere"),  # lh + rh vertices
        ("test-toy-ensemble", (20,), "hemisphere"),  # weighted mean of two members
    ],
)
def test_any_output_space_is_stored_as_encode_returns_it(tmp_path, opts, brick, model_id, shape, coord):
    path, images = brick
    store = tmp_path / "run"
    plan = berg.EncodePlan(
        models=[{"id": model_id, "subjects": [1, 2], "backbone_weights": "untrained", "batch_size": 4}],
        stimuli={"hdf5": str(path), "dataset": "imgBrick"},
        store=store,
        shard_size=4,
        berg=opts,
        device="cpu",
    )
    report = berg.run(plan, show_progress=False)
    assert report.computed_units == 3
    model, ref = _encode(opts, model_id, images, [1, 2])
    group = berg.runner.open_responses(store)
    for s in (1, 2):
        got = group[f"{model_id}/sub-{s:02d}/responses"]
        assert got.shape == (len(images), *shape)
        np.testing.assert_allclose(got[:], ref[s], rtol=1e-6, atol=1e-6)
        attrs = dict(group[f"{model_id}/sub-{s:02d}"].attrs)
        assert attrs["dims"][0] == "stimulus" and len(attrs["dims"]) == 1 + len(shape)
        coords = group[f"{model_id}/sub-{s:02d}/coords"]
        assert any(coord in name for name in coords.array_keys()), list(coords.array_keys())
        assert attrs["space"]["kind"] == model.space(s).to_dict()["kind"]


class GroupModel(LinearEncodingModel):
    """A model class whose ``encode`` returns one group-level array for several subjects (as img2fmri's MNI
    group maps do); registered below through ``model_class: test_run_contract:GroupModel``."""

    def encode(self, stimulus, *, show_progress=True):
        out = super().encode(stimulus, show_progress=show_progress)
        return np.concatenate([out[s] for s in self.subjects], axis=1)  # one array for the group


def test_group_level_encode_is_refused_not_silently_split(tmp_path, brick):
    import yaml
    from synthetic_native import MODEL_ID, build

    synth = build(tmp_path / "synth")
    reg = yaml.safe_load(synth.registry.read_text())
    reg["models"][MODEL_ID]["model_class"] = "test_run_contract:GroupModel"
    synth.registry.write_text(yaml.safe_dump(reg, sort_keys=False))
    path, _ = brick
    plan = berg.EncodePlan(
        models=[{"id": MODEL_ID, "subjects": [1, 2], "backbone_weights": "untrained"}],
        stimuli={"hdf5": str(path), "dataset": "imgBrick"},
        store=tmp_path / "run",
        shard_size=4,
        berg={
            "berg_dir": str(synth.berg_dir),
            "cache_dir": str(tmp_path / "c"),
            "offline": True,
            "registry": str(synth.registry),
        },
        device="cpu",
    )
    with pytest.raises(berg.InvalidParameterError, match="group-level"):
        berg.run(plan, show_progress=False)
    assert not list((tmp_path / "run" / "markers").rglob("*.json"))
