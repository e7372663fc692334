"""Haemodynamic response functions, convolution and resampling of frame-wise predictions to TRs.

Frame-wise predictions of a movie (e.g. img2fmri at 2 Hz) are not BOLD signals; the img2fmri paper
convolves them with AFNI's GAM HRF and resamples to the scanner's TR. These helpers do that on the
exact time axis (frame ``i`` at ``t = i / rate``), so nothing is stretched or shifted.
"""

from __future__ import annotations

import math

import numpy as np

from berg.errors import InvalidParameterError

__all__ = ["afni_gam", "spm_hrf", "glover_hrf", "hrf", "convolve_hrf", "resample_to_tr"]


def afni_gam(t: np.ndarray, p: float = 8.6, q: float = 0.547) -> np.ndarray:
    """AFNI's GAM basis (``3dDeconvolve -stim_times ... 'GAM'``): ``(t / (p q))^p exp(p - t / q)``, peak 1 at ``t = p q``."""
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    pos = t > 0
    out[pos] = (t[pos] / (p * q)) ** p * np.exp(p - t[pos] / q)
    return out


def _gamma_pdf(t: np.ndarray, shape: float, scale: float = 1.0) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    pos = t > 0
    out[pos] = np.exp((shape - 1) * np.log(t[pos] / scale) - t[pos] / scale - math.lgamma(shape)) / scale
    return out


def spm_hrf(t: np.ndarray) -> np.ndarray:
    """SPM's canonical double-gamma HRF (gamma shapes 6 and 16, undershoot ratio 1/6), peak normalised to 1."""
    grid = np.arange(0, 32, 0.01)
    peak = (_gamma_pdf(grid, 6.0) - _gamma_pdf(grid, 16.0) / 6.0).max()
    return (_gamma_pdf(t, 6.0) - _gamma_pdf(t, 16.0) / 6.0) / peak


def glover_hrf(t: np.ndarray) -> np.ndarray:
    """Glover (1999) double gamma (peak ~5.4 s, undershoot ~10.8 s, ratio 0.35), peak normalised to 1."""
    t = np.asarray(t, dtype=np.float64)

    def g(t, a, b):
        out = np.zeros_like(t)
        pos = t > 0
        out[pos] = (t[pos] / (a * b)) ** a * np.exp(-(t[pos] - a * b) / b)
        return out

    h = g(t, 6.0, 0.9) - 0.35 * g(t, 12.0, 0.9)
    peak = (g(np.arange(0, 32, 0.01), 6.0, 0.9) - 0.35 * g(np.arange(0, 32, 0.01), 12.0, 0.9)).max()
    return h / peak


_HRFS = {"afni_gam": afni_gam, "spm": spm_hrf, "glover": glover_hrf}


def hrf(name: str, t: np.ndarray) -> np.ndarray:
    """Evaluate a named HRF (``"afni_gam"``, ``"spm"``, ``"glover"``) at times ``t`` (s)."""
    if name not in _HRFS:
        raise InvalidParameterError(f"unknown HRF {name!r}; valid: {', '.join(_HRFS)}")
    return _HRFS[name](t)


def convolve_hrf(series: np.ndarray, rate: float, *, kind: str = "afni_gam", duration: float = 32.0) -> np.ndarray:
    """Convolve a frame-wise series ``(n_frames, ...)`` sampled at ``rate`` Hz with an HRF (causal).

    The kernel is the HRF sampled at the frame times ``0, 1/rate, ...`` up to ``duration`` s and scaled
    by ``1/rate`` (a Riemann sum of the continuous convolution). Output has the input's length.
    """
    if rate <= 0:
        raise InvalidParameterError(f"rate must be > 0 Hz, got {rate}")
    x = np.asarray(series, dtype=np.float64)
    kernel = hrf(kind, np.arange(0, duration, 1.0 / rate)) / rate
    n = x.shape[0]
    flat = x.reshape(n, -1)
    out = np.empty_like(flat)
    for j in range(flat.shape[1]):
        out[:, j] = np.convolve(flat[:, j], kernel)[:n]
    return out.reshape(x.shape)


def resample_to_tr(series: np.ndarray, rate: float, tr: float, *, n_tr: int | None = None) -> np.ndarray:
    """Sample a series ``(n_frames, ...)`` at ``rate`` Hz at the acquisition times ``k * tr`` (linear interpolation).

    Frame ``i`` is at ``t = i / rate``; TR ``k`` at ``t = k * tr``. Times past the last frame are not
    extrapolated: ``n_tr`` defaults to the number of whole TRs covered by the frames. Returns
    ``(n_tr, ...)``.
    """
    if tr <= 0 or rate <= 0:
        raise InvalidParameterError("tr and rate must be > 0")
    x = np.asarray(series, dtype=np.float64)
    n = x.shape[0]
    t_frames = np.arange(n) / rate
    if n_tr is None:
        n_tr = int(math.floor(t_frames[-1] / tr + 1e-9)) + 1
    t_tr = np.arange(n_tr) * tr
    if t_tr[-1] > t_frames[-1] + 1e-9:
        raise InvalidParameterError(f"{n_tr} TRs of {tr} s extend past the last frame at {t_frames[-1]:.3f} s")
    flat = x.reshape(n, -1)
    out = np.stack([np.interp(t_tr, t_frames, flat[:, j]) for j in range(flat.shape[1])], axis=1)
    return out.reshape((n_tr, *x.shape[1:]))
