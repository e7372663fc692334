"""Writing and reading berg-native artifacts (manifest + safetensors + JSON + NIfTI).

Creation code writes artifacts with :class:`ArtifactWriter`: every file goes into a temporary
directory beside the destination; :meth:`ArtifactWriter.finalize` writes ``manifest.json`` (sizes and
sha256 of every file) and then renames the directory into place, so a crash never leaves a
half-written artifact under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from berg._version import __version__
from berg.errors import ArtifactError
from berg.fsutil import fsync_dir, temporary_name
from berg.store.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, sha256_file

__all__ = ["ArtifactWriter", "read_tensors", "check_key", "reserved_reason", "DERIVED_DIR"]

#: Folder of a model's cache that holds the files berg derives on this machine (``Store.derived``).
DERIVED_DIR = "converted"
# Suffixes of berg's per-file bookkeeping beside a cached file (download lock, partial download and
# its resume record). A key ending in one of them would overwrite berg's own file.
_RESERVED_SUFFIXES = (".lock", ".part", ".part.json")


def reserved_reason(key: str) -> str | None:
    """Why ``key`` collides with berg's own bookkeeping names in a cache folder, or ``None``.

    Reserved: any path component starting with ``.berg-`` (the cache index, its lock, berg's records),
    temporary files (components starting with ``.`` that contain ``.tmp``, the form of
    :func:`berg.fsutil.temporary_name`), names ending in ``.lock``, ``.part`` or ``.part.json``, and the
    top-level ``converted/`` folder (derived artifacts).
    """
    parts = PurePosixPath(key).parts
    for part in parts:
        if part.startswith(".berg-"):
            return f"components starting with '.berg-' are berg's cache index and records ({part!r})"
        if part.startswith(".") and ".tmp" in part:
            return f"hidden '.tmp' names are berg's temporary files ({part!r})"
    name = parts[-1] if parts else ""
    for suffix in _RESERVED_SUFFIXES:
        if name.endswith(suffix):
            return f"names ending in {suffix!r} are berg's download bookkeeping"
    if parts and parts[0] == DERIVED_DIR and len(parts) > 1:
        return f"the top-level folder {DERIVED_DIR!r} holds artifacts berg derives on this machine"
    return None


def check_key(key: str) -> str:
    """Refuse keys that are absolute, empty, contain ``..``, backslashes or NUL, or are reserved.

    Returns the key unchanged. Reserved keys (see :func:`reserved_reason`) would overwrite berg's own
    bookkeeping files in the cache, so they are refused wherever they come from (a manifest, a bucket
    listing, a layout).
    """
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ArtifactError(f"invalid artifact key {key!r}: keys are relative POSIX paths (no NUL bytes)")
    parts = PurePosixPath(key).parts
    if not parts or any(p in ("..", ".", "") for p in key.split("/")) or ":" in parts[0]:
        raise ArtifactError(f"invalid artifact key {key!r}: '..', '.' and drive names are not allowed")
    reason = reserved_reason(key)
    if reason is not None:
        raise ArtifactError(
            f"artifact key {key!r} is reserved: {reason}. Such a file would overwrite berg's own files in "
            "the cache; rename it at the source (or in the manifest) and publish it again"
        )
    return key


class ArtifactWriter:
    """Build a berg-native artifact directory atomically.

    Parameters
    ----------
    out_dir : path
        Final artifact directory. If it exists it is replaced only at :meth:`finalize`.
    model_id : str
        Recorded in the manifest.

    Examples
    --------
    >>> w = ArtifactWriter("out/my-model", "my-model")
    >>> w.add_tensors("readout/sub-01.safetensors", {"weight": W, "bias": b})
    >>> w.add_json("metadata/sub-01.json", {"n_outputs": 10})
    >>> w.finalize({"creator": "me"})
    """

    def __init__(self, out_dir: str | os.PathLike[str], model_id: str):
        self.out_dir = Path(out_dir)
        self.model_id = model_id
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        # a per-process temporary name (pid + token): a killed writer's folder is found and removed by
        # berg.store.cache.clean_stale (the store does so when it opens a cache)
        self._tmp = temporary_name(self.out_dir)
        self._tmp.mkdir(mode=0o700)
        self._keys: list[str] = []
        self._done = False

    def _path(self, key: str) -> Path:
        if self._done:
            raise ArtifactError("artifact already finalized")
        check_key(key)
        if key == MANIFEST_NAME:
            raise ArtifactError("manifest.json is written by finalize()")
        if key in self._keys:
            raise ArtifactError(f"{key} added twice")
        path = self._tmp / key
        path.parent.mkdir(parents=True, exist_ok=True)
        self._keys.append(key)
        return path

    def add_tensors(self, key: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
        """Write numpy arrays as a safetensors file (C-contiguous copies; dtypes kept)."""
        from safetensors.numpy import save_file

        path = self._path(key)
        arrays = {name: np.ascontiguousarray(arr) for name, arr in tensors.items()}
        save_file(arrays, str(path), metadata=metadata)
        return path

    def add_json(self, key: str, obj: Any) -> Path:
        """Write a JSON document (UTF-8, sorted keys)."""
        path = self._path(key)
        path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_json_default), encoding="utf-8")
        return path

    def add_nifti(self, key: str, img: Any) -> Path:
        """Write a nibabel image (``.nii`` or ``.nii.gz``)."""
        path = self._path(key)
        img.to_filename(str(path))
        return path

    def add_file(self, key: str, source: str | os.PathLike[str]) -> Path:
        """Copy an existing file (e.g. a PNG plot) into the artifact."""
        path = self._path(key)
        shutil.copyfile(source, path)
        return path

    def finalize(self, provenance: dict[str, Any] | None = None) -> Path:
        """Write ``manifest.json`` and move the artifact into place; returns the manifest path."""
        if self._done:
            raise ArtifactError("artifact already finalized")
        files = {}
        for key in sorted(self._keys):
            path = self._tmp / key
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
            files[key] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_id": self.model_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "berg_version": __version__,
            "files": files,
            "provenance": provenance or {},
        }
        (self._tmp / MANIFEST_NAME).write_text(
            json.dumps(manifest, indent=1, sort_keys=True, default=_json_default), encoding="utf-8"
        )
        fsync_dir(self._tmp)
        old = None
        if self.out_dir.exists():
            old = temporary_name(self.out_dir, ".old")
            os.replace(self.out_dir, old)
        os.replace(self._tmp, self.out_dir)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.out_dir, 0o777 & ~umask)  # the temporary folder was private; artifacts are shareable
        fsync_dir(self.out_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._done = True
        return self.out_dir / MANIFEST_NAME

    def abort(self) -> None:
        """Discard everything written so far."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._done:
            self.abort()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_tensors(path: str | os.PathLike[str], *, mmap: bool = True) -> dict[str, np.ndarray]:
    """Read a safetensors file into numpy arrays.

    With ``mmap=True`` the arrays are read-only views of a memory map of the file (nothing is copied
    into RAM until touched), which is how multi-GB projections are loaded.
    """
    path = Path(path)
    try:
        if not mmap:
            from safetensors.numpy import load_file

            return load_file(str(path))
        return _mmap_safetensors(path)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read safetensors file {path}: {exc}") from exc


_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "U16": np.uint16,
    "U32": np.uint32,
    "U64": np.uint64,
    "BOOL": np.bool_,
}


def _mmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    # safetensors layout: 8-byte little-endian header length, JSON header, then raw little-endian data.
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    base = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"unsupported dtype {info['dtype']} for tensor {name}")
        start, stop = info["data_offsets"]
        raw = mm[base + start : base + stop]
        out[name] = raw.view(np.dtype(dtype).newbyteorder("<")).reshape(info["shape"])
    return out
