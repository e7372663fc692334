"""berg run writes every output space of the model contract: sensor x time with repetitions (a non-linear toy
model that subclasses nothing of berg's), surfaces with two hemispheres, and a declared ensemble."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import berg
from berg.core.engine import LinearEncodingModel
from berg.testing import toy_suite

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_suite(tmp_path_factory.mktemp("toys-run"))


@pytest.fixture(scope="module")
def opts(toy):
    return toy.options()  # cache under the suite's (module-scoped) folder


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
    group maps do); its ``iter_encode`` yields that array batch by batch, as the FeatureModel contract says.
    Registered below through ``model_class: test_run_contract:GroupModel``."""

    def iter_encode(self, stimuli, *, show_progress=True):
        for a, b, per_subject in super().iter_encode(stimuli, show_progress=show_progress):
            yield a, b, [np.concatenate(per_subject, axis=1)]  # one array for the group

    def encode(self, stimulus, *, show_progress=True):
        out = super().encode(stimulus, show_progress=show_progress)
        return np.concatenate([out[s] for s in self.subjects], axis=1)


class ReliableModel(LinearEncodingModel):
    """A model whose reliability accessor answers (per output, for the current selection): output ``j`` of
    subject ``s`` has noise ceiling ``(j % 5) / 5 + s / 100``. Metadata holds no reliability key at all."""

    def reliability(self, subject=None):
        from berg.core.reliability import Reliability

        s = self._subject_arg(subject)
        n = self.space(s).n_outputs
        nc = (np.arange(n) % 5) / 5 + s / 100
        return Reliability(np.sqrt(nc), nc, 1.0, "test")


def _synth_with_class(tmp_path, cls_name):
    import yaml

    from berg.testing.sklearn_toy import MODEL_ID, build

    synth = build(tmp_path / "synth")
    reg = yaml.safe_load(synth.registry.read_text())
    reg["models"][MODEL_ID]["model_class"] = f"test_run_contract:{cls_name}"
    synth.registry.write_text(yaml.safe_dump(reg, sort_keys=False))
    return MODEL_ID, synth.options(tmp_path / "c")


def test_nc_threshold_uses_the_models_reliability_accessor(tmp_path, brick):
    model_id, opts = _synth_with_class(tmp_path, "ReliableModel")
    path, images = brick
    plan = berg.EncodePlan(
        models=[
            {
                "id": model_id,
                "subjects": [1, 2],
                "backbone_weights": "untrained",
                "batch_size": 4,
                "reducers": [{"nc_threshold": {"threshold": 0.5, "metric": "noise_ceiling"}}],
            }
        ],
        stimuli={"hdf5": str(path), "dataset": "imgBrick"},
        store=tmp_path / "run",
        shard_size=4,
        berg=opts,
        device="cpu",
    )
    berg.run(plan, show_progress=False)
    model, ref = _encode(opts, model_id, images, [1, 2])
    group = berg.runner.open_responses(tmp_path / "run")
    for s in (1, 2):
        keep = np.flatnonzero(model.reliability(s).noise_ceiling > 0.5)
        assert 0 < keep.size < ref[s].shape[1]
        np.testing.assert_array_equal(group[f"{model_id}/sub-{s:02d}/responses"][:], ref[s][:, keep])
        np.testing.assert_array_equal(group[f"{model_id}/sub-{s:02d}/coords/full_output_index"][:], keep)


def test_base_interface_model_runs_through_encode_and_says_so_once(tmp_path, opts, brick, caplog):
    from berg.runner import worker

    path, images = brick
    worker._BASE_ONLY_LOGGED.clear()
    plan = berg.EncodePlan(
        models=[{"id": "test-toy-mlp", "subjects": [1, 2], "backbone_weights": "untrained", "batch_size": 4}],
        stimuli={"hdf5": str(path), "dataset": "imgBrick"},
        store=tmp_path / "run",
        shard_size=4,
        berg=opts,
        device="cpu",
    )
    with caplog.at_level("INFO", logger="berg.runner.worker"):
        berg.run(plan, show_progress=False)
        berg.run(plan, show_progress=False)  # loads the model again: no second message
    said = [r for r in caplog.records if "implements only BaseModelInterface" in r.getMessage()]
    assert len(said) == 1 and "shard by shard" in said[0].getMessage()


def test_group_level_encode_is_refused_not_silently_split(tmp_path, brick):
    model_id, opts = _synth_with_class(tmp_path, "GroupModel")
    path, _ = brick
    plan = berg.EncodePlan(
        models=[{"id": model_id, "subjects": [1, 2], "backbone_weights": "untrained"}],
        stimuli={"hdf5": str(path), "dataset": "imgBrick"},
        store=tmp_path / "run",
        shard_size=4,
        berg=opts,
        device="cpu",
    )
    with pytest.raises(berg.InvalidParameterError, match="group-level"):
        berg.run(plan, show_progress=False)
    assert not list((tmp_path / "run" / "markers").rglob("*.json"))
