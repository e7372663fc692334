"""Locate berg's data files: ``registry.yaml`` and ``model_cards/``.

In a source checkout (editable install) they are the top-level files of the repository, their single
source of truth. In a wheel they are copied to ``berg/_data/`` at build time (pyproject.toml
``force-include``), so an installed berg finds them there.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["data_root", "registry_path", "cards_dir"]

_PACKAGE = Path(__file__).resolve().parent


def data_root() -> Path:
    """Directory holding ``registry.yaml`` and ``model_cards/``."""
    packaged = _PACKAGE / "_data"
    if (packaged / "registry.yaml").is_file():
        return packaged
    checkout = _PACKAGE.parent
    if (checkout / "registry.yaml").is_file():
        return checkout
    raise FileNotFoundError(f"berg's registry.yaml is missing (looked in {packaged} and {checkout}); reinstall berg")


def registry_path() -> Path:
    """Path of the built-in ``registry.yaml``."""
    return data_root() / "registry.yaml"


def cards_dir() -> Path:
    """Directory of the built-in model cards."""
    return data_root() / "model_cards"
