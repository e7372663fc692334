"""img2fmri's spatial pipeline without AFNI/FSL: subject grid -> MNI152 2 mm group map.

img2fmri (Bennett & Baldassano 2023) turns per-subject ROI predictions into a group map by shelling
out to AFNI ``3dresample`` and FSL ``applywarp`` / ``fslmaths -s``. All of that is linear and fixed,
so berg computes it once:

* :func:`nn_index_map` (conversion time only, needs fslpy): the nearest-neighbour copy each MNI voxel
  receives from a subject's functional grid, composed of the FNIRT cubic-spline warp, the fsl_anat
  premat and AFNI's header-only resampling onto the T1 grid. Both nearest-neighbour steps round
  half-up (``floor(x + 0.5)``); T1 voxels sit exactly half-way between functional voxels on every
  other slice, so the tie rule decides which voxel wins.
* :func:`fsl_smooth` / :func:`smoothing_matrix`: ``fslmaths -s sigma`` (separable Gaussian, sigma in
  mm, radius ``ceil(4 sigma / voxel)`` voxels, renormalised where the kernel leaves the grid).
* :func:`placement_matrix`: img2fmri's ``brain[mask] = pred`` writes with a sequential ``nanmean``
  where ROIs overlap.
* :class:`GroupMapper`: the composition of the above as one sparse matrix per subject (rows of the
  readout -> voxels of the z-scoring support), then img2fmri's ``zscore(sum_s zscore(.))``.

At run time only numpy/scipy are needed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError

__all__ = [
    "MNI_SHAPE",
    "MNI_AFFINE",
    "SUPPORTS",
    "round_half_up",
    "nn_index_map",
    "gaussian_kernel",
    "fsl_smooth",
    "smoothing_matrix",
    "placement_matrix",
    "mask_voxels",
    "zscore",
    "GroupMapper",
    "ComposedGroupMap",
    "mni_arrays",
]

log = logging.getLogger(__name__)

#: Shape of the MNI152 2 mm grid img2fmri writes.
MNI_SHAPE: tuple[int, int, int] = (91, 109, 91)
#: Its voxel-to-mm affine (FSL's MNI152_T1_2mm, radiological storage).
MNI_AFFINE = np.array([[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0], [0.0, 0.0, 0.0, 1.0]])
#: z-scoring supports: img2fmri 1.0 (thresholded sigma=1 ROI masks) and 0.2 (everything smoothed).
SUPPORTS = ("v1.0", "v0.2")
#: img2fmri's overlap threshold (fraction of each smoothed mask's maximum).
OVERLAP_THRESHOLD = 0.15
VOXEL_ORDERS = ("c", "fortran")


def round_half_up(x: np.ndarray) -> np.ndarray:
    """Nearest integer with ties rounded up, as FSL and AFNI do for nearest-neighbour lookups."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


# ---------------------------------------------------------------------------------------------- warp
def nn_index_map(
    *,
    coeff: str | Path,
    ref: str | Path,
    t1: str | Path,
    premat: str | Path,
    func_shape: Sequence[int],
    func_affine: np.ndarray,
) -> np.ndarray:
    """For every MNI voxel, the functional voxel img2fmri's AFNI + FSL chain copies into it.

    Parameters
    ----------
    coeff : path
        FNIRT cubic-spline coefficient file (``T1_to_MNI_nonlin_coeff.nii.gz``).
    ref : path
        The warp's reference image (``T1_to_MNI_nonlin.nii.gz``, MNI 2 mm); only its header is read.
    t1 : path
        The full-FOV T1 that AFNI resamples onto (header only).
    premat : path
        fsl_anat's ``T1_nonroi2roi.mat`` (full-FOV T1 -> cropped T1, FSL scaled-voxel mm).
    func_shape, func_affine
        The subject's functional grid.

    Returns
    -------
    np.ndarray
        int64 ``(prod(ref.shape),)``: C-order flat index into the functional grid, ``-1`` where the
        MNI voxel receives nothing (outside the T1 or the functional field of view).

    Notes
    -----
    Needs ``fslpy`` (a conversion-time extra): it evaluates the spline field exactly as FSL does.
    """
    from berg.errors import require_extra

    purpose = "img2fmri's MNI conversion (FNIRT warp fields)"
    Image = require_extra("fsl.data.image", "convert", purpose, package="fslpy").Image
    readFnirt = require_extra("fsl.transform.fnirt", "convert", purpose, package="fslpy").readFnirt

    t1_img = Image(str(t1), loadData=False)
    ref_img = Image(str(ref), loadData=False)
    # The field's source is the cropped ("roi") T1; its FSL coordinates differ from the full T1's only
    # by the premat (fslroi crops along z), so the full T1 stands in for the source geometry here and
    # the premat is undone explicitly below.
    field = readFnirt(str(coeff), src=t1_img, ref=ref_img)
    ijk = np.indices(ref_img.shape[:3]).reshape(3, -1).T.astype(np.float64)
    roi_fsl = field.transform(ijk, "voxel", "fsl", premat=True)
    inv_premat = np.linalg.inv(np.loadtxt(str(premat)))
    fsl_to_vox = t1_img.getAffine("fsl", "voxel") @ inv_premat
    t1_vox = round_half_up(roi_fsl @ fsl_to_vox[:3, :3].T + fsl_to_vox[:3, 3])
    inside = np.all((t1_vox >= 0) & (t1_vox < np.array(t1_img.shape[:3])), axis=1)
    # AFNI 3dresample -master T1 (nearest neighbour, header geometry): T1 voxel -> functional voxel.
    t1_to_func = np.linalg.inv(np.asarray(func_affine, dtype=np.float64)) @ t1_img.getAffine("voxel", "world")
    func_vox = round_half_up(t1_vox @ t1_to_func[:3, :3].T + t1_to_func[:3, 3])
    inside &= np.all((func_vox >= 0) & (func_vox < np.array(func_shape)), axis=1)
    out = np.full(ijk.shape[0], -1, dtype=np.int64)
    out[inside] = np.ravel_multi_index(tuple(func_vox[inside].T), tuple(int(n) for n in func_shape))
    return out


# ----------------------------------------------------------------------------------------- smoothing
def _check_sigma(sigma: float) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating, np.integer)) or not sigma > 0:
        raise InvalidParameterError(f"sigma must be a positive number of mm (img2fmri default 1), got {sigma!r}")
    return float(sigma)


def gaussian_kernel(sigma: float, voxel_size: float = 2.0) -> np.ndarray:
    """FSL's 1-D Gaussian: ``exp(-x^2 / 2 sigma^2)`` at voxel offsets (mm), radius ``ceil(4 sigma / voxel)``.

    Not normalised: :func:`fsl_smooth` renormalises by the in-grid kernel mass anyway.
    """
    sigma = _check_sigma(sigma)
    radius = int(np.ceil(4.0 * sigma / voxel_size))
    x = np.arange(-radius, radius + 1) * float(voxel_size)
    return np.exp(-(x**2) / (2.0 * sigma**2))


def _edge_norms(shape: Sequence[int], kernel: np.ndarray) -> list[np.ndarray]:
    """Per axis, the kernel mass inside the grid at each output position (the renormaliser)."""
    from scipy.ndimage import correlate1d

    return [correlate1d(np.ones(int(n)), kernel, mode="constant", cval=0.0) for n in shape]


def fsl_smooth(volume: np.ndarray, sigma: float, voxel_size: float = 2.0) -> np.ndarray:
    """``fslmaths in -s sigma out`` on a 3-D array (or a stack ``(X, Y, Z, n)``), in float64.

    Separable Gaussian, sigma in mm, renormalised by the kernel mass inside the grid.
    """
    from scipy.ndimage import correlate1d

    out = np.asarray(volume, dtype=np.float64)
    kernel = gaussian_kernel(sigma, voxel_size)
    norms = _edge_norms(out.shape[:3], kernel)
    for axis in range(3):
        shape = [1] * out.ndim
        shape[axis] = -1
        out = correlate1d(out, kernel, axis=axis, mode="constant", cval=0.0) / norms[axis].reshape(shape)
    return out


def smoothing_matrix(sources: np.ndarray, sigma: float, shape: Sequence[int] = MNI_SHAPE, voxel_size: float = 2.0):
    """:func:`fsl_smooth` restricted to inputs at ``sources``, as a sparse matrix.

    Parameters
    ----------
    sources : (n,) int array
        C-order flat indices of the (only) voxels that may be non-zero.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(prod(shape), n)``: column ``j`` is the smoothed image of a unit impulse at ``sources[j]``.
    """
    from scipy import sparse

    kernel = gaussian_kernel(sigma, voxel_size)
    r = (kernel.size - 1) // 2
    norms = _edge_norms(shape, kernel)
    src = np.stack(np.unravel_index(np.asarray(sources, dtype=np.int64), tuple(shape)), axis=1)
    offs = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    tgt = src[:, None, :] + offs[None, :, :]  # (n, K, 3)
    inside = np.all((tgt >= 0) & (tgt < np.array(shape)), axis=2)
    col = np.broadcast_to(np.arange(src.shape[0])[:, None], inside.shape)[inside]
    tgt = tgt[inside]
    d = np.broadcast_to(offs[None], (src.shape[0],) + offs.shape)[inside] + r
    w = kernel[d[:, 0]] * kernel[d[:, 1]] * kernel[d[:, 2]]
    w /= norms[0][tgt[:, 0]] * norms[1][tgt[:, 1]] * norms[2][tgt[:, 2]]
    row = np.ravel_multi_index(tuple(tgt.T), tuple(shape))
    n_vox = int(np.prod(shape))
    return sparse.csr_matrix((w, (row, col)), shape=(n_vox, src.shape[0]))


# ----------------------------------------------------------------------------------------- placement
def mask_voxels(mask: np.ndarray, voxel_order: str = "c") -> np.ndarray:
    """Flat (C-order) indices of a mask's voxels, enumerated in ``voxel_order``.

    ``"c"`` is numpy's ``brain[mask]`` order (what img2fmri used); ``"fortran"`` enumerates the first
    axis fastest (MATLAB/SPM column-major order).
    """
    from berg.core.spaces import mask_voxel_indices

    if voxel_order not in VOXEL_ORDERS:
        raise InvalidParameterError(f"voxel_order={voxel_order!r}; valid: {', '.join(VOXEL_ORDERS)}")
    return mask_voxel_indices(mask, voxel_order)


def placement_matrix(blocks: Sequence[tuple[np.ndarray, np.ndarray]], n_voxels: int, n_rows: int):
    """img2fmri's writes of ROI predictions into a subject grid, as a sparse linear map.

    Parameters
    ----------
    blocks : sequence of (rows, voxels)
        In write order (``roi_list`` order, LH then RH): prediction rows and the flat grid voxels they
        are written to. img2fmri combines each write with what is there by ``nanmean`` of the two, so
        a voxel written twice holds ``(a + b) / 2`` and a third write gives ``((a + b) / 2 + c) / 2``.
    n_voxels, n_rows : int
        Grid size and number of prediction rows.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n_voxels, n_rows)``; untouched voxels have empty rows (img2fmri's NaN, which AFNI reads as 0).
    """
    from scipy import sparse

    weights: dict[int, dict[int, float]] = {}
    for rows, voxels in blocks:
        if len(rows) != len(voxels):
            raise InvalidParameterError(f"block with {len(rows)} rows for {len(voxels)} voxels")
        for r, v in zip(np.asarray(rows).tolist(), np.asarray(voxels).tolist()):
            cur = weights.get(v)
            if cur is None:
                weights[v] = {r: 1.0}
            else:  # nanmean([existing, new]) = existing / 2 + new / 2
                new = {k: w / 2.0 for k, w in cur.items()}
                new[r] = new.get(r, 0.0) + 0.5
                weights[v] = new
    ii, jj, ww = [], [], []
    for v, row_w in weights.items():
        for r, w in row_w.items():
            ii.append(v)
            jj.append(r)
            ww.append(w)
    return sparse.csr_matrix((ww, (ii, jj)), shape=(n_voxels, n_rows))


def zscore(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``scipy.stats.zscore`` (ddof 0) in float64; constant vectors give zeros instead of NaN."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=axis, keepdims=True)
    sd = x.std(axis=axis, keepdims=True)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


# ------------------------------------------------------------------------------------------- group
@dataclass
class SubjectGeometry:
    """What the group map needs of one subject (from the converted artifact).

    Attributes
    ----------
    func_shape : (int, int, int)
        Functional grid.
    blocks : list of (roi, hemi, start, stop)
        Readout rows of each ROI hemisphere (img2fmri's row order: LH then RH per ROI).
    masks : dict
        ``"LHPPA"`` -> flat C indices of the mask's functional voxels (sorted).
    mni_index, func_index : int arrays
        Nearest-neighbour map restricted to MNI voxels fed by ROI voxels: MNI voxel ``mni_index[i]``
        copies functional voxel ``func_index[i]``.
    overlap : dict
        ``"LHPPA"`` -> flat MNI indices where the sigma = 1 smoothed mask exceeds 0.15 x its maximum.
    """

    func_shape: tuple[int, int, int]
    blocks: list[tuple[str, str, int, int]]
    masks: dict[str, np.ndarray]
    mni_index: np.ndarray
    func_index: np.ndarray
    overlap: dict[str, np.ndarray]


class GroupMapper:
    """Per-subject ROI predictions -> img2fmri's group z-map on the MNI152 2 mm grid.

    Everything that depends only on ``roi_list``, ``sigma``, ``voxel_order`` and ``support`` is folded
    into one sparse matrix per subject at construction; mapping a batch is then a sparse product and
    two z-scorings.

    Parameters
    ----------
    geometry : dict
        Subject -> :class:`SubjectGeometry`.
    rows : dict
        Subject -> int array: which full-readout rows the predictions passed to :meth:`__call__` hold,
        in column order (what the engine's ROI selection kept). Must cover ``roi_list``.
    roi_list : sequence of str
        ROIs to place, in img2fmri's write order (matters only where ROIs overlap).
    sigma : float
        Smoothing sigma in mm.
    voxel_order : {"c", "fortran"}
        How each ROI hemisphere's rows are laid onto its mask (see :func:`mask_voxels`).
    support : {"v1.0", "v0.2"}
        z-scoring support: img2fmri 1.0's overlap (union of the chosen ROIs' sigma = 1 masks above
        0.15 x max, all subjects and hemispheres), or 0.2's (every voxel any subject's smoothed map
        reaches).
    """

    def __init__(
        self,
        geometry: Mapping[Any, SubjectGeometry],
        rows: Mapping[Any, np.ndarray],
        *,
        roi_list: Sequence[str],
        sigma: float = 1.0,
        voxel_order: str = "c",
        support: str = "v1.0",
    ):
        from scipy import sparse

        if voxel_order not in VOXEL_ORDERS:
            raise InvalidParameterError(f"voxel_order={voxel_order!r}; valid: {', '.join(VOXEL_ORDERS)}")
        if support not in SUPPORTS:
            raise InvalidParameterError(f"support={support!r}; valid: {', '.join(SUPPORTS)}")
        self.sigma = _check_sigma(sigma)
        self.roi_list = list(roi_list)
        self.voxel_order = voxel_order
        self.support_kind = support
        self.subjects = list(geometry)
        n_mni = int(np.prod(MNI_SHAPE))
        full: dict[Any, Any] = {}
        for s, geo in geometry.items():
            sel = np.asarray(rows[s], dtype=np.int64)
            col_of = {int(r): c for c, r in enumerate(sel.tolist())}
            blocks = []
            for roi in self.roi_list:
                for roi_name, hemi, start, stop in geo.blocks:
                    if roi_name != roi:
                        continue
                    try:
                        cols = np.array([col_of[r] for r in range(start, stop)], dtype=np.int64)
                    except KeyError as exc:
                        raise InvalidParameterError(
                            f"subject {s}: rows of {hemi}{roi} are not among the loaded outputs"
                        ) from exc
                    mask = np.zeros(int(np.prod(geo.func_shape)), dtype=bool)
                    mask[geo.masks[hemi + roi]] = True
                    vox = mask_voxels(mask.reshape(geo.func_shape), voxel_order)
                    if vox.size != cols.size:
                        raise InvalidParameterError(
                            f"subject {s} {hemi}{roi}: {cols.size} rows but {vox.size} mask voxels"
                        )
                    blocks.append((cols, vox))
            place = placement_matrix(blocks, int(np.prod(geo.func_shape)), sel.size)
            # Nearest-neighbour copy: MNI voxel <- functional voxel (only ROI-fed voxels are stored).
            fed = place[geo.func_index]  # (n_fed, n_cols)
            keep = np.flatnonzero(fed.getnnz(axis=1))
            smooth = smoothing_matrix(geo.mni_index[keep], self.sigma)
            full[s] = (smooth @ fed[keep]).tocsr()  # (n_mni, n_cols)
        if support == "v1.0":
            mask = np.zeros(n_mni, dtype=bool)
            for geo in geometry.values():
                for roi in self.roi_list:
                    for hemi in ("LH", "RH"):
                        mask[geo.overlap[hemi + roi]] = True
        else:
            mask = np.zeros(n_mni, dtype=bool)
            for op in full.values():
                mask |= op.getnnz(axis=1) > 0
        self.support = np.flatnonzero(mask)
        #: subject -> sparse (n_support, n_cols) operator
        self.operators = {s: sparse.csr_matrix(op[self.support]) for s, op in full.items()}

    @property
    def n_outputs(self) -> int:
        """Number of support voxels (columns of :meth:`__call__`'s result)."""
        return int(self.support.size)

    def subject_maps(self, predictions: Mapping[Any, np.ndarray]) -> dict[Any, np.ndarray]:
        """Smoothed MNI values of each subject on the support, float64 ``(b, n_support)``."""
        return {
            s: np.asarray((self.operators[s] @ np.asarray(predictions[s], dtype=np.float64).T).T) for s in self.subjects
        }

    def __call__(self, predictions: Mapping[Any, np.ndarray]) -> np.ndarray:
        """Group map on the support: ``zscore(sum_s zscore(subject map))``, float32 ``(b, n_support)``."""
        maps = self.subject_maps(predictions)
        total = sum(zscore(m, axis=1) for m in maps.values())
        return zscore(total, axis=1).astype(np.float32)

    def voxel_ijk(self) -> np.ndarray:
        """MNI grid indices ``(n_support, 3)`` of the outputs."""
        return np.stack(np.unravel_index(self.support, MNI_SHAPE), axis=1)

    def compose(
        self, readouts: Mapping[Any, tuple[np.ndarray, np.ndarray]], *, device: str = "cpu", dtype: str = "float64"
    ) -> ComposedGroupMap:
        """Fold the readouts and the whole map into one matrix: features -> group map, one matmul per batch.

        Readout, placement, nearest-neighbour copy, smoothing and the mean removal of each z-scoring
        are linear; they become one dense ``(n_support, k)`` operator ``A_s`` and bias ``c_s`` per
        subject (see :class:`ComposedGroupMap` for how the divisions by standard deviations are folded
        in too).

        Parameters
        ----------
        readouts : dict
            Subject -> ``(weight (n_cols, k), bias (n_cols,))``, the rows this mapper was built for.
        device : str
            torch device of the product.
        dtype : {"float64", "float32"}
            Precision of the one large product (the small statistics are always float64). float64
            (default) matches the step-by-step map to ~3e-8; float32 only to ~1.5e-5, because the
            folded bias and feature terms cancel in the sum.
        """
        blocks = []
        for s in self.subjects:
            weight, bias = readouts[s]
            op = self.operators[s]
            if weight.shape[0] != op.shape[1]:
                raise InvalidParameterError(
                    f"subject {s}: readout has {weight.shape[0]} rows, the map expects {op.shape[1]}"
                )
            a = np.asarray(op @ np.asarray(weight, dtype=np.float64))  # (n_support, k), float64
            c = np.asarray(op @ np.asarray(bias, dtype=np.float64)).ravel()
            blocks.append((a - a.mean(axis=0, keepdims=True), c - c.mean()))
        return ComposedGroupMap(blocks, device=device, dtype=dtype)


class ComposedGroupMap:
    """img2fmri's group map straight from backbone features, as one matrix product per batch.

    With ``y_s = f A_s' + c_s`` (centred per image by construction) the group map is
    ``z = t / sd(t)``, ``t = sum_s y_s / sd(y_s)``. Write ``g = [f, 1]`` and ``B_s = [A_s'; c_s]``: then
    ``y_s = g B_s`` and ``sd(y_s)^2 = g G_ss g'`` with ``G = B B' / n_support`` (``B`` all ``B_s``
    stacked), a ``(k + 1)``-sized quadratic form. So each image's scales come from small float64
    products, and ``z = [g / sd_1, ..., g / sd_S] / sd(t) @ B`` is a single ``(b, S (k + 1)) @
    (S (k + 1), n_support)`` product: no pass over ``(b, S, n_support)`` intermediates at all.

    ``__call__(features)`` equals ``GroupMapper(readouts(features))`` to ~1e-6.
    """

    def __init__(self, blocks: Sequence[tuple[np.ndarray, np.ndarray]], *, device: str = "cpu", dtype: str = "float64"):
        import torch

        if dtype not in ("float32", "float64"):
            raise InvalidParameterError(f"dtype={dtype!r}; valid: 'float32', 'float64'")
        b = np.concatenate([np.vstack([a.T, c[None, :]]) for a, c in blocks])  # (S (k + 1), n_support)
        self.n_subjects = len(blocks)
        self.k1 = blocks[0][0].shape[1] + 1
        self.n_support = int(b.shape[1])
        self._torch = torch
        self.gram = torch.as_tensor(b @ b.T / self.n_support, dtype=torch.float64, device=device)
        self.weight = torch.as_tensor(np.ascontiguousarray(b), dtype=getattr(torch, dtype), device=device)

    @property
    def n_outputs(self) -> int:
        return self.n_support

    def __call__(self, features) -> np.ndarray:
        """Backbone features ``(b, k)`` (torch tensor or array) -> group z-maps ``(b, n_support)`` float32."""
        torch = self._torch
        with torch.inference_mode():
            f = torch.as_tensor(features, device=self.gram.device).to(torch.float64)
            g = torch.cat([f, torch.ones((f.shape[0], 1), dtype=f.dtype, device=f.device)], dim=1)
            parts = []
            for s in range(self.n_subjects):
                sl = slice(s * self.k1, (s + 1) * self.k1)
                sd = ((g @ self.gram[sl, sl]) * g).sum(dim=1).clamp_min(0).sqrt()
                parts.append(g / torch.where(sd > 0, sd, torch.ones_like(sd))[:, None])  # zscore(): 0 stays 0
            scaled = torch.cat(parts, dim=1)
            sd_t = ((scaled @ self.gram) * scaled).sum(dim=1).clamp_min(0).sqrt()
            scaled = scaled / torch.where(sd_t > 0, sd_t, torch.ones_like(sd_t))[:, None]
            out = scaled.to(self.weight.dtype) @ self.weight
            return out.to(torch.float32).cpu().numpy()


# ------------------------------------------------------------------------------- conversion helper
def mni_arrays(root: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """The ``mni/`` part of the artifact, from an extracted img2fmri wheel (conversion time, needs fslpy).

    Parameters
    ----------
    root : path
        The extracted wheel's ``img2fmri`` package directory (holding ``derivatives/``).

    Returns
    -------
    dict
        ``{"sub-0S": {"nn_index": int64 (91*109*91,)}, "overlap": {"sub-0S/LHPPA": int64 flat MNI
        indices, ...}}``. ``nn_index`` is :func:`nn_index_map`; the overlap sets are img2fmri's
        ``s_bool_masks > 0.15 * max`` (the shipped sigma = 1 masks, read as published).
    """
    import nibabel as nib

    der = Path(root) / "derivatives"
    out: dict[str, dict[str, np.ndarray]] = {"overlap": {}}
    rois = ("EarlyVis", "OPA", "LOC", "RSC", "PPA")
    for s in (1, 2, 3):
        func = nib.load(str(der / "bool_masks" / f"derivatives_spm_sub-CSI{s}_sub-CSI{s}_mask-LHEarlyVis.nii.gz"))
        nn = nn_index_map(
            coeff=der / f"sub{s}.anat" / "T1_to_MNI_nonlin_coeff.nii.gz",
            ref=der / f"sub{s}.anat" / "T1_to_MNI_nonlin.nii.gz",
            t1=der / "T1" / f"sub-CSI{s}_ses-16_anat_sub-CSI{s}_ses-16_T1w.nii.gz",
            premat=der / f"sub{s}.anat" / "T1_nonroi2roi.mat",
            func_shape=func.shape[:3],
            func_affine=func.affine,
        )
        out[f"sub-{s:02d}"] = {"nn_index": nn}
        for roi in rois:
            for hemi in ("LH", "RH"):
                sm = np.asarray(
                    nib.load(str(der / "s_bool_masks" / f"s_sub{s}_{hemi}{roi}_MNI.nii.gz")).dataobj, dtype=np.float64
                )
                out["overlap"][f"sub-{s:02d}/{hemi}{roi}"] = np.flatnonzero(sm > sm.max() * OVERLAP_THRESHOLD)
    return out
