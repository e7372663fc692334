"""img2fmri's prediction validation: correlation matrix, diagonal statistic, row-shuffle permutations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from berg.errors import InvalidParameterError
from berg.experiments.validation import (
    as_matrix,
    correlation_matrix,
    diagonal_statistic,
    permutation_test,
    plot_validation,
    significance_stars,
    validate_predictions,
)


def _items(rng, n_items=20, n_vox=300, signal=1.0, noise=1.0):
    truth = rng.normal(size=(n_items, n_vox))
    real = signal * truth + noise * rng.normal(size=truth.shape)
    return truth, real


def test_correlation_matrix_is_pearson_across_voxels():
    rng = np.random.default_rng(0)
    p, r = rng.normal(size=(2, 5, 40))
    c = correlation_matrix(p, r)
    assert c.shape == (5, 5)
    assert c[1, 3] == pytest.approx(stats.pearsonr(p[1], r[3])[0])
    with pytest.raises(InvalidParameterError, match="same mask"):
        correlation_matrix(p, r[:, :30])


def test_diagonal_statistic_matches_definition():
    c = np.arange(16.0).reshape(4, 4)
    off = ~np.eye(4, dtype=bool)
    assert diagonal_statistic(c) == pytest.approx(np.diag(c).mean() - c[off].mean())
    with pytest.raises(InvalidParameterError, match="square"):
        diagonal_statistic(c[:3])


def test_permutation_null_equals_explicit_row_shuffles():
    rng = np.random.default_rng(1)
    c = rng.normal(size=(6, 6))
    res = permutation_test(c, n_permutations=50, seed=3)
    # Recompute each shuffled statistic the slow way from the same permutations.
    rows = np.random.default_rng(3).permuted(np.broadcast_to(np.arange(6), (50, 6)), axis=1)
    slow = [diagonal_statistic(c[r]) for r in rows]
    np.testing.assert_allclose(res.null, slow)
    assert res.p_value == (1 + np.sum(np.asarray(slow) >= res.statistic - 1e-12)) / 51
    assert permutation_test(c, n_permutations=50, seed=3).null.tolist() == res.null.tolist()


def test_true_model_is_significant_per_category_and_participant():
    rng = np.random.default_rng(2)
    truth, _ = _items(rng, n_items=30)
    real = {f"sub-{s}": truth + 1.5 * rng.normal(size=truth.shape) for s in (1, 2)}
    groups = np.repeat(["animals", "objects", "scenes"], 10)
    res = validate_predictions(truth, real, groups=groups, n_permutations=2000, seed=0)
    assert set(res) == {f"sub-{s}/{g}" for s in (1, 2) for g in ("animals", "objects", "scenes")}
    assert all(r.p_value < 0.05 and r.statistic > 0 for r in res.values())
    fig = plot_validation(res)
    assert len(fig.axes[0].collections) >= 2


def test_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(4)
    ps = []
    for seed in range(300):
        pred, real = rng.normal(size=(2, 8, 50))  # predictions unrelated to the measurements
        ps.append(permutation_test(correlation_matrix(pred, real), n_permutations=199, seed=seed).p_value)
    ps = np.asarray(ps)
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    assert 0.02 < np.mean(ps < 0.05) < 0.09  # false-positive rate at the nominal 5 %


def test_image_inputs_with_a_mask(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(5)
    mask = np.zeros((6, 6, 5), dtype=np.uint8)
    mask[1:5, 1:5, 1:4] = 1
    vol = rng.normal(size=(6, 6, 5, 7)).astype(np.float32)
    img = nib.Nifti1Image(vol, np.eye(4))
    mimg = nib.Nifti1Image(mask, np.eye(4))
    m = as_matrix(img, mimg)
    assert m.shape == (7, int(mask.sum()))
    np.testing.assert_allclose(m[2], vol[..., 2][mask.astype(bool)], rtol=1e-6)
    with pytest.raises(InvalidParameterError, match="mask="):
        as_matrix(img)
    res = validate_predictions(img, img, mask=mimg, n_permutations=100)
    assert res["all"].p_value == pytest.approx(1 / 101)
    out = res["all"].plot(out_path=tmp_path / "v.png")
    assert (tmp_path / "v.png").stat().st_size > 1000 and out is not None


def test_stars():
    assert [significance_stars(p) for p in (0.00005, 0.0005, 0.005, 0.02, 0.07, 0.5)] == [
        "****",
        "***",
        "**",
        "*",
        "\u2020",
        "",
    ]
