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
        chosen = [int(s) if isinstance(s, np.integer) else s for s in chosen]
        # A subject id is an int or a str; a float (1.0) or a list mixing both ([1, "2"]) is a slip
        # that str() matching would otherwise accept silently.
        kinds = {type(s) for s in chosen if isinstance(s, (int, str)) and not isinstance(s, bool)}
        odd = [s for s in chosen if isinstance(s, bool) or not isinstance(s, (int, str))]
        if odd or len(kinds) > 1:
            what = f"subject {odd[0]!r} ({type(odd[0]).__name__})" if odd else f"subject list {list(chosen)!r}"
            raise InvalidParameterError(
                f"{what} is not valid for {self.model_id}: subject ids are integers (or strings), one kind per "
                f"list; valid subjects: {valid} (or 'all')"
            )
        out = []
        for s in chosen:
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
        empty = [k for k, v in selection.items() if v is None]
        if empty:  # {"roi": None} would silently select every output
            raise InvalidParameterError(
                f"selection[{empty[0]!r}] is None; leave the key out (or pass selection=None) for every output"
                + (f", or name ROIs: {', '.join(self.roi_names)}" if empty[0] == "roi" and self.roi_names else "")
            )
        given = dict(selection)
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


# --------------------------------------------------------------------------------------- transforms


def weights_transform(weights: str, kind: str = "image") -> dict[str, Any]:
    """The preprocessing a torchvision weights name declares (its ``transforms()``), as transform fields.

    Image weights (``ImageClassification``) resize the shorter side to ``resize_size`` and centre-crop
    ``crop_size``; video weights (``VideoClassification``) resize frames to ``resize_size``. Both bring
    their mean and std.

    Raises
    ------
    InvalidParameterError
        ``weights`` is not a torchvision weights name.
    """
    try:
        from torchvision.models import get_weight

        preset = get_weight(weights).transforms()
    except (ImportError, ValueError, KeyError, AttributeError) as exc:
        raise InvalidParameterError(
            f"cannot read the preprocessing of weights {weights!r} ({exc}); name torchvision weights such as "
            "'ResNet18_Weights.IMAGENET1K_V1', or state every transform field in the entry"
        ) from None
    resize = [int(v) for v in preset.resize_size]
    crop = [int(v) for v in preset.crop_size]
    out: dict[str, Any] = {"mean": [float(v) for v in preset.mean], "std": [float(v) for v in preset.std]}
    if kind == "video":
        out["size"] = resize if len(resize) == 2 else resize * 2
    else:
        out.update(
            size=resize if len(resize) == 2 else resize * 2,
            resize="shorter",
            crop=crop if len(crop) == 2 else crop * 2,
        )
    return out


_TRANSFORM_FIELDS = {"image": ("size", "mean", "std", "resize", "crop"), "video": ("size", "mean", "std")}


def complete_recipe(recipe: Mapping[str, Any], model_id: str = "") -> dict[str, Any]:
    """``recipe`` with its transform's missing fields taken from the weights' preprocessing.

    A field the entry states (even ``null``, e.g. ``crop: null``) wins over the weights'.
    """
    out = copy.deepcopy(dict(recipe or {}))
    transform = out.get("transform")
    if not isinstance(transform, Mapping):
        return out
    transform = dict(transform)
    weights = transform.pop("from_weights", None) or ((out.get("backbone") or {}).get("weights"))
    kind = transform.get("kind", "image")
    missing = [f for f in _TRANSFORM_FIELDS.get(kind, ()) if f not in transform]
    if missing and weights:
        filled = weights_transform(str(weights), kind)
        transform = {**{k: filled[k] for k in missing if k in filled}, **transform}
        transform = {"kind": kind, **{k: v for k, v in transform.items() if k != "kind"}}
    out["transform"] = transform
    return out


# --------------------------------------------------------------------------------------- sources


class RegistryError(InvalidParameterError):
    """A registry file or entry berg cannot use (the message names the registry and what to do)."""


class UntrustedEntryError(RegistryError):
    """An entry from outside (a URL or a package) uses a part of the schema that could run code or escape."""


@dataclass(frozen=True)
class RegistrySource:
    """One registry file and what it may do.

    Attributes
    ----------
    name : str
        ``"berg"`` (shipped), the file's path (``--registry``), the name given to ``berg registry add``,
        or ``"package:<distribution>"``.
    path : Path
        The local YAML file (for a URL registry: its pinned copy in the user's config).
    card_root : Path
        Folder its ``card:`` paths are relative to.
    trusted : bool
        Shipped and your own local files may name any code; registries from outside may not.
    origin : str
        Where it came from, for messages and provenance (the URL, file or entry point).
    base : dict or None
        Where the fragment lives (``{"kind": "s3", "bucket", "prefix", "endpoint"}``, ``{"kind": "https",
        "url"}`` or ``{"kind": "folder", "path"}``): relative sources resolve against it and absolute
        ones must stay inside it. ``None`` for packages.
    modules : tuple of str
        Top-level modules whose classes its entries may name (berg's and installed plug-in packages').
    sha256 : str or None
        Pinned sha256 of ``path`` (checked on every load).
    namespace : str or None
        The namespace it was added under (its file must declare the same).
    """

    name: str
    path: Path
    card_root: Path
    trusted: bool = True
    origin: str = ""
    base: Mapping[str, Any] | None = None
    modules: tuple[str, ...] = ("berg",)
    sha256: str | None = None
    namespace: str | None = None


def parse_model_name(name: Any) -> tuple[str, str, int | None]:
    """``"lab/model-id@2"`` -> ``("lab", "model-id", 2)``; ``"fmri-bmd-s3d"`` -> ``("", "fmri-bmd-s3d", None)``.

    Raises
    ------
    InvalidParameterError
        Not a string of that form (the message shows the form).
    """
    form = "a model name is 'model-id', 'namespace/model-id' or 'namespace/model-id@VERSION' (e.g. 'lab/v1-model@2')"
    if not isinstance(name, str):
        raise InvalidParameterError(f"a model id is a string such as 'fmri-bold5000-resnet18', got {name!r}; {form}")
    match = _NAME_RE.match(name)
    if not match:
        raise InvalidParameterError(f"{name!r} is not a valid model name; {form}")
    ns, model_id, version = match.group("ns") or "", match.group("id"), match.group("version")
    if ns and not _NAMESPACE_RE.match(ns):
        raise InvalidParameterError(f"{name!r}: namespace {ns!r} is not valid (lowercase letters, digits, '_', '-')")
    if version is not None and not version.isdigit():
        raise InvalidParameterError(f"{name!r}: the version after '@' must be a whole number, got {version!r}")
    return ns, model_id, (int(version) if version is not None else None)


def _merge(base: Any, over: Any) -> Any:
    """Deep merge of plain YAML data: mappings merge key by key, anything else replaces."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = {k: copy.deepcopy(v) for k, v in base.items()}
        for k, v in over.items():
            out[k] = _merge(out[k], v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _family(name: Any, defaults: Mapping[str, Any], where: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of family ``name`` (a family may itself extend another)."""
    if not isinstance(name, str) or name not in defaults:
        raise RegistryError(
            f"{where}: extends {name!r}, which 'defaults' does not define; defined: "
            f"{', '.join(map(str, defaults)) or 'none'}"
        )
    if name in seen:
        raise RegistryError(f"{where}: families extend each other in a circle: {' -> '.join([*seen, name])}")
    keys = dict(defaults[name])
    parent = keys.pop("extends", None)
    return _merge(_family(parent, defaults, where, (*seen, name)), keys) if parent is not None else keys


def _safe_relative(value: Any, what: str, where: str) -> str:
    """A relative POSIX path inside its root (no absolute path, ``..``, backslash or NUL)."""
    if not isinstance(value, str) or not value:
        raise UntrustedEntryError(f"{where}: {what} must be a relative path, got {value!r}")
    parts = value.split("/")
    if value.startswith("/") or "\\" in value or "\x00" in value or ":" in parts[0] or ".." in parts:
        raise UntrustedEntryError(
            f"{where}: {what} {value!r} leaves its registry's folder (absolute path, '..', drive or NUL); "
            "paths in a registry from outside are relative to its registry.yaml and stay below it"
        )
    return value


_OUTSIDE_ENTRY_KEYS = {
    "card",
    "modality",
    "dataset",
    "subjects",
    "source",
    "layout",
    "recipe",
    "model_class",
    "ensemble",
}
_OUTSIDE_SOURCE_KEYS = {"kind", "path", "bucket", "prefix", "region", "url", "manifest_sha256"}
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# modules a backbone builder from outside may name besides berg's and plug-ins' (code-free: a constructor)
_BUILDER_MODULES = ("torchvision.models",)
_IMPORT_PATH_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _check_code(value: Any, what: str, where: str, modules: Sequence[str], *, builder: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise UntrustedEntryError(f"{where}: {what} must be a string, got {type(value).__name__}")
    module = value.partition(":")[0] if ":" in value else value.rpartition(".")[0]
    top = module.split(".")[0]
    allowed = top in modules or (builder and any(module == m or module.startswith(m + ".") for m in _BUILDER_MODULES))
    if not allowed:
        extra = ", torchvision.models.*" if builder else ""
        raise UntrustedEntryError(
            f"{where}: unknown {what} {value!r}: a registry from outside may name only what berg or an installed "
            f"berg plug-in provides (modules {', '.join(m + '.*' for m in modules)}{extra}); install the package "
            "that provides it (its 'berg.registries' entry point makes it a plug-in) or use berg's own classes"
        )


def _check_recipe(recipe: Any, where: str, modules: Sequence[str]) -> None:
    """Every import path inside a recipe (backbone builders, anything 'pkg.mod:obj') must be allowed."""

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and (key == "builder" or _IMPORT_PATH_RE.match(node)):
            _check_code(node, f"recipe {key or 'value'}", where, modules, builder=key == "builder")

    if recipe is not None and not isinstance(recipe, Mapping):
        raise UntrustedEntryError(f"{where}: recipe must be a mapping")
    walk(recipe)


def _resolve_outside_source(source: Any, src: RegistrySource, where: str, cache: str) -> dict[str, Any]:
    """A fragment's ``source:`` turned into the pinned source berg reads (refusing any way out of its base)."""
    if not isinstance(source, Mapping):
        raise UntrustedEntryError(f"{where}: source must be a mapping")
    unknown = sorted(set(source) - _OUTSIDE_SOURCE_KEYS)
    if unknown:
        raise UntrustedEntryError(
            f"{where}: source key(s) {unknown} are not allowed from outside; valid: {sorted(_OUTSIDE_SOURCE_KEYS)}"
        )
    pin = source.get("manifest_sha256")
    if not isinstance(pin, str) or not _SHA256_RE.match(pin):
        raise UntrustedEntryError(
            f"{where}: source needs manifest_sha256 (the sha256 of the artifact's manifest.json, 64 hex digits) "
            "so that what is loaded is exactly what was published (`berg publish` writes it)"
        )
    kind = source.get("kind") or ("relative" if "path" in source else None)
    base = dict(src.base or {})
    out: dict[str, Any] = {"manifest_sha256": pin, "cache": cache, "registry": {"name": src.name, "url": src.origin}}
    if kind == "relative":
        rel = _safe_relative(source.get("path"), "source path", where).rstrip("/") + "/"
        if not base:
            if src.trusted or not src.path:
                raise UntrustedEntryError(f"{where}: a relative source needs a registry with a location")
            base = {"kind": "folder", "path": str(src.path.parent)}
        if base["kind"] == "s3":
            return {
                **out,
                "kind": "berg.hub.sources:PinnedS3Source",
                "bucket": base["bucket"],
                "prefix": base.get("prefix", "") + rel,
                "region": base.get("region"),
                "endpoint": base.get("endpoint"),
            }
        if base["kind"] == "https":
            return {**out, "kind": "berg.hub.sources:PinnedHTTPSource", "url": base["url"] + rel}
        return {**out, "kind": "berg.hub.sources:PinnedFolderSource", "path": str(Path(base["path"]) / rel)}
    if kind == "s3":
        bucket, prefix = source.get("bucket"), source.get("prefix", "")
        if not isinstance(bucket, str) or not isinstance(prefix, str):
            raise UntrustedEntryError(f"{where}: an s3 source needs string 'bucket' and 'prefix'")
        _safe_relative(prefix or "x", "source prefix", where)
        if base and (
            base.get("kind") != "s3" or bucket != base["bucket"] or not prefix.startswith(base.get("prefix", ""))
        ):
            inside = f"s3://{base['bucket']}/{base.get('prefix', '')}" if base.get("kind") == "s3" else src.origin
            raise UntrustedEntryError(
                f"{where}: source s3://{bucket}/{prefix} points outside its registry's bucket and prefix ({inside}); "
                "a registry fragment may only name artifacts stored beside it"
            )
        return {
            **out,
            "kind": "berg.hub.sources:PinnedS3Source",
            "bucket": bucket,
            "prefix": prefix,
            "region": source.get("region") or base.get("region"),
            "endpoint": base.get("endpoint"),
        }
    if kind == "https":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise UntrustedEntryError(f"{where}: an https source needs 'url' starting with https://")
        if base and (base.get("kind") != "https" or not url.startswith(base["url"]) or ".." in url.split("/")):
            raise UntrustedEntryError(
                f"{where}: source {url} points outside its registry's location ({src.origin}); a registry fragment "
                "may only name artifacts stored beside it"
            )
        return {**out, "kind": "berg.hub.sources:PinnedHTTPSource", "url": url.rstrip("/") + "/"}
    raise UntrustedEntryError(
        f"{where}: source kind {kind!r} is not allowed from outside; valid: a relative 'path' (beside the "
        "registry.yaml), 's3' (in the registry's bucket) or 'https' (below the registry's URL)"
    )


def check_outside_entry(entry: Mapping[str, Any], src: RegistrySource, where: str, cache: str) -> dict[str, Any]:
    """Check an entry from outside against the code-free schema; returns it with its source resolved.

    Allowed: ``card`` (+ ``card_sha256``), ``modality``, ``dataset``, ``subjects``, ``source`` (relative,
    or inside the registry's own bucket/URL, always with ``manifest_sha256``), ``layout`` and
    ``model_class`` naming berg's or an installed plug-in's classes, a ``recipe`` whose builders are
    torchvision's, berg's or a plug-in's, and ``ensemble``. No ``build`` (it runs a creator), no
    import path into anything downloaded.

    Raises
    ------
    UntrustedEntryError
        Naming the entry, the key and what is allowed.
    """
    unknown = sorted(set(entry) - _OUTSIDE_ENTRY_KEYS)
    if unknown:
        raise UntrustedEntryError(
            f"{where}: key(s) {unknown} are not allowed in a registry from outside; valid: "
            f"{sorted(_OUTSIDE_ENTRY_KEYS | {'card_sha256', 'extends', 'versions'})}"
        )
    out = dict(entry)
    _safe_relative(entry.get("card"), "card", where)
    layout = entry.get("layout") or "native"
    if layout not in ("native", "none"):
        _check_code(layout, "layout", where, src.modules)
    _check_code(entry.get("model_class"), "model class", where, src.modules)
    _check_recipe(entry.get("recipe"), where, src.modules)
    if entry.get("ensemble") is None:
        out["source"] = _resolve_outside_source(entry.get("source"), src, where, cache)
    elif entry.get("source"):
        raise UntrustedEntryError(f"{where}: an ensemble has no source of its own")
    return out


# --------------------------------------------------------------------------------------- the registry


def builtin_source() -> RegistrySource:
    """berg's shipped registry (the default namespace)."""
    return RegistrySource(name="berg", path=registry_path(), card_root=cards_dir(), origin=str(registry_path()))


def local_source(path: str | os.PathLike[str]) -> RegistrySource:
    """A registry file of your own (``--registry``, ``BERG_REGISTRY``): trusted, default namespace."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)) or "\x00" in os.fspath(path):
        raise InvalidParameterError(f"a registry file is a path to a registry.yaml, got {path!r}")
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise InvalidParameterError(f"registry file not found: {resolved}")
    cards = resolved.parent / "model_cards"
    return RegistrySource(
        name=str(resolved), path=resolved, card_root=cards if cards.is_dir() else resolved.parent, origin=str(resolved)
    )


class Registry:
    """The set of known models: berg's registry, your registry files and the registries you added.

    Parameters
    ----------
    extra : path or list of paths, optional
        Additional registry YAML files of your own (e.g. one written by ``berg train``); their ``card:``
        paths are relative to the file's directory (or its ``model_cards/`` subdirectory). Also read from
        the ``BERG_REGISTRY`` environment variable (``os.pathsep``-separated).
    outside : list of RegistrySource, optional
        Registries from outside. Default: those added with ``berg registry add`` (the user's config) and
        those installed packages ship through the ``berg.registries`` entry-point group.
    prefer : dict, optional
        ``{"lab": "registry-name"}`` or ``{"lab/model-id": "registry-name"}``: which registry wins where
        two define the same id (default: the pins set with ``berg registry prefer``). Without a pin such
        a definition is an error naming both registries.
    config_dir : path, optional
        The folder of berg's user config (default: the platform's, see :mod:`berg.hub.config`).

    Raises
    ------
    RegistryError
        A file cannot be read, an id is defined twice in one namespace, an added registry's copy does not
        match its pinned sha256, or an entry from outside is refused (:class:`UntrustedEntryError`).
    """

    def __init__(
        self,
        extra: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
        *,
        outside: Iterable[RegistrySource] | None = None,
        prefer: Mapping[str, str] | None = None,
        config_dir: str | os.PathLike[str] | None = None,
    ):
        extras: list[Any] = []
        if extra is not None:
            extras = [extra] if isinstance(extra, (str, os.PathLike)) else list(extra)
        env = env_str("BERG_REGISTRY")
        if env:
            extras += [p for p in env.split(os.pathsep) if p]
        sources = [builtin_source(), *(local_source(p) for p in extras)]
        pins: dict[str, str] = {}
        if outside is None:
            from berg.hub.config import outside_sources, preferences

            outside = [RegistrySource(**fields) for fields in outside_sources(config_dir)]
            pins.update(preferences(config_dir))
        sources += list(outside)
        pins.update(prefer or {})
        self.sources: list[RegistrySource] = sources
        self.prefer = pins
        # (namespace, id) -> registry name -> {version: spec}
        found: dict[tuple[str, str], dict[str, dict[int | None, ModelSpec]]] = {}
        for src in sources:
            for spec in self._load(src):
                found.setdefault((spec.namespace, spec.short_id), {}).setdefault(src.name, {})[spec.version] = spec
        self._models: dict[tuple[str, str], dict[int | None, ModelSpec]] = {}
        for (ns, model_id), by_source in found.items():
            self._models[(ns, model_id)] = self._choose(ns, model_id, by_source)

    # ------------------------------------------------------------------ loading
    def _choose(
        self, ns: str, model_id: str, by_source: dict[str, dict[int | None, ModelSpec]]
    ) -> dict[int | None, ModelSpec]:
        if len(by_source) == 1:
            return next(iter(by_source.values()))
        name = f"{ns}/{model_id}" if ns else model_id
        pinned = self.prefer.get(name) or (self.prefer.get(ns) if ns else None)
        if pinned in by_source:
            log.info("%s is defined by registries %s; using %r (pinned)", name, sorted(by_source), pinned)
            return by_source[pinned]

        def label(reg: str, specs: dict[int | None, ModelSpec]) -> str:
            origin = next(iter(specs.values())).origin
            return repr(reg) if origin in ("", reg) else f"{reg!r} ({origin})"

        where = " and ".join(label(n, v) for n, v in by_source.items())
        scope = f" (or {ns!r} for the whole namespace)" if ns else ""
        raise RegistryError(
            f"model {name!r} is defined by more than one registry: {where}. Remove one of them, or pin the one "
            f"that wins: berg registry prefer {name} NAME{scope}; in Python Registry(prefer={{{name!r}: NAME}})"
        )

    @staticmethod
    def _load(src: RegistrySource) -> list[ModelSpec]:
        path = src.path
        label = f"registry {src.name!r}" if src.name != str(path) else f"registry file {path}"
        try:
            if src.sha256 is not None and sha256_file(path) != src.sha256:
                raise IntegrityError(
                    f"{label}: {path} does not match its pinned sha256 {src.sha256} (changed since it was added); "
                    f"run `berg registry update {src.name}` to review and pin the new version, or remove it"
                )
            doc = read_yaml(path, max_bytes=None if src.trusted else MAX_OUTSIDE_BYTES, aliases=src.trusted)
        except OSError as exc:
            raise RegistryError(f"{label}: cannot read {path}: {exc.strerror or exc}") from None
        if doc is None:
            doc = {}
        if not isinstance(doc, Mapping):
            raise RegistryError(f"{label}: {path} must be a mapping with 'models:', got {type(doc).__name__}")
        if "models" not in doc:  # e.g. a card or plan passed as --registry: never read as an empty registry
            raise RegistryError(
                f"{label}: {path} has no 'models:' mapping (top-level keys: {', '.join(map(str, doc)) or 'none'}); "
                "a registry file lists `models: {model-id: entry}` (see docs/architecture.md)"
            )
        if not src.trusted:
            unknown = sorted(set(doc) - {"format_version", "namespace", "defaults", "models"})
            if unknown:
                raise UntrustedEntryError(
                    f"{label}: top-level key(s) {unknown} are not allowed; valid: format_version, namespace, "
                    "defaults, models"
                )
        ns = doc.get("namespace")
        if ns is None:
            if not src.trusted:
                raise RegistryError(f"{label}: a registry from outside must declare its namespace (namespace: lab)")
            ns = ""
        elif not isinstance(ns, str) or not _NAMESPACE_RE.match(ns):
            raise RegistryError(
                f"{label}: namespace {ns!r} is not valid: lowercase letters, digits, '_' and '-' (e.g. 'lab')"
            )
        if src.namespace is not None and ns != src.namespace:
            raise RegistryError(
                f"{label}: declares namespace {ns!r} but was added as {src.namespace!r}; re-add it to review the change"
            )
        if src.name != "berg" and ns == "berg":
            raise RegistryError(f"{label}: the namespace 'berg' is berg's own")
        defaults = doc.get("defaults") or {}
        models = doc.get("models") or {}
        if not isinstance(defaults, Mapping) or not all(isinstance(v, Mapping) for v in defaults.values()):
            raise RegistryError(f"{label}: 'defaults' must map family names to mappings of entry keys")
        if not isinstance(models, Mapping):
            raise RegistryError(f"{label}: 'models' must be a mapping of model ids to entries")
        specs: list[ModelSpec] = []
        for model_id, raw in models.items():
            where = f"{label}: model {model_id!r}"
            if not isinstance(model_id, str) or not _MODEL_ID_RE.match(model_id):
                raise RegistryError(
                    f"{label}: model id {model_id!r} is not valid: ids are letters, digits, '_' and '-' "
                    "(e.g. fmri-nsd_fsaverage-vit_b_32), starting with a letter or digit"
                )
            if not isinstance(raw, Mapping):
                raise RegistryError(f"{where}: the entry must be a mapping")
            entry = dict(raw)
            family = entry.pop("extends", None)
            if family is not None:
                entry = _merge(_family(family, defaults, where), entry)
            if "card" not in entry and src.trusted:
                entry["card"] = f"{model_id}.yaml"  # berg's card loader wants <id>.yaml anyway
            versions = entry.pop("versions", None)
            if versions is None:
                specs.append(Registry._spec(src, ns, model_id, None, entry, where))
                continue
            if not isinstance(versions, Mapping) or not versions:
                raise RegistryError(f"{where}: 'versions' must map version numbers (1, 2, ...) to entry keys")
            for version, over in versions.items():
                if (
                    isinstance(version, bool)
                    or not (isinstance(version, int) or (isinstance(version, str) and version.isdigit()))
                    or int(version) < 1
                ):
                    raise RegistryError(f"{where}: version {version!r} must be a whole number >= 1")
                if not isinstance(over, Mapping):
                    raise RegistryError(f"{where}@{version}: a version must be a mapping of entry keys")
                specs.append(Registry._spec(src, ns, model_id, int(version), _merge(entry, over), f"{where}@{version}"))
        return specs

    @staticmethod
    def _spec(
        src: RegistrySource, ns: str, model_id: str, version: int | None, entry: dict[str, Any], where: str
    ) -> ModelSpec:
        name = f"{ns}/{model_id}" if ns else model_id
        full = f"{name}@{version}" if version is not None else name
        card_sha = entry.pop("card_sha256", None)
        if not src.trusted:
            cache = f"{ns}/{model_id}/{version if version is not None else 0}"
            entry = check_outside_entry(entry, src, where, cache)
            if src.base is not None and card_sha is None:  # packages' cards are installed files
                raise UntrustedEntryError(f"{where}: needs card_sha256 (the pinned sha256 of its card)")
            entry["source"] = {**entry.get("source", {}), "model": full} if entry.get("source") else {}
        if card_sha is not None and (not isinstance(card_sha, str) or not _SHA256_RE.match(card_sha)):
            raise RegistryError(f"{where}: card_sha256 must be 64 lowercase hex digits")
        required = _REQUIRED + (() if entry.get("ensemble") else _PIPELINE)
        missing = [k for k in required if k not in entry]
        if missing:
            raise RegistryError(f"{where}: lacks {missing}")
        card_rel = entry["card"]
        if not isinstance(card_rel, str):
            raise RegistryError(f"{where}: card must be a file name")
        ensemble = entry.get("ensemble")
        return ModelSpec(
            model_id=full,
            short_id=model_id,
            namespace=ns,
            version=version,
            registry=src.name,
            origin=src.origin,
            trusted=src.trusted,
            card_sha256=card_sha,
            modality=entry["modality"],
            dataset=entry["dataset"],
            source=dict(entry.get("source") or {}),
            layout=entry.get("layout") or "none",
            declared_recipe=dict(entry.get("recipe") or {}),
            card_path=src.card_root / card_rel,
            model_class=entry.get("model_class") or ("berg.core.ensemble:EnsembleModel" if ensemble else None),
            ensemble=dict(ensemble) if ensemble else None,
            build=dict(entry["build"]) if entry.get("build") else None,
            declared_subjects=list(entry["subjects"]) if entry.get("subjects") is not None else None,
            extra={k: v for k, v in entry.items() if k not in _KNOWN},
        )

    @staticmethod
    def load_source(src: RegistrySource) -> list[ModelSpec]:
        """The entries of one registry file (checked as its trust level requires), every version separately."""
        return Registry._load(src)

    # ------------------------------------------------------------------ lookup
    def ids(self, pattern: str | None = None) -> list[str]:
        """Model names, sorted (``lab/model-id`` outside the default namespace); optionally a glob (``"fmri-*"``).

        Raises
        ------
        InvalidParameterError
            ``pattern`` is not a string or not a valid glob.
        """
        names = sorted(f"{ns}/{m}" if ns else m for ns, m in self._models)
        if pattern is None:
            return names
        if not isinstance(pattern, str):
            raise InvalidParameterError(
                f"pattern must be a glob string such as 'fmri-*' (or None for every model), got {pattern!r}"
            )
        try:
            return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        except re.error as exc:
            raise InvalidParameterError(
                f"pattern {pattern!r} is not a valid glob ({exc}); use * ? and [abc], e.g. 'fmri-*'"
            ) from None

    def versions(self, name: str) -> list[int]:
        """Published versions of ``name`` (``[]`` for an unversioned entry)."""
        ns, model_id, _ = parse_model_name(name)
        return sorted(v for v in self._lookup(ns, model_id, name) if v is not None)

    def __contains__(self, model_id: object) -> bool:
        try:
            self.get(model_id)  # type: ignore[arg-type]
        except (ModelNotFoundError, InvalidParameterError):
            return False
        return True

    def __iter__(self):
        return iter(self.ids())

    def _lookup(self, ns: str, model_id: str, name: str) -> dict[int | None, ModelSpec]:
        found = self._models.get((ns, model_id))
        if found is not None:
            return found
        names = self.ids()
        hint = close_matches(name, names)
        if not hint and not ns:  # 'model-id' of a namespaced model: say which namespaces have it
            hint = [f"{n}/{m}" for n, m in self._models if m == model_id and n]
        extra = f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
        raise ModelNotFoundError(f"unknown model {name!r}.{extra} Available models: {', '.join(names)}")

    def get(self, model_id: str) -> ModelSpec:
        """The spec of ``model_id`` (``id``, ``lab/id`` or ``lab/id@VERSION``; the newest version by default).

        Raises
        ------
        ModelNotFoundError
            Unknown id or version (with close matches and the valid ids or versions).
        """
        ns, short, version = parse_model_name(model_id)
        found = self._lookup(ns, short, model_id)
        if version is None:
            numbered = [v for v in found if v is not None]
            return found[max(numbered)] if numbered else found[None]
        if version not in found:
            have = sorted(v for v in found if v is not None)
            raise ModelNotFoundError(
                f"{model_id!r}: version {version} is not published; versions: {', '.join(map(str, have)) or 'none'} "
                f"(without @VERSION the newest is used)"
            )
        return found[version]
