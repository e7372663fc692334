"""Import the classes a registry entry names ("pkg.module:Class"), only when a model needs them."""

from __future__ import annotations

import importlib
from typing import Any

from berg.errors import ModelLoadError

__all__ = ["import_class", "import_object"]


def import_class(path: str, base: type, what: str) -> Any:
    """Import ``"pkg.module:Class"`` and check it subclasses ``base``; errors name ``what`` and the path."""
    module, _, name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelLoadError(f"cannot import {what} {path!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ModelLoadError(f"{what} {path!r} must subclass {base.__module__}.{base.__name__}")
    return cls


def import_object(path: str, what: str) -> Any:
    """Import ``"pkg.module:name"`` (any object); errors name ``what`` and the path."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelLoadError(f"cannot import {what} {path!r}: {exc}") from exc
