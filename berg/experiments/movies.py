"""Movie dynamics: predicted vs measured timepoint x timepoint similarity around event boundaries.

img2fmri (Bennett & Baldassano 2023, Fig 3) asks whether a frame-by-frame model explains the temporal
structure of real fMRI during a movie (Pixar's *Partly Cloudy*) better than a low-level baseline:

1. :func:`predict_movie`: the model's response to each sampled frame (img2fmri: 2 Hz, nearest-frame
   seek), convolved with an HRF (img2fmri: AFNI's GAM) and resampled to the scan's TR;
2. :func:`pattern_similarity`: the timepoint x timepoint correlation matrix of the patterns in an
   ROI, for the prediction, the baseline (``fmri-luminance-baseline``, which goes through the same
   path) and the measured group average (:func:`group_average`, img2fmri's ``zscore(sum zscore)``);
3. :func:`similarity_match`: at each TR, the correlation of a model's similarity row with the
   measured one (diagonal excluded, optionally only a band around it);
4. :func:`boundary_analysis`: those matches averaged around human-annotated event boundaries at each
   lag (skipping lags that land near another boundary, as img2fmri does), model minus baseline, and
   p-values from circularly shifted boundaries (all boundaries moved by one random offset, so the
   spacing of events and the autocorrelation of the series are kept).

Inputs are a movie file, a TR, boundaries in seconds, and the measured data as a 4-D NIfTI with a
mask or a ``(time, voxel)`` array. :func:`make_synthetic_movie` writes a clip with scene changes at
known times (tests, docs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError
from berg.experiments.validation import _pyplot, as_matrix, save_figure, significance_stars

__all__ = [
    "MovieResponse",
    "BoundaryResult",
    "make_synthetic_movie",
    "predict_movie",
    "pattern_similarity",
    "columns_in_mask",
    "group_average",
    "remove_drift",
    "similarity_match",
    "boundary_triggered_average",
    "boundary_analysis",
    "plot_similarity_matrices",
    "movie_analysis",
    "MovieAnalysis",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ synthetic movie
def make_synthetic_movie(
    path: str | Path,
    *,
    boundaries: Sequence[float],
    duration: float,
    fps: float = 24.0,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
) -> Path:
    """Write a clip (PyAV, MPEG-4) whose scene changes at the given times (for tests and examples).

    Each scene is its own random smooth colour texture that drifts slowly, so frames within a scene
    are similar and frames of different scenes are not.

    Parameters
    ----------
    path : path
        Output file (``.mp4``).
    boundaries : sequence of float
        Scene-change times in seconds (``0 < b < duration``).
    duration : float
        Clip length in seconds.
    fps : float
        Frame rate (fractional rates such as 24000/1001 are kept exactly).
    size : (height, width)
        Frame size (even numbers).
    seed : int
        Texture seed.

    Returns
    -------
    Path
    """
    from fractions import Fraction

    import av
    from scipy.ndimage import gaussian_filter

    from berg.fsutil import atomic_path

    b = np.sort(np.asarray(boundaries, dtype=np.float64))
    if b.size and (b[0] <= 0 or b[-1] >= duration):
        raise InvalidParameterError(f"boundaries must lie inside (0, {duration}) s, got {b.tolist()}")
    h, w = size
    rng = np.random.default_rng(seed)
    n_scenes = b.size + 1
    textures = []
    for _ in range(n_scenes):
        tex = gaussian_filter(rng.normal(size=(2 * h, 2 * w, 3)), sigma=(4, 4, 0))
        tex = (tex - tex.min()) / (np.ptp(tex) or 1.0)
        textures.append((40 + 175 * tex).astype(np.uint8))
    rate = Fraction(fps).limit_denominator(1001)
    n_frames = int(np.floor(duration * float(rate) + 1e-9))
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("mpeg4", rate=rate)
            stream.height, stream.width = h, w
            stream.pix_fmt = "yuv420p"
            stream.options = {"qscale": "2"}
            for i in range(n_frames):
                t = i / float(rate)
                scene = int(np.searchsorted(b, t, side="right"))
                dy = int(t * 3) % h  # slow drift inside a scene (3 px/s)
                img = textures[scene][dy : dy + h, :w]
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


# ------------------------------------------------------------------------------------- predictions
@dataclass
class MovieResponse:
    """A model's predicted BOLD response to a movie, on the scan's TR grid.

    Attributes
    ----------
    data : np.ndarray
        float64 ``(n_tr, n_outputs)``.
    tr : float
        Seconds per volume; row ``k`` is at ``t = k * tr``.
    frame_indices, frame_times : np.ndarray
        The decoded-frame index and its time (s) of every frame the model saw.
    fps : float
        Sampling rate of those frames.
    hrf : str
    model_id : str
    """

    data: np.ndarray
    tr: float
    frame_indices: np.ndarray
    frame_times: np.ndarray
    fps: float
    hrf: str
    model_id: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def predict_movie(
    model: Any,
    movie: str | Path,
    tr: float,
    *,
    fps: float = 2.0,
    rule: str = "nearest",
    hrf: str = "afni_gam",
    n_tr: int | None = None,
    show_progress: bool = False,
) -> MovieResponse:
    """A model's predicted BOLD response to a movie file (img2fmri's procedure by default).

    Parameters
    ----------
    model : loaded berg model
        Anything with ``encode(frames) -> (n_frames, n_outputs)`` for one subject, or a group model
        (``fmri-bold5000-resnet18`` with ``space="mni"``), or ``fmri-luminance-baseline``.
    movie : path
        Video file (PyAV).
    tr : float
        Repetition time of the scan (s).
    fps : float
        Frames predicted per second (img2fmri: 2).
    rule : {"nearest", "last"}
        Frame picked for each sample time (see :func:`berg.stimuli.decode_video`): ``"nearest"`` is
        img2fmri's (OpenCV seek), ``"last"`` the frame on screen.
    hrf : {"afni_gam", "spm", "glover"}
        HRF convolved with the frame-wise predictions (img2fmri: AFNI's GAM).
    n_tr : int, optional
        Number of TRs (default: every whole TR the frames cover).
    show_progress : bool

    Returns
    -------
    MovieResponse
    """
    from berg.hrf import convolve_hrf, resample_to_tr
    from berg.stimuli import decode_video

    frames, rate, info = decode_video(movie, fps=fps, rule=rule, return_info=True)
    responses = model.encode(frames, show_progress=show_progress)
    if isinstance(responses, Mapping):
        raise InvalidParameterError(
            "predict_movie needs one response per frame: load one subject, or a group model "
            "(e.g. fmri-bold5000-resnet18 with subject='all', space='mni')"
        )
    bold = resample_to_tr(convolve_hrf(np.asarray(responses), rate, kind=hrf), rate, tr, n_tr=n_tr)
    return MovieResponse(
        data=bold,
        tr=float(tr),
        frame_indices=info["indices"],
        frame_times=info["times"],
        fps=rate,
        hrf=hrf,
        model_id=str(getattr(model, "model_id", "")),
        info={"stream_fps": info["stream_fps"], "rule": rule},
    )


# ------------------------------------------------------------------------------------- similarity
def _data(x: Any, mask: Any = None) -> np.ndarray:
    if isinstance(x, MovieResponse):
        return x.data
    return as_matrix(x, mask, name="data")


def columns_in_mask(voxel_ijk: np.ndarray, mask: Any) -> np.ndarray:
    """Columns whose voxel ``(i, j, k)`` lies inside a mask (e.g. an ROI image on the model's grid).

    Parameters
    ----------
    voxel_ijk : (n_outputs, 3) int array
        Grid index of each output (``model.output_ids()`` for volume models).
    mask : nibabel image or 3-D bool array
        On the same grid.
    """
    m = np.asarray(getattr(mask, "dataobj", mask)) > 0
    ijk = np.asarray(voxel_ijk, dtype=np.int64)
    if ijk.ndim != 2 or ijk.shape[1] != 3:
        raise InvalidParameterError(f"voxel_ijk must be (n_outputs, 3), got {ijk.shape}")
    inside = np.all((ijk >= 0) & (ijk < np.array(m.shape[:3])), axis=1)
    keep = np.zeros(ijk.shape[0], dtype=bool)
    keep[inside] = m[tuple(ijk[inside].T)]
    return np.flatnonzero(keep)


def pattern_similarity(data: Any, *, roi: Any = None, mask: Any = None) -> np.ndarray:
    """Timepoint x timepoint Pearson correlation of the patterns (across voxels).

    Parameters
    ----------
    data : MovieResponse, ``(n_tr, n_voxels)`` array or 4-D NIfTI
    roi : int indices or bool array over the columns, optional
        Restrict to these voxels.
    mask : NIfTI image, optional
        For a NIfTI ``data`` (which voxels become columns).

    Returns
    -------
    np.ndarray
        float64 ``(n_tr, n_tr)``.
    """
    x = _data(data, mask)
    if roi is not None:
        roi = np.asarray(roi)
        x = x[:, roi]
    if x.shape[1] < 2:
        raise InvalidParameterError(f"need at least 2 voxels for a pattern correlation, got {x.shape[1]}")
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1, keepdims=True))
    x = x / np.where(norm > 0, norm, 1.0)
    return np.clip(x @ x.T, -1.0, 1.0)


def remove_drift(data: Any, tr: float, *, high_pass: float = 1.0 / 120, mask: Any = None) -> np.ndarray:
    """img2fmri's preprocessing: remove each voxel's mean and a cosine (DCT) drift basis.

    Uses nilearn's cosine drift regressors (``make_first_level_design_matrix``, period cut
    ``1 / high_pass`` s, img2fmri: 120 s) and :func:`nilearn.signal.clean`.

    Returns
    -------
    np.ndarray
        float64 ``(n_tr, n_voxels)``.
    """
    from nilearn.glm.first_level import make_first_level_design_matrix
    from nilearn.signal import clean

    x = _data(data, mask)
    x = x - x.mean(axis=0)  # img2fmri removes the average first; nilearn's clean keeps the mean
    frame_times = np.arange(x.shape[0]) * float(tr)
    dm = make_first_level_design_matrix(frame_times, drift_model="cosine", high_pass=high_pass)
    drift = dm[[c for c in dm.columns if c.startswith("drift")]].to_numpy()
    if drift.shape[1] == 0:
        return x
    cleaned = np.asarray(clean(x, confounds=drift, detrend=False, standardize=None, t_r=tr), dtype=np.float64)
    return cleaned - cleaned.mean(axis=0)


def group_average(runs: Sequence[Any], *, mask: Any = None) -> np.ndarray:
    """img2fmri's group response: ``zscore_t(sum_s zscore_t(run_s))`` per voxel (ddof 0).

    Parameters
    ----------
    runs : sequence
        One ``(n_tr, n_voxels)`` array or 4-D NIfTI per participant (same length, same voxels).
    mask : NIfTI image, optional
        For NIfTI runs.

    Returns
    -------
    np.ndarray
        float64 ``(n_tr, n_voxels)``.
    """
    from scipy import stats

    if len(runs) == 0:
        raise InvalidParameterError("group_average needs at least one run")
    total = None
    for k, run in enumerate(runs):
        x = as_matrix(run, mask, name=f"runs[{k}]")
        if total is not None and x.shape != total.shape:
            raise InvalidParameterError(f"runs[{k}] has shape {x.shape}, runs[0] {total.shape}")
        z = np.nan_to_num(stats.zscore(x, axis=0))
        total = z if total is None else total + z
    return np.nan_to_num(stats.zscore(total, axis=0))


def similarity_match(model_sim: np.ndarray, real_sim: np.ndarray, *, band: int | None = None) -> np.ndarray:
    """At each TR, the Pearson correlation of a model's similarity row with the measured one.

    The diagonal is excluded; with ``band``, only entries within ``band`` TRs of it count (img2fmri's
    ``TR_band``).

    Returns
    -------
    np.ndarray
        float64 ``(n_tr,)`` (0 where a row is constant).
    """
    a = np.asarray(model_sim, dtype=np.float64)
    b = np.asarray(real_sim, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise InvalidParameterError(f"similarity matrices must be square and equal in shape, got {a.shape}, {b.shape}")
    n = a.shape[0]
    d = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    w = (d > 0) if band is None else ((d > 0) & (d <= int(band)))
    cnt = w.sum(axis=1)
    if np.any(cnt < 2):
        raise InvalidParameterError(f"band={band} leaves fewer than 2 entries in some rows")
    ma = (a * w).sum(1) / cnt
    mb = (b * w).sum(1) / cnt
    da, db = (a - ma[:, None]) * w, (b - mb[:, None]) * w
    num = (da * db).sum(1)
    den = np.sqrt((da * da).sum(1) * (db * db).sum(1))
    return np.divide(num, den, out=np.zeros(n), where=den > 1e-15)


def _boundary_tr(boundaries: Sequence[float], tr: float, n_tr: int) -> np.ndarray:
    b = np.asarray(boundaries, dtype=np.float64)
    if b.ndim != 1 or b.size == 0:
        raise InvalidParameterError("boundaries must be a non-empty 1-D sequence of times in seconds")
    idx = np.floor(b / float(tr) + 0.5).astype(np.int64)
    if idx.min() < 0 or idx.max() >= n_tr:
        raise InvalidParameterError(
            f"boundaries {b.tolist()} s fall outside the {n_tr} TRs ({n_tr * tr:.1f} s) of the data"
        )
    return np.unique(idx)


def _bta_many(series: np.ndarray, bounds: np.ndarray, lags: np.ndarray, exclude: int | None) -> np.ndarray:
    """Boundary-triggered averages for many boundary sets at once.

    series : (n_series, n_tr); bounds : (n_sets, n_bounds) TR indices. Returns (n_sets, n_series, n_lags).
    """
    n_tr = series.shape[1]
    pos = bounds[:, :, None] + lags[None, None, :]  # (sets, bounds, lags)
    valid = (pos >= 0) & (pos < n_tr)
    if exclude is not None and bounds.shape[1] > 1:
        # Skip a lag that lands within `exclude` TRs of *another* boundary of the same set.
        dist = np.abs(pos[:, :, None, :] - bounds[:, None, :, None])  # (sets, b, other, lags)
        other = ~np.eye(bounds.shape[1], dtype=bool)[None, :, :, None]
        near = np.any((dist <= exclude) & other, axis=2)
        valid &= ~near
    vals = series[:, np.clip(pos, 0, n_tr - 1)]  # (series, sets, bounds, lags)
    num = (vals * valid[None]).sum(axis=2)
    cnt = valid.sum(axis=1)[None]
    out = np.divide(num, cnt, out=np.full(num.shape, np.nan), where=cnt > 0)
    return np.moveaxis(out, 0, 1)


def boundary_triggered_average(
    series: np.ndarray, boundaries: Sequence[float], tr: float, *, window: int = 4, exclude_near: int | None = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Average of a per-TR series at each lag around event boundaries (img2fmri's).

    Parameters
    ----------
    series : (n_tr,) array
    boundaries : sequence of float
        Event boundaries in seconds (rounded to the nearest TR).
    tr : float
    window : int
        Lags ``-window .. window`` TRs.
    exclude_near : int or None
        Skip a lag that lands within this many TRs of another boundary (img2fmri: 2).

    Returns
    -------
    lags : (2 window + 1,) int array
    average : (2 window + 1,) float array (NaN where no boundary contributes)
    """
    x = np.asarray(series, dtype=np.float64)[None]
    b = _boundary_tr(boundaries, tr, x.shape[1])
    lags = np.arange(-int(window), int(window) + 1)
    return lags, _bta_many(x, b[None], lags, exclude_near)[0, 0]


@dataclass
class BoundaryResult:
    """Model vs baseline match to the measured dynamics around event boundaries.

    Attributes
    ----------
    lags : (n_lags,) int array
        TRs relative to the boundary.
    model_match, baseline_match : (n_tr,) arrays
        :func:`similarity_match` of each with the measured similarity matrix.
    model_bta, baseline_bta, difference : (n_lags,) arrays
        Boundary-triggered averages and model minus baseline.
    null : (n_permutations, n_lags) array
        ``difference`` with circularly shifted boundaries.
    p_values : (n_lags,) array
        One-sided (model better than baseline): ``(1 + #{null >= difference}) / (1 + n)``.
    boundaries_tr : int array
    tr : float
    """

    lags: np.ndarray
    model_match: np.ndarray
    baseline_match: np.ndarray
    model_bta: np.ndarray
    baseline_bta: np.ndarray
    difference: np.ndarray
    null: np.ndarray
    p_values: np.ndarray
    boundaries_tr: np.ndarray
    tr: float
    labels: tuple[str, str] = ("model", "baseline")

    def summary(self) -> dict[str, Any]:
        """Per-lag numbers (JSON-ready)."""
        return {
            "lags": self.lags.tolist(),
            "difference": self.difference.tolist(),
            "p_values": self.p_values.tolist(),
            "model_bta": self.model_bta.tolist(),
            "baseline_bta": self.baseline_bta.tolist(),
            "n_permutations": int(self.null.shape[0]),
            "boundaries_tr": self.boundaries_tr.tolist(),
        }

    def plot(
        self, *, title: str = "boundary-triggered average", alpha: float = 0.05, out_path: str | Path | None = None
    ):
        """img2fmri's Fig 3: both matches around boundaries, and their difference with the null band."""
        plt = _pyplot()
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
        a.plot(self.lags, self.model_bta, "o-", color="tab:blue", label=f"corr({self.labels[0]}, real)")
        a.plot(self.lags, self.baseline_bta, "o-", color="tab:green", label=f"corr({self.labels[1]}, real)")
        a.set_ylabel("similarity-row match")
        a.legend(loc="lower right")
        lo, hi = np.nanpercentile(self.null, [2.5, 97.5], axis=0)
        b.fill_between(self.lags, lo, hi, color="0.85", label="shifted boundaries (95 %)")
        b.plot(self.lags, self.difference, "o-", color="tab:red", label=f"{self.labels[0]} - {self.labels[1]}")
        top = float(np.nanmax(np.concatenate([self.difference, hi])))
        span = top - float(np.nanmin(np.concatenate([self.difference, lo]))) or 1.0
        for lag, p in zip(self.lags, self.p_values):
            if p < alpha:
                b.text(lag, top + 0.05 * span, significance_stars(p), ha="center", fontsize=12)
        b.set_ylim(top=top + 0.2 * span)
        b.legend(loc="lower right")
        for ax in (a, b):
            ax.axvline(0, color="purple", ls="--", alpha=0.6)
            ax.axhline(0, color="grey", ls=":")
            ax.set_xlabel(f"TRs from boundary (TR = {self.tr:g} s)")
        fig.suptitle(title)
        if out_path is not None:
            save_figure(fig, out_path)
        return fig


def _as_similarity(x: Any, roi: Any, mask: Any) -> np.ndarray:
    arr = x.data if isinstance(x, MovieResponse) else x
    if isinstance(arr, np.ndarray) and roi is None and _is_similarity(arr):
        return np.asarray(arr, dtype=np.float64)  # already a similarity matrix
    return pattern_similarity(x, roi=roi, mask=mask)


def _is_similarity(a: np.ndarray) -> bool:
    """Square, symmetric, within [-1, 1], diagonal 1 (or 0 for constant patterns)."""
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not np.allclose(a, a.T):
        return False
    d = np.diag(a)
    return bool(np.all(np.abs(a) <= 1 + 1e-9) and np.all(np.isclose(d, 1.0) | np.isclose(d, 0.0)) and np.any(d > 0.5))


def boundary_analysis(
    model: Any,
    baseline: Any,
    real: Any,
    boundaries: Sequence[float],
    tr: float,
    *,
    window: int = 4,
    band: int | None = None,
    exclude_near: int | None = 2,
    n_permutations: int = 1000,
    seed: int = 0,
    mask: Any = None,
    model_roi: Any = None,
    baseline_roi: Any = None,
    labels: tuple[str, str] = ("model", "baseline"),
) -> BoundaryResult:
    """img2fmri's boundary analysis with circular-shift permutation p-values.

    Parameters
    ----------
    model, baseline : MovieResponse, ``(n_tr, n_outputs)`` array, or ``(n_tr, n_tr)`` similarity matrix
        Predictions on the real data's TR grid (same number of TRs).
    real : ``(n_tr, n_voxels)`` array, 4-D NIfTI (with ``mask``), or similarity matrix
        The measured (group-average) response.
    boundaries : sequence of float
        Event boundaries in seconds from the first TR of the data.
    tr : float
    window : int
        Lags ``-window .. window``.
    band : int, optional
        Compare similarity rows only within ``band`` TRs of the diagonal.
    exclude_near : int or None
        Skip lags within this many TRs of another boundary (img2fmri: 2).
    n_permutations : int
        Circular shifts of the boundary set (random offsets ``1 .. n_tr - 1``, seeded).
    seed : int
    mask : NIfTI image, optional
        For a NIfTI ``real``.
    model_roi, baseline_roi : column indices, optional
        ROI columns of the predictions.
    labels : (str, str)
        Names in plots.

    Returns
    -------
    BoundaryResult
    """
    if not isinstance(n_permutations, (int, np.integer)) or n_permutations < 1:
        raise InvalidParameterError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    s_real = _as_similarity(real, None, mask)
    s_model = _as_similarity(model, model_roi, None)
    s_base = _as_similarity(baseline, baseline_roi, None)
    n = s_real.shape[0]
    if s_model.shape[0] != n or s_base.shape[0] != n:
        raise InvalidParameterError(
            f"model ({s_model.shape[0]} TRs), baseline ({s_base.shape[0]}) and real ({n}) must cover the same TRs"
        )
    m_match = similarity_match(s_model, s_real, band=band)
    b_match = similarity_match(s_base, s_real, band=band)
    b = _boundary_tr(boundaries, tr, n)
    lags = np.arange(-int(window), int(window) + 1)
    series = np.stack([m_match, b_match, m_match - b_match])
    obs = _bta_many(series, b[None], lags, exclude_near)[0]
    rng = np.random.default_rng(seed)
    null = np.empty((int(n_permutations), lags.size))
    chunk = 512
    for start in range(0, int(n_permutations), chunk):
        m = min(chunk, int(n_permutations) - start)
        shifts = rng.integers(1, n, size=m)
        sets = (b[None, :] + shifts[:, None]) % n
        null[start : start + m] = _bta_many(series[2:], sets, lags, exclude_near)[:, 0]
    diff = obs[2]
    with np.errstate(invalid="ignore"):
        exceed = np.sum(null >= diff[None] - 1e-12, axis=0)
    p = (1 + exceed) / (1 + int(n_permutations))
    return BoundaryResult(
        lags=lags,
        model_match=m_match,
        baseline_match=b_match,
        model_bta=obs[0],
        baseline_bta=obs[1],
        difference=diff,
        null=null,
        p_values=p,
        boundaries_tr=b,
        tr=float(tr),
        labels=tuple(labels),
    )


@dataclass
class MovieAnalysis:
    """Everything :func:`movie_analysis` computed: predictions, similarity matrices, boundary result."""

    model: MovieResponse
    baseline: MovieResponse
    real: np.ndarray
    similarity: dict[str, np.ndarray]
    boundaries: BoundaryResult

    def plot(self, *, out_path: str | Path | None = None):
        """The three similarity matrices side by side, boundaries marked."""
        b = self.boundaries
        return plot_similarity_matrices(self.similarity, boundaries=b.boundaries_tr * b.tr, tr=b.tr, out_path=out_path)


def movie_analysis(
    model: Any,
    baseline: Any,
    movie: str | Path,
    tr: float,
    boundaries: Sequence[float],
    real: Any,
    *,
    mask: Any = None,
    n_drop: int = 0,
    model_roi: Any = None,
    baseline_roi: Any = None,
    fps: float = 2.0,
    rule: str = "nearest",
    hrf: str = "afni_gam",
    **kwargs: Any,
) -> MovieAnalysis:
    """img2fmri's Fig 3 from its inputs: a movie, a TR, boundaries in seconds, the measured data and a mask.

    Parameters
    ----------
    model, baseline : loaded berg models
        e.g. ``fmri-bold5000-resnet18`` (``subject="all", space="mni"``) and ``fmri-luminance-baseline``.
    movie : path
    tr : float
    boundaries : sequence of float
        Event boundaries in seconds from the movie's start.
    real : 4-D NIfTI (with ``mask``), ``(n_tr, n_voxels)`` array, or a list of those (one per
        participant, averaged with :func:`group_average`)
        The measured responses; volume ``k`` is movie time ``(n_drop + k) * tr``.
    mask : NIfTI image, optional
    n_drop : int
        Leading volumes of the movie missing from ``real`` (dropped by the study).
    model_roi, baseline_roi : column indices, optional
    fps, rule, hrf
        See :func:`predict_movie`.
    **kwargs
        Passed to :func:`boundary_analysis` (``window``, ``band``, ``n_permutations``, ``seed``, ...).

    Returns
    -------
    MovieAnalysis
    """
    runs = real if isinstance(real, (list, tuple)) else [real]
    data = group_average(runs, mask=mask) if len(runs) > 1 else as_matrix(runs[0], mask, name="real")
    n_tr = data.shape[0]
    preds = []
    for m in (model, baseline):
        p = predict_movie(m, movie, tr, fps=fps, rule=rule, hrf=hrf, n_tr=n_tr + int(n_drop))
        p.data = p.data[int(n_drop) :]
        preds.append(p)
    shifted = [b - n_drop * tr for b in boundaries if 0 <= b - n_drop * tr < n_tr * tr]
    labels = kwargs.pop(
        "labels", (str(getattr(model, "model_id", "model")), str(getattr(baseline, "model_id", "baseline")))
    )
    sims = {
        labels[0]: pattern_similarity(preds[0], roi=model_roi),
        "real": pattern_similarity(data),
        labels[1]: pattern_similarity(preds[1], roi=baseline_roi),
    }
    result = boundary_analysis(sims[labels[0]], sims[labels[1]], sims["real"], shifted, tr, labels=labels, **kwargs)
    return MovieAnalysis(model=preds[0], baseline=preds[1], real=data, similarity=sims, boundaries=result)


def plot_similarity_matrices(
    matrices: Mapping[str, np.ndarray],
    *,
    boundaries: Sequence[float] | None = None,
    tr: float | None = None,
    title: str = "timepoint x timepoint similarity",
    out_path: str | Path | None = None,
):
    """Side-by-side similarity matrices (e.g. predicted, real, luminance), boundaries marked.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not matrices:
        raise InvalidParameterError("no matrices to plot")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(4 * len(matrices), 4.3), squeeze=False)
    im = None
    for ax, (name, sim) in zip(axes[0], matrices.items()):
        im = ax.imshow(np.asarray(sim), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(name)
        ax.set_xlabel("TR")
        if boundaries is not None and tr is not None:
            for bt in np.asarray(boundaries, dtype=float) / tr:
                ax.axvline(bt, color="k", lw=0.5, alpha=0.5)
                ax.axhline(bt, color="k", lw=0.5, alpha=0.5)
    axes[0][0].set_ylabel("TR")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="pearson r")
    fig.suptitle(title)
    if out_path is not None:
        save_figure(fig, out_path)
    return fig
