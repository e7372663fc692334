"""The one exception hierarchy of berg.

Every error raised on purpose by berg derives from :class:`BERGError`, so user code can catch
one class. Messages always say what was wrong and list the valid values.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BERGError",
    "ModelNotFoundError",
    "InvalidParameterError",
    "StimulusError",
    "ModelLoadError",
    "ArtifactError",
    "ArtifactNotFoundError",
    "IntegrityError",
    "OfflineError",
    "UnsafeArtifactError",
    "ModelNotBuiltError",
    "MissingExtraError",
    "close_matches",
]


class BERGError(Exception):
    """Base class of every error berg raises on purpose."""


class ModelNotFoundError(BERGError, KeyError):
    """The model id is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidParameterError(BERGError, ValueError):
    """A parameter (subject, selection, device, batch size, ...) is not valid for this model."""


class StimulusError(BERGError, ValueError):
    """The stimulus does not have the form the model expects."""


class ModelLoadError(BERGError):
    """A model's artifacts or backbone could not be loaded or are inconsistent."""


class ArtifactError(BERGError):
    """An artifact file could not be fetched, verified or safely read."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """The artifact key does not exist at the source (404) or locally."""


class IntegrityError(ArtifactError):
    """A file's size or checksum does not match what was expected."""


class OfflineError(ArtifactError):
    """Offline mode is on and a file that is needed is not available locally."""


class UnsafeArtifactError(ArtifactError):
    """A legacy pickle asked for a global that is not on the allow-list."""


class ModelNotBuiltError(ModelLoadError):
    """A recipe model has not been built on this machine yet (the message gives the ``berg build`` command)."""


class MissingExtraError(BERGError, ImportError):
    """An optional dependency is missing (the message names the ``pip install berg[extra]`` to run)."""


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` entries of ``choices`` that look like ``word`` (case-insensitive)."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]
