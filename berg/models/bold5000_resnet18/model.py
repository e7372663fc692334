"""``fmri-bold5000-resnet18``: img2fmri's model on berg's engine, plus its group MNI maps and movies.

The subject-space model is the plain engine (ResNet-18 avgpool -> per-voxel ridge readout). This
class adds img2fmri's options and its group-level output:

* ``space="mni"`` (with ``subject="all"``): img2fmri's group map — each subject's prediction placed on
  its functional grid (sequential NaN-mean where ROIs overlap), copied to MNI152 2 mm through the
  precomputed nearest-neighbour map, smoothed like ``fslmaths -s sigma``, z-scored within the support,
  summed over subjects and z-scored again. One backbone pass feeds all three subjects.
* ``roi_list``, ``sigma`` (mm), ``voxel_order`` ("c" = img2fmri's order, "fortran" = column-major),
  ``zscore_support`` ("v1.0": smoothed-mask overlap; "v0.2": voxels non-zero in any subject's map),
  ``center_crop`` (img2fmri's ``Resize(224)`` + ``CenterCrop(224)`` instead of squashing).
* :meth:`encode_movie`: frames at ``fps`` (img2fmri: 2 Hz) -> per-frame maps -> 4-D NIfTI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from berg.engine import LinearEncodingModel
from berg.errors import InvalidParameterError
from berg.spaces import VolumeSpace

__all__ = ["Bold5000ResNet18", "group_map"]

ROIS = ("EarlyVis", "OPA", "LOC", "RSC", "PPA")
MNI_SHAPE = (91, 109, 91)
MNI_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def _zscore(x: np.ndarray, axis: int = -1) -> np.ndarray:
    sd = x.std(axis=axis, keepdims=True)
    return (x - x.mean(axis=axis, keepdims=True)) / np.where(sd == 0, 1.0, sd)


def group_map(
    per_subject: Mapping[int, np.ndarray],
    placement: Mapping[int, list[tuple[np.ndarray, np.ndarray]]],
    func_sizes: Mapping[int, int],
    nn_index: Mapping[int, np.ndarray],
    support: np.ndarray | None,
    sigma: float,
) -> np.ndarray:
    """img2fmri's group map for a batch: ``(b, 91*109*91)`` float32, 0 outside the support.

    Parameters
    ----------
    per_subject : {subject: (b, n_outputs) responses}
    placement : {subject: [(output rows, flat functional voxel indices), ...]} in roi_list order, LH then RH
    func_sizes : {subject: number of voxels of the functional grid}
    nn_index : {subject: (91*109*91,) functional voxel per MNI voxel, -1 outside}
    support : flat MNI indices to z-score over (v1.0), or None for v0.2 (voxels non-zero in any subject)
    sigma : smoothing sigma in mm
    """
    from berg.models.bold5000_resnet18.mni import fsl_smooth

    b = next(iter(per_subject.values())).shape[0]
    smoothed = []
    for s, resp in per_subject.items():
        vol = np.full((b, func_sizes[s]), np.nan, dtype=np.float64)
        for rows, vox in placement[s]:
            new = resp[:, rows].astype(np.float64)
            cur = vol[:, vox]
            # img2fmri: nanmean of what is there and the new ROI's prediction, ROI after ROI
            vol[:, vox] = np.where(np.isnan(cur), new, (cur + new) / 2)
        vol = np.nan_to_num(vol, nan=0.0)
        idx = nn_index[s]
        mni = np.where(idx >= 0, vol[:, np.clip(idx, 0, None)], 0.0).reshape((b, *MNI_SHAPE))
        smoothed.append(fsl_smooth(np.moveaxis(mni, 0, -1), sigma).reshape(-1, b).T)
    out = np.zeros((b, int(np.prod(MNI_SHAPE))), dtype=np.float32)
    for i in range(b):
        sup = support if support is not None else np.flatnonzero(np.any([sm[i] != 0 for sm in smoothed], axis=0))
        total = sum(_zscore(sm[i, sup]) for sm in smoothed)
        out[i, sup] = _zscore(total)
    return out


class Bold5000ResNet18(LinearEncodingModel):
    """img2fmri's BOLD5000 ResNet-18 model (see the module docstring for the options)."""

    MODEL_KWARGS = {
        "space": "subject",
        "roi_list": None,
        "sigma": 1.0,
        "voxel_order": "c",
        "zscore_support": "v1.0",
        "center_crop": False,
    }

    @classmethod
    def validate_model_kwargs(cls, spec, model_kwargs):
        kw = super().validate_model_kwargs(spec, model_kwargs)
        if kw["space"] not in ("subject", "mni"):
            raise InvalidParameterError(f"space={kw['space']!r}; valid: 'subject', 'mni'")
        if kw["voxel_order"] not in ("c", "fortran"):
            raise InvalidParameterError(f"voxel_order={kw['voxel_order']!r}; valid: 'c' (img2fmri), 'fortran'")
        if kw["zscore_support"] not in ("v1.0", "v0.2"):
            raise InvalidParameterError(f"zscore_support={kw['zscore_support']!r}; valid: 'v1.0', 'v0.2'")
        roi_list = list(ROIS) if kw["roi_list"] is None else list(kw["roi_list"])
        bad = [r for r in roi_list if r not in ROIS]
        if bad or not roi_list:
            raise InvalidParameterError(f"roi_list {bad or roi_list} invalid; valid ROIs: {', '.join(ROIS)}")
        kw["roi_list"] = roi_list
        if not isinstance(kw["sigma"], (int, float)) or kw["sigma"] < 0:
            raise InvalidParameterError(f"sigma must be a number of mm >= 0, got {kw['sigma']!r}")
        if not isinstance(kw["center_crop"], bool):
            raise InvalidParameterError(f"center_crop must be True or False, got {kw['center_crop']!r}")
        return kw

    @classmethod
    def transform_overrides(cls, spec, model_kwargs):
        if model_kwargs.get("center_crop"):
            return {"resize": "shorter", "size": (224, 224), "crop": (224, 224)}
        return {}

    @classmethod
    def load(cls, spec, layout, *, subjects, selections, **kwargs):
        kw = kwargs.get("model_kwargs") or {}
        if kw.get("space") == "mni":
            if list(subjects) != list(spec.subjects):
                raise InvalidParameterError("space='mni' is img2fmri's group map of all three subjects: pass subject='all'")
            if any(not sel.is_all for sel in selections.values()):
                raise InvalidParameterError("space='mni' takes no selection (use roi_list to choose ROIs)")
            keys = ["mni/overlap.safetensors"] + [f"mni/sub-{s:02d}.safetensors" for s in subjects]
            layout.fetch_keys(keys)
        return super().load(spec, layout, subjects=subjects, selections=selections, **kwargs)

    def setup(self) -> None:
        kw = self.model_kwargs
        if kw["voxel_order"] == "fortran":
            for s in self.subjects:
                meta = self.layout.load_metadata(s)
                space = self.spaces[s]
                ijk = meta["voxel_ijk_fortran"]
                rows = self.selected_rows.get(s)
                self.spaces[s] = VolumeSpace(space.shape, space.affine, ijk if rows is None else ijk[rows])
        self.space = kw["space"]
        if self.space != "mni":
            return
        from berg.store.artifacts import read_tensors

        overlap = read_tensors(self.layout.fetch("mni/overlap.safetensors"), mmap=False)
        self._nn = {s: read_tensors(self.layout.fetch(f"mni/sub-{s:02d}.safetensors"), mmap=False)["nn_index"]
                    for s in self.subjects}
        self._placement, self._func_sizes = {}, {}
        for s in self.subjects:
            meta = self.layout.load_metadata(s)
            ijk = meta["voxel_ijk" if kw["voxel_order"] == "c" else "voxel_ijk_fortran"]
            shape = tuple(self.spaces[s].shape)
            flat = np.ravel_multi_index(tuple(ijk.T), shape)
            self._func_sizes[s] = int(np.prod(shape))
            self._placement[s] = [(meta["rois"][f"{h}{roi}"], flat[meta["rois"][f"{h}{roi}"]])
                                  for roi in kw["roi_list"] for h in ("LH", "RH")]
        if kw["zscore_support"] == "v1.0":
            self._support = np.unique(np.concatenate([
                overlap[f"sub-{s:02d}/{h}{roi}"] for s in self.subjects for h in ("LH", "RH") for roi in kw["roi_list"]
            ])).astype(np.int64)
            ijk = np.argwhere(np.isin(np.arange(np.prod(MNI_SHAPE)), self._support).reshape(MNI_SHAPE))
        else:
            self._support = None
            ijk = np.argwhere(np.ones(MNI_SHAPE, dtype=bool))
        self.mni_space = VolumeSpace(MNI_SHAPE, MNI_AFFINE, ijk)

    # ------------------------------------------------------------------ group maps
    def encode(self, stimulus: Any, *, show_progress: bool = True):
        """Subject-space responses (plain engine), or group MNI maps when ``space="mni"``.

        With ``space="mni"`` returns float32 ``(n_stimuli, n_outputs)`` whose columns are the MNI voxels
        of the z-scoring support (v1.0; ``model.mni_space.voxel_ijk``) or all 91 x 109 x 91 voxels (v0.2);
        ``to_nifti`` turns it into (91, 109, 91[, n]) images.
        """
        if self.space != "mni":
            return super().encode(stimulus, show_progress=show_progress)
        stimuli = self.prepare_stimuli(stimulus)
        cols = self.mni_space.n_outputs
        out = np.empty((len(stimuli), cols), dtype=np.float32)
        flat_ijk = np.ravel_multi_index(tuple(self.mni_space.voxel_ijk.T), MNI_SHAPE)
        for start, stop, per_subject in self.iter_encode(stimuli, show_progress=show_progress):
            maps = group_map(dict(zip(self.subjects, per_subject)), self._placement, self._func_sizes,
                             self._nn, self._support, float(self.model_kwargs["sigma"]))
            out[start:stop] = maps[:, flat_ijk]
        return out

    def to_nifti(self, responses: Any, subject: Any = None):
        """Subject-space images, or (91, 109, 91[, n]) MNI images for ``space="mni"``."""
        if self.space == "mni":
            return self.mni_space.to_nifti(responses)
        return super().to_nifti(responses, subject)

    def encode_movie(self, path: Any, *, fps: float = 2.0, show_progress: bool = True):
        """Predict a movie frame by frame at ``fps`` (img2fmri: 2 Hz); returns a 4-D NIfTI image.

        The 4th dimension is time: pixdim[4] = 1 / fps seconds, time units seconds. Use
        :func:`berg.hrf.convolve_hrf` and :func:`berg.hrf.resample_to_tr` to model the BOLD response.
        """
        from berg.stimuli import decode_video

        frames, rate = decode_video(path, fps=fps)
        responses = self.encode(frames, show_progress=show_progress)
        if isinstance(responses, dict):
            raise InvalidParameterError("encode_movie takes one subject or space='mni'")
        img = self.to_nifti(responses)
        zooms = img.header.get_zooms()[:3]
        img.header.set_zooms((*zooms, 1.0 / rate))
        img.header.set_xyzt_units("mm", "sec")
        return img
