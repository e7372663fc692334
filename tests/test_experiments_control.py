"""Relational neural control on synthetic responses with planted structure (berg.experiments.control)."""

from __future__ import annotations

import numpy as np
import pytest

from berg.errors import InvalidParameterError
from berg.experiments import (
    multivariate_control,
    null_baseline,
    rank_conditions,
    rsm,
    univariate_control,
    univariate_responses,
)
from berg.experiments.control import genetic_search, random_batches

ROIS = {"A": np.arange(0, 20), "B": np.arange(20, 40)}


def planted_univariate(n=600, n_sub=4, seed=0, drive=1.0, noise=0.5):
    """ROI A follows stimulus attribute ``a``, ROI B follows an unrelated attribute ``b``."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    responses = {}
    for s in range(1, n_sub + 1):
        y = noise * rng.standard_normal((n, 45))
        y[:, ROIS["A"]] += drive * a[:, None]
        y[:, ROIS["B"]] += drive * b[:, None]
        responses[s] = y.astype(np.float32)
    return responses, a, b


def test_random_batches_are_distinct_and_uniform():
    rng = np.random.default_rng(0)
    for n, k in [(50, 10), (30, 25), (1000, 3)]:  # both the rejection and the partition regime
        b = random_batches(rng, n, k, 4000)
        assert b.shape == (4000, k)
        assert (np.diff(b, axis=1) > 0).all()  # sorted and without repeats
        counts = np.bincount(b.ravel(), minlength=n)
        expected = 4000 * k / n
        from scipy.stats import chisquare

        assert chisquare(counts, np.full(n, expected)).pvalue > 1e-3


def test_null_baseline_is_the_batch_closest_to_the_null_mean():
    rng = np.random.default_rng(1)
    scores = rng.gamma(2.0, size=300)
    base = null_baseline(scores, batch_size=10, n_null=5000, seed=3)
    # recompute the null distribution independently from the same seeded batches
    from berg.experiments.control import _null_search

    null, _, _ = _null_search(lambda b: scores[b].mean(1), 300, 10, 5000, 3)
    assert base.score == pytest.approx(scores[base.indices].mean())
    assert abs(base.score - null.mean()) == pytest.approx(np.abs(null - null.mean()).min())
    assert base.null_mean == pytest.approx(null.mean())
    # RNC's null mean is the expected batch mean: the population mean
    assert base.null_mean == pytest.approx(scores.mean(), abs=4 * scores.std() / np.sqrt(10 * 5000))
    # same seed -> same baseline; another seed -> another batch
    assert np.array_equal(null_baseline(scores, batch_size=10, n_null=5000, seed=3).indices, base.indices)
    assert not np.array_equal(null_baseline(scores, batch_size=10, n_null=5000, seed=4).indices, base.indices)


def _rnc_ranking(r1, r2, b, margin, n):
    """gifale95/RNC 02_univariate_rnc.py, written as the script does it (NaN masking)."""
    out = {}
    for name, key, hi1, hi2 in [
        ("high_high", r1 + r2, True, True),
        ("low_low", -(r1 + r2), False, False),
        ("high_low", r1 - r2, True, False),
        ("low_high", -(r1 - r2), False, True),
    ]:
        order = np.argsort(key)[::-1].astype(float)
        o = order.astype(int)
        bad1 = (r1[o] < b[0] + margin) if hi1 else (r1[o] > b[0] - margin)
        bad2 = (r2[o] < b[1] + margin) if hi2 else (r2[o] > b[1] - margin)
        order[bad1 | bad2] = np.nan
        out[name] = order[~np.isnan(order)][:n].astype(int)
    return out


def test_rank_conditions_match_rnc():
    rng = np.random.default_rng(2)
    r1, r2 = rng.standard_normal(500), rng.standard_normal(500)
    got = rank_conditions(r1, r2, (0.1, -0.2), margin=0.3, n_images=25)
    ref = _rnc_ranking(r1, r2, (0.1, -0.2), 0.3, 25)
    for c in ref:
        assert np.array_equal(got[c], ref[c]), c


def test_univariate_responses_mean_over_roi_and_ncsnr():
    responses, _, _ = planted_univariate(n=50, n_sub=2)
    ncsnr = np.linspace(0, 1, 45)
    uni = univariate_responses(responses, ROIS, ncsnr=ncsnr, ncsnr_threshold=0.3, block_rows=7)
    keep = ROIS["A"][ncsnr[ROIS["A"]] > 0.3]
    assert np.allclose(uni[1]["A"], responses[1][:, keep].astype(np.float64).mean(1))
    assert np.allclose(uni[2]["B"], responses[2][:, ROIS["B"]].astype(np.float64).mean(1))
    with pytest.raises(InvalidParameterError, match="ncsnr"):
        univariate_responses(responses, ROIS, ncsnr=ncsnr, ncsnr_threshold=2.0)
    with pytest.raises(InvalidParameterError, match="valid ROIs"):
        univariate_responses(responses, ROIS, ["V1"])


def test_univariate_voxel_selection_from_the_models_reliability():
    """ncsnr=model: each subject's NCSNR comes from model.reliability(subject), never from metadata keys."""
    from berg.core.contract import BaseModelInterface
    from berg.core.reliability import Reliability

    responses, _, _ = planted_univariate(n=50, n_sub=2)
    per_subject = {1: np.linspace(0, 1, 45), 2: np.linspace(1, 0, 45)}

    class Reliable(BaseModelInterface):
        model_id, subjects = "reliable", [1, 2]

        @classmethod
        def load(cls, request):
            raise NotImplementedError

        def encode(self, stimulus, *, show_progress=True):
            raise NotImplementedError

        def get_metadata(self):
            return {}

        def provenance(self):
            return {}

        def reliability(self, subject=None):
            return Reliability.from_ncsnr(per_subject[subject], 3, "test")

    uni = univariate_responses(responses, ROIS, ncsnr=Reliable(), ncsnr_threshold=0.3)
    for s in (1, 2):
        keep = ROIS["A"][per_subject[s][ROIS["A"]] > 0.3]
        assert np.allclose(uni[s]["A"], responses[s][:, keep].astype(np.float64).mean(1))
    assert not np.allclose(uni[1]["A"], univariate_responses(responses, ROIS)[1]["A"])  # the selection bites


def test_univariate_control_recovers_planted_attribute():
    responses, a, b = planted_univariate()
    res = univariate_control(
        responses,
        ROIS,
        roi_pair=("A", "B"),
        n_images=20,
        margin=0.1,
        n_null=20_000,
        n_permutations=2000,
        n_bootstrap=1000,
        seed=0,
    )
    idx = res.chosen_indices
    # ROI A is driven by `a` only: its high conditions pick high-`a` stimuli, its low ones low-`a`
    for cond in ("high_high", "high_low"):
        assert len(idx[cond]) == 20 and a[idx[cond]].mean() > 1.0
    for cond in ("low_low", "low_high"):
        assert len(idx[cond]) == 20 and a[idx[cond]].mean() < -1.0
    assert b[idx["high_high"]].mean() > 1.0 and b[idx["high_low"]].mean() < -1.0
    # baselines sit at the population mean
    assert abs(res.baseline[0].score - res.univariate[1]["A"].mean()) < 0.05
    ev = res.evidence
    assert ev is not None and ev.subjects == [1, 2, 3, 4]
    # held-out subjects confirm every condition, in the right direction, significantly
    for cond, (d1, d2) in {"high_high": (1, 1), "low_low": (-1, -1), "high_low": (1, -1), "low_high": (-1, 1)}.items():
        diff = ev.test[cond] - ev.baseline
        assert (np.sign(diff) == [d1, d2]).all(), cond
        assert ev.significant[cond].all(), cond
        assert (ev.p_between[cond] < 0.05).all()
    assert ev.ci["high_high"][0, 0] > ev.ci["baseline"][1, 0]


def test_univariate_control_without_structure_is_not_significant():
    rng = np.random.default_rng(5)
    # independent noise per subject: choices on other subjects cannot generalise
    responses = {s: rng.standard_normal((400, 40)).astype(np.float32) for s in range(1, 6)}
    res = univariate_control(
        responses,
        ROIS,
        roi_pair=("A", "B"),
        n_images=15,
        margin=0.0,
        n_null=5000,
        n_permutations=1000,
        n_bootstrap=500,
        seed=1,
    )
    p = np.concatenate([res.evidence.p_within[c].ravel() for c in res.evidence.p_within])
    assert np.mean(p < 0.05) <= 0.15
    assert not any(res.evidence.significant[c].all() for c in res.evidence.significant)


def test_univariate_control_reads_zarr_in_blocks(tmp_path):
    zarr = pytest.importorskip("zarr")
    responses, _, _ = planted_univariate(n=120, n_sub=2)
    stores = {}
    for s, y in responses.items():
        z = zarr.create_array(str(tmp_path / f"s{s}.zarr"), shape=y.shape, chunks=(32, 45), dtype="float32")
        z[:] = y
        stores[s] = z
    ids = np.array([f"img{i:03d}" for i in range(120)])
    kw = dict(roi_pair=("A", "B"), n_images=5, margin=0.05, n_null=2000, stimulus_ids=ids, cross_validate=False)
    from_zarr = univariate_control(stores, ROIS, **kw)
    in_memory = univariate_control(responses, ROIS, **kw)
    for c in from_zarr.chosen:
        assert np.array_equal(from_zarr.chosen[c], in_memory.chosen[c])
        assert from_zarr.chosen[c].dtype.kind == "U"


def test_univariate_control_bad_parameters():
    responses, _, _ = planted_univariate(n=30, n_sub=1)
    with pytest.raises(InvalidParameterError, match="roi_pair"):
        univariate_control(responses, ROIS, roi_pair=("A", "A"))
    with pytest.raises(InvalidParameterError, match="univariate"):
        univariate_control(roi_pair=("A", "B"))
    with pytest.raises(InvalidParameterError, match="same stimuli"):
        univariate_control({1: np.zeros((5, 45)), 2: np.zeros((6, 45))}, ROIS, roi_pair=("A", "B"))


def planted_rsms(n=150, planted=30, n_sub=3, seed=0):
    """ROI B shares ROI A's geometry on `planted` stimuli only; elsewhere the two are independent."""
    rng = np.random.default_rng(seed)
    base_a = rng.standard_normal((n, 30))
    base_b = rng.standard_normal((n, 30))
    shared = rng.choice(n, planted, replace=False)
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    base_b[shared] = base_a[shared] @ q  # rotation: same pairwise correlations
    rsms_a, rsms_b = {}, {}
    for s in range(1, n_sub + 1):
        rsms_a[s] = rsm(base_a + 0.3 * rng.standard_normal((n, 30)), dtype=np.float64)
        rsms_b[s] = rsm(base_b + 0.3 * rng.standard_normal((n, 30)), dtype=np.float64)
    return rsms_a, rsms_b, shared


def test_genetic_search_finds_planted_alignment():
    rsms_a, rsms_b, shared = planted_rsms()
    a, b = rsms_a[1], rsms_b[1]
    best, score, history = genetic_search(a, b, condition="align", n_images=15, population=20, generations=40, seed=0)
    from berg.experiments.rsa import batch_rsm_correlation

    random_scores = batch_rsm_correlation(a, b, random_batches(np.random.default_rng(9), 150, 15, 2000))
    assert score > np.percentile(random_scores, 99.9) and score > 0.6
    assert np.isin(best, shared).mean() > 0.8
    assert (np.diff(history) >= -1e-12).all()  # elitism: the best never gets worse
    assert score == pytest.approx(batch_rsm_correlation(a, b, best[None])[0])
    best_d, score_d, _ = genetic_search(a, b, condition="disentangle", n_images=15, population=20, generations=20)
    assert abs(score_d) < np.percentile(np.abs(random_scores), 1)


def test_multivariate_control_cross_validated():
    rsms_a, rsms_b, shared = planted_rsms(n_sub=3)
    res = multivariate_control(
        rsms_a,
        rsms_b,
        n_images=15,
        population=16,
        generations=25,
        n_null=3000,
        n_permutations=2000,
        n_bootstrap=500,
        seed=0,
    )
    assert res.scores["align"] > res.baseline.score + 0.3
    assert abs(res.scores["disentangle"]) < 0.05
    ev = res.evidence
    assert (ev.test["align"] > ev.baseline + 0.3).all()
    assert (ev.p_within["align"] < 0.01).all() and ev.significant["align"].all()
    assert ev.ci["align"][0] > ev.ci["baseline"][1]
    assert len(res.history["align"]) == 25


def test_multivariate_control_from_responses_via_roi_rsms():
    from berg.experiments import roi_rsms

    rng = np.random.default_rng(7)
    n = 80
    shared = rng.standard_normal((n, 20))
    responses = {}
    for s in (1, 2):
        y = rng.standard_normal((n, 40))
        y[:20, :20] = shared[:20] + 0.2 * rng.standard_normal((20, 20))  # ROI A and B agree on stimuli 0-19
        y[:20, 20:40] = shared[:20] @ np.linalg.qr(rng.standard_normal((20, 20)))[0]
        responses[s] = y
    ncsnr = np.ones(40)
    a = roi_rsms(responses, ROIS, "A", ncsnr=ncsnr, ncsnr_threshold=0.5, dtype=np.float64)
    b = roi_rsms(responses, ROIS, "B", dtype=np.float64)
    assert set(a) == {1, 2} and np.allclose(a[1], np.corrcoef(responses[1][:, :20]))
    res = multivariate_control(
        a,
        b,
        conditions=("align",),
        n_images=10,
        population=10,
        generations=15,
        n_null=500,
        cross_validate=False,
        stimulus_ids=[f"s{i}" for i in range(n)],
    )
    assert res.evidence is None
    assert np.mean([int(i[1:]) < 20 for i in res.chosen["align"]]) > 0.7


def test_univariate_responses_with_missing_outputs():
    rng = np.random.default_rng(8)
    y = rng.standard_normal((30, 45))
    y[3, :5] = np.nan  # missing outputs in one stimulus (RNC: nanmean)
    y[4, ROIS["B"]] = np.nan  # a stimulus with no valid output in ROI B
    rois = {"A": ROIS["A"], "B": ROIS["B"], "AB": np.arange(10, 30)}  # overlapping ROIs
    uni = univariate_responses(y, rois, block_rows=4)[None]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for r, idx in rois.items():
                assert np.allclose(uni[r], np.nanmean(y[:, idx], axis=1), equal_nan=True), r
    assert np.isnan(uni["B"][4]) and np.isfinite(uni["A"][3])


def test_plots(tmp_path):
    from berg.experiments import plot_multivariate_control, plot_univariate_control

    responses, _, _ = planted_univariate(n=200, n_sub=2)
    res = univariate_control(
        responses, ROIS, roi_pair=("A", "B"), n_images=5, margin=0.05, n_null=500, cross_validate=False
    )
    fig = plot_univariate_control(res, max_points=100, out_path=tmp_path / "uni.pdf")
    ax = fig.axes[0]
    assert len(ax.collections) == 5 and ax.get_xlabel().startswith("A")  # background + 4 conditions
    assert (tmp_path / "uni.pdf").read_bytes()[:4] == b"%PDF"
    rsms_a, rsms_b, _ = planted_rsms(n=60, planted=15, n_sub=1)
    mres = multivariate_control(rsms_a, rsms_b, n_images=8, population=6, generations=4, n_null=200)
    fig = plot_multivariate_control(mres, out_path=tmp_path / "multi.png")
    assert len(fig.axes[0].lines) == 3
    assert (tmp_path / "multi.png").read_bytes()[:4] == b"\x89PNG"
