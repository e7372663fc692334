"""Per-output reliability of the data a model was fitted on: NCSNR and noise ceiling, in output order.

Every model answers ``model.reliability(subject)`` (see :class:`berg.core.contract.BaseModelInterface`):
each model family's layout knows where its release keeps these numbers (berg-native
``accuracy/ncsnr``, NSD's ``fmri.lh_ncsnr``/``rh_ncsnr``, THINGS EEG2's ``eeg.ncsnr``, BMD's
``encoding_models.noiseceiling_task_test_n_10``...), so callers (synthetic data, ``berg run``'s
``nc_threshold``, voxel selection in experiments, cards) never read metadata keys themselves.

Conventions (Allen et al. 2022; BERG): ``NC = ncsnr² / (ncsnr² + 1/n)`` for the mean of ``n`` repeats,
as a fraction in [0, 1]; conversely ``ncsnr = sqrt(NC / (n (1 - NC)))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from berg.errors import ModelLoadError

__all__ = ["Reliability", "ncsnr_from_noise_ceiling", "noise_ceiling_from_ncsnr"]


def noise_ceiling_from_ncsnr(ncsnr: np.ndarray, n: float) -> np.ndarray:
    """``NC = ncsnr² / (ncsnr² + 1/n)`` (fraction) for responses averaged over ``n`` repeats."""
    s2 = np.square(np.asarray(ncsnr, dtype=np.float64))
    return s2 / (s2 + 1.0 / float(n))


def ncsnr_from_noise_ceiling(noise_ceiling: np.ndarray, n: float) -> np.ndarray:
    """Inverse of :func:`noise_ceiling_from_ncsnr`: ``sqrt(NC / (n (1 - NC)))`` (NC clipped below 1)."""
    nc = np.clip(np.nan_to_num(np.asarray(noise_ceiling, dtype=np.float64)), 0.0, 1.0 - 1e-9)
    return np.sqrt(nc / (float(n) * (1.0 - nc)))


@dataclass(frozen=True)
class Reliability:
    """Per-output reliability, flat in output order (of the whole space, or of the current selection).

    Attributes
    ----------
    ncsnr : (n_outputs,) float64 array
        Noise-ceiling signal-to-noise ratio of each output's measured responses.
    noise_ceiling : (n_outputs,) float64 array
        Fraction of the variance of the ``n_repeats``-trial mean that is signal, in [0, 1].
    n_repeats : float or None
        Repeats the noise ceiling refers to (``None`` when the release states the ceiling without it).
    source : str
        Which file and key the numbers come from (and how they were converted), for provenance.
    """

    ncsnr: np.ndarray
    noise_ceiling: np.ndarray
    n_repeats: float | None
    source: str

    @classmethod
    def from_ncsnr(cls, ncsnr: np.ndarray, n_repeats: float, source: str) -> Reliability:
        """From NCSNR, with the noise ceiling of an ``n_repeats``-trial mean."""
        snr = _finite(ncsnr, source)
        return cls(snr, noise_ceiling_from_ncsnr(snr, n_repeats), float(n_repeats), source)

    @classmethod
    def from_noise_ceiling(cls, noise_ceiling: np.ndarray, n_repeats: float, source: str) -> Reliability:
        """From a noise ceiling (fraction; percentages are detected and divided by 100) of ``n_repeats``."""
        nc = _finite(noise_ceiling, source)
        if nc.size and np.nanmax(nc) > 1.0:
            nc = nc / 100.0
        return cls(ncsnr_from_noise_ceiling(nc, n_repeats), np.clip(nc, 0.0, 1.0), float(n_repeats), source)

    def __post_init__(self) -> None:
        if np.shape(self.ncsnr) != np.shape(self.noise_ceiling):
            raise ModelLoadError(
                f"reliability from {self.source}: ncsnr {np.shape(self.ncsnr)} and noise ceiling "
                f"{np.shape(self.noise_ceiling)} differ in shape"
            )

    @property
    def n_outputs(self) -> int:
        return int(np.size(self.ncsnr))

    def select(self, rows: np.ndarray | None) -> Reliability:
        """The reliability of the outputs ``rows`` (``None``: all), in that order."""
        if rows is None:
            return self
        rows = np.asarray(rows, dtype=np.int64)
        return Reliability(self.ncsnr[rows], self.noise_ceiling[rows], self.n_repeats, self.source)

    def ceiling_for(self, n_repeats: float) -> np.ndarray:
        """The noise ceiling of a mean over ``n_repeats`` trials (from the NCSNR)."""
        return noise_ceiling_from_ncsnr(self.ncsnr, n_repeats)


def _finite(values: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size and not np.all(np.isfinite(arr)):
        # BERG's releases set NaN where a vertex has no data; a NaN reliability means "no signal"
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    if arr.size and arr.min() < 0:
        raise ModelLoadError(f"reliability from {source} has negative values (min {arr.min():.3g})")
    return arr
