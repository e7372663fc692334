"""HRFs, convolution and TR resampling on the exact time axis."""

import numpy as np
import pytest

from berg.errors import InvalidParameterError
from berg.hrf import afni_gam, convolve_hrf, glover_hrf, hrf, resample_to_tr, spm_hrf


def test_hrf_shapes():
    t = np.arange(0, 30, 0.01)
    assert t[np.argmax(afni_gam(t))] == pytest.approx(8.6 * 0.547, abs=0.01)
    assert afni_gam(np.array([8.6 * 0.547]))[0] == pytest.approx(1.0)
    assert 4.5 < t[np.argmax(spm_hrf(t))] < 5.5 and spm_hrf(t).min() < 0
    assert 4.8 < t[np.argmax(glover_hrf(t))] < 5.8 and glover_hrf(t).max() == pytest.approx(1, abs=1e-3)
    with pytest.raises(InvalidParameterError, match="afni_gam"):
        hrf("boynton", t)


def test_convolution_of_impulse_is_the_kernel():
    rate = 2.0
    x = np.zeros((60, 2))
    x[4, 0] = 1.0
    y = convolve_hrf(x, rate)
    t = (np.arange(60) - 4) / rate
    np.testing.assert_allclose(y[:, 0], afni_gam(t) / rate, atol=1e-12)
    assert np.all(y[:, 1] == 0)


def test_resample_to_tr_keeps_time():
    rate, tr = 2.0, 1.5
    t = np.arange(40) / rate
    series = np.sin(t)[:, None, None] * np.ones((1, 2, 3))
    out = resample_to_tr(series, rate, tr)
    assert out.shape == (14, 2, 3)  # TRs at 0, 1.5, ..., 19.5 s (last frame at 19.5 s)
    np.testing.assert_allclose(out[:, 0, 0], np.interp(np.arange(14) * tr, t, np.sin(t)))
    with pytest.raises(InvalidParameterError):
        resample_to_tr(series, rate, tr, n_tr=20)
