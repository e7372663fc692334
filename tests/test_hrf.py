"""HRFs (AFNI GAM here, SPM/Glover from nilearn), convolution and TR resampling on the exact time axis."""

import numpy as np
import pytest
from scipy import stats

from berg.errors import InvalidParameterError
from berg.hrf import (
    afni_gam,
    average_to_tr,
    convolve_hrf,
    glover_hrf,
    hrf,
    hrf_kernel,
    resample_to_tr,
    spm_hrf,
)


def test_hrf_shapes():
    t = np.arange(0, 30, 0.01)
    assert t[np.argmax(afni_gam(t))] == pytest.approx(8.6 * 0.547, abs=0.01)
    assert afni_gam(np.array([8.6 * 0.547]))[0] == pytest.approx(1.0)
    assert 4.5 < t[np.argmax(spm_hrf(t))] < 5.5 and spm_hrf(t).min() < 0
    assert 4.8 < t[np.argmax(glover_hrf(t))] < 5.8 and glover_hrf(t).max() == pytest.approx(1, abs=1e-3)
    with pytest.raises(InvalidParameterError, match="afni_gam"):
        hrf("boynton", t)
    with pytest.raises(InvalidParameterError, match="Did you mean 'spm'"):
        hrf("spn", t)


def test_afni_gam_is_a_scaled_gamma_density():
    # AFNI's GAM(p, q) is the gamma density of shape p + 1 and scale q, scaled to peak 1.
    t = np.linspace(0.01, 25, 500)
    ref = stats.gamma.pdf(t, 8.6 + 1, scale=0.547)
    np.testing.assert_allclose(afni_gam(t), ref / stats.gamma.pdf(8.6 * 0.547, 9.6, scale=0.547), rtol=1e-10)


def test_spm_and_glover_are_nilearns():
    from nilearn.glm.first_level import glover_hrf as nl_glover
    from nilearn.glm.first_level import spm_hrf as nl_spm

    for ours, theirs in ((spm_hrf, nl_spm), (glover_hrf, nl_glover)):
        ref = theirs(t_r=1.0, oversampling=10, time_length=32.0)
        # nilearn's grid is linspace(0, 32, n) with the gamma densities starting one fine step (dt) late.
        grid = np.linspace(0, 32.0, ref.size) - 0.1 + 0.005
        np.testing.assert_allclose(ours(grid), ref / ref.max(), atol=2e-3)
    # SPM's textbook definition (gamma shapes 6 and 16, undershoot 1/6), written out independently.
    t = np.arange(0, 32, 0.1)
    spm = stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6
    np.testing.assert_allclose(spm_hrf(t), spm / spm.max(), atol=5e-3)


@pytest.mark.parametrize("kind", ["spm", "glover"])
def test_convolution_agrees_with_nilearn_glm_regressors(kind):
    """Where berg and nilearn overlap (an HRF-convolved boxcar), they agree up to scale."""
    from nilearn.glm.first_level import compute_regressor

    rate = 50.0
    ft = np.arange(int(200 * rate)) / rate
    x = (((ft >= 20) & (ft < 30)) | ((ft >= 100) & (ft < 105))).astype(float)
    cond = np.vstack([[20.0, 100.0], [10.0, 5.0], [1.0, 1.0]])
    reg = compute_regressor(cond, kind, ft, oversampling=5)[0][:, 0]  # 50 would take minutes (O(n^2) convolve)
    ours = convolve_hrf(x, rate, kind=kind)
    scale = reg @ ours / (ours @ ours)
    assert np.abs(reg - scale * ours).max() < 3e-3 * reg.max()
    # nilearn's kernel has unit sum, ours is the Riemann sum of a unit-peak HRF: scale = 1 / integral.
    assert scale == pytest.approx(1.0 / hrf_kernel(kind, 1000.0).sum(), rel=1e-2)


def test_convolution_of_impulse_is_the_kernel():
    rate = 2.0
    x = np.zeros((60, 2))
    x[4, 0] = 1.0
    y = convolve_hrf(x, rate)
    t = (np.arange(60) - 4) / rate
    np.testing.assert_allclose(y[:, 0], afni_gam(t) / rate, atol=1e-12)
    assert np.all(np.abs(y[:, 1]) < 1e-15)


def test_convolution_is_linear_and_keeps_shape():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 80, 3, 4))
    np.testing.assert_allclose(
        convolve_hrf(2 * a + b, 2.0, kind="spm"),
        2 * convolve_hrf(a, 2.0, kind="spm") + convolve_hrf(b, 2.0, kind="spm"),
        atol=1e-10,
    )
    assert convolve_hrf(a, 2.0).shape == a.shape


def test_resample_to_tr_keeps_time():
    rate, tr = 2.0, 1.5
    t = np.arange(40) / rate
    series = np.sin(t)[:, None, None] * np.ones((1, 2, 3))
    out = resample_to_tr(series, rate, tr)
    assert out.shape == (14, 2, 3)  # TRs at 0, 1.5, ..., 19.5 s (last frame at 19.5 s)
    np.testing.assert_allclose(out[:, 0, 0], np.interp(np.arange(14) * tr, t, np.sin(t)))
    with pytest.raises(InvalidParameterError, match="at most 14"):
        resample_to_tr(series, rate, tr, n_tr=20)


def test_average_to_tr_bins_frames_and_drops():
    rate, tr = 24.0, 2.0
    n = 48 * 5 + 7  # five whole TRs and a partial one
    x = np.arange(n, dtype=float)[:, None] * np.array([1.0, -1.0])
    out = average_to_tr(x, rate, tr)
    assert out.shape == (5, 2)
    np.testing.assert_allclose(out[:, 0], [np.arange(48 * k, 48 * (k + 1)).mean() for k in range(5)])
    np.testing.assert_allclose(average_to_tr(x, rate, tr, n_drop=2), out[2:])
    with pytest.raises(InvalidParameterError, match="cannot drop 5"):
        average_to_tr(x, rate, tr, n_drop=5)
