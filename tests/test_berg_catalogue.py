"""BERG's NSD-fsaverage and THINGS-EEG2 models read from replicas of BERG's bucket (issue 11).

Replicas are written by creation_code/berg_catalogue/replica.py exactly as BERG writes its files
(``np.save`` of dicts; real pickled scikit-learn PCA objects for EEG), with small widths, and served
from the test S3 server (or a local berg_dir). Expectations come from BERG's own scikit-learn chain.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import berg
from berg.errors import InvalidParameterError, UnsafeArtifactError
from berg.registry import Registry
from berg.testing import replica_entry
from berg.testing import write_catalogue_replica as write_replica
from creation_code.berg_catalogue.replica import CHANNELS, NSD_ROIS, berg_reference

REPO = Path(__file__).resolve().parents[1]

BUCKET = "berg-test-catalogue"
# The served test models swap BERG's backbone for a small one (the readout path is what is tested;
# the real architectures' widths are checked in test_real_architectures_feature_widths).
SMALL_BACKBONE = {"builder": "torchvision.models.mobilenet_v3_small", "weights": None}
NODES = ["avgpool"]
SIZE = {"size": [72, 72], "crop": [64, 64]}
WIDTH = 576
N_VERT = 40
EEG_CH = CHANNELS[:5]
EEG_T = 7
NSD_ID, EEG_ID = "test-nsd-alexnet", "test-eeg-alexnet"


def _write_registry(tmp: Path, entries: dict[str, tuple[str, dict]]) -> Path:
    for test_id, (real_id, source) in entries.items():
        if real_id.startswith("eeg-"):
            n = 4 * len(EEG_CH) * EEG_T
            selection = {"channels": list(EEG_CH), "lengths": {"timepoints": EEG_T}, "n_outputs": {1: n, 2: n}}
        else:
            lengths = {"lh_vertices": N_VERT, "rh_vertices": N_VERT}
            selection = {"lengths": lengths, "n_outputs": {1: 2 * N_VERT, 2: 2 * N_VERT}}
        recipe = {
            "nodes": NODES,
            "transform": SIZE,
            "berg_catalogue": {"inference": {"resize_size": 72, "crop_size": 64}},
        }
        if real_id.endswith("-alexnet"):
            recipe["backbone"] = dict(SMALL_BACKBONE)
        path = replica_entry(tmp, test_id, real_id, source=source, subjects=[1, 2], selection=selection, recipe=recipe)
    return path


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, s3_server):
    root = tmp_path_factory.mktemp("catalogue")
    common = dict(subjects=(1, 2), n_features=WIDTH, n_components=6, n_train=30)
    nsd = write_replica(root / "bucket", "nsd_fsaverage", "alexnet", n_vertices=N_VERT, **common)
    eeg = write_replica(root / "bucket", "things_eeg_2", "alexnet", channels=list(EEG_CH), n_times=EEG_T, **common)
    for rep in (nsd, eeg):
        s3_server.upload_tree(root / "bucket" / rep.prefix, BUCKET, rep.prefix)
    forms = {}
    for form in ("attribute_dicts", "shared"):  # older EEG formats, read from a local berg_dir copy
        forms[form] = write_replica(
            root / form,
            "things_eeg_2",
            "alexnet_untrained",
            channels=list(EEG_CH),
            n_times=EEG_T,
            form=form,
            subjects=(1,),
            n_features=64,
            n_components=5,
        )
    s3 = lambda rep: {"kind": "s3", "bucket": BUCKET, "prefix": rep.prefix, "manifest": False}  # noqa: E731
    reg = _write_registry(
        root, {NSD_ID: ("fmri-nsd_fsaverage-alexnet", s3(nsd)), EEG_ID: ("eeg-things_eeg_2-alexnet", s3(eeg))}
    )
    local = {
        f"test-eeg-{form}": (
            "eeg-things_eeg_2-alexnet_untrained",
            {"kind": "s3", "bucket": "absent-bucket", "prefix": forms[form].prefix, "manifest": False},
        )
        for form in forms
    }
    (root / "local").mkdir()
    reg_local = _write_registry(root / "local", local)
    return {"nsd": nsd, "eeg": eeg, "forms": forms, "registry": reg, "registry_local": reg_local, "root": root}


@pytest.fixture
def client(replicas, s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", s3_server.endpoint_url)
    return berg.BERG(cache_dir=tmp_path / "cache", registry=replicas["registry"])


def _model(client, model_id, **kw):
    # trained backbones cannot be downloaded here: seeded random weights (the readouts do not care)
    if model_id in (NSD_ID, EEG_ID):
        kw.setdefault("backbone_weights", "untrained")
    return client.get_encoding_model(model_id, **kw)


def _npys(cache: Path) -> set[str]:
    return {p.relative_to(cache).as_posix() for p in cache.rglob("*.npy")}


def _features(n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, WIDTH)).astype(np.float32)


def _outputs(model, x):
    with torch.inference_mode():
        return [o.numpy() for o in model.outputs_from_features(torch.from_numpy(x))]


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# --------------------------------------------------------------------------- fetching and parity


def test_lazy_fetch_exactly_the_needed_files(client, tmp_path):
    meta = client.get_model_metadata(NSD_ID, subject=2)
    assert _npys(tmp_path / "cache") == {f"{NSD_ID}/metadata/metadata_subject-02.npy"}
    assert set(meta["fmri"]["lh_fsaverage_rois"]) == set(NSD_ROIS)
    _model(client, NSD_ID, subject=1, device="cpu")
    assert _npys(tmp_path / "cache") == {
        f"{NSD_ID}/metadata/metadata_subject-02.npy",
        f"{NSD_ID}/metadata/metadata_subject-01.npy",
        f"{NSD_ID}/encoding_models_weights/weights_subject-01.npy",
    }
    folded = list((tmp_path / "cache" / NSD_ID / "converted").glob("projection-sub-01-pca-*.safetensors"))
    assert len(folded) == 1


@pytest.mark.parametrize("which", ["nsd", "eeg"])
def test_parity_with_bergs_sklearn_chain(client, replicas, which):
    rep = replicas[which]
    model = _model(client, NSD_ID if which == "nsd" else EEG_ID, subject=[1, 2], device="cpu")
    x = _features()
    for s, out in zip(model.subjects, _outputs(model, x)):
        ref = berg_reference(rep, s, x)
        got = model.shape_outputs(s, out)
        assert got.shape == ref.shape
        assert _rel(got, ref) < 1e-5


@pytest.mark.parametrize("form", ["attribute_dicts", "shared"])
def test_older_eeg_formats_from_a_local_berg_dir(replicas, tmp_path, form):
    rep = replicas["forms"][form]
    client = berg.BERG(berg_dir=rep.root, cache_dir=tmp_path / "c", registry=replicas["registry_local"])
    model = _model(client, f"test-eeg-{form}", subject=1, device="cpu")
    assert model.layout.weights(1).form == form
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    (out,) = _outputs(model, x)
    ref = berg_reference(rep, 1, x)
    assert _rel(model.shape_outputs(1, out), ref) < 1e-5
    if form == "shared":  # one PCA for the 4 repetitions: one projection, computed once per batch
        assert [k for k in model.projections if k] == ["sub-01/shared"]
    else:
        assert len([k for k in model.projections if k]) == 4


def test_eeg_repetitions_have_their_own_pca(client, replicas):
    model = _model(client, EEG_ID, subject=1, device="cpu")
    assert model.layout.weights(1).form == "objects"
    w = [model.projections[f"sub-01/rep-{r}"].weight for r in range(1, 5)]
    assert not any(np.allclose(w[0], other) for other in w[1:])
    out = model.shape_outputs(1, _outputs(model, _features())[0])
    assert out.shape == (3, 4, len(EEG_CH), EEG_T)
    assert not np.allclose(out[:, 0], out[:, 1])  # the "stale weights" bug BERG's tests guard against


def test_sklearn_is_never_imported_to_read_the_files(replicas):
    path = replicas["eeg"].path("encoding_models_weights/weights_subject-01.npy")
    code = (
        "import sys; from berg.models.berg_catalogue import read_weights; "
        f"w = read_weights({str(path)!r}, 'things_eeg_2'); "
        "assert w.form == 'objects' and len(w.pcas) == 4, w.form; "
        "assert not any(m == 'sklearn' or m.startswith('sklearn.') for m in sys.modules), 'sklearn imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_code_in_an_eeg_file_never_runs(replicas, tmp_path):
    import os

    from berg.models.berg_catalogue import read_weights

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    w = dict(replicas["eeg"].weights[1])
    w["pca_param"] = {**w["pca_param"], "rep-2": Evil()}
    np.save(tmp_path / "weights_subject-01.npy", w, allow_pickle=True)
    with pytest.raises(UnsafeArtifactError, match="posix.system|os.system"):
        read_weights(tmp_path / "weights_subject-01.npy", "things_eeg_2")
    assert not marker.exists()


# --------------------------------------------------------------------------- selections


_FULL: dict = {}


def _full_and(client, model_id, selection, subject=1):
    x = _features(2, seed=5)
    if (model_id, subject) not in _FULL:
        _FULL[(model_id, subject)] = _model(client, model_id, subject=subject, device="cpu")
    full = _FULL[(model_id, subject)]
    sel = _model(client, model_id, subject=subject, device="cpu", selection=selection)
    f = full.shape_outputs(subject, _outputs(full, x)[0])
    s = sel.shape_outputs(subject, _outputs(sel, x)[0])
    return f, s, sel


def test_nsd_selections_equal_slicing_with_bergs_precedence(client, replicas, caplog):
    meta = replicas["nsd"].metadata[1]["fmri"]
    lh = np.asarray(
        meta["lh_fsaverage_rois"]["V1v"][0]
        if isinstance(meta["lh_fsaverage_rois"]["V1v"], tuple)
        else meta["lh_fsaverage_rois"]["V1v"]
    ).ravel()
    rhe = meta["rh_fsaverage_rois"]["V1v"]
    rh = np.asarray(rhe[0] if isinstance(rhe, tuple) else rhe).ravel()
    rows = np.concatenate([lh, rh + N_VERT])
    full, got, model = _full_and(client, NSD_ID, {"roi": "V1v"})
    np.testing.assert_array_equal(got, full[:, rows])
    parts = model.spaces[1].split(got)
    assert parts["lh"].shape[1] == lh.size and parts["rh"].shape[1] == rh.size
    # roi wins over vertex vectors (as in BERG)
    vec = np.zeros(N_VERT, dtype=int)
    vec[[1, 5]] = 1
    _, got2, _ = _full_and(client, NSD_ID, {"roi": ["V1v"], "lh_vertices": vec})
    np.testing.assert_array_equal(got2, got)
    # vertex vectors per hemisphere; a hemisphere without one keeps everything
    _, got3, m3 = _full_and(client, NSD_ID, {"lh_vertices": vec})
    np.testing.assert_array_equal(got3, full[:, np.r_[[1, 5], N_VERT : 2 * N_VERT]])
    assert m3.spaces[1].split(got3)["lh"].shape[1] == 2
    # BERG's misspelt OVWFA selects OWFA, with a warning
    with caplog.at_level(logging.WARNING):
        _, ovwfa, _ = _full_and(client, NSD_ID, {"roi": "OVWFA"})
    _, owfa, _ = _full_and(client, NSD_ID, {"roi": "OWFA"})
    np.testing.assert_array_equal(ovwfa, owfa)
    assert "alias" in caplog.text
    # an ROI with no vertices in this subject selects no readout rows (BERG returns (n, 0))
    empty = _model(client, NSD_ID, subject=1, device="cpu", selection={"roi": "mTL-bodies"})
    assert empty.spaces[1].n_outputs == 0
    with pytest.raises(InvalidParameterError, match="Valid ROIs"):
        _model(client, NSD_ID, subject=1, selection={"roi": "V9"})
    with pytest.raises(InvalidParameterError, match=f"exactly {N_VERT}"):
        _model(client, NSD_ID, subject=1, selection={"lh_vertices": np.ones(5)})


def test_eeg_selections_shapes_and_order(client):
    t = np.zeros(EEG_T, dtype=int)
    t[[0, 4]] = 1
    full, got, model = _full_and(client, EEG_ID, {"channels": [EEG_CH[3], EEG_CH[0], EEG_CH[3]], "timepoints": t})
    np.testing.assert_array_equal(got, full[:, :, [3, 0, 3]][:, :, :, [0, 4]])
    assert model.spaces[1].channels == (EEG_CH[3], EEG_CH[0], EEG_CH[3])
    one = np.zeros(EEG_T, dtype=int)
    one[2] = 1
    model1 = _model(client, EEG_ID, subject=1, device="cpu", selection={"channels": [EEG_CH[1]], "timepoints": one})
    out = model1.encode(np.zeros((1, 64, 64, 3), np.uint8), show_progress=False)
    assert out.shape == (1, 4, 1, 1) and out.dtype == np.float32  # never squeezed
    np.testing.assert_allclose(model1.spaces[1].times_ms, [-90.0])
    with pytest.raises(InvalidParameterError, match="Valid channels"):
        _model(client, EEG_ID, subject=1, selection={"channels": ["Fp9"]})


def test_average_repetitions(client):
    x = _features(2)
    full = _model(client, EEG_ID, subject=1, device="cpu")
    avg = _model(client, EEG_ID, subject=1, device="cpu", average_repetitions=True)
    f = full.shape_outputs(1, _outputs(full, x)[0])
    a = avg.shape_outputs(1, _outputs(avg, x)[0])
    assert a.shape == (2, len(EEG_CH), EEG_T) and avg.spaces[1].n_reps is None
    np.testing.assert_allclose(a, f.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_encode_images_multi_subject_equals_separate(client):
    imgs = np.random.default_rng(2).integers(0, 256, (2, 70, 90, 3), dtype=np.uint8)
    both = _model(client, NSD_ID, subject=[1, 2], device="cpu").encode(imgs, show_progress=False)
    for s in (1, 2):
        model = _model(client, NSD_ID, subject=s, device="cpu")
        one = model.encode(imgs, show_progress=False)
        np.testing.assert_allclose(both[s], one, rtol=1e-5, atol=1e-5)
        assert one.shape == (2, 2 * N_VERT) and one.dtype == np.float32
    out = one
    gifti = model.spaces[2].to_gifti(out)
    assert set(gifti) == {"lh", "rh"} and gifti["lh"].darrays[0].data.shape == (N_VERT,)
    lh, rh = model.spaces[2].to_berg_tuple(out)
    np.testing.assert_array_equal(np.concatenate([lh, rh], axis=1), out)


def test_metadata_contents(client, replicas):
    meta = client.get_model_metadata(EEG_ID, subject=1)
    assert meta["eeg"]["ch_names"] == list(EEG_CH)
    np.testing.assert_allclose(meta["eeg"]["times"], np.round(np.arange(EEG_T) * 0.005 - 0.1, 3))
    enc = meta["encoding_models"]
    assert enc["correlation_single_repetitions"].shape == (4, len(EEG_CH), EEG_T)
    assert len(enc["test_img_info"]["test_img_files"]) == 8
    nsd = client.get_model_metadata(NSD_ID, subject=1)
    for h in ("lh", "rh"):
        for idx in nsd["fmri"][f"{h}_fsaverage_rois"].values():
            assert idx.dtype == np.int64 and idx.ndim == 1
        assert nsd["encoding_models"][f"{h}_correlation_nsdcore"].shape == (N_VERT,)
    assert nsd["rois"]["V1v"].max() < 2 * N_VERT
    assert not isinstance(nsd["fmri"]["lh_ncsnr"], np.memmap)
    # per-ROI summaries of these arrays: berg.accuracy (tests/test_accuracy.py, one implementation)


# --------------------------------------------------------------------------- backbones and preprocessing


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_id,width", [("fmri-nsd_fsaverage-vit_b_32", 460_800), ("eeg-things_eeg_2-alexnet", 205_672)]
)
def test_real_architectures_feature_widths(model_id, width):
    from berg.features import FeatureExtractor

    ext = FeatureExtractor(Registry().get(model_id).recipe, backbone_weights="untrained")
    with torch.inference_mode():
        feats = ext(ext.transform([np.zeros((224, 224, 3), np.uint8)]))
    assert tuple(feats.shape) == (1, width)


def test_untrained_alexnet_is_bergs_seeded_network_and_leaves_torch_rng_alone(replicas, tmp_path):
    from berg.core.contract import LoadRequest  # noqa: F401 - the request type the class receives
    from berg.models.berg_catalogue import BERGCatalogueModel

    client = berg.BERG(
        berg_dir=replicas["forms"]["shared"].root, cache_dir=tmp_path / "c", registry=replicas["registry_local"]
    )
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    model = _model(client, "test-eeg-shared", subject=1, device="cpu")
    assert torch.equal(before, torch.random.get_rng_state())
    torch.manual_seed(20200220)
    import torchvision

    bergs = torchvision.models.alexnet(weights=None)
    ours = model.extractor.network if hasattr(model.extractor, "network") else None
    params = dict(bergs.named_parameters())
    found = [(n, p) for n, p in (ours.named_parameters() if ours is not None else [])]
    assert found, "extractor exposes no network"
    for name, p in found:
        key = name.split(".", 1)[1] if name not in params else name
        if key in params:
            assert torch.equal(p, params[key]), name
    assert issubclass(type(model), BERGCatalogueModel)
    assert model.extractor.seed == 20200220


def test_preprocessing_training_default_differs_from_bergs_inference():
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.models import ViT_B_32_Weights

    from berg.models.berg_catalogue import _SquareCropTransform, _TorchvisionPresetTransform
    from berg.transforms import from_recipe

    spec = Registry().get("fmri-nsd_fsaverage-vit_b_32")
    assert spec.options["preprocessing"]["default"] == "training"
    img = np.random.default_rng(0).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    train = _SquareCropTransform(from_recipe(spec.recipe["transform"]))([img])
    # BERG's training transform, written with torchvision's tensor pipeline (float pixels, antialiased resize)
    ref = T.Compose(
        [
            T.ToTensor(),
            T.CenterCrop(300),
            T.Resize((224, 224), antialias=True),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )(Image.fromarray(img))
    torch.testing.assert_close(train[0], ref, atol=1e-5, rtol=0)
    inf = _TorchvisionPresetTransform(256, 224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])([img])
    torch.testing.assert_close(
        inf[0], ViT_B_32_Weights.IMAGENET1K_V1.transforms()(torch.from_numpy(img).permute(2, 0, 1))
    )
    assert train.shape == inf.shape == (1, 3, 224, 224)
    assert (train - inf).abs().mean() > 0.05  # the two transforms really differ for ViT-B/32


def test_preprocessing_option_reaches_the_model(client):
    default = _model(client, EEG_ID, subject=1, device="cpu")
    bergs = _model(client, EEG_ID, subject=1, device="cpu", preprocessing="berg_inference")
    assert tuple(default.extractor.transform.describe()["crop"]) == (64, 64)  # the recipe's training transform
    assert "torchvision" in bergs.extractor.transform.describe()["pipeline"]
    img = np.random.default_rng(3).integers(0, 256, (1, 80, 100, 3), dtype=np.uint8)
    a, b = default.encode(img, show_progress=False), bergs.encode(img, show_progress=False)
    assert a.shape == b.shape
    pixels = default.extractor.transform(list(img)), bergs.extractor.transform(list(img))
    assert pixels[0].shape == pixels[1].shape and (pixels[0] - pixels[1]).abs().max() > 1e-3
    with pytest.raises(InvalidParameterError, match="preprocessing"):
        _model(client, EEG_ID, subject=1, preprocessing="bogus")


def test_save_and_load_responses_of_both_spaces(client, tmp_path):
    imgs = np.random.default_rng(4).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    t = np.zeros(EEG_T, dtype=int)
    t[[1, 3]] = 1
    for model_id, selection in ((NSD_ID, {"roi": "V1v"}), (EEG_ID, {"channels": [EEG_CH[2]], "timepoints": t})):
        model = _model(client, model_id, subject=1, device="cpu", selection=selection)
        out = model.encode(imgs, show_progress=False)
        path = berg.save(tmp_path / f"{model_id}.h5", out, model, stimulus_ids=["a", "b"])
        back = berg.load_responses(path)
        (key,) = back["responses"]
        np.testing.assert_array_equal(back["responses"][key], out)
        assert back["spaces"][key].same_as(model.spaces[1])
        assert back["stimulus_ids"] == ["a", "b"] and back["model_id"] == model_id
