"""The trainer's configuration (``berg train CONFIG.yaml``), validated before any work starts.

Every field maps 1:1 to a YAML key (docs/training.md). Bad values raise
:class:`berg.errors.InvalidParameterError` naming the valid ones, so a typo fails in a second instead
of after an hour of feature extraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from berg.errors import InvalidParameterError, close_matches

__all__ = ["TrainConfig", "READOUT_KINDS", "PROJECTION_CHOICES"]

PROJECTION_CHOICES = ("none", "scaler_pca", "scaler_svd", "pca", "svd")
READOUT_KINDS = ("ols", "ridge")
_PROJECTION_KEYS = {"kind", "n_components", "col_block"}
_READOUT_KEYS = {"kind", "alphas", "folds"}
# Paths are resolved relative to the config file; they do not change the fitted model, so they are
# left out of the config hash.
_PATH_KEYS = ("dataset", "out_dir", "feature_cache")
# StandardScaler -> TruncatedSVD (BERG) and StandardScaler -> PCA give the same projection: standardised
# training columns have zero mean, so a recipe may say either while the config says the other.
_SAME_SUBSPACE = {"scaler_pca", "scaler_svd"}
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass
class TrainConfig:
    """What to train.

    Attributes
    ----------
    model_id : str
        Registry id of the trained model (lower case, digits, ``.-_``).
    dataset : str
        berg HDF5 dataset (docs/training.md).
    recipe : dict
        Registry ``recipe:`` (backbone, nodes, transform, projection, readout, output_space); features
        are computed from it exactly as inference does.
    out_dir : str
        Where the artifact, card, registry entry and plots are written.
    projection : dict
        ``{kind: none | scaler_pca | scaler_svd | pca | svd, n_components: int, col_block: int}``;
        ``kind`` defaults to ``recipe["projection"]``.
    readout : dict
        ``{kind: ols}`` or ``{kind: ridge, alphas: [...], folds: 5}``.
    subjects : list, optional
        Subset of the dataset's subjects (default: all).
    backbone_weights : str, optional
        ``None`` (the recipe's pretrained weights), ``"untrained"`` (seeded) or a state-dict path.
    seed : int
        Seeds the backbone (when untrained) and the CV folds.
    batch_size : int
    device : str
        torch device of the backbone.
    source : dict
        ``source:`` written into the registry entry (where the artifact will be uploaded).
    card : dict
        Merged over the generated card (name, description, citation, caveats ...).
    feature_cache : str, optional
        HDF5 feature cache (default ``out_dir/feature_cache.h5``).
    """

    model_id: str
    dataset: str
    recipe: dict[str, Any]
    out_dir: str
    projection: dict[str, Any] = field(default_factory=dict)
    readout: dict[str, Any] = field(default_factory=lambda: {"kind": "ols"})
    subjects: list[Any] | None = None
    backbone_weights: str | None = None
    seed: int = 0
    batch_size: int = 32
    device: str = "cpu"
    source: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    feature_cache: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_id, str) or not _ID.match(self.model_id):
            raise InvalidParameterError(f"model_id {self.model_id!r} must match {_ID.pattern}")
        if not isinstance(self.recipe, dict):
            raise InvalidParameterError("recipe must be a mapping (a registry entry's recipe:)")
        missing = [k for k in ("backbone", "nodes", "transform") if k not in self.recipe]
        if missing:
            raise InvalidParameterError(f"recipe lacks {missing}; it needs backbone, nodes and transform")
        self.projection = dict(self.projection or {})
        self.projection.setdefault("kind", self.recipe.get("projection", "scaler_pca"))
        self.readout = dict(self.readout or {"kind": "ols"})
        self._check_projection()
        self._check_readout()
        if int(self.batch_size) < 1:
            raise InvalidParameterError(f"batch_size must be >= 1, got {self.batch_size}")

    def _check_projection(self) -> None:
        p = self.projection
        _unknown("projection", p, _PROJECTION_KEYS)
        if p["kind"] not in PROJECTION_CHOICES:
            raise InvalidParameterError(f"projection.kind {p['kind']!r} unknown; valid: {list(PROJECTION_CHOICES)}")
        stated = self.recipe.get("projection")
        if stated is not None and stated != p["kind"] and {stated, p["kind"]} != _SAME_SUBSPACE:
            raise InvalidParameterError(
                f"projection.kind {p['kind']!r} differs from recipe.projection {stated!r}; they must agree "
                "(inference reads the recipe)"
            )
        if p["kind"] != "none":
            k = p.get("n_components")
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise InvalidParameterError(f"projection.n_components must be a positive integer, got {k!r}")

    def _check_readout(self) -> None:
        r = self.readout
        _unknown("readout", r, _READOUT_KEYS)
        if r.get("kind") not in READOUT_KINDS:
            raise InvalidParameterError(f"readout.kind {r.get('kind')!r} unknown; valid: {list(READOUT_KINDS)}")
        if r["kind"] == "ridge":
            r.setdefault("alphas", [10.0**e for e in range(-2, 8)])
            r.setdefault("folds", 5)
            alphas = r["alphas"]
            if (
                not isinstance(alphas, list)
                or not alphas
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 for a in alphas)
            ):
                raise InvalidParameterError(
                    f"readout.alphas must be a non-empty list of positive numbers, got {alphas!r}"
                )
            if not isinstance(r["folds"], int) or r["folds"] < 2:
                raise InvalidParameterError(f"readout.folds must be an integer >= 2, got {r['folds']!r}")

    @property
    def full_recipe(self) -> dict[str, Any]:
        """The recipe as the registry entry records it (projection and readout filled in)."""
        recipe = dict(self.recipe)
        recipe.setdefault("projection", self.projection["kind"])
        recipe.setdefault("readout", "linear")
        return recipe

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base_dir: str | os.PathLike[str] | None = None) -> TrainConfig:
        """Build from a mapping; relative paths are taken relative to ``base_dir``."""
        if not isinstance(raw, dict):
            raise InvalidParameterError("a training config must be a mapping")
        _unknown("config", raw, set(cls.__dataclass_fields__))
        raw = dict(raw)
        for required in ("model_id", "dataset", "recipe", "out_dir"):
            if required not in raw:
                raise InvalidParameterError(f"config lacks {required!r} (required: model_id, dataset, recipe, out_dir)")
        if base_dir is not None:
            for key in _PATH_KEYS:
                if raw.get(key) and not os.path.isabs(str(raw[key])):
                    raw[key] = str(Path(base_dir) / str(raw[key]))
        return cls(**raw)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a YAML config; relative paths are relative to the config file."""
        path = Path(path)
        if not path.is_file():
            raise InvalidParameterError(f"config file not found: {path}")
        from berg.yamlio import read_yaml  # refuses duplicate keys

        raw = read_yaml(path) or {}
        return cls.from_dict(raw, base_dir=path.parent)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (what the artifact's provenance records)."""
        return json.loads(json.dumps(asdict(self), default=str))

    def digest(self) -> str:
        """sha256 of everything that determines the fitted model (paths excluded)."""
        data = {k: v for k, v in self.to_dict().items() if k not in _PATH_KEYS}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def dump(self, path: str | os.PathLike[str]) -> Path:
        """Write the config as YAML (atomically)."""
        from berg.fsutil import atomic_write_text

        return atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


def _unknown(where: str, mapping: dict[str, Any], valid: set[str]) -> None:
    if not isinstance(mapping, dict):
        raise InvalidParameterError(f"{where} must be a mapping with keys {sorted(valid)}")
    bad = sorted(set(mapping) - valid)
    if bad:
        hints = {b: close_matches(b, valid) for b in bad}
        hint = "; ".join(f"{b!r}: did you mean {h}?" for b, h in hints.items() if h)
        raise InvalidParameterError(
            f"unknown {where} keys {bad}; valid: {sorted(valid)}" + (f" ({hint})" if hint else "")
        )
