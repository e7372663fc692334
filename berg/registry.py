"""The model registry: ``registry.yaml`` parsed into :class:`ModelSpec` objects, plus parameter checks.

Everything here is plain data and runs before any artifact I/O: unknown ids, subjects, ROI names,
one-hot lengths, devices and batch sizes are refused with the valid values in the message.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from berg._resources import cards_dir, registry_path
from berg.yamlio import read_yaml
from berg.errors import InvalidParameterError, ModelNotFoundError, close_matches
from berg.features import validate_device

__all__ = ["ModelSpec", "Registry", "Selection", "load_registry"]

_REQUIRED = ("card", "modality", "dataset", "subjects", "source", "layout", "recipe")
_SELECTION_KEYS = ("roi", "voxels")


@dataclass(frozen=True)
class Selection:
    """A validated output selection for one subject: ROI names or a boolean vector (or everything)."""

    rois: tuple[str, ...] | None = None
    voxels: np.ndarray | None = field(default=None, compare=False)

    @property
    def is_all(self) -> bool:
        """True when every output is kept."""
        return self.rois is None and self.voxels is None

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (for provenance)."""
        if self.rois is not None:
            return {"roi": list(self.rois)}
        if self.voxels is not None:
            return {"voxels": int(self.voxels.sum()), "of": int(self.voxels.size)}
        return {}


@dataclass
class ModelSpec:
    """One registry entry, with its card.

    Attributes
    ----------
    model_id : str
    modality, dataset : str
    subjects : list
        Valid subject ids (ints).
    source : dict
        Where artifact keys come from (see :mod:`berg.store`).
    layout : str
        ``"native"`` or a dotted ``"pkg.mod:Class"`` path of an :class:`~berg.layouts.ArtifactLayout`.
    recipe : dict
        backbone, nodes, transform, projection, readout, output_space.
    model_class : str or None
        Dotted path of a model class, for models that extend the plain engine.
    card_path : Path
    """

    model_id: str
    modality: str
    dataset: str
    subjects: list[Any]
    source: dict[str, Any]
    layout: str
    recipe: dict[str, Any]
    card_path: Path
    model_class: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _card: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def card(self) -> dict[str, Any]:
        """The model card as a dict (read once)."""
        if self._card is None:
            if not self.card_path.is_file():
                raise ModelNotFoundError(f"card of {self.model_id} missing: {self.card_path}")
            self._card = read_yaml(self.card_path)
        return self._card

    @property
    def input_kind(self) -> str:
        """``"image"`` or ``"video"`` (from the recipe's transform)."""
        return self.recipe["transform"]["kind"]

    @property
    def min_frames(self) -> int:
        """Minimum frames per video the card declares (1 for images)."""
        return int(self.card.get("input", {}).get("min_frames", 1))

    def _selection_card(self) -> dict[str, Any]:
        return (self.card.get("parameters") or {}).get("selection") or {}

    @property
    def roi_names(self) -> list[str]:
        """Valid ROI names (from the card)."""
        return list(self._selection_card().get("rois") or [])

    def n_outputs(self, subject: Any) -> int | None:
        """Exact number of outputs of ``subject`` declared in the card (``None`` if not declared)."""
        table = self._selection_card().get("n_outputs") or {}
        for key, value in table.items():
            if str(key) == str(subject):
                return int(value)
        return None

    # ------------------------------------------------------------------ validation (no I/O)
    def validate_subjects(self, subject: Any) -> list[Any]:
        """Normalise ``subject`` (one id, a list, or ``"all"``) to a list of valid subject ids."""
        valid = ", ".join(map(str, self.subjects))
        if subject is None:
            raise InvalidParameterError(
                f"{self.model_id} needs a subject; valid subjects: {valid} (or a list, or 'all')"
            )
        if isinstance(subject, str) and subject == "all":
            return list(self.subjects)
        many = isinstance(subject, (list, tuple))
        chosen = list(subject) if many else [subject]
        if not chosen:
            raise InvalidParameterError(f"empty subject list; valid subjects: {valid}")
        out = []
        for s in chosen:
            match = [v for v in self.subjects if v == s or (isinstance(s, str) and str(v) == s)]
            if isinstance(s, bool) or not match:
                raise InvalidParameterError(
                    f"subject {s!r} is not valid for {self.model_id}; valid subjects: {valid} (or 'all')"
                )
            if match[0] in out:
                raise InvalidParameterError(f"subject {s!r} given twice")
            out.append(match[0])
        return out

    def validate_selection(self, selection: Any, subjects: Sequence[Any]) -> dict[Any, Selection]:
        """Check a ``selection`` against the card; returns one :class:`Selection` per subject.

        ``{"roi": name or [names]}`` selects ROIs (valid names from the card); ``{"voxels": vector}``
        selects outputs by a one-hot vector whose length must equal the subject's number of outputs
        (for several subjects pass ``{"voxels": {subject: vector}}``). As in BERG, ``roi`` takes
        precedence when both are given and ``roi`` is not ``None``.
        """
        if selection is None:
            return {s: Selection() for s in subjects}
        if not isinstance(selection, Mapping):
            raise InvalidParameterError(
                f"selection must be a dict with keys {list(_SELECTION_KEYS)}, got {type(selection).__name__}"
            )
        unknown = set(selection) - set(_SELECTION_KEYS)
        if unknown:
            raise InvalidParameterError(
                f"unknown selection key(s) {sorted(map(str, unknown))}; valid keys: {list(_SELECTION_KEYS)}"
            )
        roi = selection.get("roi")
        if roi is not None:
            names = [roi] if isinstance(roi, str) else list(roi)
            valid = self.roi_names
            if not valid:
                raise InvalidParameterError(f"{self.model_id} declares no ROIs; use selection={{'voxels': ...}}")
            if not names:
                raise InvalidParameterError(f"empty ROI list; valid ROIs: {', '.join(valid)}")
            for name in names:
                if name not in valid:
                    hint = close_matches(str(name), valid)
                    extra = f" Did you mean {', '.join(hint)}?" if hint else ""
                    raise InvalidParameterError(
                        f"ROI {name!r} is not valid for {self.model_id}.{extra} Valid ROIs: {', '.join(valid)}"
                    )
            return {s: Selection(rois=tuple(dict.fromkeys(names))) for s in subjects}
        voxels = selection.get("voxels")
        if voxels is None:
            return {s: Selection() for s in subjects}
        if isinstance(voxels, Mapping):
            per_subject = {}
            for key, vec in voxels.items():
                (sub,) = self.validate_subjects(key)
                per_subject[sub] = vec
            missing = [s for s in subjects if s not in per_subject]
            if missing:
                raise InvalidParameterError(f"selection['voxels'] has no vector for subject(s) {missing}")
        elif len(subjects) > 1:
            raise InvalidParameterError(
                "with several subjects pass one vector per subject: selection={'voxels': {subject: vector}}"
            )
        else:
            per_subject = {subjects[0]: voxels}
        return {s: Selection(voxels=self._check_one_hot(s, per_subject[s])) for s in subjects}

    def _check_one_hot(self, subject: Any, vec: Any) -> np.ndarray:
        arr = np.asarray(vec)
        n = self.n_outputs(subject)
        if arr.ndim != 1:
            raise InvalidParameterError(f"selection['voxels'] must be 1-D, got shape {arr.shape}")
        if n is not None and arr.shape[0] != n:
            raise InvalidParameterError(
                f"selection['voxels'] for subject {subject} has length {arr.shape[0]}; "
                f"it must have exactly {n} entries (one per output of subject {subject})"
            )
        if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
            raise InvalidParameterError("selection['voxels'] must contain only 0/1 (or booleans)")
        arr = arr.astype(bool)
        if not arr.any():
            raise InvalidParameterError("selection['voxels'] selects no output (all zeros)")
        return arr


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def validate_load_params(
    spec: ModelSpec, subject: Any, selection: Any, device: str, batch_size: Any
) -> tuple[list[Any], dict[Any, Selection], str, int]:
    """All checks of ``get_encoding_model`` that need no I/O, in one place."""
    subjects = spec.validate_subjects(subject)
    selections = spec.validate_selection(selection, subjects)
    return subjects, selections, validate_device(device), _check_batch_size(batch_size)


class Registry:
    """The set of known models: the built-in registry plus optional extra registry files.

    Parameters
    ----------
    extra : path or list of paths, optional
        Additional registry YAML files (e.g. one written by ``berg train``); their ``card:`` paths are
        relative to the file's directory (or its ``model_cards/`` subdirectory). Also read from the
        ``BERG_REGISTRY`` environment variable (``os.pathsep``-separated).
    """

    def __init__(self, extra: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None):
        files: list[tuple[Path, Path]] = [(registry_path(), cards_dir())]
        extras: list[Any] = []
        if extra is not None:
            extras = [extra] if isinstance(extra, (str, os.PathLike)) else list(extra)
        env = os.environ.get("BERG_REGISTRY")
        if env:
            extras += [p for p in env.split(os.pathsep) if p]
        for path in extras:
            path = Path(path).expanduser().resolve()
            if not path.is_file():
                raise InvalidParameterError(f"registry file not found: {path}")
            cards = path.parent / "model_cards"
            files.append((path, cards if cards.is_dir() else path.parent))
        self._specs: dict[str, ModelSpec] = {}
        for path, card_root in files:
            self._load(path, card_root)

    def _load(self, path: Path, card_root: Path) -> None:
        doc = read_yaml(path) or {}
        models = doc.get("models") or {}
        for model_id, entry in models.items():
            missing = [k for k in _REQUIRED if k not in entry]
            if missing:
                raise InvalidParameterError(f"{path}: model {model_id} lacks {missing}")
            if model_id in self._specs:
                raise InvalidParameterError(f"{path}: model id {model_id} is already registered")
            known = set(_REQUIRED) | {"model_class"}
            self._specs[model_id] = ModelSpec(
                model_id=model_id,
                modality=entry["modality"],
                dataset=entry["dataset"],
                subjects=list(entry["subjects"]),
                source=dict(entry["source"]),
                layout=entry["layout"],
                recipe=dict(entry["recipe"]),
                card_path=card_root / entry["card"],
                model_class=entry.get("model_class"),
                extra={k: v for k, v in entry.items() if k not in known},
            )

    def ids(self, pattern: str | None = None) -> list[str]:
        """Model ids, sorted; optionally filtered by a glob pattern such as ``"fmri-*"``."""
        ids = sorted(self._specs)
        return [i for i in ids if fnmatch.fnmatchcase(i, pattern)] if pattern else ids

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._specs

    def __iter__(self):
        return iter(self.ids())

    def get(self, model_id: str) -> ModelSpec:
        """The spec of ``model_id``; unknown ids raise with close matches and the valid ids."""
        if not isinstance(model_id, str) or model_id not in self._specs:
            hint = close_matches(str(model_id), self._specs)
            extra = f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
            raise ModelNotFoundError(
                f"unknown model {model_id!r}.{extra} Available models: {', '.join(self.ids())}"
            )
        return self._specs[model_id]


def load_registry(extra: Any = None) -> Registry:
    """Load the built-in registry (plus ``extra`` registry files)."""
    return Registry(extra)
