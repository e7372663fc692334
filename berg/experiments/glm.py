"""Voxelwise GLMs of kernel time series (Sohn et al. 2024), on nilearn.

For each VGG-16 kernel (:mod:`berg.experiments.kernels`) and each participant, the kernel's time
series convolved with the SPM canonical HRF is one regressor of a voxelwise GLM with motion confounds
(Friston-24 from fMRIPrep-style confound tables), a cosine drift basis and an intercept; the kernel's
effect maps then go to a group one-sample t-test, thresholded at p < 0.001 voxelwise or by FDR, and are
summarised per layer and region (how many kernels reach each region; which kernels reach, e.g., the
posterior cingulate).

Two paths, one model:

* :func:`first_level_kernel_glm` / :func:`group_kernel_test`: nilearn's ``FirstLevelModel``,
  ``SecondLevelModel`` and ``threshold_stats_img`` themselves (any noise model nilearn has, images in
  and out) — what to use for a handful of kernels, and the reference.
* :func:`batched_kernel_glm` / :func:`group_t_test`: the same ordinary-least-squares GLM for *all*
  kernels at once. Each kernel's design is ``[kernel regressor, shared confounds]``; projecting the
  shared confounds out of the data and the regressors once (Frisch-Waugh-Lovell) leaves one
  ``(n_kernels x n_tr) @ (n_tr x n_voxels)`` product for every beta, and closed forms for the residual
  variance and t. It equals nilearn's ``FirstLevelModel(noise_model="ols", signal_scaling=False)``
  kernel by kernel (tested to 1e-5); nilearn's default AR(1) pre-whitening is per voxel and per design,
  so it has no batched form (use the nilearn path for it).

Regressors are built with nilearn (:func:`kernel_regressors`: each volume's kernel value is an event
of one TR's duration, convolved by ``compute_regressor``), so both paths see identical columns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError

__all__ = [
    "MOTION_COLUMNS",
    "friston24",
    "kernel_regressors",
    "confound_design",
    "first_level_kernel_glm",
    "group_kernel_test",
    "GroupKernelResult",
    "batched_kernel_glm",
    "BatchedGLM",
    "group_t_test",
    "GroupTTest",
    "threshold_mask",
    "layer_summary",
    "kernels_reaching",
    "plot_kernel_map",
    "plot_layer_summary",
]

log = logging.getLogger(__name__)

#: The volumes-to-regressors matrix of the last design (n_tr, tr, hrf, oversampling) -> (n_tr, n_tr).
_CONV_CACHE: dict[tuple[Any, ...], np.ndarray] = {}

#: fMRIPrep's six rigid-body motion parameters.
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


# ------------------------------------------------------------------------------------------ confounds
def friston24(confounds: Any, *, columns: Sequence[str] = MOTION_COLUMNS):
    """The Friston-24 motion expansion: 6 parameters, their derivatives, and the squares of both.

    Parameters
    ----------
    confounds : pandas.DataFrame, path to an fMRIPrep ``*_desc-confounds_timeseries.tsv``, or array
        With the six motion columns (an array: ``(n_tr, 6)`` in :data:`MOTION_COLUMNS` order).
        fMRIPrep's own expansion columns (``trans_x_derivative1``, ``trans_x_power2``,
        ``trans_x_derivative1_power2``) are used where present, computed otherwise (backward
        difference, first row 0, as fMRIPrep's ``n/a`` first row is read).
    columns : sequence of str
        Names of the six parameters.

    Returns
    -------
    pandas.DataFrame
        ``(n_tr, 24)``, no missing values.
    """
    import pandas as pd

    if isinstance(confounds, (str, Path)):
        confounds = pd.read_csv(confounds, sep="\t")
    if isinstance(confounds, np.ndarray):
        if confounds.ndim != 2 or confounds.shape[1] != len(columns):
            raise InvalidParameterError(f"a confound array must be (n_tr, {len(columns)}), got {confounds.shape}")
        confounds = pd.DataFrame(confounds, columns=list(columns))
    if not isinstance(confounds, pd.DataFrame):
        raise InvalidParameterError(
            "confounds must be a DataFrame, an fMRIPrep confounds TSV path, or an (n_tr, 6) array"
        )
    missing = [c for c in columns if c not in confounds.columns]
    if missing:
        raise InvalidParameterError(
            f"confounds lack motion column(s) {missing}; fMRIPrep names them {', '.join(MOTION_COLUMNS)}"
        )
    out = {}
    for c in columns:
        base = confounds[c].astype(float).fillna(0.0)
        d = f"{c}_derivative1"
        deriv = confounds[d].astype(float).fillna(0.0) if d in confounds else base.diff().fillna(0.0)
        out[c] = base
        out[d] = deriv
        p, dp = f"{c}_power2", f"{c}_derivative1_power2"
        out[p] = confounds[p].astype(float).fillna(0.0) if p in confounds else base**2
        out[dp] = confounds[dp].astype(float).fillna(0.0) if dp in confounds else deriv**2
    order = [f"{c}{s}" for s in ("", "_derivative1", "_power2", "_derivative1_power2") for c in columns]
    return pd.DataFrame(out)[order]


def _series(kernels: Any) -> tuple[np.ndarray, list[str]]:
    from berg.experiments.kernels import KernelTimeSeries

    if isinstance(kernels, KernelTimeSeries):
        return kernels.data.astype(np.float64), kernels.kernel_names
    x = np.asarray(kernels, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise InvalidParameterError(f"kernel series must be (n_tr, n_kernels), got shape {x.shape}")
    return x, [f"kernel_{k}" for k in range(x.shape[1])]


def kernel_regressors(
    kernels: Any, tr: float, *, hrf_model: str = "spm", oversampling: int = 50, standardize: bool = True
) -> np.ndarray:
    """Kernel time series convolved with an HRF by nilearn, on the volumes' time grid.

    Volume ``k``'s value is an event of onset ``k * tr``, duration ``tr`` and that amplitude
    (:func:`nilearn.glm.first_level.compute_regressor`). The map from values to regressors is linear,
    so it is built once from unit events (one column per volume) and applied to all kernels as one
    matrix product: exactly nilearn's regressor for each kernel, at any number of kernels.

    Parameters
    ----------
    kernels : KernelTimeSeries or ``(n_tr, n_kernels)`` array
    tr : float
    hrf_model : str
        Any nilearn HRF model name (``"spm"`` as the study, ``"glover"``, ...).
    oversampling : int
        nilearn's temporal oversampling.
    standardize : bool
        z-score each kernel's series first (so effects are comparable across kernels).

    Returns
    -------
    np.ndarray
        float64 ``(n_tr, n_kernels)``.
    """
    from nilearn.glm.first_level import compute_regressor

    x, _ = _series(kernels)
    n = x.shape[0]
    if standardize:
        sd = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    key = (n, float(tr), str(hrf_model), int(oversampling))
    conv = _CONV_CACHE.get(key)
    if conv is None:
        frame_times = np.arange(n) * float(tr)
        conv = np.empty((n, n))
        for j in range(n):
            cond = np.array([[j * float(tr)], [float(tr)], [1.0]])
            conv[:, j] = compute_regressor(cond, hrf_model, frame_times, oversampling=oversampling)[0][:, 0]
        _CONV_CACHE.clear()  # one design at a time is what a study uses
        _CONV_CACHE[key] = conv
    return conv @ x


def confound_design(
    n_tr: int, tr: float, confounds: Any = None, *, drift_model: str | None = "cosine", high_pass: float = 0.01
):
    """The shared part of every kernel's design: confounds, nilearn's drift basis and the intercept.

    Returns
    -------
    pandas.DataFrame
        ``(n_tr, n_columns)`` from :func:`nilearn.glm.first_level.make_first_level_design_matrix`.
    """
    from nilearn.glm.first_level import make_first_level_design_matrix

    frame_times = np.arange(int(n_tr)) * float(tr)
    regs, names = None, None
    if confounds is not None:
        import pandas as pd

        df = confounds if isinstance(confounds, pd.DataFrame) else pd.DataFrame(np.asarray(confounds, dtype=float))
        if len(df) != n_tr:
            raise InvalidParameterError(f"confounds have {len(df)} rows for {n_tr} volumes")
        regs, names = df.to_numpy(dtype=float), [str(c) for c in df.columns]
    return make_first_level_design_matrix(
        frame_times, drift_model=drift_model, high_pass=high_pass, add_regs=regs, add_reg_names=names
    )


# ----------------------------------------------------------------------------------- nilearn path
def _kernel_index(names: list[str], kernel: Any) -> int:
    if isinstance(kernel, (int, np.integer)):
        if not 0 <= int(kernel) < len(names):
            raise InvalidParameterError(f"kernel index {kernel} out of range 0..{len(names) - 1}")
        return int(kernel)
    if kernel in names:
        return names.index(kernel)
    from berg.errors import close_matches

    hint = close_matches(str(kernel), names)
    raise InvalidParameterError(
        f"unknown kernel {kernel!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
        f"use an index or a name like {names[0]!r}"
    )


def first_level_kernel_glm(
    run_imgs: Sequence[Any],
    kernels: Any,
    tr: float,
    *,
    kernel: Any,
    confounds: Sequence[Any] | None = None,
    mask_img: Any = None,
    hrf_model: str = "spm",
    noise_model: str = "ar1",
    smoothing_fwhm: float | None = None,
    drift_model: str | None = "cosine",
    high_pass: float = 0.01,
    output_type: str = "effect_size",
) -> list[Any]:
    """One kernel's first-level maps, one per participant, with nilearn's ``FirstLevelModel``.

    Parameters
    ----------
    run_imgs : sequence of 4-D NIfTI images (or paths)
        One run per participant, its volumes aligned with the kernel series (drop the same volumes).
    kernels : KernelTimeSeries or ``(n_tr, n_kernels)`` array
    tr : float
    kernel : int or str
        Which column (``"conv1_1:6"`` or an index).
    confounds : sequence, optional
        Per participant: a DataFrame/array of confounds (e.g. :func:`friston24`).
    mask_img : NIfTI, optional
    hrf_model, noise_model, smoothing_fwhm, drift_model, high_pass
        Passed to nilearn (``noise_model="ols"`` equals :func:`batched_kernel_glm`).
    output_type : str
        What ``compute_contrast`` returns (``"effect_size"``, ``"stat"``, ``"z_score"``, ...).

    Returns
    -------
    list of nibabel images
    """
    from nilearn.glm.first_level import FirstLevelModel

    x, names = _series(kernels)
    k = _kernel_index(names, kernel)
    reg = kernel_regressors(x[:, k], tr, hrf_model=hrf_model)[:, 0]
    if confounds is not None and len(confounds) != len(run_imgs):
        raise InvalidParameterError(f"{len(confounds)} confound tables for {len(run_imgs)} runs")
    out = []
    for s, img in enumerate(run_imgs):
        design = confound_design(
            x.shape[0], tr, None if confounds is None else confounds[s], drift_model=drift_model, high_pass=high_pass
        )
        design.insert(0, "kernel", reg)
        glm = FirstLevelModel(
            mask_img=mask_img,
            noise_model=noise_model,
            smoothing_fwhm=smoothing_fwhm,
            signal_scaling=False,
            minimize_memory=True,
        )
        glm.fit(img, design_matrices=design)
        out.append(glm.compute_contrast("kernel", output_type=output_type))
    return out


@dataclass
class GroupKernelResult:
    """A kernel's group one-sample t-test (nilearn ``SecondLevelModel``).

    Attributes
    ----------
    z_map : nibabel image
    thresholded : nibabel image
        ``z_map`` where significant, 0 elsewhere.
    threshold : float
        The z threshold used.
    n_significant : int
    height_control : str
    alpha : float
    """

    z_map: Any
    thresholded: Any
    threshold: float
    n_significant: int
    height_control: str
    alpha: float

    def plot(self, *, kind: str = "glass", title: str = "", out_path: str | Path | None = None):
        """Glass brain (``kind="glass"``) or stat map (``"stat"``) of the thresholded z map."""
        return plot_kernel_map(self.thresholded, kind=kind, threshold=self.threshold, title=title, out_path=out_path)


def group_kernel_test(
    effect_maps: Sequence[Any],
    *,
    mask_img: Any = None,
    height_control: str = "fpr",
    alpha: float = 0.001,
    two_sided: bool = False,
    smoothing_fwhm: float | None = None,
) -> GroupKernelResult:
    """Group one-sample t-test of first-level effect maps with nilearn, thresholded by nilearn.

    Parameters
    ----------
    effect_maps : sequence of NIfTI images
        One per participant (:func:`first_level_kernel_glm`).
    height_control : {"fpr", "fdr", "bonferroni"}
        ``"fpr"`` with ``alpha=0.001`` is "p < 0.001 voxelwise"; ``"fdr"`` Benjamini-Hochberg.
    alpha : float
    two_sided : bool
        One-sided (positive effects) by default.
    """
    import pandas as pd
    from nilearn.glm import threshold_stats_img
    from nilearn.glm.second_level import SecondLevelModel

    if len(effect_maps) < 2:
        raise InvalidParameterError("a group t-test needs at least 2 participants' maps")
    design = pd.DataFrame({"intercept": np.ones(len(effect_maps))})
    model = SecondLevelModel(mask_img=mask_img, smoothing_fwhm=smoothing_fwhm, minimize_memory=True)
    model.fit(list(effect_maps), design_matrix=design)
    z = model.compute_contrast("intercept", output_type="z_score")
    thr_img, thr = threshold_stats_img(
        z, mask_img=model.masker_.mask_img_, alpha=alpha, height_control=height_control, two_sided=two_sided
    )
    n_sig = int(np.count_nonzero(np.asarray(thr_img.dataobj)))
    return GroupKernelResult(z, thr_img, float(thr), n_sig, height_control, float(alpha))


# ----------------------------------------------------------------------------------- batched path
@dataclass
class BatchedGLM:
    """OLS kernel GLMs of one participant, all kernels at once.

    Attributes
    ----------
    beta : np.ndarray
        float32 ``(n_kernels, n_voxels)``: each kernel's effect size (its own GLM).
    t : np.ndarray
        float32 ``(n_kernels, n_voxels)``.
    dof : int
        Residual degrees of freedom of each kernel's GLM (``n_tr - rank(confounds) - 1``).
    kernel_names : list of str
    """

    beta: np.ndarray
    t: np.ndarray
    dof: int
    kernel_names: list[str] = field(default_factory=list)


def _as_voxels(data: Any, mask_img: Any) -> np.ndarray:
    from berg.experiments.validation import as_matrix

    return as_matrix(data, mask_img, name="bold")


def batched_kernel_glm(
    bold: Any,
    kernels: Any,
    tr: float,
    *,
    confounds: Any = None,
    mask_img: Any = None,
    hrf_model: str = "spm",
    drift_model: str | None = "cosine",
    high_pass: float = 0.01,
    regressors: np.ndarray | None = None,
    kernel_chunk: int = 1024,
    device: str = "cpu",
) -> BatchedGLM:
    """Every kernel's OLS GLM on every voxel of one participant, as batched matrix products.

    For kernel ``k``, the model is ``y = b_k x_k + C g + e`` with the shared confound design ``C``
    (:func:`confound_design`). With ``M = I - C C^+`` (applied through a QR basis of ``C``),
    ``b_k = (M x_k)' (M y) / |M x_k|^2`` and ``RSS_k = |M y|^2 - b_k^2 |M x_k|^2``, so the whole
    ``(n_kernels, n_voxels)`` problem is one product of ``(n_kernels, n_tr)`` by ``(n_tr, n_voxels)``
    (chunked over kernels) plus elementwise work.

    Parameters
    ----------
    bold : ``(n_tr, n_voxels)`` array or 4-D NIfTI (with ``mask_img``)
    kernels : KernelTimeSeries or ``(n_tr, n_kernels)`` array
    tr : float
    confounds : DataFrame or array, optional
        e.g. :func:`friston24`.
    mask_img : NIfTI, optional
    hrf_model, drift_model, high_pass
        As in nilearn.
    regressors : array, optional
        Precomputed :func:`kernel_regressors` (shared by all participants of a study).
    kernel_chunk : int
        Kernels per matrix product (memory: ``kernel_chunk x n_voxels`` float32 twice).
    device : str
        torch device for the products (``"cuda"`` runs them on the GPU).

    Returns
    -------
    BatchedGLM
    """
    import torch

    from berg.features import resolve_device

    y = _as_voxels(bold, mask_img)
    x, names = _series(kernels)
    n = y.shape[0]
    if x.shape[0] != n:
        raise InvalidParameterError(f"kernel series have {x.shape[0]} volumes, the data {n}")
    xr = kernel_regressors(x, tr, hrf_model=hrf_model) if regressors is None else np.asarray(regressors, float)
    if xr.shape != x.shape:
        raise InvalidParameterError(f"regressors {xr.shape} do not match the kernel series {x.shape}")
    c = confound_design(n, tr, confounds, drift_model=drift_model, high_pass=high_pass).to_numpy(dtype=np.float64)
    q, r = np.linalg.qr(c)
    rank = int(np.sum(np.abs(np.diag(r)) > 1e-10 * max(1.0, np.abs(np.diag(r)).max())))
    q = q[:, np.abs(np.diag(r)) > 1e-10 * max(1.0, np.abs(np.diag(r)).max())]
    dof = n - rank - 1
    if dof < 1:
        raise InvalidParameterError(f"{n} volumes leave no residual degrees of freedom for {rank + 1} regressors")
    # Residualise once, in float64 (the data are n_tr x n_voxels, small next to the products).
    y_res = y - q @ (q.T @ y)
    x_res = xr - q @ (q.T @ xr)
    sxx = np.einsum("ij,ij->j", x_res, x_res)
    syy = np.einsum("ij,ij->j", y_res, y_res)
    dev = resolve_device(device)
    yt = torch.as_tensor(y_res, dtype=torch.float32, device=dev)
    syy_t = torch.as_tensor(syy, dtype=torch.float32, device=dev)
    k = x.shape[1]
    beta = np.empty((k, y.shape[1]), dtype=np.float32)
    tval = np.empty((k, y.shape[1]), dtype=np.float32)
    for a in range(0, k, int(kernel_chunk)):
        b = min(k, a + int(kernel_chunk))
        s = torch.as_tensor(sxx[a:b], dtype=torch.float32, device=dev)[:, None]
        xt = torch.as_tensor(x_res[:, a:b].T, dtype=torch.float32, device=dev)
        with torch.inference_mode():
            # In place, two (chunk, n_voxels) buffers: beta = x'y / s; sigma = sqrt(RSS / dof) with
            # RSS = y'y - beta^2 s; t = beta sqrt(s) / sigma (0 where the fit is exact).
            bt = (xt @ yt).div_(s)
            sigma = bt.square().mul_(s).neg_().add_(syy_t[None, :]).clamp_(min=0.0).div_(dof).sqrt_()
            tt = sigma.reciprocal_().mul_(bt).mul_(s.sqrt()).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        beta[a:b] = bt.cpu().numpy()
        tval[a:b] = tt.cpu().numpy()
    return BatchedGLM(beta=beta, t=tval, dof=dof, kernel_names=names)


@dataclass
class GroupTTest:
    """Group one-sample t-tests for all kernels at once.

    Attributes
    ----------
    t, z, p : np.ndarray
        ``(n_kernels, n_voxels)``; ``p`` one-sided (positive effects) unless ``two_sided``.
    dof : int
    kernel_names : list of str
    two_sided : bool
    """

    t: np.ndarray
    z: np.ndarray
    p: np.ndarray
    dof: int
    kernel_names: list[str]
    two_sided: bool = False

    def significant(self, *, height_control: str = "fpr", alpha: float = 0.001) -> np.ndarray:
        """Boolean ``(n_kernels, n_voxels)``: p < alpha voxelwise (``"fpr"``) or FDR per kernel (``"fdr"``)."""
        return threshold_mask(self.z, height_control=height_control, alpha=alpha, two_sided=self.two_sided)


def group_t_test(
    betas: Sequence[np.ndarray] | np.ndarray, *, two_sided: bool = False, kernel_names: Sequence[str] | None = None
) -> GroupTTest:
    """One-sample t-test across participants, per kernel and voxel (what ``SecondLevelModel`` does per map).

    Parameters
    ----------
    betas : sequence of ``(n_kernels, n_voxels)`` arrays or array ``(n_subjects, n_kernels, n_voxels)``
        Per-participant effect sizes (``BatchedGLM.beta``) on the same voxels.
    two_sided : bool

    Returns
    -------
    GroupTTest
    """
    from scipy import stats

    b = np.asarray(betas if isinstance(betas, np.ndarray) else np.stack(list(betas)), dtype=np.float64)
    if b.ndim != 3 or b.shape[0] < 2:
        raise InvalidParameterError(f"need (n_subjects >= 2, n_kernels, n_voxels) effect sizes, got {b.shape}")
    n = b.shape[0]
    mean = b.mean(axis=0)
    sd = b.std(axis=0, ddof=1)
    t = np.divide(mean * np.sqrt(n), sd, out=np.zeros_like(mean), where=sd > 0)
    dof = n - 1
    p = 2 * stats.t.sf(np.abs(t), dof) if two_sided else stats.t.sf(t, dof)
    # z with the same tail probability (what nilearn reports as z_score)
    z = (
        np.sign(t) * stats.norm.isf(np.clip(p / 2 if two_sided else p, 1e-300, 1.0))
        if two_sided
        else stats.norm.isf(np.clip(p, 1e-300, 1.0))
    )
    names = list(kernel_names) if kernel_names is not None else [f"kernel_{k}" for k in range(b.shape[1])]
    return GroupTTest(
        t=t.astype(np.float32), z=z.astype(np.float32), p=p, dof=dof, kernel_names=names, two_sided=two_sided
    )


def threshold_mask(
    z: np.ndarray, *, height_control: str = "fpr", alpha: float = 0.001, two_sided: bool = False
) -> np.ndarray:
    """Significant voxels of z maps ``(n_maps, n_voxels)``, with nilearn's thresholds.

    ``"fpr"``: ``p < alpha`` per voxel; ``"fdr"``: Benjamini-Hochberg within each map
    (:func:`nilearn.glm.fdr_threshold`); ``"bonferroni"``: ``p < alpha / n_voxels``.
    """
    from nilearn.glm import fdr_threshold
    from scipy import stats

    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    a = alpha / 2 if two_sided else alpha
    stat = np.abs(z) if two_sided else z
    if height_control == "fpr":
        return stat > stats.norm.isf(a)
    if height_control == "bonferroni":
        return stat > stats.norm.isf(a / z.shape[1])
    if height_control == "fdr":
        out = np.zeros(z.shape, dtype=bool)
        for i, row in enumerate(stat):
            thr = fdr_threshold(row, a)
            out[i] = row >= thr
        return out
    raise InvalidParameterError(f"height_control={height_control!r}; valid: 'fpr', 'fdr', 'bonferroni'")


# ------------------------------------------------------------------------------------ summaries
def _layer_of(names: Sequence[str], layers: Mapping[str, tuple[int, int]] | None) -> list[str]:
    if layers is None:
        return [n.split(":")[0] if ":" in n else "all" for n in names]
    out = ["?"] * len(names)
    for layer, (a, b) in layers.items():
        out[a:b] = [layer] * (b - a)
    return out


def layer_summary(
    significant: np.ndarray,
    labels: np.ndarray,
    *,
    region_names: Mapping[int, str] | None = None,
    kernel_names: Sequence[str] | None = None,
    layers: Mapping[str, tuple[int, int]] | None = None,
    min_voxels: int = 1,
):
    """How many kernels of each layer reach each region.

    Parameters
    ----------
    significant : bool ``(n_kernels, n_voxels)``
        e.g. ``GroupTTest.significant()``.
    labels : int ``(n_voxels,)``
        Atlas label of each voxel (0 = none), e.g. a nilearn atlas resampled to the data and masked.
    region_names : mapping, optional
        Label -> name.
    kernel_names : sequence of str, optional
        ``"conv1_1:6"``-style names (the layer is the part before ``":"``).
    layers : mapping, optional
        Layer -> column range (``KernelTimeSeries.layers``), instead of names.
    min_voxels : int
        A kernel "reaches" a region with at least this many significant voxels in it.

    Returns
    -------
    pandas.DataFrame
        Index: layers (network order), columns: regions, values: numbers of kernels.
    """
    import pandas as pd

    sig = np.asarray(significant, dtype=bool)
    lab = np.asarray(labels).astype(np.int64).ravel()
    if sig.ndim != 2 or sig.shape[1] != lab.size:
        raise InvalidParameterError(f"significant {sig.shape} and labels ({lab.size},) must share the voxel axis")
    names = list(kernel_names) if kernel_names is not None else [f"kernel_{k}" for k in range(sig.shape[0])]
    layer_of = _layer_of(names, layers)
    regions = [int(r) for r in np.unique(lab) if r != 0]
    hits = (
        np.stack([sig[:, lab == r].sum(axis=1) >= min_voxels for r in regions], axis=1)
        if regions
        else np.zeros((sig.shape[0], 0), dtype=bool)
    )
    rn = [str((region_names or {}).get(r, r)) for r in regions]
    df = pd.DataFrame(hits.astype(int), columns=rn)
    df.insert(0, "layer", layer_of)
    return df.groupby("layer", sort=False).sum()


def kernels_reaching(
    significant: np.ndarray,
    labels: np.ndarray,
    region: int,
    *,
    kernel_names: Sequence[str] | None = None,
    min_voxels: int = 1,
) -> list[str]:
    """Names of the kernels with at least ``min_voxels`` significant voxels in one region (e.g. the PCC)."""
    sig = np.asarray(significant, dtype=bool)
    lab = np.asarray(labels).astype(np.int64).ravel()
    names = list(kernel_names) if kernel_names is not None else [f"kernel_{k}" for k in range(sig.shape[0])]
    hit = sig[:, lab == int(region)].sum(axis=1) >= min_voxels
    return [names[i] for i in np.flatnonzero(hit)]


def plot_kernel_map(
    stat_img: Any,
    *,
    kind: str = "glass",
    threshold: float | None = None,
    title: str = "",
    out_path: str | Path | None = None,
):
    """A nilearn glass brain (``"glass"``) or stat map (``"stat"``) of a z map; returns the figure."""
    from nilearn import plotting

    from berg.experiments.validation import _pyplot, save_figure

    plt = _pyplot()
    fig = plt.figure(figsize=(8, 3.2))
    if kind == "glass":
        plotting.plot_glass_brain(
            stat_img, threshold=threshold, colorbar=True, title=title or None, figure=fig, plot_abs=False
        )
    elif kind == "stat":
        plotting.plot_stat_map(
            stat_img, threshold=threshold, colorbar=True, title=title or None, figure=fig, bg_img=None, draw_cross=False
        )
    else:
        raise InvalidParameterError(f"kind={kind!r}; valid: 'glass', 'stat'")
    if out_path is not None:
        save_figure(fig, out_path)
    return fig


def plot_layer_summary(
    summary: Any, *, title: str = "kernels reaching each region", out_path: str | Path | None = None
):
    """Heat map of :func:`layer_summary` (layers x regions, number of kernels)."""
    from berg.experiments.validation import _pyplot, save_figure

    plt = _pyplot()
    values = np.asarray(summary.to_numpy(), dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * max(1, values.shape[1]), 1.0 + 0.35 * values.shape[0]))
    im = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]))
    ax.set_xticklabels(list(summary.columns), rotation=45, ha="right")
    ax.set_yticks(range(values.shape[0]))
    ax.set_yticklabels(list(summary.index))
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{int(values[i, j])}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="kernels")
    ax.set_title(title)
    if out_path is not None:
        save_figure(fig, out_path)
    return fig
