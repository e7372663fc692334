"""Movie dynamics: frame sampling rules, the luminance baseline through the registry, pattern similarity,
boundary-triggered averages with circular-shift permutations (planted effects and the null)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from berg.errors import InvalidParameterError, StimulusError
from berg.experiments.movies import (
    boundary_analysis,
    boundary_triggered_average,
    columns_in_mask,
    group_average,
    make_synthetic_movie,
    pattern_similarity,
    plot_similarity_matrices,
    predict_movie,
    remove_drift,
    similarity_match,
)
from berg.stimuli import decode_video


def _write_indexed_clip(path, n_frames, rate):
    """Frame i: left half grey 16 * (i // 16), right half 16 * (i % 16) (robust to codec rounding)."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=Fraction(rate).limit_denominator(1001))
        s.height, s.width, s.pix_fmt, s.options = 16, 32, "yuv420p", {"qscale": "1"}
        for i in range(n_frames):
            img = np.zeros((16, 32, 3), np.uint8)
            img[:, :16], img[:, 16:] = 16 * (i // 16), 16 * (i % 16)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _index(frames):
    hi = np.round(frames[:, 4:12, 2:14].mean(axis=(1, 2, 3)) / 16).astype(int)
    lo = np.round(frames[:, 4:12, 18:30].mean(axis=(1, 2, 3)) / 16).astype(int)
    return 16 * hi + lo


def test_nearest_frame_rule_is_img2fmris(tmp_path):
    rate = 24000 / 1001  # 23.976 fps
    path = _write_indexed_clip(tmp_path / "c.mp4", 176, rate)  # 7.34 s: samples at 0 .. 7 s
    near, fps, info = decode_video(path, fps=2, rule="nearest", return_info=True)
    last, _, info_last = decode_video(path, fps=2, rule="last", return_info=True)
    t = np.arange(15) / 2.0
    np.testing.assert_array_equal(info["indices"], np.floor(t * rate + 0.5).astype(int))
    np.testing.assert_array_equal(info_last["indices"], np.floor(t * rate + 1e-9).astype(int))
    np.testing.assert_array_equal(_index(near), info["indices"])  # the pixels are those frames
    np.testing.assert_array_equal(_index(last), info_last["indices"])
    assert np.sum(info["indices"] != info_last["indices"]) == 14  # the 14 of 15
    np.testing.assert_allclose(info["times"], info["indices"] / rate, atol=1e-3)
    with pytest.raises(StimulusError, match="nearest"):
        decode_video(path, fps=2, rule="closest")


@pytest.fixture(scope="module")
def luminance(tmp_path_factory):
    import berg

    root = tmp_path_factory.mktemp("lum")
    client = berg.BERG(cache_dir=root / "cache")
    return client.get_encoding_model("fmri-luminance-baseline", subject=1, device="cpu")


def test_luminance_baseline_goes_through_the_registry(luminance):
    assert type(luminance).__name__ == "LuminanceBaseline"
    imgs = np.zeros((2, 40, 40, 3), np.uint8)
    imgs[0, :20] = 255  # top half white
    y = luminance.encode(imgs, show_progress=False)
    assert y.shape == (2, 256) and y.dtype == np.float32
    grid = y[0].reshape(16, 16)
    assert grid[:7].mean() > grid[9:].mean() + 1.0
    # Luma of the normalised channels, exactly: a uniform grey frame gives one value everywhere.
    grey = np.full((1, 30, 30, 3), 128, np.uint8)
    v = (
        np.array([0.2126, 0.7152, 0.0722])
        * ((128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    ).sum()
    np.testing.assert_allclose(luminance.encode(grey, show_progress=False), v, atol=1e-5)


def test_predicted_movie_similarity_shows_the_planted_scenes(luminance, tmp_path):
    bounds = [10.0, 22.0, 31.0]
    movie = make_synthetic_movie(tmp_path / "m.mp4", boundaries=bounds, duration=40.0, fps=24, size=(48, 64))
    resp = predict_movie(luminance, movie, tr=2.0, hrf="afni_gam")
    assert resp.data.shape == (20, 256) and resp.model_id == "fmri-luminance-baseline"
    assert resp.frame_indices.size == 80 and resp.frame_indices[3] == round(1.5 * 24)
    sim = pattern_similarity(resp)
    # Scenes lag by the HRF (~5 s); compare TRs well inside scenes.
    inside = {0: [3, 4, 5], 1: [9, 10, 11], 2: [14, 15], 3: [18, 19]}
    within = np.mean([sim[a, b] for s in inside.values() for a in s for b in s if a != b])
    between = np.mean([sim[a, b] for s1 in inside for s2 in inside if s1 < s2 for a in inside[s1] for b in inside[s2]])
    assert within > between + 0.3
    fig = plot_similarity_matrices({"luminance": sim}, boundaries=bounds, tr=2.0, out_path=tmp_path / "s.pdf")
    assert fig is not None and (tmp_path / "s.pdf").stat().st_size > 1000


def test_similarity_match_and_bta_definitions():
    rng = np.random.default_rng(0)
    a = np.corrcoef(rng.normal(size=(12, 30)))
    b = np.corrcoef(rng.normal(size=(12, 30)))
    m = similarity_match(a, b)
    keep = np.arange(12) != 5
    assert m[5] == pytest.approx(stats.pearsonr(a[5, keep], b[5, keep])[0])
    mb = similarity_match(a, b, band=2)
    sel = [3, 4, 6, 7]
    assert mb[5] == pytest.approx(stats.pearsonr(a[5, sel], b[5, sel])[0])
    series = np.arange(30.0)
    lags, avg = boundary_triggered_average(series, [10.0, 30.0], tr=2.0, window=2, exclude_near=None)
    np.testing.assert_allclose(avg, [(3 + 13) / 2, (4 + 14) / 2, (5 + 15) / 2, (6 + 16) / 2, (7 + 17) / 2])
    # img2fmri's rule: skip lags landing within 2 TRs of *another* boundary (TRs 5 and 9 here):
    # lag +2 of TR 5 is TR 7 (2 from TR 9, skipped), lag -2 of TR 9 is TR 7 (skipped).
    lags, avg = boundary_triggered_average(series, [10.0, 18.0], tr=2.0, window=2, exclude_near=2)
    np.testing.assert_allclose(avg, [3.0, (4 + 8) / 2, (5 + 9) / 2, (6 + 10) / 2, 11.0])
    with pytest.raises(InvalidParameterError, match="outside"):
        boundary_triggered_average(series, [100.0], tr=2.0)


def _planted(rng, n_tr=100, n_vox=60, bounds_tr=(12, 27, 41, 58, 70, 86), effect=True):
    events = np.searchsorted(np.asarray(bounds_tr), np.arange(n_tr), side="right")
    pats = rng.normal(size=(events.max() + 1, n_vox))
    real = pats[events] + 0.8 * rng.normal(size=(n_tr, n_vox))
    model = pats[events] + 0.8 * rng.normal(size=(n_tr, n_vox))
    base = pats[events] + 0.8 * rng.normal(size=(n_tr, n_vox))
    if effect:  # the baseline misses the patterns around boundaries; the model does not
        near = np.min(np.abs(np.arange(n_tr)[:, None] - np.asarray(bounds_tr)[None]), axis=1) <= 1
        base[near] = rng.normal(size=(int(near.sum()), n_vox))
    return model, base, real


def test_boundary_analysis_detects_planted_effect(tmp_path):
    rng = np.random.default_rng(1)
    bounds_tr = (12, 27, 41, 58, 70, 86)
    model, base, real = _planted(rng, bounds_tr=bounds_tr)
    res = boundary_analysis(
        model, base, real, [2.0 * b for b in bounds_tr], tr=2.0, window=4, n_permutations=500, seed=0
    )
    at = {int(k): p for k, p in zip(res.lags, res.p_values)}
    # Shifts of +-1 TR still overlap the 3-TR planted window, so p cannot go far below 2 / 500 * 5.
    assert max(at[-1], at[0], at[1]) < 0.05 and res.difference[res.lags == 0][0] > 0.5
    assert at[-4] > 0.05 and at[4] > 0.05  # far from the boundary nothing was planted
    fig = res.plot(out_path=tmp_path / "bta.png")
    assert fig is not None and (tmp_path / "bta.png").stat().st_size > 1000
    assert res.summary()["n_permutations"] == 500


def test_boundary_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(2)
    ps = []
    for seed in range(200):
        n_tr = 80
        model, base, real = (rng.normal(size=(n_tr, 20)).cumsum(axis=0) for _ in range(3))  # autocorrelated
        bounds = np.sort(rng.choice(np.arange(5, 75), size=5, replace=False)) * 2.0
        res = boundary_analysis(model, base, real, bounds, tr=2.0, window=2, n_permutations=99, seed=seed)
        ps.append(res.p_values[2])
    ps = np.asarray(ps)
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    assert np.mean(ps < 0.05) < 0.1


def test_group_average_and_nifti_inputs():
    import nibabel as nib

    rng = np.random.default_rng(3)
    runs = [rng.normal(loc=s, scale=s + 1, size=(30, 12)) for s in range(3)]
    g = group_average(runs)
    expected = stats.zscore(sum(stats.zscore(r, axis=0) for r in runs), axis=0)
    np.testing.assert_allclose(g, expected)
    mask = np.zeros((4, 4, 3), np.uint8)
    mask.flat[:12] = 1
    vols = []
    for r in runs:
        v = np.zeros((4, 4, 3, 30), np.float32)
        v[mask.astype(bool)] = r.T
        vols.append(nib.Nifti1Image(v, np.eye(4)))
    mimg = nib.Nifti1Image(mask, np.eye(4))
    np.testing.assert_allclose(group_average(vols, mask=mimg), expected, atol=1e-5)
    sim = pattern_similarity(vols[0], mask=mimg)
    np.testing.assert_allclose(sim, np.corrcoef(runs[0]), atol=1e-5)
    assert columns_in_mask(np.array([[0, 0, 0], [3, 3, 2], [9, 9, 9]]), mimg).tolist() == [0]
    # Drift removal takes out the mean and a slow cosine (DCT-II basis) but keeps a 10 s oscillation.
    n = 60
    slow = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    fast = np.sin(2 * np.pi * np.arange(n) * 2.0 / 10.0)
    out = remove_drift((slow + 3.0)[:, None] * np.ones((1, 5)) + fast[:, None], 2.0)
    assert np.corrcoef(out[:, 0], fast)[0, 1] > 0.99 and np.abs(out - fast[:, None]).max() < 0.1


def test_composed_group_map_equals_step_by_step():
    """img2fmri's group map folded into one matmul per batch equals readout -> place -> smooth -> z-score."""
    import torch

    from berg.models.bold5000_resnet18.mni import MNI_SHAPE, GroupMapper, SubjectGeometry

    rng = np.random.default_rng(7)
    func_shape, k = (6, 6, 6), 20
    geometry, readouts = {}, {}
    for s in (1, 2):
        flat = rng.choice(np.prod(func_shape), size=40, replace=False)
        masks = {
            "LHEarlyVis": np.sort(flat[:15]),
            "RHEarlyVis": np.sort(flat[15:30]),
            "LHOPA": np.sort(flat[25:40]),
            "RHOPA": np.sort(flat[30:40]),
        }  # LHOPA overlaps RHEarlyVis: nanmean placement
        blocks, start = [], 0
        for roi in ("EarlyVis", "OPA"):
            for hemi in ("LH", "RH"):
                n = masks[hemi + roi].size
                blocks.append((roi, hemi, start, start + n))
                start += n
        centre = np.ravel_multi_index((45, 54, 45), MNI_SHAPE)
        mni = centre + rng.choice(np.arange(-400, 400), size=60, replace=False)
        geometry[s] = SubjectGeometry(
            func_shape=func_shape,
            blocks=blocks,
            masks=masks,
            mni_index=mni,
            func_index=rng.choice(flat, size=60),
            overlap={h + r: mni[:30] for h in ("LH", "RH") for r in ("EarlyVis", "OPA")},
        )
        readouts[s] = (rng.normal(size=(start, k)), rng.normal(size=start))
    for support in ("v1.0", "v0.2"):
        mapper = GroupMapper(
            geometry,
            {s: np.arange(readouts[s][0].shape[0]) for s in geometry},
            roi_list=["EarlyVis", "OPA"],
            sigma=2.0,
            support=support,
        )
        feats = rng.random((5, k)) * 3
        step = mapper({s: feats @ w.T + b for s, (w, b) in readouts.items()})
        composed = mapper.compose(readouts)(torch.as_tensor(feats))
        np.testing.assert_allclose(composed, step, atol=1e-5)
        assert np.abs(composed - step).max() < 1e-6
        np.testing.assert_allclose(composed.mean(axis=1), 0, atol=1e-6)
        np.testing.assert_allclose(composed.std(axis=1), 1, atol=1e-5)


def test_movie_analysis_from_a_movie_file_and_nifti_runs(luminance, tmp_path):
    """The issue's inputs end to end: movie, TR, boundaries (s), 4-D NIfTIs + mask, dropped volumes.

    The measured data follow the luminance model (plus noise); the baseline is a different model (a
    seeded random ResNet-18 toy), so the analysis must find the planted difference, and swapping the
    two models must flip its sign.
    """
    import nibabel as nib

    from berg.experiments.movies import movie_analysis
    from berg.testing import toy_model

    bounds = [10.0, 22.0, 31.0]
    movie = make_synthetic_movie(tmp_path / "m.mp4", boundaries=bounds, duration=40.0, fps=24, size=(48, 64))
    full = predict_movie(luminance, movie, tr=2.0).data  # the "brain" follows the luminance, plus noise
    rng = np.random.default_rng(8)
    shape = (8, 8, 4)
    mask = nib.Nifti1Image(np.ones(shape, np.uint8), np.eye(4))
    runs = []
    for _ in range(3):
        y = full[2:] + 0.05 * rng.normal(size=full[2:].shape)  # two volumes dropped by the "study"
        runs.append(nib.Nifti1Image(y.T.reshape(shape + (y.shape[0],)).astype(np.float32), np.eye(4)))
    toy = toy_model(tmp_path / "toy", "flat", subjects=[1], n_outputs=40)
    other = toy.client().get_encoding_model(toy.model_id, subject=1, backbone_weights="untrained")
    kwargs = dict(mask=mask, n_drop=2, window=2, n_permutations=50)
    res = movie_analysis(luminance, other, movie, 2.0, bounds, runs, **kwargs)
    assert res.real.shape == (18, 256) and res.model.data.shape == (18, 256)
    b = res.boundaries
    # The measured data are the luminance prediction plus noise: that model matches, the other one less.
    assert b.model_match.mean() > 0.8
    assert b.model_match.mean() - b.baseline_match.mean() > 0.1
    assert b.difference.mean() > 0.05
    assert b.boundaries_tr.tolist() == [3, 9, 14]  # 10, 22, 31 s minus the 4 s dropped, / 2 s
    swapped = movie_analysis(other, luminance, movie, 2.0, bounds, runs, **kwargs).boundaries
    np.testing.assert_allclose(swapped.difference, -b.difference, atol=1e-9)
    assert res.plot() is not None
