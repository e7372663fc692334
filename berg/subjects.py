"""Subject labels: the one function that names a subject in files, HDF5 groups and zarr groups."""

from __future__ import annotations

from typing import Any

__all__ = ["subject_label"]


def subject_label(subject: Any) -> str:
    """BIDS-style label: ``1 -> "sub-01"``, ``12 -> "sub-12"``, ``"group" -> "sub-group"``."""
    if isinstance(subject, bool):
        raise TypeError("a subject is an int or a name, not a bool")
    return f"sub-{subject:02d}" if isinstance(subject, int) else f"sub-{subject}"
