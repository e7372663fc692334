"""The model contract: models of any output kind are declared (registry + card + artifact), not coded.

Every model here is registered only through berg.testing.toy_suite's registry.yaml, cards and artifacts;
api.py, engine.py and io.py know nothing about them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import berg
from berg.errors import InvalidParameterError, ModelLoadError, ModelNotBuiltError
from berg.testing import reference_features, toy_suite
from berg.testing.toys import CHANNELS, SURFACE_ROIS, TIMES_MS


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_suite(tmp_path_factory.mktemp("toys"))


@pytest.fixture
def client(toy, tmp_path):
    return berg.BERG(berg_dir=toy.berg_dir, cache_dir=tmp_path / "cache", registry=toy.registry, offline=True)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (5, 40, 44, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def feats(images):
    return reference_features(images)


def _load(client, model_id, **kw):
    return client.get_encoding_model(model_id, device="cpu", backbone_weights="untrained", **kw)


# ---------------------------------------------------------------------------------- non-linear sensor x time
def test_nonlinear_sensor_time_model_end_to_end(client, toy, images, feats, tmp_path):
    model = _load(client, "test-toy-mlp", subject=1)
    assert type(model).__name__ == "ToyMLPModel" and not isinstance(model, berg.BERG)
    out = client.encode(model, images, show_progress=False)
    assert out.shape == (5, 2, 5, 7) and out.dtype == np.float32
    m = toy.mlp[1]
    expected = (np.maximum(feats @ m["w1"].T + m["b1"], 0) @ m["w2"].T + m["b2"]).reshape(5, 2, 5, 7)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    one = client.encode(model, images[:1], show_progress=False)
    assert one.shape == (1, 2, 5, 7)  # never squeezed
    path = berg.save(tmp_path / "eeg.h5", out, model, stimulus_ids=[f"img{i}" for i in range(5)])
    back = berg.load_responses(path)
    np.testing.assert_array_equal(back["responses"]["1"], out)
    assert list(back["coords"]["1"]["channel"]) == list(CHANNELS)
    np.testing.assert_array_equal(back["coords"]["1"]["time_ms"], TIMES_MS)
    np.testing.assert_array_equal(back["coords"]["1"]["repetition"], [1, 2])
    assert back["spaces"]["1"].shape == (2, 5, 7) and back["stimulus_ids"][0] == "img0"


def test_sensor_time_selections_equal_slicing(client, images):
    full = _load(client, "test-toy-mlp", subject=1).encode(images, show_progress=False)
    ch = ["Oz", "Fz", "Oz"]  # the user's order, duplicates kept (as BERG)
    tp = np.zeros(7, int)
    tp[[1, 4]] = 1
    sel = _load(client, "test-toy-mlp", subject=1, selection={"channels": ch, "timepoints": tp})
    out = sel.encode(images, show_progress=False)
    idx = [CHANNELS.index(c) for c in ch]
    np.testing.assert_allclose(out, full[:, :, idx][:, :, :, [1, 4]], rtol=1e-5, atol=1e-5)
    assert sel.space().channels == tuple(ch) and list(sel.space().times_ms) == [0.0, 150.0]
    one = _load(client, "test-toy-mlp", subject=1, selection={"channels": ["Cz"], "timepoints": np.eye(7)[3]})
    assert one.encode(images[:1], show_progress=False).shape == (1, 2, 1, 1)
    with pytest.raises(InvalidParameterError, match="Did you mean Cz"):
        _load(client, "test-toy-mlp", subject=1, selection={"channels": ["cz"]})
    with pytest.raises(InvalidParameterError, match="exactly 7"):
        _load(client, "test-toy-mlp", subject=1, selection={"timepoints": np.ones(6)})
    with pytest.raises(InvalidParameterError, match=r"valid keys: \['channels', 'timepoints'\]"):
        _load(client, "test-toy-mlp", subject=1, selection={"roi": "V1"})


# ---------------------------------------------------------------------------------- surfaces
def test_surface_model_split_gifti_and_berg_tuple(client, toy, images, feats, tmp_path):
    import nibabel as nib

    model = _load(client, "test-toy-surface-a", subject=2)
    out = model.encode(images, show_progress=False)
    np.testing.assert_allclose(out, toy.models["test-toy-surface-a"].predict(feats, 2), rtol=1e-4, atol=1e-4)
    parts = model.space().split(out)
    assert parts["lh"].shape == (5, 11) and parts["rh"].shape == (5, 9)
    lh, rh = model.space().to_berg_tuple(out)
    np.testing.assert_array_equal(np.concatenate([lh, rh], axis=1), out)
    files = berg.save_gifti(tmp_path / "resp", out, model)
    img = nib.load(files["lh"])
    assert len(img.darrays) == 5 and img.darrays[0].data.shape == (11,)
    np.testing.assert_allclose(img.darrays[2].data, parts["lh"][2])
    back = berg.load_responses(berg.save(tmp_path / "s.h5", out, model))
    np.testing.assert_array_equal(back["coords"]["2"]["hemisphere"][:11], ["lh"] * 11)
    assert back["spaces"]["2"].same_as(model.space())
    with pytest.raises(InvalidParameterError, match="surface space.*NIfTI"):
        berg.save_nifti(tmp_path / "x.nii.gz", out, model)


def test_surface_selections_equal_slicing_with_bergs_precedence(client, images):
    full = _load(client, "test-toy-surface-a", subject=1).encode(images, show_progress=False)
    lh = np.zeros(11, int)
    lh[[0, 3, 10]] = 1
    m = _load(client, "test-toy-surface-a", subject=1, selection={"lh_vertices": lh})
    np.testing.assert_allclose(
        m.encode(images, show_progress=False), full[:, [0, 3, 10, *range(11, 20)]], rtol=1e-5, atol=1e-5
    )
    rh = np.zeros(9, int)
    rh[[1, 8]] = 1
    m = _load(client, "test-toy-surface-a", subject=1, selection={"lh_vertices": lh, "rh_vertices": rh})
    assert m.space().n_outputs == 5
    np.testing.assert_allclose(m.encode(images, show_progress=False), full[:, [0, 3, 10, 12, 19]], rtol=1e-5, atol=1e-5)
    # roi wins over vertex vectors (BERG's rule)
    m = _load(client, "test-toy-surface-a", subject=1, selection={"roi": ["V1", "FFA"], "lh_vertices": lh})
    rows = np.unique(np.concatenate(list(SURFACE_ROIS.values())))
    np.testing.assert_allclose(m.encode(images, show_progress=False), full[:, rows], rtol=1e-5, atol=1e-5)
    assert list(m.space().vertices["rh"]) == [1, 2, 4, 5, 6]
    with pytest.raises(InvalidParameterError, match="must be a ROI name or a list"):
        _load(client, "test-toy-surface-a", subject=1, selection={"roi": 3})


def test_multi_subject_equals_separate_encodes(client, images):
    both = _load(client, "test-toy-surface-a", subject=[1, 2], selection={"roi": "FFA"})
    out = both.encode(images, show_progress=False)
    for s in (1, 2):
        single = _load(client, "test-toy-surface-a", subject=s, selection={"roi": "FFA"}).encode(
            images, show_progress=False
        )
        np.testing.assert_allclose(out[s], single, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- ensembles
def test_ensemble_is_the_weighted_mean_with_one_backbone_pass(client, toy, images, feats, monkeypatch):
    ens = _load(client, "test-toy-ensemble", subject=1)
    a, b = ens.members
    assert a.extractor is b.extractor  # same backbone recipe: built once, run once per batch
    calls = []
    net = a.extractor.network
    original = net.forward
    monkeypatch.setattr(net, "forward", lambda x: calls.append(len(x)) or original(x))
    out = client.encode(ens, images, show_progress=False)
    assert calls == [5]
    expected = (
        1 * toy.models["test-toy-surface-a"].predict(feats, 1) + 3 * toy.models["test-toy-surface-b"].predict(feats, 1)
    ) / 4
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    prov = ens.provenance()
    assert prov["weights"] == {"test-toy-surface-a": 0.25, "test-toy-surface-b": 0.75}
    assert set(ens.get_metadata()["members"]) == {"test-toy-surface-a", "test-toy-surface-b"}


def test_ensemble_of_different_spaces_is_refused(toy, tmp_path):
    import yaml

    reg = yaml.safe_load(toy.registry.read_text())
    reg["models"]["test-toy-ensemble"]["ensemble"]["members"][1]["model"] = "test-toy-mlp"
    path = toy.root / "registry-bad.yaml"
    path.write_text(yaml.safe_dump(reg))
    c = berg.BERG(berg_dir=toy.berg_dir, cache_dir=tmp_path / "c", registry=path, offline=True)
    with pytest.raises(ModelLoadError, match="different output spaces"):
        c.get_encoding_model("test-toy-ensemble", subject=1, device="cpu", backbone_weights="untrained")


# ---------------------------------------------------------------------------------- interface checks
def test_a_class_that_does_not_implement_the_interface_is_named(client):
    with pytest.raises(ModelLoadError, match=r"IncompleteModel does not implement .*encode.*provenance"):
        _load(client, "test-toy-incomplete", subject=1)


def test_registry_wide_every_toy_validates_before_io(client, toy):
    from test_registry import check_entry

    for model_id in ("test-toy-mlp", "test-toy-surface-a", "test-toy-ensemble", "test-toy-recipe"):
        check_entry(client.registry, model_id)
        spec = client.registry.get(model_id)
        assert spec.subjects == [1, 2]
        with pytest.raises(InvalidParameterError, match="valid subjects: 1, 2"):
            client.get_encoding_model(model_id, subject=9)
        with pytest.raises(InvalidParameterError, match="unknown option"):
            client.get_encoding_model(model_id, subject=1, bogus=1)


# ---------------------------------------------------------------------------------- recipe models
def test_recipe_model_says_how_to_build_then_builds(client, toy, images, tmp_path):
    with pytest.raises(ModelNotBuiltError, match=r"berg build test-toy-recipe --data DIR.*seed\.json"):
        _load(client, "test-toy-recipe", subject=1)
    data = tmp_path / "data"
    data.mkdir()
    (data / "seed.json").write_text(json.dumps({"seed": 2}))
    from berg.cli import main

    assert (
        main(
            [
                "--registry",
                str(toy.registry),
                "--cache-dir",
                str(tmp_path / "cache"),
                "build",
                "test-toy-recipe",
                "--data",
                str(data),
            ]
        )
        == 0
    )
    assert (tmp_path / "cache" / "test-toy-recipe" / "manifest.json").is_file()
    built = _load(client, "test-toy-recipe", subject=1).encode(images, show_progress=False)
    same = _load(client, "test-toy-surface-a", subject=1).encode(images, show_progress=False)  # seed 2 too
    np.testing.assert_allclose(built, same, rtol=1e-6)
    # a second build is a no-op on a verified artifact; a corrupted one is refused
    first = berg.build("test-toy-recipe", data, client=client)
    target = next((first / "readout").glob("*.safetensors"))
    target.write_bytes(target.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(berg.BERGError, match="sha256|size|checksum"):
        berg.build("test-toy-recipe", data, client=client)
    with pytest.raises(InvalidParameterError, match="not a buildable model"):
        berg.build("test-toy-surface-a", data, client=client)
    with pytest.raises(InvalidParameterError, match="unknown build option"):
        berg.build("test-toy-recipe", data, client=client, options={"ofset": 1}, force=True)


# ---------------------------------------------------------------------------------- CLI
def test_cli_encodes_any_space(toy, tmp_path, images):
    from PIL import Image

    from berg.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(images[:2]):
        Image.fromarray(img).save(folder / f"i{i}.png")
    common = [
        "--registry",
        str(toy.registry),
        "--berg-dir",
        str(toy.berg_dir),
        "--cache-dir",
        str(tmp_path / "c"),
        "--offline",
    ]
    for model_id, shape in (("test-toy-mlp", (2, 2, 5, 7)), ("test-toy-ensemble", (2, 20))):
        out = tmp_path / f"{model_id}.h5"
        assert (
            main(
                [
                    *common,
                    "encode",
                    model_id,
                    str(folder / "i0.png"),
                    str(folder / "i1.png"),
                    "--subject",
                    "1",
                    "--backbone-weights",
                    "untrained",
                    "--device",
                    "cpu",
                    "-o",
                    str(out),
                    "-q",
                ]
            )
            == 0
        )
        assert berg.load_responses(out)["responses"]["1"].shape == shape


def test_readout_kernels_agree_and_can_be_forced(client, images, monkeypatch):
    import berg.core.engine as engine

    monkeypatch.setattr(engine, "NUMPY_READOUT_MIN_OUTPUTS", 1)  # the toy is narrow: force the wide-readout path
    m_np = _load(client, "test-toy-surface-a", subject=1)
    assert {g.kernel for g in m_np._groups} == {"numpy"}
    monkeypatch.setenv("BERG_READOUT_KERNEL", "torch")
    m_t = _load(client, "test-toy-surface-a", subject=1)
    assert {g.kernel for g in m_t._groups} == {"torch"}
    np.testing.assert_allclose(
        m_np.encode(images, show_progress=False), m_t.encode(images, show_progress=False), rtol=1e-5, atol=1e-5
    )
    monkeypatch.setenv("BERG_READOUT_KERNEL", "blas")
    with pytest.raises(InvalidParameterError, match="valid: auto, torch, numpy"):
        _load(client, "test-toy-surface-a", subject=1)
    monkeypatch.delenv("BERG_READOUT_KERNEL")
    assert engine.readout_kernel("cuda:0", 10**6) == "torch"


def test_an_empty_roi_gives_zero_outputs_as_berg(tmp_path, images):
    from berg.testing import toy_model

    # a toy surface model with an extra ROI of no vertices
    rois = {**SURFACE_ROIS, "EMPTY": np.zeros(0, np.int64)}
    c = toy_model(tmp_path / "empty", "surface", model_id="test-toy-empty", rois=rois).client(tmp_path / "c")
    m = c.get_encoding_model(
        "test-toy-empty", subject=1, selection={"roi": "EMPTY"}, device="cpu", backbone_weights="untrained"
    )
    assert m.encode(images, show_progress=False).shape == (5, 0)


# ---------------------------------------------------------------------------------- a newcomer's model
# docs/architecture.md "How to add a model of a new output kind": one space class (registered), one model
# class implementing only BaseModelInterface, one registry entry + card. Nothing else in berg changes.
N_SECTORS = 8


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    import newcomer_ring  # registers the "ring" space kind on import, as a plug-in package would

    from berg.testing import add_registry_entry, synthetic_card
    from berg.testing.toys import write_card

    root = tmp_path_factory.mktemp("ring")
    card = synthetic_card(
        "test-ring", space={"kind": "flat"}, selection={"lengths": {"sectors": N_SECTORS}}, subjects=[1]
    )
    card["output"]["space"] = {"kind": "ring", "n_sectors": N_SECTORS}
    write_card(root, card)
    reg = add_registry_entry(
        root / "registry.yaml",
        "test-ring",
        {
            "card": "test-ring.yaml",
            "modality": "fmri",
            "dataset": "toy",
            "source": {"kind": "s3", "bucket": "unused", "prefix": "test-ring/", "manifest": False},
            "layout": "none",
            "recipe": {"output_space": "ring"},
            "model_class": "newcomer_ring:RingModel",
        },
    )
    return newcomer_ring, reg, root


def test_newcomer_space_kind_and_base_only_model_end_to_end(ring, images, tmp_path):
    from berg.core.contract import FeatureModel
    from berg.core.spaces import SPACE_KINDS
    from berg.registry import Registry

    module, reg, _ = ring
    assert SPACE_KINDS["ring"] is module.RingSpace
    assert Registry(extra=[reg]).get("test-ring").selection_keys == ("sectors",)  # from the space registry
    client = berg.BERG(cache_dir=tmp_path / "cache", registry=reg, offline=True)
    model = client.get_encoding_model("test-ring", subject=1)
    assert not isinstance(model, FeatureModel)
    truth = module.sector_means(images, N_SECTORS)
    out = client.encode(model, images, show_progress=False)
    np.testing.assert_allclose(out, truth, rtol=1e-6)
    # selections go through the registry's validation (keys and lengths from the space and card)
    keep = np.zeros(N_SECTORS, int)
    keep[[1, 6]] = 1
    sel = client.get_encoding_model("test-ring", subject=1, selection={"sectors": keep})
    np.testing.assert_allclose(sel.encode(images, show_progress=False), truth[:, [1, 6]], rtol=1e-6)
    with pytest.raises(InvalidParameterError, match="exactly 8"):
        client.get_encoding_model("test-ring", subject=1, selection={"sectors": np.ones(5)})
    with pytest.raises(InvalidParameterError, match=r"valid keys: \['sectors'\]"):
        client.get_encoding_model("test-ring", subject=1, selection={"roi": "V1"})
    # save / load: the space comes back through the space registry
    path = berg.save(tmp_path / "ring.h5", out, model, stimulus_ids=[f"img{i}" for i in range(len(images))])
    back = berg.load_responses(path)
    np.testing.assert_array_equal(back["responses"]["1"], out)
    assert isinstance(back["spaces"]["1"], module.RingSpace) and back["spaces"]["1"].n_sectors == N_SECTORS
    np.testing.assert_allclose(back["coords"]["1"]["angle_deg"], np.arange(N_SECTORS) * 45.0)
    with pytest.raises(InvalidParameterError, match="NIfTI needs a volume space"):
        berg.save_nifti(tmp_path / "ring.nii.gz", out, model)


def test_newcomer_model_through_cli_and_run(ring, images, tmp_path):
    from PIL import Image

    from berg.cli import main

    module, reg, _ = ring
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img{i}.png")
    out = tmp_path / "cli.h5"
    assert (
        main(
            [
                "--registry",
                str(reg),
                "--cache-dir",
                str(tmp_path / "c"),
                "encode",
                "test-ring",
                str(folder),
                "--subject",
                "1",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    truth = module.sector_means(images, N_SECTORS)
    np.testing.assert_allclose(berg.load_responses(out)["responses"]["1"], truth, rtol=1e-6)
    # berg run: a model without a shared backbone pass runs shard by shard through encode
    store = tmp_path / "run"
    plan = berg.EncodePlan(
        models=[{"id": "test-ring", "subjects": [1]}],
        stimuli={"folder": str(folder)},
        store=store,
        shard_size=2,
        berg={"cache_dir": str(tmp_path / "c2"), "offline": True, "registry": str(reg)},
        device="cpu",
    )
    report = berg.run(plan, show_progress=False)
    assert report.computed_units == 3
    got = berg.runner.open_responses(store)["test-ring/sub-01/responses"][:]
    np.testing.assert_allclose(got, truth, rtol=1e-6)
