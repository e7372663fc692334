"""Kernel GLMs on synthetic 4-D BOLD with planted responses, motion confounds and noise (nilearn and batched)."""

from __future__ import annotations

import numpy as np
import pytest

from berg.errors import InvalidParameterError
from berg.experiments.glm import (
    batched_kernel_glm,
    first_level_kernel_glm,
    friston24,
    group_kernel_test,
    group_t_test,
    kernel_regressors,
    kernels_reaching,
    layer_summary,
    plot_layer_summary,
    threshold_mask,
)

SHAPE = (8, 8, 6)
N_TR, TR = 90, 2.0


def _mask_img():
    import nibabel as nib

    return nib.Nifti1Image(np.ones(SHAPE, np.uint8), np.diag([3.0, 3.0, 3.0, 1.0]))


def _regions():
    """Voxel labels: 1 = planted for kernel 0, 2 = planted for kernel 1, 0 = nothing."""
    lab = np.zeros(SHAPE, np.int64)
    lab[1:4, 1:4, 1:3] = 1
    lab[5:8, 4:7, 3:5] = 2
    return lab.ravel()


def _subject(rng, kernels, planted=True, motion_effect=1.0, amplitude=0.8):
    """One participant: (bold (n_tr, n_vox), fMRIPrep-style confounds DataFrame, 4-D image)."""
    import nibabel as nib
    import pandas as pd

    lab = _regions()
    reg = kernel_regressors(kernels, TR)
    motion = rng.normal(scale=0.05, size=(N_TR, 6)).cumsum(axis=0)
    table = pd.DataFrame(motion, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"])
    table["trans_x_derivative1"] = table["trans_x"].diff()  # fMRIPrep's n/a first row
    y = rng.normal(size=(N_TR, lab.size))
    y += motion_effect * motion @ rng.normal(size=(6, lab.size))  # motion artefacts everywhere
    if planted:
        y[:, lab == 1] += amplitude * reg[:, [0]]
        y[:, lab == 2] += amplitude * reg[:, [1]]
    img = nib.Nifti1Image(y.T.reshape(SHAPE + (N_TR,)).astype(np.float32), _mask_img().affine)
    return y, table, img


@pytest.fixture(scope="module")
def kernels():
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(rng.normal(size=(N_TR, 4)), 2.0, axis=0)  # smooth, like feature series


def test_friston24_uses_and_completes_fmriprep_columns():
    import pandas as pd

    rng = np.random.default_rng(1)
    m = rng.normal(size=(20, 6))
    df = pd.DataFrame(m, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"])
    df["trans_x_derivative1"] = 7.0  # a column fMRIPrep computed is taken as is
    df.loc[0, "trans_x_derivative1"] = np.nan
    f = friston24(df)
    assert f.shape == (20, 24) and not f.isna().any().any()
    assert (f["trans_x_derivative1"].iloc[1:] == 7.0).all() and f["trans_x_derivative1"].iloc[0] == 0
    np.testing.assert_allclose(f["rot_z_derivative1"].iloc[1:], np.diff(m[:, 5]))
    np.testing.assert_allclose(f["trans_y_derivative1_power2"].iloc[1:], np.diff(m[:, 1]) ** 2)
    np.testing.assert_allclose(f["rot_x_power2"], m[:, 3] ** 2)
    with pytest.raises(InvalidParameterError, match="trans_z"):
        friston24(df.drop(columns=["trans_z"]))


def test_regressors_are_nilearns(kernels):
    from nilearn.glm.first_level import compute_regressor

    reg = kernel_regressors(kernels, TR)
    x = (kernels[:, 2] - kernels[:, 2].mean()) / kernels[:, 2].std()
    ft = np.arange(N_TR) * TR
    cond = np.vstack([ft, np.full(N_TR, TR), x])
    ref = compute_regressor(cond, "spm", ft, oversampling=50)[0][:, 0]
    np.testing.assert_allclose(reg[:, 2], ref, atol=1e-10)


def test_batched_glm_equals_nilearn_first_level(kernels):
    from nilearn.maskers import NiftiMasker

    rng = np.random.default_rng(2)
    y, table, img = _subject(rng, kernels)
    conf = friston24(table)
    batched = batched_kernel_glm(img, kernels, TR, confounds=conf, mask_img=_mask_img())
    masker = NiftiMasker(_mask_img()).fit()
    for k in (0, 3):
        eff = first_level_kernel_glm(
            [img], kernels, TR, kernel=k, confounds=[conf], mask_img=_mask_img(), noise_model="ols"
        )[0]
        stat = first_level_kernel_glm(
            [img], kernels, TR, kernel=k, confounds=[conf], mask_img=_mask_img(), noise_model="ols", output_type="stat"
        )[0]
        np.testing.assert_allclose(batched.beta[k], np.ravel(masker.transform(eff)), atol=1e-5)
        np.testing.assert_allclose(batched.t[k], np.ravel(masker.transform(stat)), atol=1e-4)
    assert batched.dof == N_TR - (24 + conf_drift_columns() + 1) - 1


def conf_drift_columns() -> int:
    from berg.experiments.glm import confound_design

    return sum(c.startswith("drift") for c in confound_design(N_TR, TR).columns)


@pytest.mark.slow
def test_nilearn_path_finds_planted_voxels_at_the_group_level(kernels):
    rng = np.random.default_rng(3)
    subs = [_subject(rng, kernels) for _ in range(6)]
    eff = first_level_kernel_glm(
        [s[2] for s in subs], kernels, TR, kernel=0, confounds=[friston24(s[1]) for s in subs], mask_img=_mask_img()
    )  # AR(1)
    res = group_kernel_test(eff, mask_img=_mask_img(), height_control="fpr", alpha=0.001)
    sig = np.asarray(res.thresholded.dataobj).ravel() != 0
    lab = _regions()
    assert sig[lab == 1].mean() > 0.9
    assert sig[lab != 1].sum() <= 3  # 276 null voxels at p < 0.001
    fdr = group_kernel_test(eff, mask_img=_mask_img(), height_control="fdr", alpha=0.05)
    assert fdr.n_significant >= (lab == 1).sum() * 0.9
    fig = res.plot(kind="stat")
    assert fig is not None


def test_batched_group_finds_planted_voxels_and_per_layer_summary(kernels, tmp_path):
    rng = np.random.default_rng(4)
    betas = []
    for _ in range(6):
        y, table, _ = _subject(rng, kernels)
        betas.append(batched_kernel_glm(y, kernels, TR, confounds=friston24(table)).beta)
    names = ["conv1_1:0", "conv1_1:1", "conv5_3:0", "conv5_3:1"]
    g = group_t_test(betas, kernel_names=names)
    sig = g.significant(height_control="fpr", alpha=0.001)
    lab = _regions()
    assert sig[0, lab == 1].mean() > 0.9 and sig[1, lab == 2].mean() > 0.9
    assert sig[0, lab != 1].sum() + sig[1, lab != 2].sum() + sig[2:].sum() <= 5
    summary = layer_summary(sig, lab, region_names={1: "V1", 2: "PCC"}, kernel_names=names, min_voxels=3)
    assert summary.loc["conv1_1", "V1"] == 1 and summary.loc["conv1_1", "PCC"] == 1
    assert summary.loc["conv5_3"].sum() == 0
    assert kernels_reaching(sig, lab, 2, kernel_names=names, min_voxels=3) == ["conv1_1:1"]
    assert plot_layer_summary(summary, out_path=tmp_path / "layers.png") is not None


def test_false_positive_rate_under_the_null(kernels):
    """No planted effect, motion artefacts in the data: p < 0.05 flags ~5 % of voxels, FDR almost never."""
    rng = np.random.default_rng(5)
    rates, any_fdr = [], 0
    for _ in range(8):
        betas = []
        for _ in range(5):
            y, table, _ = _subject(rng, kernels, planted=False, motion_effect=3.0)
            betas.append(batched_kernel_glm(y, kernels, TR, confounds=friston24(table)).beta)
        g = group_t_test(betas)
        rates.append(g.significant(height_control="fpr", alpha=0.05).mean())
        any_fdr += int(g.significant(height_control="fdr", alpha=0.05).any(axis=1).sum())
    rate = float(np.mean(rates))
    assert 0.035 < rate < 0.065, rate
    assert any_fdr <= 3  # 32 null maps, FDR 0.05 controls the familywise rate under the global null


def test_threshold_mask_rules():
    from scipy import stats

    z = np.array([[stats.norm.isf(0.0005), stats.norm.isf(0.002), -5.0]])
    assert threshold_mask(z, alpha=0.001).tolist() == [[True, False, False]]
    assert threshold_mask(z, alpha=0.001, two_sided=True).tolist() == [[False, False, True]]
    with pytest.raises(InvalidParameterError, match="fdr"):
        threshold_mask(z, height_control="holm")
