"""The one exception hierarchy of berg.

Every error raised on purpose by berg derives from :class:`BERGError`, so user code can catch
one class. Messages always say what was wrong and list the valid values.
"""

from __future__ import annotations

import difflib
import errno as _errno
import importlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

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
    "FileAccessError",
    "BackboneWeightsError",
    "UntrainedBackboneWarning",
    "close_matches",
    "os_error",
    "check_output_path",
    "require_extra",
    "in_cli_words",
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


class NoReliabilityError(BERGError, LookupError):
    """The model publishes no per-output reliability (NCSNR / noise ceiling); the message says what to pass instead."""


class MissingExtraError(BERGError, ImportError):
    """An optional dependency is missing (the message names the ``pip install berg[extra]`` to run)."""


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` entries of ``choices`` that look like ``word`` (case-insensitive)."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


# ------------------------------------------------------------------------------ additions (issue 10/17)


class FileAccessError(BERGError, OSError):
    """Reading or writing a file failed in the operating system (permission denied, disk full, read-only).

    Keeps ``errno``, ``strerror`` and ``filename`` of the original :class:`OSError`, and its text in the
    message, so ``except OSError`` and ``except BERGError`` both catch it.
    """

    def __init__(
        self, message: str, *, errno: int | None = None, strerror: str | None = None, filename: str | None = None
    ):
        if errno is not None:
            OSError.__init__(self, errno, strerror, filename)
        else:
            OSError.__init__(self, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BackboneWeightsError(ModelLoadError):
    """The pretrained backbone weights are not in the torch cache and could not be downloaded.

    The message names the weights file, the folder torch looks in (``TORCH_HOME``), a command that
    downloads it, and the ``untrained`` control; :func:`in_cli_words` gives the CLI's spelling.
    """


class UntrainedBackboneWarning(UserWarning):
    """Responses come from a randomly initialised backbone (``backbone_weights="untrained"``): a control."""


_OS_HINTS = {
    _errno.EACCES: "check the permissions, or choose a path you can write",
    _errno.EPERM: "check the permissions, or choose a path you can write",
    _errno.ENOSPC: "free some space, or choose a path on another disk",
    _errno.EROFS: "the file system is read-only; choose a writable path",
    _errno.ENAMETOOLONG: "use a shorter path",
}
if hasattr(_errno, "EDQUOT"):
    _OS_HINTS[_errno.EDQUOT] = "your disk quota is full; free some space or choose another disk"


def os_error(exc: OSError, action: str, path: str | os.PathLike[str] | None = None) -> FileAccessError:
    """Turn an :class:`OSError` into a :class:`FileAccessError` that says what berg was doing.

    Parameters
    ----------
    exc : OSError
        The original error (its errno text is kept).
    action : str
        What failed, as a phrase: ``"write the responses"``, ``"create the cache folder"``.
    path : path, optional
        The file involved (default: ``exc.filename``).

    Returns
    -------
    FileAccessError
        Raise it ``from exc``.

    Examples
    --------
    >>> try:
    ...     open("/proc/forbidden", "w")
    ... except OSError as exc:
    ...     raise os_error(exc, "write the responses") from exc  # doctest: +SKIP
    """
    target = os.fspath(path) if path is not None else exc.filename
    reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno is not None and exc.strerror else str(exc)
    hint = _OS_HINTS.get(exc.errno or -1)
    message = f"cannot {action}" + (f" ({target})" if target else "") + f": {reason}" + (f"; {hint}" if hint else "")
    return FileAccessError(
        message, errno=exc.errno, strerror=exc.strerror, filename=os.fspath(target) if target is not None else None
    )


def check_output_path(path: Any, suffixes: Iterable[str] | None = None, *, what: str = "output path") -> Path:
    """Validate a file path berg is asked to write, before any work is done.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    suffixes : iterable of str, optional
        Accepted endings (``(".h5", ".nii.gz")``); any when omitted.
    what : str
        How the path is called in messages (``"-o"`` in the CLI).

    Returns
    -------
    Path

    Raises
    ------
    InvalidParameterError
        Not a string/path, empty, a NUL byte, an existing folder, a trailing separator, or the wrong
        suffix; the message shows the valid form.
    """
    suffixes = tuple(suffixes or ())
    form = f"a file path ending with {', '.join(suffixes)}" if suffixes else "a file path"
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError(f"{what} must be {form} (str or pathlib.Path), got {type(path).__name__}")
    text = os.fspath(path)
    if not text:
        raise InvalidParameterError(f"{what} is empty; give {form}")
    if "\x00" in text:
        raise InvalidParameterError(f"{what} {text!r} contains a NUL byte; give {form}")
    out = Path(text).expanduser()
    try:
        is_dir = out.is_dir()
    except OSError as exc:  # e.g. a name or path longer than the OS allows ("File name too long")
        raise InvalidParameterError(
            f"{what} {text[:80]!r} cannot be used: {exc.strerror or exc}; give a shorter name"
        ) from None
    if is_dir or text.endswith(("/", os.sep)):
        raise InvalidParameterError(
            f"{what} {text!r} is a folder; give {form} inside it, e.g. {str(out / ('responses' + (suffixes[0] if suffixes else '')))!r}"
        )
    if suffixes and not out.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise InvalidParameterError(f"{what} must end with {', '.join(suffixes)}; got {out.name!r}")
    return out


def require_extra(module: str, extra: str, purpose: str, *, package: str | None = None) -> ModuleType:
    """Import an optional dependency or raise :class:`MissingExtraError` naming ``pip install berg[extra]``.

    Parameters
    ----------
    module : str
        Module to import (``"fsl.data.image"``).
    extra : str
        The berg extra that installs it (``"convert"``).
    purpose : str
        What needs it, for the message (``"the img2fmri MNI conversion"``).
    package : str, optional
        The PyPI name, when it differs from the module's top level (``"fslpy"`` for ``fsl``).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        name = package or (exc.name or module).split(".")[0]
        raise MissingExtraError(
            f"{purpose} needs {name}, which is not installed: pip install 'berg[{extra}]' (or pip install {name})"
        ) from None


def in_cli_words(exc: BaseException | str, words: Mapping[str, str] | None = None) -> str:
    """A message with Python spellings replaced by the CLI's (``backbone_weights="untrained"`` ->
    ``--backbone-weights untrained``), from ``words`` or the ``cli_words`` mapping an error carries."""
    text = str(exc)
    words = words if words is not None else (getattr(exc, "cli_words", None) or {})
    for python, cli in sorted(words.items(), key=lambda kv: -len(kv[0])):  # longest first
        text = text.replace(python, cli)
    return text
