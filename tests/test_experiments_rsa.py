"""Blocked RSMs and RSM comparisons (berg.experiments.rsa)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from berg.errors import InvalidParameterError
from berg.experiments import batch_rsm_correlation, compare_rsms, rsa_noise_ceiling, rsm, rsm_correlation


@pytest.mark.parametrize("block_size", [3, 7, 64, 1000])
def test_blocked_rsm_equals_corrcoef(block_size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((97, 31)) * rng.uniform(0.1, 5, (97, 1)) + rng.uniform(-3, 3, (97, 1))
    ref = np.corrcoef(x)
    r64 = rsm(x, block_size=block_size, dtype=np.float64, device="cpu")
    assert np.allclose(r64, ref, atol=1e-12)
    r32 = rsm(x, block_size=block_size, device="cpu")
    assert r32.dtype == np.float32 and np.abs(r32 - ref).max() < 1e-6
    assert np.array_equal(r32, r32.T) and (np.diag(r32) == 1).all()


def test_rsm_outputs_constant_rows_and_streaming(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 40))
    x[3] = 2.0  # constant pattern: NaN row and column, as np.corrcoef
    cols = np.arange(5, 35)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.corrcoef(x[:, cols])
    r = rsm(x, outputs=cols, dtype=np.float64, block_size=16)
    assert np.array_equal(np.isnan(r), np.isnan(ref))
    assert np.allclose(r[~np.isnan(r)], ref[~np.isnan(ref)])
    # max_memory=0: standardised rows are re-read per block; out= a memmap on disk
    out = np.lib.format.open_memmap(tmp_path / "rsm.npy", mode="w+", dtype=np.float64, shape=(60, 60))
    got = rsm(x, outputs=cols, dtype=np.float64, block_size=16, max_memory=0, out=out)
    assert got is out
    assert np.allclose(np.nan_to_num(np.asarray(out)), np.nan_to_num(ref))


def test_rsm_from_zarr_into_zarr(tmp_path):
    zarr = pytest.importorskip("zarr")
    x = np.random.default_rng(2).standard_normal((50, 20)).astype(np.float32)
    src = zarr.create_array(str(tmp_path / "x.zarr"), shape=x.shape, chunks=(16, 20), dtype="float32")
    src[:] = x
    dst = zarr.create_array(str(tmp_path / "rsm.zarr"), shape=(50, 50), chunks=(16, 16), dtype="float32")
    rsm(src, block_size=16, out=dst, max_memory=0)
    assert np.abs(dst[:] - np.corrcoef(x.astype(np.float64))).max() < 1e-6


def test_rsm_matches_pairwise_pearsonr():
    x = np.random.default_rng(3).standard_normal((12, 25))
    r = rsm(x, dtype=np.float64)
    for i in range(12):
        for j in range(i):
            assert r[i, j] == pytest.approx(pearsonr(x[i], x[j])[0], abs=1e-12)


def test_rsm_correlation_and_batches():
    rng = np.random.default_rng(4)
    a = rsm(rng.standard_normal((40, 10)), dtype=np.float64)
    b = rsm(rng.standard_normal((40, 10)), dtype=np.float64)
    i, j = np.tril_indices(40, -1)
    assert rsm_correlation(a, b) == pytest.approx(pearsonr(a[i, j], b[i, j])[0])
    assert rsm_correlation(a, b, method="spearman") == pytest.approx(spearmanr(a[i, j], b[i, j])[0])
    assert rsm_correlation(a, a) == pytest.approx(1.0)
    batches = np.array([rng.choice(40, 8, replace=False) for _ in range(30)])
    got = batch_rsm_correlation(a, b, batches, chunk=7)
    ti, tj = np.tril_indices(8, -1)
    for s, bt in zip(got, batches):  # RNC's evaluate: one pearsonr per batch
        va, vb = a[np.ix_(bt, bt)][ti, tj], b[np.ix_(bt, bt)][ti, tj]
        assert s == pytest.approx(pearsonr(va, vb)[0])
    assert rsm_correlation(a, b, stimuli=batches[0]) == pytest.approx(got[0])
    with pytest.raises(InvalidParameterError, match="method"):
        rsm_correlation(a, b, method="kendall")


def test_noise_ceiling_brackets_the_true_model():
    """Subjects = true geometry + noise: the true RSM's mean correlation lies within the ceiling."""
    rng = np.random.default_rng(5)
    truth = rng.standard_normal((60, 30))
    true_rsm = rsm(truth, dtype=np.float64)
    subjects = {s: rsm(truth + 1.5 * rng.standard_normal((60, 30)), dtype=np.float64) for s in range(8)}
    nc = rsa_noise_ceiling(subjects)
    res = compare_rsms(true_rsm, subjects)
    assert nc.lower < nc.upper
    assert nc.lower - 0.02 <= res.r <= nc.upper + 0.02
    assert res.fraction_of_ceiling == pytest.approx(res.r / nc.lower)
    # an unrelated model is far below the ceiling
    other = rsm(rng.standard_normal((60, 30)), dtype=np.float64)
    assert compare_rsms(other, subjects).fraction_of_ceiling < 0.3
    # per-subject pairing of two dicts
    paired = compare_rsms(subjects, subjects, noise_ceiling=False)
    assert paired.r == pytest.approx(1.0) and paired.noise_ceiling is None
    with pytest.raises(InvalidParameterError, match="at least 2"):
        rsa_noise_ceiling([true_rsm])


def test_bad_inputs():
    with pytest.raises(InvalidParameterError, match="n_stimuli, n_outputs"):
        rsm(np.zeros(5))
    with pytest.raises(InvalidParameterError, match="at least 2 outputs"):
        rsm(np.zeros((5, 5)), outputs=[1])
    with pytest.raises(InvalidParameterError, match="square"):
        rsm_correlation(np.zeros((3, 4)), np.zeros((3, 4)))


@pytest.mark.slow
def test_guide_examples_run_as_written():
    """Every python block of docs/guide/experiments.md runs, in a fresh namespace each."""
    import re
    from pathlib import Path

    torch = pytest.importorskip("torch")
    page = Path(__file__).resolve().parents[1] / "docs" / "guide" / "experiments.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 6
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; threads only contend on a loaded CI box
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{page.name}[block {i}]", "exec"), {"__name__": f"docs_block_{i}"})
    finally:
        torch.set_num_threads(threads)
