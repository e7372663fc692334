"""``manifest.json`` of berg-native artifacts: format version, files with sizes and sha256."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berg.errors import ArtifactError, IntegrityError
from berg.fsutil import sha256_file  # re-exported: the one sha256 helper lives in berg.fsutil

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "FileInfo",
    "sha256_file",
    "read_manifest",
    "parse_manifest",
    "verify_file",
]

FORMAT = "berg-artifact"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class FileInfo:
    """What a file must be: its size in bytes and (when known) its sha256."""

    size: int | None = None
    sha256: str | None = None
    etag: str | None = None


def parse_manifest(data: bytes | str, *, origin: str = "manifest.json") -> dict[str, Any]:
    """Parse and check a manifest; returns the dict (``files`` maps key -> {size, sha256})."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ArtifactError(f"{origin} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{origin} is not a berg artifact manifest (format must be {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{origin} has format_version {version!r}; this berg reads version {FORMAT_VERSION} "
            "(upgrade berg to read newer artifacts)"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{origin} lacks a 'files' mapping")
    for key, info in files.items():
        if not (isinstance(info, dict) and isinstance(info.get("size"), int) and isinstance(info.get("sha256"), str)):
            raise ArtifactError(f"{origin}: entry {key!r} needs integer 'size' and string 'sha256'")
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``manifest.json`` from disk."""
    path = Path(path)
    try:
        return parse_manifest(path.read_bytes(), origin=str(path))
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc


def verify_file(path: str | os.PathLike[str], expected: FileInfo, *, label: str | None = None) -> str | None:
    """Check size and sha256 of a file; returns the sha256 if it was computed.

    Raises
    ------
    IntegrityError
        Naming the file and what differed.
    """
    label = label or str(path)
    size = os.path.getsize(path)
    if expected.size is not None and size != expected.size:
        raise IntegrityError(f"{label}: size {size} bytes, expected {expected.size}")
    if expected.sha256 is None:
        return None
    digest = sha256_file(path)
    if digest != expected.sha256:
        raise IntegrityError(f"{label}: sha256 {digest}, expected {expected.sha256}")
    return digest
