"""In silico localizers on planted category-selective outputs (berg.experiments.localizers)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ttest_ind

from berg.errors import InvalidParameterError
from berg.experiments import category_localizer, contrast_map, dice, roi_agreement, threshold_map

CATS = ("face", "place", "body", "object")
DECLARED = {"FFA": np.arange(0, 12), "PPA": np.arange(12, 24), "EBA": np.arange(24, 30)}


def planted(n_per=40, n_out=200, seed=0, effect=1.5):
    """Outputs 0-11 prefer faces, 12-23 places, 24-29 bodies; the other 170 outputs are noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(CATS, n_per)
    y = rng.standard_normal((len(labels), n_out)) + 3.0  # an offset, to exercise the shifted sums
    for cat, roi in zip(("face", "place", "body"), DECLARED.values()):
        y[np.ix_(labels == cat, roi)] += effect
    return y.astype(np.float32), labels


@pytest.mark.parametrize("equal_var", [False, True])
def test_t_map_matches_scipy(equal_var):
    rng = np.random.default_rng(1)
    y = rng.standard_normal((37, 9)) * rng.uniform(0.5, 3, 9) + 100.0
    labels = rng.choice(["a", "b", "c"], 37)
    c = contrast_map(y, labels, "a", ["b", "c"], equal_var=equal_var, block_rows=5)
    ref = ttest_ind(y[labels == "a"], y[labels != "a"], equal_var=equal_var, alternative="greater")
    assert np.allclose(c.t, ref.statistic, rtol=1e-9)
    assert np.allclose(c.p_values("positive"), ref.pvalue, rtol=1e-8)
    two = ttest_ind(y[labels == "a"], y[labels != "a"], equal_var=equal_var)
    assert np.allclose(c.p_values("two-sided"), two.pvalue, rtol=1e-8)
    assert c.n_positive == (labels == "a").sum() and c.positive == ("a",)


def test_localizer_recovers_planted_selectivity():
    scores = []
    for seed in range(4):
        y, labels = planted(seed=seed)
        maps = category_localizer(y, labels)
        assert set(maps) == set(CATS)
        for cat, (roi_name, roi) in zip(("face", "place", "body"), DECLARED.items()):
            found = maps[cat].roi(alpha=0.05, correction="fdr")
            assert np.isin(roi, found).all(), (cat, found)  # every planted output is found
            agreement = maps[cat].agreement(DECLARED)
            assert next(iter(agreement)) == roi_name  # best match first
            scores.append(agreement[roi_name])
    # FDR 5 %: a few false positives are allowed, on average Dice stays high
    assert np.mean(scores) >= 0.9 and min(scores) >= 0.7
    # nothing prefers "object": FDR keeps (almost) nothing
    assert len(maps["object"].roi(correction="fdr")) <= 2
    # top_k keeps the strongest outputs of the ROI
    top = maps["face"].roi(top_k=5)
    assert len(top) == 5 and np.isin(top, DECLARED["FFA"]).all()


def test_false_positive_rates_under_the_null():
    rng = np.random.default_rng(3)
    fp_none, fp_fdr = [], []
    for seed in range(5):
        y = np.random.default_rng(seed).standard_normal((80, 2000))
        labels = np.repeat(["x", "y"], 40)
        c = contrast_map(y, labels, "x", "y")
        fp_none.append(c.significant(correction="none").mean())
        fp_fdr.append(c.significant(correction="fdr").any())
    assert 0.03 < np.mean(fp_none) < 0.07  # uncorrected: about alpha of the outputs
    assert sum(fp_fdr) <= 2  # FDR under the global null = family-wise control at alpha
    del rng


def test_threshold_corrections():
    p = np.array([0.001, 0.011, 0.02, 0.045, 0.3, np.nan])
    assert threshold_map(p, correction="none").tolist() == [True, True, True, True, False, False]
    assert threshold_map(p, correction="bonferroni").tolist() == [True, False, False, False, False, False]
    # BH on the 5 finite values: largest k with p_(k) <= k/5 * 0.05 is k = 3 (0.045 > 0.04)
    assert threshold_map(p, correction="fdr").tolist() == [True, True, True, False, False, False]
    with pytest.raises(InvalidParameterError, match="correction"):
        threshold_map(p, correction="holm")


def test_subjects_dict_and_zarr(tmp_path):
    zarr = pytest.importorskip("zarr")
    y, labels = planted(n_per=10, n_out=40)
    z = zarr.create_array(str(tmp_path / "r.zarr"), shape=y.shape, chunks=(8, 40), dtype="float32")
    z[:] = y
    out = contrast_map({1: y, 2: z}, labels, "face")
    assert set(out) == {1, 2}
    assert np.allclose(out[1].t, out[2].t)


def test_bad_inputs():
    y, labels = planted(n_per=5, n_out=40)
    with pytest.raises(InvalidParameterError, match="did you mean 'face'"):
        contrast_map(y, labels, "faces")
    with pytest.raises(InvalidParameterError, match="one label per stimulus"):
        contrast_map(y, labels[:-1], "face")
    with pytest.raises(InvalidParameterError, match="share"):
        contrast_map(y, labels, "face", ["face", "body"])
    assert dice([], []) == 0.0 and dice([1, 2], [2, 3]) == 0.5
    assert roi_agreement([0, 1], {"m": np.array([True, True, False])}) == {"m": 1.0}


def test_multi_axis_outputs_are_flattened():
    """EEG-like (n_stimuli, channels, times) responses: outputs index the flattened trailing shape."""
    from berg.experiments import rsm

    y, labels = planted(n_per=10, n_out=60)
    y3 = y.reshape(len(y), 6, 10)
    assert np.allclose(contrast_map(y3, labels, "face").t, contrast_map(y, labels, "face").t)
    assert np.allclose(rsm(y3, dtype=np.float64), np.corrcoef(y.astype(np.float64)))
    assert np.allclose(
        rsm(y3, outputs=np.arange(12), dtype=np.float64, max_memory=0, block_size=7),
        np.corrcoef(y[:, :12].astype(np.float64)),
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # the untrained-backbone warning, expected here
def test_localizer_on_a_berg_model_and_nifti_t_map(tmp_path):
    """End to end: encode labelled images with a real berg model, t-map, place it on the model's grid."""
    import berg
    from berg.testing.sklearn_toy import GRID, MODEL_ID, build

    synth = build(tmp_path / "synthetic")
    client = berg.BERG(berg_dir=synth.berg_dir, cache_dir=tmp_path / "cache", offline=True, registry=synth.registry)
    model = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")
    rng = np.random.default_rng(0)
    bright = rng.integers(150, 256, size=(12, 64, 64, 3), dtype=np.uint8)  # two visually distinct "categories"
    dark = rng.integers(0, 100, size=(12, 64, 64, 3), dtype=np.uint8)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: threads only contend on a loaded CI box
    try:
        responses = model.encode(np.concatenate([bright, dark]), show_progress=False)
    finally:
        torch.set_num_threads(threads)
    labels = np.repeat(["bright", "dark"], 12)
    c = contrast_map(responses, labels, "bright", "dark")
    y64 = responses.astype(np.float64)
    ref = ttest_ind(y64[:12], y64[12:], equal_var=False)
    assert np.allclose(c.t, ref.statistic, rtol=1e-6)
    img = model.to_nifti(c.t)
    assert img.shape == GRID
    ijk = synth.voxel_ijk[1]
    assert np.allclose(np.asarray(img.dataobj)[tuple(ijk.T)], c.t, rtol=1e-6)
    agreement = c.agreement(model.get_metadata()["rois"], correction="none", tail="two-sided")
    assert set(agreement) == {"A", "B"}
