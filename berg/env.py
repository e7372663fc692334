"""The one place berg reads its ``BERG_*`` environment variables.

========================  ======================================================================================
variable                  meaning
========================  ======================================================================================
``BERG_CACHE``            cache root (default: the platform's user cache folder ``berg``)
``BERG_OFFLINE``          ``1``/``true``/``yes``: never use the network
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
``BERG_MAX_PIXELS``       largest image (pixels) berg decodes (default 178,956,970, Pillow's)
``BERG_QUIET``            ``1``: no progress bars
``BERG_READOUT_KERNEL``   ``torch`` or ``numpy``: force the CPU readout GEMM (default: by width)
``BERG_PARALLEL_MIN_MB``  files at least this big (MiB, default 32) are fetched as ranged parts
========================  ======================================================================================
"""

from __future__ import annotations

import os

__all__ = ["env_flag", "env_int", "env_str", "progress_enabled", "KNOWN"]

_TRUE = ("1", "true", "yes", "on")

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
    "BERG_QUIET",
    "BERG_READOUT_KERNEL",
)


def _check(name: str) -> None:
    if name not in KNOWN:  # a typo here would silently read nothing
        raise KeyError(f"{name} is not a known berg environment variable; add it to berg.env.KNOWN")


def env_str(name: str, default: str | None = None) -> str | None:
    """The variable's value, or ``default`` when unset or empty."""
    _check(name)
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_flag(name: str) -> bool:
    """True when the variable is ``1``, ``true``, ``yes`` or ``on`` (any case)."""
    value = env_str(name)
    return value is not None and value.strip().lower() in _TRUE


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
