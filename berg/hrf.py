"""Haemodynamic response functions, convolution and resampling of frame-wise predictions to TRs.

Frame-wise predictions of a movie (e.g. img2fmri at 2 Hz) are not BOLD signals; the img2fmri paper
convolves them with AFNI's GAM HRF and resamples to the scanner's TR. These helpers do that on the
exact time axis (frame ``i`` at ``t = i / rate``), so nothing is stretched or shifted.

Where nilearn has the HRF, berg uses nilearn's: ``"spm"`` and ``"glover"`` come from
:func:`nilearn.glm.first_level.spm_hrf` / :func:`~nilearn.glm.first_level.glover_hrf`, so the BOLD
predictions made here and the regressors of a nilearn GLM (:mod:`berg.experiments.glm`) use one
definition. Only AFNI's ``GAM`` (which nilearn lacks) is written here.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from berg.errors import InvalidParameterError, close_matches

__all__ = [
    "HRF_KINDS",
    "afni_gam",
    "spm_hrf",
    "glover_hrf",
    "hrf",
    "hrf_kernel",
    "convolve_hrf",
    "resample_to_tr",
    "average_to_tr",
]

#: HRFs :func:`hrf` knows: AFNI GAM (img2fmri's), SPM canonical and Glover (both nilearn's).
HRF_KINDS = ("afni_gam", "spm", "glover")

#: nilearn evaluates its HRFs on a grid of this step (s); :func:`hrf` interpolates it.
_NILEARN_STEP = 0.005


def afni_gam(t: np.ndarray, p: float = 8.6, q: float = 0.547) -> np.ndarray:
    """AFNI's GAM basis (``3dDeconvolve -stim_times ... 'GAM'``): ``(t / (p q))^p exp(p - t / q)``.

    Parameters
    ----------
    t : array
        Times in seconds after the event.
    p, q : float
        Shape and scale (AFNI's defaults, used by img2fmri). The peak is 1 at ``t = p q``.

    Returns
    -------
    np.ndarray
        float64, the shape of ``t`` (0 for ``t <= 0``).
    """
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    pos = t > 0
    out[pos] = (t[pos] / (p * q)) ** p * np.exp(p - t[pos] / q)
    return out


@lru_cache(maxsize=4)
def _nilearn_curve(kind: str, length: float) -> tuple[np.ndarray, np.ndarray]:
    """nilearn's HRF on its own fine grid ``(times, values)``, values scaled to a peak of 1."""
    from nilearn.glm.first_level import glover_hrf as nl_glover
    from nilearn.glm.first_level import spm_hrf as nl_spm

    fn = nl_spm if kind == "spm" else nl_glover
    values = fn(1.0, int(round(1.0 / _NILEARN_STEP)), length)  # positional: nilearn < 0.11 named it tr
    # nilearn samples np.linspace(0, time_length, n) (the same grid its GLM regressors use).
    times = np.linspace(0.0, length, values.size)
    return times, values / values.max()


def _nilearn_hrf(kind: str, t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    length = float(max(32.0, math.ceil(float(t.max(initial=0.0))) + 1.0))
    times, values = _nilearn_curve(kind, length)
    return np.interp(t, times, values, left=0.0, right=0.0)


def spm_hrf(t: np.ndarray) -> np.ndarray:
    """SPM's canonical double-gamma HRF at times ``t`` (s), peak normalised to 1 (nilearn's ``spm``)."""
    return _nilearn_hrf("spm", t)


def glover_hrf(t: np.ndarray) -> np.ndarray:
    """Glover (1999) double-gamma HRF at times ``t`` (s), peak normalised to 1 (nilearn's ``glover``)."""
    return _nilearn_hrf("glover", t)


_HRFS = {"afni_gam": afni_gam, "spm": spm_hrf, "glover": glover_hrf}


def _check_kind(name: str) -> None:
    if name not in _HRFS:
        hint = close_matches(str(name), _HRFS)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise InvalidParameterError(f"unknown HRF {name!r}.{extra} Valid HRFs: {', '.join(_HRFS)}")


def hrf(name: str, t: np.ndarray) -> np.ndarray:
    """Evaluate a named HRF (``"afni_gam"``, ``"spm"``, ``"glover"``) at times ``t`` (s), peak 1."""
    _check_kind(name)
    return _HRFS[name](t)


def hrf_kernel(kind: str, rate: float, duration: float = 32.0) -> np.ndarray:
    """The discrete convolution kernel :func:`convolve_hrf` uses: ``hrf(kind, k / rate) / rate``.

    Parameters
    ----------
    kind : {"afni_gam", "spm", "glover"}
    rate : float
        Sampling rate of the series to convolve (Hz).
    duration : float
        Kernel length in seconds.
    """
    if not rate > 0:
        raise InvalidParameterError(f"rate must be > 0 Hz, got {rate}")
    if not duration > 0:
        raise InvalidParameterError(f"duration must be > 0 s, got {duration}")
    return hrf(kind, np.arange(0.0, duration, 1.0 / rate)) / rate


def convolve_hrf(series: np.ndarray, rate: float, *, kind: str = "afni_gam", duration: float = 32.0) -> np.ndarray:
    """Convolve a frame-wise series ``(n_frames, ...)`` sampled at ``rate`` Hz with an HRF (causal).

    The kernel is the HRF (peak 1) sampled at the frame times ``0, 1/rate, ...`` up to ``duration``
    s and scaled by ``1/rate`` (a Riemann sum of the continuous convolution), see :func:`hrf_kernel`.

    Parameters
    ----------
    series : array
        ``(n_frames, ...)``; time is the first axis, all other axes are convolved independently.
    rate : float
        Frames per second.
    kind : {"afni_gam", "spm", "glover"}
        HRF; ``"afni_gam"`` is img2fmri's, ``"spm"`` the one of SPM and nilearn GLMs.
    duration : float
        Kernel length in seconds.

    Returns
    -------
    np.ndarray
        float64, the input's shape (the convolution's tail past the last frame is cut).
    """
    from scipy.signal import oaconvolve

    kernel = hrf_kernel(kind, rate, duration)
    x = np.asarray(series, dtype=np.float64)
    if x.shape[0] == 0:
        raise InvalidParameterError("series has no frames")
    n = x.shape[0]
    flat = x.reshape(n, -1)
    # One FFT-based convolution over all columns at once (movies x voxels are large).
    out = oaconvolve(flat, kernel[:, None], mode="full", axes=0)[:n]
    return out.reshape(x.shape)


def _n_tr_covered(n_frames: int, rate: float, tr: float) -> int:
    return int(math.floor((n_frames - 1) / rate / tr + 1e-9)) + 1


def resample_to_tr(series: np.ndarray, rate: float, tr: float, *, n_tr: int | None = None) -> np.ndarray:
    """Sample a series ``(n_frames, ...)`` at ``rate`` Hz at the acquisition times ``k * tr`` (linear interpolation).

    Frame ``i`` is at ``t = i / rate``; TR ``k`` at ``t = k * tr``. Times past the last frame are not
    extrapolated: ``n_tr`` defaults to the number of whole TRs covered by the frames.

    Returns
    -------
    np.ndarray
        float64 ``(n_tr, ...)``.
    """
    if not (tr > 0 and rate > 0):
        raise InvalidParameterError(f"tr and rate must be > 0, got tr={tr}, rate={rate}")
    x = np.asarray(series, dtype=np.float64)
    n = x.shape[0]
    if n_tr is None:
        n_tr = _n_tr_covered(n, rate, tr)
    t_last = (n - 1) / rate
    if (n_tr - 1) * tr > t_last + 1e-9:
        raise InvalidParameterError(
            f"{n_tr} TRs of {tr} s extend past the last frame at {t_last:.3f} s; "
            f"at most {_n_tr_covered(n, rate, tr)} TRs fit"
        )
    # Linear interpolation as two gathers (vectorised over every other axis).
    pos = np.arange(n_tr) * tr * rate
    lo = np.minimum(np.floor(pos + 1e-9).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    w = np.clip(pos - lo, 0.0, 1.0).reshape((-1,) + (1,) * (x.ndim - 1))
    return x[lo] * (1.0 - w) + x[hi] * w


def average_to_tr(
    series: np.ndarray, rate: float, tr: float, *, n_drop: int = 0, n_tr: int | None = None
) -> np.ndarray:
    """Average the frames that fall within each TR (Sohn et al.'s frame-to-volume rule).

    Frame ``i`` (at ``t = i / rate``) belongs to TR ``k = floor(t / tr)``: with 24 fps and a 2 s TR,
    48 frames make one volume. Only whole TRs are kept, then the first ``n_drop`` are dropped (as a
    study drops its first volumes).

    Parameters
    ----------
    series : array
        ``(n_frames, ...)``.
    rate, tr : float
        Frames per second; seconds per volume.
    n_drop : int
        Leading TRs to drop.
    n_tr : int, optional
        Keep at most this many TRs (before dropping).

    Returns
    -------
    np.ndarray
        float64 ``(n_tr - n_drop, ...)``.
    """
    if not (tr > 0 and rate > 0):
        raise InvalidParameterError(f"tr and rate must be > 0, got tr={tr}, rate={rate}")
    if not isinstance(n_drop, (int, np.integer)) or n_drop < 0:
        raise InvalidParameterError(f"n_drop must be an integer >= 0, got {n_drop!r}")
    x = np.asarray(series, dtype=np.float64)
    n = x.shape[0]
    which = np.floor(np.arange(n) / rate / tr + 1e-9).astype(np.int64)
    # A TR is whole when a frame exists at or after its end.
    whole = int(math.floor(n / rate / tr + 1e-9))
    if n_tr is not None:
        whole = min(whole, int(n_tr))
    if whole <= n_drop:
        raise InvalidParameterError(
            f"{n} frames at {rate} fps cover {whole} whole TR(s) of {tr} s; cannot drop {n_drop}"
        )
    keep = which < whole
    flat = x[keep].reshape(int(keep.sum()), -1)
    sums = np.zeros((whole, flat.shape[1]))
    np.add.at(sums, which[keep], flat)
    counts = np.bincount(which[keep], minlength=whole)[:, None]
    out = sums / counts
    return out[n_drop:].reshape((whole - n_drop, *x.shape[1:]))
