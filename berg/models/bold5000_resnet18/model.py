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

from berg.core.engine import LinearEncodingModel
from berg.core.spaces import VolumeSpace
from berg.errors import InvalidParameterError

__all__ = ["Bold5000ResNet18"]

ROIS = ("EarlyVis", "OPA", "LOC", "RSC", "PPA")
MNI_SHAPE = (91, 109, 91)
MNI_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


class Bold5000ResNet18(LinearEncodingModel):
    """img2fmri's BOLD5000 ResNet-18 model (see the module docstring for the options)."""

    @classmethod
    def validate_options(cls, spec, options):
        kw = super().validate_options(spec, options)
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
    def load(cls, request):
        spec, subjects, selections, kw = request.spec, request.subjects, request.selections, request.options
        if kw.get("space") == "mni":
            if list(subjects) != list(spec.subjects):
                raise InvalidParameterError(
                    "space='mni' is img2fmri's group map of all three subjects: pass subject='all'"
                )
            if any(not sel.is_all for sel in selections.values()):
                exc = InvalidParameterError(
                    "space='mni' takes no selection; choose the group map's ROIs with roi_list=['PPA', 'OPA', ...]"
                )
                exc.cli_words = {"roi_list=['PPA', 'OPA', ...]": "--roi-list PPA,OPA,..."}  # type: ignore[attr-defined]
                raise exc
            keys = ["mni/overlap.safetensors"] + [f"mni/sub-{s:02d}.safetensors" for s in subjects]
            request.layout().fetch_keys(keys)
        return super().load(request)

    def setup(self) -> None:
        kw = self.options
        if kw["voxel_order"] == "fortran":
            for s in self.subjects:
                meta = self.layout.load_metadata(s)
                space = self.spaces[s]
                ijk = meta["voxel_ijk_fortran"]
                rows = self.selected_rows.get(s)
                self.spaces[s] = VolumeSpace(space.grid, space.affine, ijk if rows is None else ijk[rows])
        self.space_name = kw["space"]
        self.group_level = self.space_name == "mni"
        if self.space_name != "mni":
            return
        from berg.models.bold5000_resnet18.mni import GroupMapper

        self.mapper = GroupMapper(
            {s: self._geometry(s) for s in self.subjects},
            {s: np.arange(self.n_outputs[s]) for s in self.subjects},
            roi_list=kw["roi_list"],
            sigma=float(kw["sigma"]),
            voxel_order=kw["voxel_order"],
            support=kw["zscore_support"],
        )
        self.mni_space = VolumeSpace(MNI_SHAPE, MNI_AFFINE, self.mapper.voxel_ijk())
        # On an accelerator the whole chain (readout -> placement -> smoothing -> z-scoring) runs as one
        # dense matmul per batch (equal to the step-by-step map to ~3e-8). On CPU the dense operator has
        # ~4x the FLOPs of readout + sparse map, which measured faster there (benchmarks/RESULTS.md).
        self.group_map = None
        if not str(self.device).startswith("cpu"):
            readouts = {}
            for s in self.subjects:
                heads = [h.readout for h in self.heads[s]]
                readouts[s] = (np.concatenate([r.weight for r in heads]), np.concatenate([r.bias for r in heads]))
            self.group_map = self.mapper.compose(readouts, device=self.device)

    def _geometry(self, subject: int):
        """The subject's :class:`~berg.models.bold5000_resnet18.mni.SubjectGeometry` from the artifact."""
        from berg.models.bold5000_resnet18.mni import SubjectGeometry
        from berg.store.artifacts import read_tensors

        meta = self.layout.load_metadata(subject)
        shape = tuple(self.spaces[subject].grid)
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
            func_shape=shape,
            blocks=blocks,
            masks=masks,
            mni_index=np.flatnonzero(fed),
            func_index=nn[fed].astype(np.int64),
            overlap={k[len(prefix) :]: v for k, v in overlap.items() if k.startswith(prefix)},
        )

    # ------------------------------------------------------------------ group maps
    def encode(self, stimulus: Any, *, show_progress: bool = True):
        """Subject-space responses (plain engine), or group MNI maps when ``space="mni"``.

        With ``space="mni"`` returns float32 ``(n_stimuli, n_outputs)`` whose columns are the MNI voxels
        of the z-scoring support (``model.mni_space.voxel_ijk``; v1.0: the smoothed-mask overlap, v0.2:
        every voxel a subject's smoothed map reaches);
        ``to_nifti`` turns it into (91, 109, 91[, n]) images.
        """
        if self.space_name != "mni":
            return super().encode(stimulus, show_progress=show_progress)
        stimuli = self.prepare_stimuli(stimulus)
        out = np.empty((len(stimuli), self.mapper.n_outputs), dtype=np.float32)
        for start, stop, (group,) in self.iter_encode(stimuli, show_progress=show_progress):
            out[start:stop] = group
        return out

    def iter_encode(self, stimuli: Any, *, show_progress: bool = True):
        """The engine's batches; with ``space="mni"`` each yields ``[group maps]`` (one group-level output).

        On GPU the group operator maps features straight to MNI (one matmul per batch); on CPU each batch's
        subject responses go through the step-by-step map.
        """
        if self.space_name != "mni":
            yield from super().iter_encode(stimuli, show_progress=show_progress)
            return
        if self.group_map is None:
            for start, stop, per_subject in super().iter_encode(stimuli, show_progress=show_progress):
                yield start, stop, [self.mapper(dict(zip(self.subjects, per_subject)))]
            return
        from berg.core.engine import batch_loop

        def step(x):
            return [self.group_map(self.extractor(x))]  # features -> group maps, one matmul

        yield from batch_loop(
            stimuli, self.extractor.transform, self.batch_size, step, desc=self.model_id, show_progress=show_progress
        )

    @property
    def output_units(self) -> str | None:
        """z-scores for group maps (img2fmri's ``zscore(sum_s zscore(.))`` per image), else the card's units."""
        if self.space_name == "mni":
            from berg.plotting import GROUP_MAP_UNITS

            return GROUP_MAP_UNITS
        return super().output_units

    def space(self, subject: Any = None):
        """The group MNI space for ``space="mni"`` (one output for all subjects), else the subject's."""
        if self.space_name == "mni" and subject in (None, "group"):
            return self.mni_space
        return super().space(subject)

    def encode_movie(self, path: Any, *, fps: float = 2.0, rule: str = "nearest", show_progress: bool = True):
        """Predict a movie frame by frame at ``fps`` (img2fmri: 2 Hz); returns a 4-D NIfTI image.

        ``rule="nearest"`` (default) picks frame ``round(t * stream_fps)`` for each sample time ``t``,
        what img2fmri's OpenCV millisecond seek returns, so berg predicts img2fmri's frames; ``"last"``
        takes the frame on screen at ``t`` (on a 23.976 fps clip, one frame earlier for 14 of 15
        samples). The sampled frames are reported in ``img.extra["frame_indices"]`` and
        ``img.extra["frame_times"]`` (seconds from the first frame), and the whole record (frame times,
        indices, rule, fps) in ``img.extra["movie"]``, which ``berg.save(path, img, model)`` and
        ``berg.save_nifti(path, img, model)`` store (provenance, sidecar) and ``berg.load_responses`` returns.

        The 4th dimension is time: pixdim[4] = 1 / fps seconds, time units seconds. Use
        :func:`berg.hrf.convolve_hrf` and :func:`berg.hrf.resample_to_tr` (or
        :func:`berg.experiments.movies.predict_movie`) to model the BOLD response.
        """
        from berg.stimuli import decode_video, movie_provenance

        frames, rate, info = decode_video(path, fps=fps, rule=rule, return_info=True)
        responses = self.encode(frames, show_progress=show_progress)
        if isinstance(responses, dict):
            raise InvalidParameterError("encode_movie takes one subject or space='mni'")
        img = self.to_nifti(responses)
        zooms = img.header.get_zooms()[:3]
        img.header.set_zooms((*zooms, 1.0 / rate))
        img.header.set_xyzt_units("mm", "sec")
        img.extra.update({"frame_indices": info["indices"], "frame_times": info["times"], "frame_rule": rule})
        img.extra["movie"] = movie_provenance(path, fps, info)  # kept by berg.save / save_nifti
        return img
