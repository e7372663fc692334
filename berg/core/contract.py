"""The plug-in contract: what a registry ``model_class`` implements, and the request it is loaded from.

A registry entry may name any class that implements :class:`BaseModelInterface` (subclassing it is
the easy way, not a requirement: :func:`check_model_class` checks the methods, at load, and names what
is missing). :class:`berg.core.engine.LinearEncodingModel` is one implementation ("backbone + nodes +
projection + linear readout"); :class:`berg.core.ensemble.EnsembleModel` is another.

``BERG.get_encoding_model`` validates everything it can without I/O, packs it into one
:class:`LoadRequest`, and calls ``ModelClass.load(request)``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from berg.errors import InvalidParameterError, ModelLoadError, NoReliabilityError

if TYPE_CHECKING:  # pragma: no cover
    from berg.core.layouts import ArtifactLayout
    from berg.core.reliability import Reliability
    from berg.core.spaces import OutputSpace
    from berg.registry import ModelSpec, Selection

__all__ = [
    "BaseModelInterface",
    "FeatureModel",
    "LoadRequest",
    "check_model_class",
    "is_feature_model",
    "REQUIRED_METHODS",
]

#: Methods a model class must provide (``load`` and ``validate_options`` are class methods).
REQUIRED_METHODS = ("load", "validate_options", "encode", "get_metadata", "provenance", "space")


@dataclass(frozen=True)
class LoadRequest:
    """Everything ``get_encoding_model`` decided before any I/O, handed to the model class.

    Attributes
    ----------
    spec : ModelSpec
        The registry entry (with its validated card).
    subjects : tuple
        Validated subject ids.
    selections : dict
        Subject -> validated :class:`~berg.registry.Selection`.
    device : str
        Resolved torch device (``"cpu"``, ``"cuda:0"``...).
    batch_size : int
    backbone_weights : None, "untrained" or path
    backbone_seed : int
    options : dict
        Model options (card ``parameters.model_kwargs``), validated, defaults filled.
    multi_subject : bool
        Whether ``encode`` returns ``{subject: array}`` (several subjects, or ``"all"``).
    client : BERG
        The client that loads this model: its store (``client.store``), registry, and
        ``client.load(request)`` for models made of other models (ensembles).
    shared : dict
        Objects members of one load may share (backbones, keyed by their signature).
    """

    spec: ModelSpec
    subjects: tuple[Any, ...]
    selections: Mapping[Any, Selection]
    device: str
    batch_size: int
    backbone_weights: Any = None
    backbone_seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    multi_subject: bool = False
    client: Any = field(default=None, compare=False, repr=False)
    shared: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    def layout(self) -> ArtifactLayout:
        """The artifact layout the registry entry names, on the client's store."""
        from berg.core.layouts import layout_for

        return layout_for(self.spec, self.client.store)

    def replace(self, **changes: Any) -> LoadRequest:
        """A copy with some fields changed (``shared`` stays the same object)."""
        return dataclasses.replace(self, **changes)


class BaseModelInterface(ABC):
    """What ``BERG.get_encoding_model`` returns.

    Attributes
    ----------
    spec : ModelSpec
        The registry entry the model was loaded from (its card: units, ROIs, citation).
    model_id : str
    subjects : list
        The subjects this model object serves.
    device : str
        Resolved torch device.
    spaces : dict
        Subject -> :class:`~berg.core.spaces.OutputSpace` of the (selected) outputs.
    multi_subject : bool
    group_level : bool
        True when ``encode`` returns ONE group-level output for all loaded subjects (e.g. MNI group maps
        of several subjects, ``model.space()`` is then the group space); a :class:`FeatureModel`'s
        ``iter_encode`` then yields a one-element list per batch.
    """

    spec: ModelSpec
    model_id: str
    subjects: list[Any]
    device: str
    spaces: dict[Any, OutputSpace]
    multi_subject: bool = False
    group_level: bool = False

    # ------------------------------------------------------------------ construction
    @classmethod
    @abstractmethod
    def load(cls, request: LoadRequest) -> BaseModelInterface:
        """Fetch what the request needs and return the loaded model."""

    @classmethod
    def validate_options(cls, spec: ModelSpec, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check model options (no I/O); the default checks them against the card."""
        return spec.validate_options(options)

    # ------------------------------------------------------------------ inference
    @abstractmethod
    def encode(self, stimulus: Any, *, show_progress: bool = True) -> np.ndarray | dict[Any, np.ndarray]:
        """In silico responses: float32 ``(n_stimuli, *space.shape)``, or ``{subject: array}`` for several."""

    @abstractmethod
    def get_metadata(self) -> dict[str, Any]:
        """Metadata of the loaded subject(s) (``{subject: dict}`` for several)."""

    @abstractmethod
    def provenance(self) -> dict[str, Any]:
        """Model id, subjects, selection, berg version, artifact checksums, backbone, preprocessing."""

    # ------------------------------------------------------------------ outputs
    def space(self, subject: Any = None) -> OutputSpace:
        """The output space of ``subject`` (the only subject when there is one)."""
        return self.spaces[self._subject_arg(subject)]

    def _subject_arg(self, subject: Any) -> Any:
        if subject is None:
            if len(self.spaces) > 1:
                raise InvalidParameterError(f"several subjects loaded; pass subject= one of {list(self.spaces)}")
            return next(iter(self.spaces))
        if subject not in self.spaces:
            raise InvalidParameterError(f"subject {subject!r} not loaded; loaded subjects: {list(self.spaces)}")
        return subject

    def _per_subject(self, responses: Any, subject: Any, convert):
        if isinstance(responses, Mapping):
            return {s: convert(self.space(s), r) for s, r in responses.items()}
        return convert(self.space(subject), responses)

    def to_nifti(self, responses: Any, subject: Any = None, **kwargs: Any) -> Any:
        """Responses -> ``nibabel.Nifti1Image`` (volume spaces; a dict of images for a dict of responses)."""
        return self._per_subject(responses, subject, lambda sp, r: sp.to_nifti(r, **kwargs))

    def to_gifti(self, responses: Any, subject: Any = None, **kwargs: Any) -> Any:
        """Responses -> ``{"lh": GiftiImage, "rh": GiftiImage}`` (surface spaces)."""
        return self._per_subject(responses, subject, lambda sp, r: sp.to_gifti(r, **kwargs))

    @property
    def output_units(self) -> str | None:
        """Units of the responses, as files and colour bars state them (default: the card's ``output.units``).

        A model whose outputs change units with an option overrides it (img2fmri's group maps are z-scores).
        """
        card = getattr(self.spec, "card", None) or {}
        units = (card.get("output") or {}).get("units") if isinstance(card, Mapping) else None
        return str(units) if units else None

    def reliability(self, subject: Any = None) -> Reliability:
        """Per-output NCSNR and noise ceiling of the data the model was fitted on, in output order.

        Flat, in the order of ``encode``'s flattened outputs for the current selection (see
        :class:`~berg.core.reliability.Reliability`). Each model family reads it from its own metadata;
        callers never read metadata keys for this.

        Raises
        ------
        NoReliabilityError
            The model's release publishes no per-output reliability (the message says what to pass instead).
        """
        raise NoReliabilityError(
            f"{self.model_id} publishes no per-output reliability (NCSNR / noise ceiling); pass your own "
            "(e.g. synthetic.generate(noise='ncsnr', ncsnr=...) or a reducer threshold on another metric)"
        )

    def output_ids(self, subject: Any = None) -> np.ndarray:
        """Identifier of each output: voxel ``(i, j, k)`` for volumes, else the output index."""
        space = self.space(subject)
        coords = space.coords()
        return coords["voxel_ijk"] if "voxel_ijk" in coords else np.arange(space.n_outputs)


@runtime_checkable
class FeatureModel(Protocol):
    """A model that exposes its backbone pass, so callers can share it and stream batches.

    ``berg run``, ensembles, synthetic data and gradient-based synthesis use these members to run one
    backbone pass for several models, report errors per item and stream results batch by batch. A model
    that implements only :class:`BaseModelInterface` still works everywhere (callers fall back to
    ``encode`` on whole shards and log that once).

    Contract: ``iter_encode(prepare_stimuli(x))`` yields, batch by batch, exactly the rows that
    ``encode(x)`` returns, and ``shape_outputs(subject, outputs_from_features(extractor(batch))[i])``
    gives the same rows from shared features. A group-level model (``group_level``) yields one output
    for all subjects and is never split per subject.

    Attributes
    ----------
    extractor : berg.features.FeatureExtractor
        The backbone with its preprocessing (``extractor.transform``); ``extractor(x)`` returns the
        ``(batch, n_features)`` feature tensor the readouts take.
    """

    extractor: Any
    batch_size: int

    def outputs_from_features(self, features: Any) -> list[Any]:
        """Flat outputs per subject (``(batch, n_outputs)`` tensors) from backbone features."""

    def shape_outputs(self, subject: Any, flat: Any) -> Any:
        """Flat outputs of ``subject`` (numpy or torch) -> the rows ``encode`` returns (reshaped, reduced)."""

    def iter_encode(self, stimuli: Any, *, show_progress: bool = True) -> Iterator[tuple[int, int, list[Any]]]:
        """Yield ``(start, stop, [responses per subject])`` for prepared stimuli."""

    def prepare_stimuli(self, stimulus: Any) -> Any:
        """Validate and index a stimulus (what ``encode`` accepts) into a sequence ``iter_encode`` takes."""


def is_feature_model(model: Any) -> bool:
    """Whether ``model`` implements :class:`FeatureModel` (a shared backbone pass is possible)."""
    return isinstance(model, FeatureModel)


def check_model_class(cls: Any, what: str) -> Any:
    """Check that ``cls`` implements :class:`BaseModelInterface`; returns it.

    Raises
    ------
    ModelLoadError
        Naming the missing (or still abstract) methods.
    """
    if not isinstance(cls, type):
        raise ModelLoadError(f"{what} must be a class, got {type(cls).__name__}")
    missing = []
    for name in REQUIRED_METHODS:
        member = getattr(cls, name, None)
        if member is None or not callable(member) or getattr(member, "__isabstractmethod__", False):
            missing.append(name)
    if missing:
        raise ModelLoadError(
            f"{what} {cls.__module__}.{cls.__qualname__} does not implement {', '.join(missing)} "
            f"(see berg.core.contract.BaseModelInterface)"
        )
    return cls
