"""The one encoding engine: backbone -> node features -> projection -> per-subject linear readouts.

Every "backbone + nodes + projection + linear readout" model in the registry runs through
:class:`LinearEncodingModel`; models are declared (registry entry + card + artifact), not re-coded.

Design points (the reasons behind the code):

* One backbone pass and one projection pass per batch feed every loaded subject; the readouts of all
  subjects are concatenated into one matrix, so ten subjects cost one extra matmul, not ten forwards.
* Selections (ROIs, one-hot vectors) slice readout rows once at load; nothing unselected is computed.
* The StandardScaler is folded into the projection at load (see :mod:`berg.readouts`), so the
  engine never materialises standardised features or a features x outputs product.
* Preprocessing of batch ``i + 1`` (decoding, resizing) runs in a worker thread while the network
  computes batch ``i``.
* float32 throughout, ``torch.inference_mode``, on the chosen device.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from berg._version import __version__
from berg.errors import InvalidParameterError, ModelLoadError, StimulusError
from berg.models.base import BaseModelInterface
from berg.readouts import LinearReadout, Projection
from berg.stimuli import Stimuli, load_stimuli

if TYPE_CHECKING:  # pragma: no cover
    from berg.features import FeatureExtractor
    from berg.layouts import ArtifactLayout
    from berg.registry import ModelSpec, Selection

__all__ = ["LinearEncodingModel", "iter_features", "iter_batches"]

log = logging.getLogger(__name__)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="stim", leave=False)


def iter_batches(
    transform: Any, stimuli: Sequence[Any], batch_size: int
) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(start, stop, tensor)`` preprocessed batches, preparing the next batch in a thread."""
    starts = list(range(0, len(stimuli), batch_size))

    def prepare(start: int):
        stop = min(start + batch_size, len(stimuli))
        return start, stop, transform([stimuli[i] for i in range(start, stop)])

    if len(starts) <= 1:
        for start in starts:
            yield prepare(start)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="berg-preprocess") as pool:
        pending = pool.submit(prepare, starts[0])
        for nxt in starts[1:] + [None]:
            batch = pending.result()
            if nxt is not None:
                pending = pool.submit(prepare, nxt)
            yield batch


def iter_features(
    extractor: "FeatureExtractor",
    stimuli: Sequence[Any],
    *,
    batch_size: int,
    show_progress: bool = False,
) -> Iterator[np.ndarray]:
    """Features of ``stimuli`` batch by batch, as float32 numpy arrays ``(b, n_features)``.

    The trainer uses this so that models are fitted on exactly the features inference computes.
    """
    with _progress(len(stimuli), show_progress, "features") as bar:
        for start, stop, x in iter_batches(extractor.transform, stimuli, batch_size):
            yield extractor(x).cpu().numpy()
            bar.update(stop - start)


def _as_tensor(array: np.ndarray, device: str):
    import torch

    with warnings.catch_warnings():
        # memory-mapped safetensors arrays are read-only; torch only warns, we never write to them
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(np.asarray(array))
    return t.to(device) if device != "cpu" else t


class LinearEncodingModel(BaseModelInterface):
    """A loaded linear encoding model for one or several subjects.

    Build it with :meth:`load` (``BERG.get_encoding_model`` does); see the module docstring.

    Attributes
    ----------
    spec : ModelSpec
    subjects : list
    extractor : FeatureExtractor
        Backbone and its declared preprocessing (``extractor.transform``).
    projection : Projection or None
    readouts : dict
        Subject -> selected :class:`LinearReadout`.
    spaces : dict
        Subject -> selected output space.
    """

    #: Extra keyword arguments of ``get_encoding_model`` this class accepts, with defaults.
    MODEL_KWARGS: Mapping[str, Any] = {}

    def __init__(
        self,
        spec: "ModelSpec",
        *,
        extractor: "FeatureExtractor",
        projection: Projection | None,
        readouts: Mapping[Any, LinearReadout],
        spaces: Mapping[Any, Any],
        selections: Mapping[Any, "Selection"],
        layout: "ArtifactLayout",
        batch_size: int,
        multi_subject: bool,
        model_kwargs: Mapping[str, Any] | None = None,
    ):
        import torch

        self.spec = spec
        self.model_id = spec.model_id
        self.subjects = list(readouts)
        self.extractor = extractor
        self.device = extractor.device
        self.projection = projection
        self.readouts = dict(readouts)
        self.spaces = dict(spaces)
        self.selections = dict(selections)
        self.layout = layout
        self.batch_size = batch_size
        self.multi_subject = multi_subject
        self.model_kwargs = dict(model_kwargs or {})
        self._metadata: dict[Any, dict[str, Any]] = {}

        widths = {s: r.n_inputs for s, r in self.readouts.items()}
        expected = projection.n_components if projection is not None else None
        if expected is not None and any(w != expected for w in widths.values()):
            raise ModelLoadError(
                f"{self.model_id}: readout input widths {widths} differ from the projection's "
                f"{expected} components"
            )
        if expected is None and len(set(widths.values())) > 1:
            raise ModelLoadError(f"{self.model_id}: readouts expect different feature widths {widths}")
        self.n_features = projection.n_features if projection is not None else next(iter(widths.values()))

        if projection is not None:
            self._proj_w = _as_tensor(projection.weight, self.device)
            self._proj_b = _as_tensor(projection.bias, self.device)
        # All subjects' (selected) readouts stacked: one matmul serves every subject.
        self._splits = np.cumsum([0] + [r.n_outputs for r in self.readouts.values()])
        weight = np.concatenate([r.weight for r in self.readouts.values()])
        bias = np.concatenate([r.bias for r in self.readouts.values()])
        self._read_w = _as_tensor(np.ascontiguousarray(weight.T), self.device)  # (k, n_total)
        self._read_b = _as_tensor(bias, self.device)
        self._torch = torch

    # ------------------------------------------------------------------ construction
    @classmethod
    def validate_model_kwargs(cls, spec: "ModelSpec", model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Check extra ``get_encoding_model`` keywords (no I/O); returns them with defaults filled."""
        unknown = set(model_kwargs) - set(cls.MODEL_KWARGS)
        if unknown:
            valid = ", ".join(cls.MODEL_KWARGS) or "none"
            raise InvalidParameterError(
                f"unknown option(s) {sorted(unknown)} for {spec.model_id}; valid options: {valid}"
            )
        return {**cls.MODEL_KWARGS, **model_kwargs}

    @classmethod
    def transform_overrides(cls, spec: "ModelSpec", model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Preprocessing changes implied by model options (none for the plain engine)."""
        return {}

    @staticmethod
    def selection_rows(
        selection: "Selection", roi_indices: Mapping[str, np.ndarray], n_outputs: int
    ) -> np.ndarray | None:
        """Output rows a selection keeps (sorted, unique), or ``None`` for all."""
        if selection.is_all:
            return None
        if selection.rois is not None:
            missing = [r for r in selection.rois if r not in roi_indices]
            if missing:
                raise ModelLoadError(
                    f"ROI(s) {missing} are declared in the card but absent from the artifact; "
                    f"artifact ROIs: {', '.join(roi_indices)}"
                )
            rows = np.unique(np.concatenate([np.asarray(roi_indices[r]) for r in selection.rois]))
        else:
            if selection.voxels.shape[0] != n_outputs:
                raise InvalidParameterError(
                    f"selection['voxels'] has length {selection.voxels.shape[0]}; this subject has "
                    f"{n_outputs} outputs"
                )
            rows = np.flatnonzero(selection.voxels)
        if rows.size and (rows.min() < 0 or rows.max() >= n_outputs):
            raise ModelLoadError(f"ROI indices out of range for {n_outputs} outputs")
        return rows.astype(np.int64)

    @classmethod
    def load(
        cls,
        spec: "ModelSpec",
        layout: "ArtifactLayout",
        *,
        subjects: Sequence[Any],
        selections: Mapping[Any, "Selection"],
        device: str,
        batch_size: int,
        backbone_weights: Any = None,
        backbone_seed: int = 0,
        multi_subject: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> "LinearEncodingModel":
        """Fetch the artifacts the subjects need, build the backbone, slice readouts; returns the model."""
        from berg.features import FeatureExtractor

        model_kwargs = dict(model_kwargs or {})
        keys = list(dict.fromkeys(k for s in subjects for k in layout.model_keys(s)))
        layout.fetch_keys(keys)  # one call: all missing files are reported (or fetched) together
        projection = layout.load_projection()
        readouts, spaces, selected_rows = {}, {}, {}
        for s in subjects:
            full = layout.load_readout(s)
            rows = cls.selection_rows(selections[s], layout.roi_indices(s), full.n_outputs)
            readouts[s] = full.select(rows)
            spaces[s] = layout.output_space(s).select(rows)
            selected_rows[s] = rows
        extractor = FeatureExtractor(
            spec.recipe,
            backbone_weights=backbone_weights,
            device=device,
            seed=backbone_seed,
            transform_overrides=cls.transform_overrides(spec, model_kwargs),
        )
        model = cls(
            spec,
            extractor=extractor,
            projection=projection,
            readouts=readouts,
            spaces=spaces,
            selections=selections,
            layout=layout,
            batch_size=batch_size,
            multi_subject=multi_subject,
            model_kwargs=model_kwargs,
        )
        model.selected_rows = selected_rows  # subject -> kept output rows (None = all)
        model.setup()
        return model

    def setup(self) -> None:
        """Hook for subclasses, run once after loading (the plain engine needs nothing)."""

    # ------------------------------------------------------------------ inference
    @property
    def n_outputs(self) -> dict[Any, int]:
        """Subject -> number of (selected) outputs."""
        return {s: r.n_outputs for s, r in self.readouts.items()}

    def _check_width(self, width: int) -> None:
        if width == self.n_features:
            return
        t = self.extractor.transform
        raise StimulusError(
            f"{self.model_id}: the backbone produced {width:,} features per stimulus with preprocessing "
            f"{t.describe()} (input size {t.input_size}), but the model was fitted on {self.n_features:,} "
            "features. The preprocessing must match training (e.g. a 224x224 crop gives a different "
            "width than the 256x256 frames a model was fitted on)."
        )

    def project(self, features):
        """Apply the projection (if any) to a ``(b, n_features)`` tensor."""
        if self.projection is None:
            return features
        return self._torch.addmm(self._proj_b, features, self._proj_w.T)

    def readout(self, z) -> list[Any]:
        """Apply all subjects' readouts to ``(b, k)`` projected features; returns one tensor per subject."""
        y = self._torch.addmm(self._read_b, z, self._read_w)
        return [y[:, a:b] for a, b in zip(self._splits[:-1], self._splits[1:])]

    def iter_encode(
        self, stimuli: Stimuli, *, show_progress: bool = True
    ) -> Iterator[tuple[int, int, list[np.ndarray]]]:
        """Yield ``(start, stop, [responses per subject])`` batch by batch (the one batching loop)."""
        with _progress(len(stimuli), show_progress, self.model_id) as bar:
            for start, stop, x in iter_batches(self.extractor.transform, stimuli, self.batch_size):
                features = self.extractor(x)
                self._check_width(features.shape[1])
                with self._torch.inference_mode():
                    outs = self.readout(self.project(features))
                yield start, stop, [o.cpu().numpy() for o in outs]
                bar.update(stop - start)

    def prepare_stimuli(self, stimulus: Any) -> Stimuli:
        """Validate a stimulus for this model (kind and minimum frames from the registry/card)."""
        return load_stimuli(stimulus, self.spec.input_kind, min_frames=self.spec.min_frames)

    def encode(self, stimulus: Any, *, show_progress: bool = True) -> np.ndarray | dict[Any, np.ndarray]:
        """In silico responses to ``stimulus``.

        Parameters
        ----------
        stimulus : array, path(s) or PIL image(s)
            See :mod:`berg.stimuli` for accepted forms.
        show_progress : bool
            Progress bar over stimuli.

        Returns
        -------
        np.ndarray or dict
            float32 ``(n_stimuli, n_outputs)``; ``{subject: array}`` when several subjects were loaded.
        """
        stimuli = self.prepare_stimuli(stimulus)
        out = {s: np.empty((len(stimuli), n), dtype=np.float32) for s, n in self.n_outputs.items()}
        for start, stop, per_subject in self.iter_encode(stimuli, show_progress=show_progress):
            for s, y in zip(self.subjects, per_subject):
                out[s][start:stop] = y
        return out if self.multi_subject else out[self.subjects[0]]

    # ------------------------------------------------------------------ metadata and outputs
    def get_metadata(self) -> dict[str, Any]:
        """The subject's metadata dict (``{subject: dict}`` when several subjects were loaded)."""
        for s in self.subjects:
            if s not in self._metadata:
                self._metadata[s] = self.layout.load_metadata(s)
        if self.multi_subject:
            return {s: self._metadata[s] for s in self.subjects}
        return self._metadata[self.subjects[0]]

    def _subject_arg(self, subject: Any) -> Any:
        if subject is None:
            if len(self.subjects) > 1:
                raise InvalidParameterError(f"several subjects loaded; pass subject= one of {self.subjects}")
            return self.subjects[0]
        if subject not in self.spaces:
            raise InvalidParameterError(f"subject {subject!r} not loaded; loaded subjects: {self.subjects}")
        return subject

    def to_nifti(self, responses: Any, subject: Any = None) -> Any:
        """Responses -> ``nibabel.Nifti1Image`` on the subject's grid (3-D for one stimulus, 4-D for many).

        ``responses`` may be the dict :meth:`encode` returns for several subjects; then a dict of
        images is returned.
        """
        if isinstance(responses, Mapping):
            return {s: self.spaces[self._subject_arg(s)].to_nifti(r) for s, r in responses.items()}
        return self.spaces[self._subject_arg(subject)].to_nifti(responses)

    def output_ids(self, subject: Any = None) -> np.ndarray:
        """Identifier of each output column: voxel ``(i, j, k)`` for volumes, else the output index."""
        space = self.spaces[self._subject_arg(subject)]
        if getattr(space, "kind", "flat") == "volume":
            return space.voxel_ijk
        return np.arange(space.n_outputs)

    def provenance(self) -> dict[str, Any]:
        """Everything needed to say which numbers came from where."""
        keys = list(dict.fromkeys(k for s in self.subjects for k in self.layout.model_keys(s)))
        try:
            checksums = self.layout.checksums(keys)
        except Exception as exc:  # provenance must never break encoding; record why it is missing
            log.warning("artifact checksums unavailable: %s", exc)
            checksums = {}
        return {
            "model_id": self.model_id,
            "subjects": list(self.subjects),
            "selection": {str(s): sel.describe() for s, sel in self.selections.items()},
            "berg_version": __version__,
            "artifacts": checksums,
            "source": dict(self.spec.source),
            "backbone": {**self.spec.recipe["backbone"], "backbone_weights": self.extractor.backbone_weights},
            "nodes": list(self.extractor.nodes),
            "transform": self.extractor.transform.describe(),
            "model_kwargs": dict(self.model_kwargs),
            "device": self.device,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_id!r}, subjects={self.subjects}, "
            f"outputs={self.n_outputs}, device={self.device!r})"
        )
