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

from typing import Any

import numpy as np

from berg.engine import LinearEncodingModel
from berg.errors import InvalidParameterError
from berg.spaces import VolumeSpace

__all__ = ["Bold5000ResNet18"]

ROIS = ("EarlyVis", "OPA", "LOC", "RSC", "PPA")
MNI_SHAPE = (91, 109, 91)
MNI_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


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
        from berg.models.bold5000_resnet18.mni import GroupMapper

        self.mapper = GroupMapper(
            {s: self._geometry(s) for s in self.subjects},
            {s: np.arange(self.readouts[s].n_outputs) for s in self.subjects},
            roi_list=kw["roi_list"], sigma=float(kw["sigma"]), voxel_order=kw["voxel_order"],
            support=kw["zscore_support"],
        )
        self.mni_space = VolumeSpace(MNI_SHAPE, MNI_AFFINE, self.mapper.voxel_ijk())

    def _geometry(self, subject: int):
        """The subject's :class:`~berg.models.bold5000_resnet18.mni.SubjectGeometry` from the artifact."""
        from berg.models.bold5000_resnet18.mni import SubjectGeometry
        from berg.store.artifacts import read_tensors

        meta = self.layout.load_metadata(subject)
        shape = tuple(self.spaces[subject].shape)
        flat = np.ravel_multi_index(tuple(np.asarray(meta["voxel_ijk"]).T), shape)  # C order per mask
        blocks, masks = [], {}
        for roi in ROIS:
            for hemi in ("LH", "RH"):
                rows = meta["rois"][f"{hemi}{roi}"]
                blocks.append((roi, hemi, int(rows[0]), int(rows[-1]) + 1))
                masks[hemi + roi] = np.sort(flat[rows])
        nn = read_tensors(self.layout.fetch(f"mni/sub-{subject:02d}.safetensors"), mmap=False)["nn_index"]
        fed = np.isin(nn, flat) & (nn >= 0)
        overlap = read_tensors(self.layout.fetch("mni/overlap.safetensors"), mmap=False)
        prefix = f"sub-{subject:02d}/"
        return SubjectGeometry(
            func_shape=shape, blocks=blocks, masks=masks,
            mni_index=np.flatnonzero(fed), func_index=nn[fed].astype(np.int64),
            overlap={k[len(prefix):]: v for k, v in overlap.items() if k.startswith(prefix)},
        )

    # ------------------------------------------------------------------ group maps
    def encode(self, stimulus: Any, *, show_progress: bool = True):
        """Subject-space responses (plain engine), or group MNI maps when ``space="mni"``.

        With ``space="mni"`` returns float32 ``(n_stimuli, n_outputs)`` whose columns are the MNI voxels
        of the z-scoring support (``model.mni_space.voxel_ijk``; v1.0: the smoothed-mask overlap, v0.2:
        every voxel a subject's smoothed map reaches);
        ``to_nifti`` turns it into (91, 109, 91[, n]) images.
        """
        if self.space != "mni":
            return super().encode(stimulus, show_progress=show_progress)
        stimuli = self.prepare_stimuli(stimulus)
        out = np.empty((len(stimuli), self.mapper.n_outputs), dtype=np.float32)
        for start, stop, per_subject in self.iter_encode(stimuli, show_progress=show_progress):
            out[start:stop] = self.mapper(dict(zip(self.subjects, per_subject)))
        return out

    def to_nifti(self, responses: Any, subject: Any = None):
        """Subject-space images, or (91, 109, 91[, n]) MNI images for ``space="mni"``."""
        if self.space == "mni":
            return self.mni_space.to_nifti(responses)
        return super().to_nifti(responses, subject)

    def output_ids(self, subject: Any = None) -> np.ndarray:
        """MNI voxel ``(i, j, k)`` of each column for ``space="mni"``, else the subject's voxels."""
        if self.space == "mni":
            return self.mni_space.voxel_ijk
        return super().output_ids(subject)

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
