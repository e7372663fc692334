"""fmri-algonauts_2023-clip_sam: CLIP/SAM backbones, the challenge-data adapter, berg build on a synthetic
challenge-shaped dataset with a planted linear ground truth, variants, captions, metric, encode -> save.

Backbones are random (``backbone_weights="untrained"``, seeded): no network. The build test uses SAM
ViT-B at 128 px with pooling 1, which keeps the recipe's 16,384-wide features at a test-sized cost.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
import pytest

pytest.importorskip("open_clip", reason="the clip-sam extra (pip install 'berg[clip-sam]') is not installed")
pytest.importorskip("segment_anything", reason="the clip-sam extra (pip install 'berg[clip-sam]') is not installed")

import berg  # noqa: E402
from berg.errors import InvalidParameterError, MissingExtraError, ModelNotBuiltError  # noqa: E402

MODEL_ID = "fmri-algonauts_2023-clip_sam"
# A 2-block SAM-style encoder at 128 px, pooling 1: the recipe's 16,384 features at a test-sized cost
# (the real ViT-B/ViT-L encoders are checked separately below).
TEST_ENCODER = {"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,)}
SMALL_SAM = {"sam_model": "vit_test", "sam_image_size": 128, "sam_pool": 1}
BUILD = {
    "subjects": [1, 2],
    "backbone_weights": "untrained",
    "device": "cpu",
    "refit_all": False,
    "show_progress": False,
    "batch_size": 16,
    "train_percent": 80,
    **SMALL_SAM,
}
N_TRAIN, N_TEST = 20, 4


@pytest.fixture(scope="module")
def cached_backbones():
    """Build each random backbone once per module (building CLIP costs ~10 s here); add the test encoder."""
    from berg.backbones import clip, sam

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sam.ENCODERS, "vit_test", TEST_ENCODER)
        mp.setitem(sam.CHECKPOINTS, "vit_test", {"file": "none (test encoder)", "sha256_prefix": ""})
        mp.setattr(clip, "build_clip", functools.lru_cache(maxsize=2)(clip.build_clip))
        mp.setattr(sam, "build_sam_encoder", functools.lru_cache(maxsize=2)(sam.build_sam_encoder))
        yield


@pytest.fixture(scope="module")
def extractors(cached_backbones):
    from berg.backbones.clip import clip_extractors
    from berg.backbones.sam import SamExtractor

    image, text = clip_extractors(backbone_weights="untrained", seed=0)
    return {
        "image": image,
        "text": text,
        "sam": SamExtractor("vit_test", image_size=128, pool=1, backbone_weights="untrained", seed=0),
    }


def _features(extractors, paths, captions):
    from berg.stimuli import load_stimuli

    images = load_stimuli([str(p) for p in paths], "image")
    items = [images[i] for i in range(len(images))]
    return {
        "image": extractors["image"].extract(items).numpy(),
        "text": extractors["text"].extract(captions).numpy(),
        "sam": extractors["sam"].extract(items).numpy(),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, extractors):
    """Synthetic challenge data for 2 subjects, built with berg build into a fresh cache."""
    from creation_code.algonauts_2023.synthetic import write_dataset

    root = tmp_path_factory.mktemp("alg")
    data = root / "data"
    planted = write_dataset(
        data,
        functools.partial(_features, extractors),
        n_train=N_TRAIN,
        n_test=N_TEST,
        n_captions=2,
        train_percent=BUILD["train_percent"],
    )
    client = berg.BERG(cache_dir=root / "cache", offline=True)
    with pytest.raises(ModelNotBuiltError, match=rf"berg build {MODEL_ID} --data DIR"):
        client.get_encoding_model(MODEL_ID, subject=1, backbone_weights="untrained", device="cpu")
    path = berg.build(MODEL_ID, data, client=client, options=BUILD)
    return {"client": client, "planted": planted, "data": data, "path": path}


def _load(built, variant, subject=1, **kw):
    return built["client"].get_encoding_model(
        MODEL_ID, subject=subject, backbone_weights="untrained", device="cpu", variant=variant, **kw
    )


def _test_inputs(built, subject=1):
    truth = built["planted"][subject]
    return [str(p) for p in truth.test_images], [truth.captions[_nsd(p)] for p in truth.test_images], truth


def _nsd(path):
    return int(str(path).rsplit("nsd-", 1)[1][:5])


def _corr_cols(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


# ------------------------------------------------------------------------------------------ backbones
def test_clip_widths_and_tokenizer_offline(extractors, monkeypatch):
    import socket

    import open_clip

    def no_network(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    tok = open_clip.get_tokenizer("ViT-B-32-quickgelu")  # the BPE vocabulary ships with open_clip
    tokens = tok(["a dog on a mat"])
    assert tokens.shape == (1, 77) and int(tokens[0, 0]) == 49406  # start-of-text
    img = np.random.default_rng(0).integers(0, 256, (2, 50, 70, 3), dtype=np.uint8)
    fi = extractors["image"].extract(list(img))
    ft = extractors["text"].extract([["a dog", "a cat on a mat"], ["one caption"]])
    assert fi.shape == (2, 512) and ft.shape == (2, 512)
    assert np.concatenate([fi, ft], axis=1).shape[1] == 1024
    # the mean over captions is the mean of the single-caption embeddings
    a, b = (extractors["text"].extract([[c]]) for c in ("a dog", "a cat on a mat"))
    np.testing.assert_allclose(ft[0].numpy(), ((a + b) / 2)[0].numpy(), rtol=1e-4, atol=1e-5)


def test_sam_encoders_without_checkpoint_give_16384():
    """ViT-B and ViT-L encoders as the recipe runs them (1024 px, pool 8), on the meta device: shapes only.

    A real ViT-B forward at 1024 px costs ~60 s on the shared 2-core CI box (benchmarks/clip_sam.py runs
    one); the pooling + flattening path itself runs for real in the build tests (test encoder).
    """
    import torch

    from berg.backbones.sam import build_sam_encoder, feature_width

    sizes = {}
    for name in ("vit_b", "vit_l"):
        with torch.device("meta"):  # no memory, no compute
            enc = build_sam_encoder(name, backbone_weights="untrained")
            out = enc(torch.empty(1, 3, 1024, 1024))
        assert tuple(out.shape) == (1, 256, 64, 64)
        assert torch.nn.functional.avg_pool2d(out, 8).flatten(1).shape[1] == 16384 == feature_width(1024, 8)
        sizes[name] = sum(p.numel() for p in enc.parameters())
    assert 80e6 < sizes["vit_b"] < 100e6 and 300e6 < sizes["vit_l"] < 320e6  # ViT-B 89.7 M, ViT-L 303 M


def test_missing_extra_names_pip_install(monkeypatch):
    import inspect

    from berg.backbones import clip, sam

    build_clip, build_sam_encoder = inspect.unwrap(clip.build_clip), inspect.unwrap(sam.build_sam_encoder)

    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'berg\[clip-sam\]'.*open-clip-torch"):
        build_clip("untrained")
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    monkeypatch.setitem(sys.modules, "segment_anything.modeling", None)
    with pytest.raises(MissingExtraError, match=r"berg\[clip-sam\]"):
        build_sam_encoder("vit_b", backbone_weights="untrained")


def test_offline_pretrained_weights_say_how_to_get_them(tmp_path, monkeypatch):
    import inspect

    from berg.backbones import clip, sam
    from berg.errors import BackboneWeightsError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(BackboneWeightsError, match=r"offline.*clip_weights=PATH"):
        inspect.unwrap(clip.build_clip)(None, offline=True)
    with pytest.raises(BackboneWeightsError, match=r"sam_vit_l_0b3195\.pth.*offline.*TORCH_HOME"):
        inspect.unwrap(sam.build_sam_encoder)("vit_l", offline=True)


def test_backbone_weights_per_backbone():
    from berg.backbones import split_backbone_weights

    assert split_backbone_weights("untrained", ("clip", "sam")) == {"clip": "untrained", "sam": "untrained"}
    assert split_backbone_weights({"sam": "/x.pth"}, ("clip", "sam")) == {"clip": None, "sam": "/x.pth"}
    with pytest.raises(InvalidParameterError, match="one file per backbone"):
        split_backbone_weights("/x.pth", ("clip", "sam"))
    with pytest.raises(InvalidParameterError, match="did you mean"):
        split_backbone_weights({"slip": "/x"}, ("clip",))


# ------------------------------------------------------------------------------------------ data adapter
def test_devkit_split_is_the_tutorials():
    from creation_code.algonauts_2023.data import devkit_split

    np.random.seed(5)
    idxs = np.arange(9841)
    np.random.shuffle(idxs)
    num_train = int(np.round(9841 / 100 * 90))
    tr, va = devkit_split(9841)
    np.testing.assert_array_equal(tr, idxs[:num_train])
    np.testing.assert_array_equal(va, idxs[num_train:])
    assert len(tr) == 8857 and len(va) == 984


def test_adapter_errors_say_what_is_missing(tmp_path):
    from creation_code.algonauts_2023.data import coco_captions, read_subject

    with pytest.raises(InvalidParameterError, match=r"subj01.*one folder per subject"):
        read_subject(tmp_path, 1)
    (tmp_path / "subj01" / "training_split" / "training_images").mkdir(parents=True)
    (tmp_path / "subj01" / "training_split" / "training_images" / "img1.png").write_bytes(b"")
    with pytest.raises(InvalidParameterError, match="train-IIII_nsd-NNNNN.png"):
        read_subject(tmp_path, 1)
    with pytest.raises(InvalidParameterError, match="nsd_stim_info_merged.csv"):
        coco_captions([1], tmp_path / "nsd_stim_info_merged.csv", tmp_path)


# ------------------------------------------------------------------------------------------ build
@pytest.mark.slow
def test_build_recovers_the_planted_truth(built):
    paths, caps, truth = _test_inputs(built)
    pred = _load(built, "per_roi_class").encode(paths, captions=caps, show_progress=False)
    r = _corr_cols(pred.astype(np.float64), truth.test)
    assert pred.shape == (N_TEST, 44) and pred.dtype == np.float32
    assert np.median(r) > 0.97 and r.min() > 0.8, r
    # the SAM readout explains the SAM-driven vertices, and not the CLIP-driven ones as well
    sam = _load(built, "sam").encode(paths, show_progress=False)
    rs = _corr_cols(sam.astype(np.float64), truth.test)
    assert np.median(rs[truth.driver == 1]) > 0.97
    # both subjects at once equal separate loads
    both = built["client"].get_encoding_model(
        MODEL_ID, subject=[1, 2], backbone_weights="untrained", device="cpu", variant="sam"
    )
    p2 = [str(p) for p in built["planted"][2].test_images]
    out = both.encode(p2, show_progress=False)
    np.testing.assert_allclose(
        out[2], _load(built, "sam", subject=2).encode(p2, show_progress=False), rtol=1e-5, atol=1e-5
    )
    info = built["client"].get_model_metadata(MODEL_ID, subject=1)["scores"]
    assert set(info["held_out"]) == {"image_only", "text_only", "image_text", "sam", "clip_sam", "per_roi_class"}
    assert info["held_out"]["per_roi_class"]["nnmc"] > info["held_out"]["image_only"]["nnmc"]


@pytest.mark.slow
def test_metric_equals_a_direct_numpy_computation(built):
    """NNMC of the stored held-out scores == numpy on the model's own held-out predictions."""
    from creation_code.algonauts_2023.data import devkit_split, read_subject

    sd = read_subject(built["data"], 1)
    _, va = devkit_split(len(sd.train_images), train_percent=BUILD["train_percent"])
    model = _load(built, "sam")
    pred = model.encode([str(sd.train_images[i]) for i in va], show_progress=False).astype(np.float64)
    y = np.concatenate(
        [
            np.load(sd.root / "training_split/training_fmri/lh_training_fmri.npy"),
            np.load(sd.root / "training_split/training_fmri/rh_training_fmri.npy"),
        ],
        axis=1,
    )[va]
    nc = np.concatenate([np.load(sd.root / f"test_split/noise_ceiling/{h}_noise_ceiling.npy") for h in ("lh", "rh")])
    r = np.array([np.corrcoef(pred[:, v], y[:, v])[0, 1] for v in range(y.shape[1])])
    r[r < 0] = 0
    ev = np.minimum(r**2 / nc * 100, 100)
    stored = model.get_metadata()["scores"]["held_out"]["sam"]
    assert stored["nnmc"] == pytest.approx(ev.mean(), abs=1e-3)
    assert stored["nnmc_lh"] == pytest.approx(ev[:24].mean(), abs=1e-3)
    prf = model.get_metadata()["rois"]["prf-visualrois"]
    assert stored["nnmc_per_roi_class"]["prf-visualrois"] == pytest.approx(ev[prf].mean(), abs=1e-3)


@pytest.mark.slow
def test_clip_sam_is_the_mean_of_its_members(built):
    paths, caps, _ = _test_inputs(built)
    ens = _load(built, "clip_sam").encode(paths, captions=caps, show_progress=False)
    it = _load(built, "image_text").encode(paths, captions=caps, show_progress=False)
    sam = _load(built, "sam").encode(paths, show_progress=False)
    np.testing.assert_allclose(ens, (it + sam) / 2, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_missing_captions_behave_as_specified(built):
    paths, caps, _ = _test_inputs(built)
    model = _load(built, "clip_sam")
    with pytest.raises(InvalidParameterError, match=r"captions=.*variant='image_only'"):
        model.encode(paths, show_progress=False)
    with pytest.raises(InvalidParameterError, match=f"{N_TEST} images"):
        model.encode(paths, captions=caps[:-1], show_progress=False)
    with pytest.raises(InvalidParameterError, match=r"captions\[2\]"):
        model.encode(paths, captions=caps[:2] + [[]] + caps[3:], show_progress=False)
    image_only = _load(built, "image_only").encode(paths, show_progress=False)  # no captions needed
    assert np.isfinite(image_only).all()
    text = _load(built, "text_only")
    a = text.encode(paths, captions=caps, show_progress=False)
    b = text.encode(paths, captions=["a single different caption"] * N_TEST, show_progress=False)
    assert not np.allclose(a, b)  # captions are read, never replaced by a constant


@pytest.mark.slow
def test_build_encode_save_and_selections(built, tmp_path):
    import nibabel as nib

    paths, caps, _ = _test_inputs(built)
    client = built["client"]
    model = _load(built, "clip_sam")
    out = client.encode(model, paths, captions=caps, show_progress=False)
    space = model.space()
    assert space.template == "fsaverage" and space.n_vertices == {"lh": 163842, "rh": 163842}
    files = berg.save_gifti(tmp_path / "pred", out, model)
    lh = nib.load(files["lh"])
    assert len(lh.darrays) == N_TEST and lh.darrays[0].data.shape == (163842,)
    np.testing.assert_allclose(lh.darrays[3].data[space.vertices["lh"]], space.split(out)["lh"][3], rtol=1e-6)
    assert np.isnan(lh.darrays[0].data).sum() == 163842 - 24
    back = berg.load_responses(berg.save(tmp_path / "pred.h5", out, model))
    np.testing.assert_array_equal(back["responses"]["1"], out)
    prov = model.provenance()
    assert prov["variant"] == "clip_sam" and "UNTRAINED" in prov["warning"]
    roi = _load(built, "clip_sam", selection={"roi": ["prf-visualrois", "EBA"]})
    rows = np.union1d(model.get_metadata()["rois"]["prf-visualrois"], model.get_metadata()["rois"]["EBA"])
    np.testing.assert_allclose(
        roi.encode(paths, captions=caps, show_progress=False), out[:, rows], rtol=1e-5, atol=1e-5
    )
    with pytest.raises(InvalidParameterError, match="Valid ROIs"):
        _load(built, "sam", selection={"roi": "V9"})


@pytest.mark.slow
def test_rebuild_resumes_from_the_feature_cache(built, monkeypatch):
    from berg.backbones import clip, sam

    def boom(*a, **k):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(clip, "clip_extractors", boom)
    monkeypatch.setattr(sam, "SamExtractor", boom)
    path = berg.build(
        MODEL_ID, built["data"], client=built["client"], options={**BUILD, "variants": ["sam"]}, force=True
    )
    assert (path / "readout" / "sam" / "sub-01.safetensors").is_file()
    assert not (path / "readout" / "image" / "sub-01.safetensors").exists()
    monkeypatch.undo()  # loading builds the backbones again
    fresh = berg.BERG(cache_dir=built["client"].store.cache_dir, offline=True)  # the old client cached the manifest
    with pytest.raises(InvalidParameterError, match="not built"):
        fresh.get_encoding_model(MODEL_ID, subject=1, backbone_weights="untrained", device="cpu", variant="image_only")
    assert (
        fresh.get_encoding_model(MODEL_ID, subject=1, backbone_weights="untrained", device="cpu", variant="sam")
        .space()
        .n_outputs
        == 44
    )
