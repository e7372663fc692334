"""Backbones that are not torchvision graphs: OpenAI CLIP through ``open_clip``, SAM's image encoder.

Each module gives :class:`berg.features.FeatureExtractor`-compatible objects (``transform``, ``__call__``,
``forward``, ``provenance``, ``backbone_weights``/``seed``/``untrained``), so the engine, the feature
cache and the trainer run them like any other backbone:

* :mod:`berg.backbones.clip` — ``ViT-B-32-quickgelu`` (OpenAI's ViT-B/32) image embeddings (512) and the
  mean text embedding of each image's captions (512);
* :mod:`berg.backbones.sam` — ``segment_anything``'s ViT-L/ViT-B image encoder on 1024 x 1024 images,
  ``(256, 64, 64)`` average-pooled with kernel 8 -> 16,384 features.

Both libraries are the optional extra ``clip-sam`` (``pip install 'berg[clip-sam]'``); nothing here
imports them (or torch) at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from berg.errors import InvalidParameterError, close_matches, require_extra

__all__ = ["EXTRA", "require", "split_backbone_weights"]

#: The berg extra that installs open_clip and segment_anything.
EXTRA = "clip-sam"
_PACKAGES = {"open_clip": "open-clip-torch", "segment_anything": "segment-anything"}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``open_clip`` / ``segment_anything`` (or a submodule) or raise ``MissingExtraError``."""
    top = module.split(".")[0]
    return require_extra(module, EXTRA, purpose, package=_PACKAGES.get(top))


def split_backbone_weights(value: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """``backbone_weights`` of a model with several backbones -> one value per backbone.

    Parameters
    ----------
    value : None, "pretrained", "untrained", path, or mapping
        A keyword applies to every backbone; a mapping ``{"clip": PATH, "sam": PATH}`` gives each its own
        (missing names: pretrained); a single path is accepted only when one backbone is needed.
    names : tuple of str
        The backbones needed (e.g. ``("clip", "sam")``).
    """
    if value is None or (isinstance(value, str) and value in ("pretrained", "untrained")):
        return {n: value for n in names}
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in ("clip", "sam")]
        if unknown:
            hints = [h for k in unknown for h in close_matches(str(k), ("clip", "sam"))]
            raise InvalidParameterError(
                f"backbone_weights keys {unknown} are not backbones of this model"
                + (f" (did you mean {hints}?)" if hints else "")
                + "; valid keys: 'clip', 'sam'"
            )
        return {n: value.get(n) for n in names}
    if isinstance(value, (str, os.PathLike)) and len(names) == 1:
        return {names[0]: value}
    raise InvalidParameterError(
        f"backbone_weights={value!r}: this model runs {len(names)} backbones ({', '.join(names)}); pass None "
        "(pretrained), 'untrained', or one file per backbone with the model options clip_weights=PATH, sam_weights=PATH"
    )
