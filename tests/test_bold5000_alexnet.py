"""fmri-bold5000-alexnet on a SYNTHETIC BOLD5000-shaped release with a planted layer per ROI.

The release (creation_code/bold5000_alexnet/synthetic_release.py) is written in BOLD5000's documented
layout; the creator reads it through berg's BOLD5000 adapter, builds the per-layer artifact, and the
model is loaded through berg's API from a registry entry. Ground truth: every ROI is a known linear
map of one layer of the seeded AlexNet, plus noise of known NCSNR.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from berg import metrics

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MODEL_ID = "test-bold5000-alexnet64"
SUBJECTS = (1, 2)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from berg.api import BERG
    from berg.buildable import build_model
    from creation_code.bold5000_alexnet.synthetic_release import write_registry, write_synthetic_release

    root = tmp_path_factory.mktemp("b5k")
    truth = write_synthetic_release(root / "data", subjects=SUBJECTS, ncsnr=1.0, seed=0)
    cache = root / "cache"
    registry = write_registry(
        root, MODEL_ID, subjects=SUBJECTS, image_size=64, n_outputs={s: truth.signal[s].shape[1] for s in SUBJECTS}
    )
    # `berg build` (berg.buildable.build_model): the registry's creator, options checked against its defaults
    out = build_model(
        MODEL_ID,
        root / "data",
        client=BERG(cache_dir=cache, registry=registry),
        options={
            "backbone_weights": "untrained",
            "image_size": 64,
            "n_components": 20,
            "subjects": list(SUBJECTS),
            "model_id": MODEL_ID,
        },
    )
    assert (out / "manifest.json").is_file() and out == cache / MODEL_ID
    return {
        "root": root,
        "truth": truth,
        "cache": cache,
        "registry": registry,
        "summary": json.loads((out.parent / f".{out.name}.build" / "summary.json").read_text()),
    }


def _client(b):
    from berg.api import BERG

    return BERG(cache_dir=b["cache"], registry=b["registry"])


def _test_paths(b):
    t = b["truth"]
    img_dir = t.root / "BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli/ImageNet"
    rows = [t.ids.index(i) for i in t.test_ids]
    return [str(img_dir / i) for i in t.test_ids], rows


def test_adapter_reads_the_release_layout(built):
    from berg.training.bold5000 import BOLD5000_ROIS, bold5000_release_dataset

    t = built["truth"]
    ds = bold5000_release_dataset(t.root, SUBJECTS)
    assert sorted(ds.ids) == sorted(t.ids) and set(ds.ids[i] for i in ds.indices("test")) == set(t.test_ids)
    r = ds.subjects[1].responses
    assert r.shape == (len(t.ids), 4, 80)
    counts = (~np.isnan(r[:, :, 0])).sum(axis=1)
    test = ds.split == "test"
    assert sorted(counts[test].tolist()) == [3] + [4] * 15 and set(counts[~test].tolist()) == {1}
    assert list(ds.subjects[2].rois) == list(BOLD5000_ROIS)
    # rows are images: the mean of a test image's repeats tracks the planted signal of that image
    row = {i: k for k, i in enumerate(ds.ids)}
    idx = [row[i] for i in t.ids]
    mean = np.nanmean(r[idx], axis=1)
    assert np.median(metrics.pearson_r(mean, t.signal[1])) > 0.5
    with pytest.raises(Exception, match="TR7"):
        bold5000_release_dataset(t.root, SUBJECTS, tr="TR7")


@pytest.mark.slow
def test_build_recovers_planted_layers(built):
    planted = built["truth"].planted
    best = built["summary"]["best_layer"]
    order = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    exact = sum(best[str(s)][roi] == layer for s in SUBJECTS for roi, layer in planted.items())
    assert exact >= 16, best
    assert all(
        abs(order.index(best[str(s)][roi]) - order.index(layer)) <= 1
        for s in SUBJECTS
        for roi, layer in planted.items()
    )
    # held-out accuracy per layer x ROI is recorded (16 test images: too few to rank layers reliably)
    assert set(built["summary"]["test_r"]["1"]) == set(order)


@pytest.mark.slow
def test_encode_predicts_the_true_signal_and_variants_agree_with_the_artifact(built):
    from berg.store.artifacts import read_tensors

    t = built["truth"]
    paths, rows = _test_paths(built)
    client = _client(built)
    best = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")
    pred = best.encode(paths, show_progress=False)
    assert pred.shape == (len(paths), 80) and pred.dtype == np.float32
    r = metrics.pearson_r(pred, t.signal[1][rows])
    assert np.median(r) > 0.7  # held-out images, against the noiseless truth
    meta = best.get_metadata()
    assert meta["layer"] == "best" and set(meta["layers_used"]) >= {"conv1", "fc7"}
    assert "EarlyVis" in meta["rois"] and meta["accuracy"]["ncsnr"].shape == (80,)

    # layer="conv1": exactly projection(conv1 features) @ readout from the artifact files
    conv1 = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained", layer="conv1")
    y = conv1.encode(paths, show_progress=False)
    art = built["cache"] / MODEL_ID
    p = read_tensors(art / "projections/conv1.safetensors")
    w = read_tensors(art / "readout/conv1/sub-01.safetensors")
    from berg.core.engine import iter_features
    from berg.stimuli import load_stimuli

    feats = np.concatenate(list(iter_features(conv1.extractor, load_stimuli(paths, "image"), batch_size=16)))
    manual = (feats @ p["weight"].T + p["bias"]) @ w["weight"].T + w["bias"]
    np.testing.assert_allclose(y, manual, rtol=1e-4, atol=1e-4)
    assert conv1.get_metadata()["layers_used"] == ["conv1"]

    # the best variant equals, ROI by ROI, the chosen layer's variant
    layer = built["summary"]["best_layer"]["1"]["LHLOC"]
    one = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained", layer=layer)
    roi = meta["rois"]["LHLOC"]
    np.testing.assert_allclose(pred[:, roi], one.encode(paths, show_progress=False)[:, roi], rtol=1e-4, atol=1e-4)
    # selections are pushed into the heads: an ROI selection equals slicing the full output
    sel = client.get_encoding_model(
        MODEL_ID, subject=1, device="cpu", backbone_weights="untrained", selection={"roi": "LHLOC"}
    )
    np.testing.assert_allclose(sel.encode(paths, show_progress=False), pred[:, roi], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_the_paper_study_in_a_few_lines(built):
    """Synthetic data from the built model: reliability beats real repeats at this SNR, decoders transfer."""
    from berg.experiments.decoding import classify
    from berg.experiments.reliability import expected_reliability, reliability
    from berg.synthetic import generate
    from berg.training.bold5000 import bold5000_release_dataset

    t = built["truth"]
    model = _client(built).get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")
    ds = bold5000_release_dataset(t.root, [1])
    test = ds.indices("test")
    real_test = np.asarray(ds.subjects[1].responses[test])
    paths = [ds.stimuli[i] for i in test]
    res = reliability(
        model.encode(paths, show_progress=False), real_test, rois=model.get_metadata()["rois"], n_boot=200
    )
    c = np.median(
        metrics.pearson_r(model.encode(paths, show_progress=False), t.signal[1][[t.ids.index(ds.ids[i]) for i in test]])
    )
    theory = expected_reliability(c, t.ncsnr)
    assert bool(theory["synthetic_better"]) and res.ci_difference["all"][0] > 0

    # synthetic training data for every training image, noise matched to the real data's NCSNR (metadata)
    train = ds.indices("train")
    cats = np.array([i.split("_")[0] for i in ds.ids])
    syn = generate(
        model,
        [ds.stimuli[i] for i in train],
        n_repeats=1,
        noise="metadata",
        categories=cats[train],
        ids=[ds.ids[i] for i in train],
        seed=0,
    )
    assert np.mean(syn.ncsnr[1] > 0) > 0.9  # NCSNR measured on 16 test images: a few voxels come out 0
    out = classify(syn.responses[1], cats[train], real_test, cats[test], n_permutations=300)
    assert out.accuracy > 2 * out.chance and out.p_value < 0.01
