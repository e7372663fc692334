"""The model registry: ``registry.yaml`` files parsed into :class:`ModelSpec` objects, plus parameter checks.

Everything here is plain data and runs before any artifact I/O: unknown ids, subjects, ROI names,
one-hot lengths, devices and batch sizes are refused with the valid values in the message.

Where entries come from (each a :class:`RegistrySource`):

* berg's shipped ``registry.yaml`` — the default namespace (``fmri-bmd-s3d``);
* files named by ``BERG(registry=...)``, ``--registry`` or ``BERG_REGISTRY`` (your own, e.g. written by
  ``berg train``; trusted like the shipped file);
* registries added with ``berg registry add NAME URL`` (kept in the user's config) and registries that
  installed packages ship through the ``berg.registries`` entry-point group (see :mod:`berg.hub`).
  These come from outside: they may use only the code-free part of the schema (see
  :func:`check_outside_entry`), their files are pinned by sha256, and their ids live in their own
  namespace (``lab/model-id``).

File format (one fact in one place)::

    format_version: 1
    namespace: lab                  # absent: the default namespace (shipped and local files only)
    defaults:                       # families of entries: shared keys, as timm's _cfg
      catalogue: {modality: fmri, layout: native, recipe: {...}}
    models:
      model-id:
        extends: catalogue          # deep-merged over the family's defaults
        recipe:
          backbone: {builder: torchvision.models.alexnet, weights: AlexNet_Weights.IMAGENET1K_V1}
          transform: {kind: image}  # size, crop, mean, std: from the weights (torchvision's transforms())
        versions:                   # optional: lab/model-id@1, lab/model-id@2; the newest by default
          1: {source: {...}}
          2: {source: {...}}
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg._resources import cards_dir, registry_path
from berg.devices import validate_device
from berg.env import env_str
from berg.errors import IntegrityError, InvalidParameterError, ModelNotFoundError, close_matches
from berg.fsutil import sha256_file
from berg.yamlio import read_yaml

__all__ = [
    "ModelSpec",
    "Registry",
    "RegistrySource",
    "RegistryError",
    "UntrustedEntryError",
    "Selection",
    "check_outside_entry",
    "parse_model_name",
    "validate_load_params",
    "weights_transform",
]

log = logging.getLogger(__name__)

_REQUIRED = ("card", "modality", "dataset")
# Model ids name cache folders: no '/', '.', '..', spaces or leading '_'/'.' (berg's own folders).
_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# lab/model-id@2: namespace (optional), id, version (optional)
_NAME_RE = re.compile(r"^(?:(?P<ns>[^/@]+)/)?(?P<id>[^/@]+)(?:@(?P<version>[^/@]*))?$")
_PIPELINE = ("source", "layout", "recipe")
_KNOWN = {"card", "modality", "dataset", "subjects", "source", "layout", "recipe", "model_class", "ensemble", "build"}
# bookkeeping keys of an entry, consumed while loading (not facts of the model)
_STRUCTURE = ("extends", "versions", "card_sha256")
#: Largest registry fragment / card read from outside (a fragment of hundreds of models is ~100 kB).
MAX_OUTSIDE_BYTES = 1 << 20



def _space_keys(attribute: str) -> tuple[str, ...]:
    """Union over the registered output-space kinds of one selection-key attribute (see berg.core.spaces)."""
    from berg.core.spaces import SPACE_KINDS

    return tuple(dict.fromkeys(k for cls in SPACE_KINDS.values() for k in getattr(cls, attribute)))


@dataclass(frozen=True)
class Selection:
    """A validated output selection for one subject.

    ``items`` maps selection keys to normalised values: ``"roi"`` and ``"channels"`` to tuples of
    names, vector keys (``"voxels"``, ``"lh_vertices"``, ``"timepoints"``...) to boolean arrays.
    An empty selection keeps every output.
    """

    items: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_all(self) -> bool:
        """True when every output is kept."""
        return not self.items

    def get(self, key: str, default: Any = None) -> Any:
        """The normalised value of ``key`` (``default`` when absent)."""
        return self.items.get(key, default)

    def keys(self) -> list[str]:
        """Selection keys present."""
        return list(self.items)

    @property
    def rois(self) -> tuple[str, ...] | None:
        """Selected ROI names (``None`` when the selection is not by ROI)."""
        return self.items.get("roi")

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (for provenance)."""
        out: dict[str, Any] = {}
        for key, value in self.items.items():
            if isinstance(value, np.ndarray):
                out[key] = {"selected": int(value.sum()), "of": int(value.size)}
            else:
                out[key] = list(value)
        return out


@dataclass
class ModelSpec:
    """One registry entry, with its (validated) card.

    Facts about the model — subjects, ROIs, selection keys, options — are read from the card, through
    the same validation as ``berg describe`` (:func:`berg.cards.load_card`).

    Attributes
    ----------
    model_id : str
    modality, dataset : str
    source : dict
        Where artifact keys come from (see :mod:`berg.store`); ``{}`` for ensembles.
    layout : str
        ``"native"`` or a dotted ``"pkg.mod:Class"`` path of an :class:`~berg.core.layouts.ArtifactLayout`.
    recipe : dict
        backbone, nodes, transform, projection, readout, output_space.
    model_class : str or None
        Dotted path of a class implementing :class:`~berg.core.contract.BaseModelInterface`.
    ensemble : dict or None
        ``{"members": [{"model": id, "weight": w}, ...]}`` for ensembles.
    build : dict or None
        ``{"creator": "pkg.mod:function", "data": "..."}`` for recipe models built on the user's machine.
    card_path : Path
    namespace : str
        ``""`` for the default namespace (berg's shipped registry and your own files).
    version : int or None
        The entry's version (``lab/model-id@2``); ``None`` for unversioned entries.
    registry : str
        Name of the registry the entry came from (``"berg"`` for the shipped one).
    origin : str
        Where that registry came from (a file, a URL, a package's entry point).
    card_sha256 : str or None
        Pinned sha256 of the card (entries from outside).
    """

    model_id: str
    modality: str
    dataset: str
    source: dict[str, Any]
    layout: str
    declared_recipe: dict[str, Any]
    card_path: Path
    model_class: str | None = None
    ensemble: dict[str, Any] | None = None
    build: dict[str, Any] | None = None
    declared_subjects: list[Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    namespace: str = ""
    short_id: str = ""
    version: int | None = None
    registry: str = "berg"
    origin: str = ""
    card_sha256: str | None = None
    trusted: bool = True
    _card: dict[str, Any] | None = field(default=None, repr=False)
    _recipe: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.short_id:
            self.short_id = self.model_id

    @property
    def name(self) -> str:
        """The model's name without version: ``lab/model-id`` (``model-id`` in the default namespace)."""
        return f"{self.namespace}/{self.short_id}" if self.namespace else self.short_id

    @property
    def recipe(self) -> dict[str, Any]:
        """The recipe, its transform completed from the backbone's weights where the entry leaves fields out.

        A torchvision weights name brings its preprocessing (``weights.transforms()``: resize, crop,
        mean, std); the entry states only what differs. ``transform: {from_weights: NAME}`` names the
        weights whose preprocessing to use when the backbone itself has none (untrained controls).
        torchvision is imported only when a field is missing.
        """
        if self._recipe is None:
            self._recipe = complete_recipe(self.declared_recipe, self.model_id)
        return self._recipe

    @property
    def card(self) -> dict[str, Any]:
        """The model card as a dict (read and validated once)."""
        if self._card is None:
            from berg.cards import load_card

            if not self.card_path.is_file():
                raise ModelNotFoundError(f"card of {self.model_id} missing: {self.card_path}")
            if not self.trusted:  # bounded, alias-free, pinned: before the card loader sees it
                read_yaml(self.card_path, max_bytes=MAX_OUTSIDE_BYTES, aliases=False)
            if self.card_sha256 is not None and sha256_file(self.card_path) != self.card_sha256:
                raise IntegrityError(
                    f"card of {self.model_id} ({self.card_path}) does not match the sha256 its registry "
                    f"{self.registry!r} pins ({self.card_sha256}); run `berg registry update {self.registry}`"
                )
            card = load_card(self.card_path)
            if card.get("id") not in (self.model_id, self.short_id, self.name):
                raise InvalidParameterError(
                    f"card {self.card_path} has id {card.get('id')!r}; the registry entry is {self.model_id!r}"
                )
            self._card = dict(card)  # a plain dict (YAML/JSON dumpable)
            declared = self.declared_subjects
            if declared is not None and [str(x) for x in declared] != [str(x) for x in self.subjects]:
                raise InvalidParameterError(
                    f"registry entry {self.model_id} lists subjects {declared} but its card lists "
                    f"{self.subjects}; the card is the one source of truth: remove `subjects` from the entry"
                )
        return self._card

    @property
    def parameters(self) -> dict[str, Any]:
        return self.card.get("parameters") or {}

    @property
    def subjects(self) -> list[Any]:
        """Valid subject ids (from the card)."""
        return list(self.parameters.get("subjects") or [])

    @property
    def input_kind(self) -> str:
        """``"image"`` or ``"video"`` (the recipe's transform; the card's input type for ensembles)."""
        transform = (self.declared_recipe or {}).get("transform") or {}
        return transform.get("kind") or self.card["input"]["type"]

    @property
    def output_space_kind(self) -> str:
        """``flat``, ``volume``, ``surface`` or ``sensor_time`` (card ``output.space``, else the recipe)."""
        space = (self.card.get("output") or {}).get("space") or {}
        return space.get("kind") or (self.declared_recipe or {}).get("output_space") or "flat"

    @property
    def min_frames(self) -> int:
        """Minimum frames per video the card declares (1 for images)."""
        return int(self.card.get("input", {}).get("min_frames", 1))

    def _selection_card(self) -> dict[str, Any]:
        return self.parameters.get("selection") or {}

    @property
    def roi_names(self) -> list[str]:
        """Valid ROI names (from the card)."""
        return list(self._selection_card().get("rois") or [])

    @property
    def selection_keys(self) -> tuple[str, ...]:
        """Selection keys this model accepts (card ``parameters.selection.keys``, else its space's)."""
        declared = self._selection_card().get("keys")
        if declared:
            return tuple(declared)
        from berg.core.spaces import SPACE_KINDS

        space_cls = SPACE_KINDS.get(self.output_space_kind)
        keys = space_cls.SELECTION_KEYS if space_cls is not None else ("roi",)
        return tuple(k for k in keys if k != "roi" or self.roi_names)

    @property
    def options(self) -> dict[str, dict[str, Any]]:
        """Model options (``get_encoding_model`` keywords) declared in the card, by name."""
        return {o["name"]: dict(o) for o in self.parameters.get("model_kwargs") or []}

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
            if isinstance(s, np.integer):
                s = int(s)
            match = [v for v in self.subjects if not isinstance(s, bool) and (v == s or str(v) == str(s))]
            if isinstance(s, bool) or not match:
                raise InvalidParameterError(
                    f"subject {s!r} is not valid for {self.model_id}; valid subjects: {valid} (or 'all')"
                )
            if match[0] in out:
                raise InvalidParameterError(f"subject {s!r} given twice")
            out.append(match[0])
        return out

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``get_encoding_model`` model options against the card; returns them with defaults.

        Unknown names raise with close matches and the valid names; declared ``choices`` are enforced.
        Model classes add their own checks on top (``validate_options`` of the class).
        """
        declared = self.options
        unknown = [k for k in options if k not in declared]
        if unknown:
            hints = {k: close_matches(k, declared) for k in unknown}
            hint = "; ".join(f"did you mean {', '.join(map(repr, h))} for {k!r}?" for k, h in hints.items() if h)
            raise InvalidParameterError(
                f"unknown option(s) {unknown} for {self.model_id}"
                + (f" ({hint})" if hint else "")
                + f"; valid options: {', '.join(declared) or 'none'} (see `berg describe {self.model_id}`)"
            )
        out = {name: o.get("default") for name, o in declared.items()}
        for name, value in options.items():
            choices = declared[name].get("choices")
            values = value if isinstance(value, (list, tuple)) else [value]
            if choices is not None and value is not None and any(v not in choices for v in values):
                raise InvalidParameterError(
                    f"{name}={value!r} is not valid for {self.model_id}; valid: {', '.join(map(repr, choices))}"
                )
            out[name] = value
        return out

    def validate_selection(self, selection: Any, subjects: Sequence[Any]) -> dict[Any, Selection]:
        """Check a ``selection`` against the card; returns one :class:`Selection` per subject.

        Keys depend on the model's output space (:attr:`selection_keys`): ``roi`` (a name or a list of
        names from the card), one-hot vectors (``voxels``/``outputs`` with the subject's number of
        outputs — ``{subject: vector}`` for several subjects — ``lh_vertices``/``rh_vertices``,
        ``timepoints`` with the card's fixed lengths), ``channels`` (a list of channel names, output in
        the given order). As in BERG, ``roi`` takes precedence over vector selections.
        """
        valid_keys = self.selection_keys
        if selection is None:
            return {s: Selection() for s in subjects}
        if not isinstance(selection, Mapping):
            raise InvalidParameterError(
                f"selection must be a dict with keys from {list(valid_keys)}, got {type(selection).__name__}"
            )
        unknown = [k for k in selection if k not in valid_keys]
        if unknown:
            hints = [h for k in unknown for h in close_matches(str(k), valid_keys)]
            raise InvalidParameterError(
                f"unknown selection key(s) {sorted(map(str, unknown))} for {self.model_id}"
                + (f" (did you mean {', '.join(map(repr, hints))}?)" if hints else "")
                + f"; valid keys: {list(valid_keys)}"
            )
        given = {k: v for k, v in selection.items() if v is not None}
        if given.get("roi") is not None:
            overrides = _space_keys("ROI_OVERRIDES")
            ignored = [k for k in given if k in overrides]
            if ignored:
                log.warning("selection: 'roi' takes precedence; %s ignored (as in BERG)", ignored)
            given = {k: v for k, v in given.items() if k not in overrides}
        common: dict[str, Any] = {}
        per_subject: dict[Any, dict[str, Any]] = {s: {} for s in subjects}
        for key, value in given.items():
            if key == "roi":
                common[key] = self._check_rois(value)
            elif key == "channels":
                common[key] = self._check_channels(value)
            elif key in _space_keys("VECTOR_KEYS"):
                for s, vec in self._vectors_per_subject(key, value, subjects).items():
                    per_subject[s][key] = vec
        return {s: Selection({**common, **per_subject[s]}) for s in subjects}

    def _check_rois(self, roi: Any) -> tuple[str, ...]:
        valid = self.roi_names
        aliases = self._selection_card().get("roi_aliases") or {}
        if not valid:
            raise InvalidParameterError(
                f"{self.model_id} declares no ROIs; valid selection keys: {list(self.selection_keys)}"
            )
        if isinstance(roi, str):
            names = [roi]
        elif isinstance(roi, (list, tuple)) and all(isinstance(r, str) for r in roi):
            names = list(roi)
        else:
            raise InvalidParameterError(
                f"selection['roi'] must be a ROI name or a list of names, got {roi!r}; valid ROIs: {', '.join(valid)}"
            )
        if not names:
            raise InvalidParameterError(f"empty ROI list; valid ROIs: {', '.join(valid)}")
        out = []
        for name in names:
            if name not in valid and name in aliases:
                log.warning(
                    "ROI %r is an alias of %r (%s); using %r", name, aliases[name], self.model_id, aliases[name]
                )
                name = aliases[name]
            if name not in valid:
                hint = close_matches(str(name), valid)
                extra = f" Did you mean {', '.join(hint)}?" if hint else ""
                raise InvalidParameterError(
                    f"ROI {name!r} is not valid for {self.model_id}.{extra} Valid ROIs: {', '.join(valid)}"
                )
            out.append(name)
        return tuple(dict.fromkeys(out))

    def _check_channels(self, channels: Any) -> tuple[str, ...]:
        valid = list(self._selection_card().get("channels") or [])
        if isinstance(channels, str) or not isinstance(channels, (list, tuple)) or not channels:
            raise InvalidParameterError(
                f"selection['channels'] must be a non-empty list of channel names, got {channels!r}; "
                f"valid: {', '.join(valid)}"
            )
        for name in channels:
            if not isinstance(name, str) or (valid and name not in valid):
                hint = close_matches(str(name), valid)
                extra = f" Did you mean {', '.join(hint)}?" if hint else ""
                raise InvalidParameterError(
                    f"channel {name!r} is not valid for {self.model_id}.{extra} Valid channels: {', '.join(valid)}"
                )
        return tuple(channels)  # the user's order, duplicates kept (as BERG)

    def _vectors_per_subject(self, key: str, value: Any, subjects: Sequence[Any]) -> dict[Any, np.ndarray]:
        if isinstance(value, Mapping):
            vectors = {}
            for sub_key, vec in value.items():
                (sub,) = self.validate_subjects(sub_key)
                vectors[sub] = vec
            missing = [s for s in subjects if s not in vectors]
            if missing:
                raise InvalidParameterError(f"selection[{key!r}] has no vector for subject(s) {missing}")
        else:
            fixed = (self._selection_card().get("lengths") or {}).get(key)
            if fixed is None and len(subjects) > 1:
                raise InvalidParameterError(
                    f"with several subjects pass one vector per subject: selection={{{key!r}: {{subject: vector}}}}"
                )
            vectors = {s: value for s in subjects}
        return {s: self._check_one_hot(key, s, vectors[s]) for s in subjects}

    def _check_one_hot(self, key: str, subject: Any, vec: Any) -> np.ndarray:
        try:
            arr = np.asarray(vec)
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(f"selection[{key!r}] must be a 1-D 0/1 vector: {exc}") from None
        fixed = (self._selection_card().get("lengths") or {}).get(key)
        n = int(fixed) if fixed is not None else (self.n_outputs(subject) if key in ("voxels", "outputs") else None)
        if arr.ndim != 1:
            raise InvalidParameterError(f"selection[{key!r}] must be a 1-D 0/1 vector, got shape {arr.shape}")
        if n is not None and arr.shape[0] != n:
            raise InvalidParameterError(
                f"selection[{key!r}] for subject {subject} has length {arr.shape[0]}; "
                f"it must have exactly {n} entries (one per output)"
            )
        if arr.dtype != bool and not (np.issubdtype(arr.dtype, np.number) and np.isin(arr, (0, 1)).all()):
            raise InvalidParameterError(f"selection[{key!r}] must contain only 0/1 (or booleans)")
        arr = arr.astype(bool)
        if not arr.any():
            raise InvalidParameterError(f"selection[{key!r}] selects no output (all zeros)")
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


