"""Device names, checked without importing torch (the registry validates them before any I/O)."""

from __future__ import annotations

import re

from berg.errors import InvalidParameterError

__all__ = ["validate_device", "DEVICE_FORMS"]

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: The forms a device string may take, as the messages list them.
DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N", "mps")


def validate_device(device: str) -> str:
    """Check a device string's form (no torch import). Valid: auto, cpu, cuda, cuda:N, mps.

    Raises
    ------
    InvalidParameterError
        Any other value, listing the valid forms.
    """
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise InvalidParameterError(
            f"device={device!r} is not valid; valid values: {', '.join(repr(d) for d in DEVICE_FORMS)}"
        )
    return device
