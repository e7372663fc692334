"""The one place berg reads its ``BERG_*`` environment variables.

========================  ======================================================================================
variable                  meaning
========================  ======================================================================================
``BERG_CACHE``            cache root (default: the platform's user cache folder ``berg``)
``BERG_OFFLINE``          ``1``/``true``/``yes``/``on``: never use the network (``0``/``false``/``no``/``off``: use it)
``BERG_REGISTRY``         extra registry files, ``os.pathsep``-separated
``BERG_S3_ENDPOINT``      S3 endpoint URL for every ``s3`` source (tests, mirrors)
``BERG_S3_SIGNED``        ``1``: signed S3 requests with the user's AWS credentials
``BERG_PYPI_URL``         PEP 503 simple index for ``pypi_wheel`` sources
``BERG_FETCH_THREADS``    files fetched at once (default 8)
``BERG_PARALLEL``         ranged parts downloaded at once for large files
``BERG_CHUNK_MB``         size of one ranged part in MiB
``BERG_RETRIES``          attempts per download before giving up (default 6)
``BERG_BACKOFF``          first retry delay in seconds, doubled per retry (default 0.5)
``BERG_TIMEOUT``          socket timeout of remote requests in seconds (default 60)
``BERG_BUILD_DIR``        folder of models built with ``berg build`` (``<dir>/<model_id>/``; default: the cache)
``BERG_MAX_PIXELS``       pixel budget of one image or video frame berg decodes (default 40,000,000)
``BERG_MAX_VIDEO_MB``     MiB of decoded frames berg keeps for one video (default 200)
``BERG_QUIET``            ``1``: no progress bars
``BERG_READOUT_KERNEL``   ``torch``/``numpy`` (or ``numpy_kn``...): force the CPU GEMM (default: kernel table)
``BERG_STREAM_MB``        weights at least this big (MiB, default 256) stream from disk per batch; 0: never
                          (a cached file in the other layout streams from its copy in ``.berg-stream/``)
``BERG_PARALLEL_MIN_MB``  files at least this big (MiB, default 32) are fetched as ranged parts
``BERG_LOCK_TIMEOUT``     seconds to wait for another process's lock on a file (default 900)
``BERG_UNPINNED_WEIGHTS`` ``1``: load a cached backbone checkpoint whose digest differs from its pin, with a warning
                          (your own fine-tuned or seeded weights under a published file name; default: refused)
========================  ======================================================================================

Flags (``BERG_OFFLINE``, ``BERG_QUIET``, ``BERG_S3_SIGNED``, ``BERG_UNPINNED_WEIGHTS``) are read strictly by :func:`parse_bool`: a value
that is neither a true word nor a false word is refused with the accepted values, never guessed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "env_flag",
    "env_int",
    "env_str",
    "parse_bool",
    "strict_bool",
    "progress_enabled",
    "KNOWN",
    "TRUE_WORDS",
    "FALSE_WORDS",
]

#: Strings read as True by :func:`parse_bool` (any case, surrounding blanks ignored).
TRUE_WORDS = ("1", "true", "yes", "on")
#: Strings read as False by :func:`parse_bool`.
FALSE_WORDS = ("0", "false", "no", "off")

#: Every variable berg reads (documentation and ``berg --help`` list these).
KNOWN = (
    "BERG_CACHE",
    "BERG_OFFLINE",
    "BERG_REGISTRY",
    "BERG_S3_ENDPOINT",
    "BERG_S3_SIGNED",
    "BERG_PYPI_URL",
    "BERG_FETCH_THREADS",
    "BERG_PARALLEL",
    "BERG_CHUNK_MB",
    "BERG_PARALLEL_MIN_MB",
    "BERG_RETRIES",
    "BERG_BACKOFF",
    "BERG_TIMEOUT",
    "BERG_BUILD_DIR",
    "BERG_MAX_PIXELS",
    "BERG_MAX_VIDEO_MB",
    "BERG_QUIET",
    "BERG_READOUT_KERNEL",
    "BERG_STREAM_MB",
    "BERG_LOCK_TIMEOUT",
    "BERG_UNPINNED_WEIGHTS",
)


def _check(name: str) -> None:
    if name not in KNOWN:  # a typo here would silently read nothing
        raise KeyError(f"{name} is not a known berg environment variable; add it to berg.env.KNOWN")


def env_str(name: str, default: str | None = None) -> str | None:
    """The variable's value, or ``default`` when unset or empty."""
    _check(name)
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def parse_bool(value: object, what: str) -> bool:
    """A boolean given as a bool or as one of the documented words, read strictly.

    The one parser of booleans that may arrive as text (environment variables, plan and config files,
    keyword arguments from users): ``"false"`` or ``"no"`` must never count as true because the string
    is non-empty.

    Parameters
    ----------
    value : bool, int or str
        ``True``/``False`` (numpy booleans too); the integers ``0``/``1``; or one of
        :data:`TRUE_WORDS` / :data:`FALSE_WORDS` (any case, blanks ignored).
    what : str
        How the value is called in the error message (``"offline"``, ``"BERG_OFFLINE"``, ``"plan fsync"``).

    Returns
    -------
    bool

    Raises
    ------
    InvalidParameterError
        Anything else (``"maybe"``, ``2``, ``None``, a list); the message names the accepted values.

    Examples
    --------
    >>> parse_bool("No", "fsync")
    False
    >>> parse_bool(True, "offline")
    True
    """
    if isinstance(value, bool):
        return value
    # numpy's bool_ without importing numpy (berg.env stays import-light)
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    from berg.errors import InvalidParameterError

    raise InvalidParameterError(
        f"{what}={value!r} is not a boolean; give True or False, or one of the words "
        f"{', '.join(TRUE_WORDS)} (true) / {', '.join(FALSE_WORDS)} (false)"
    )


def strict_bool(value: Any, what: str) -> bool:
    """A boolean from a file (plans, configs): YAML ``true``/``false`` (or Python ``True``/``False``); anything else is refused.

    Strings such as ``'false'`` or ``'no'`` are refused rather than read (a non-empty string is truthy,
    so ``bool('false')`` would silently mean true).

    Raises
    ------
    InvalidParameterError
        Naming the accepted values.
    """
    from berg.errors import InvalidParameterError

    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_" and type(value).__module__ == "numpy":
        return bool(value)
    hint = ""
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        word = "true" if value.strip().lower() in ("true", "yes", "on", "1") else "false"
        hint = f" (write {what.rsplit('.', 1)[-1]}: {word}, without quotes)"
    raise InvalidParameterError(f"{what} must be a boolean, true or false; got {value!r}{hint}")


def env_flag(name: str) -> bool:
    """The variable as a boolean (:func:`parse_bool`; unset or empty: False); other words are refused."""
    value = env_str(name)
    return False if value is None else parse_bool(value, name)


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    """The variable as an int (``default`` when unset); a malformed value raises a clear error."""
    value = env_str(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        from berg.errors import InvalidParameterError

        raise InvalidParameterError(f"{name}={value!r} is not an integer; unset it or give a number") from None
    return number if minimum is None else max(minimum, number)


def progress_enabled(show_progress: bool | None = None) -> bool:
    """Whether a progress bar should be drawn: never with ``BERG_QUIET``, else ``show_progress``
    (default on). Bars use ``tqdm.auto``, so they render in terminals and in Jupyter."""
    if env_flag("BERG_QUIET"):
        return False
    return True if show_progress is None else bool(show_progress)


@contextlib.contextmanager
def temporarily(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a ``with`` block, then restore each one's own value.

    A variable that was unset before is removed again (not left as an empty string).
    """
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
