"""Stimulus collections for runs: a folder, a glob, a list of paths, an HDF5 image brick, a video folder.

Every source is an ordered, indexable collection with stable string ids, a fingerprint (what the
plan hash records: a changed collection makes every shard stale), and a ``read(indices)`` that decodes
items in parallel threads. The fingerprint of files covers their content: each file's sha256, cached by
size, modification and change time (a file replaced by another of the same name and size is noticed; an
unchanged collection is not read again). Decoding errors are returned per item (never raised from a thread) so the
runner can stop with the file named or, with ``on_error="skip"``, record it and write NaN rows.

=====================================  =====================================================
plan ``stimuli:``                      collection
=====================================  =====================================================
``DIR`` or ``{folder: DIR}``           image files in DIR (sorted; ``recursive: true``)
``{glob: "imgs/**/*.png"}``            files matching the pattern (sorted)
``[a.jpg, b.jpg]`` / ``{list: [...]}``  those files, in that order
``{list_file: paths.txt}``             one path per line (relative to the file's folder)
``{hdf5: F, dataset: imgBrick}``       uint8 ``(n, H, W, 3)`` or ``(n, 3, H, W)`` array in F
``{videos: DIR}``                      video files in DIR (decoded with PyAV)
=====================================  =====================================================
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from berg.env import strict_bool
from berg.errors import InvalidParameterError, StimulusError
from berg.fsutil import atomic_write_text, sha256_file

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "HDF5Source",
    "PathSource",
    "StimulusSource",
    "normalise_stimuli",
    "open_source",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
_KINDS = ("folder", "glob", "list", "list_file", "hdf5", "videos")
_OPTIONS = {
    "folder": ("recursive", "extensions"),
    "videos": ("recursive", "extensions"),
    "hdf5": ("dataset",),
    "glob": (),
    "list": (),
    "list_file": (),
}


def _abs(base: Path, value: Any) -> str:
    p = Path(os.fspath(value)).expanduser()
    return os.fspath(p if p.is_absolute() else base / p)


def normalise_stimuli(raw: Any, base_dir: Path) -> dict[str, Any]:
    """A plan's ``stimuli`` value -> one normalised dict with absolute paths (validated, no decoding)."""
    if isinstance(raw, (str, os.PathLike)):
        text = os.fspath(raw)
        if any(c in text for c in "*?["):
            raw = {"glob": text}
        elif text.lower().endswith((".h5", ".hdf5")):
            raise InvalidParameterError(
                f"stimuli {text!r} is an HDF5 file; say which array holds the images: "
                f"{{hdf5: {text}, dataset: imgBrick}}"
            )
        else:
            raw = {"folder": text}
    elif isinstance(raw, (list, tuple)):
        raw = {"list": list(raw)}
    if not isinstance(raw, Mapping):
        raise InvalidParameterError(
            f"stimuli must be a folder, a list of paths or a dict with one of {', '.join(_KINDS)}; got {raw!r}"
        )
    kinds = [k for k in raw if k in _KINDS]
    if len(kinds) != 1:
        raise InvalidParameterError(f"stimuli needs exactly one of {', '.join(_KINDS)}; got keys {sorted(raw)}")
    kind = kinds[0]
    extra = [k for k in raw if k != kind and k not in _OPTIONS[kind]]
    if extra:
        raise InvalidParameterError(
            f"unknown stimuli option(s) {extra} for {kind!r}; valid: {', '.join(_OPTIONS[kind]) or 'none'}"
        )
    out: dict[str, Any] = {k: v for k, v in raw.items() if k != kind}
    if kind == "list":
        if not raw["list"]:
            raise InvalidParameterError("stimuli.list is empty")
        out["list"] = [_abs(base_dir, p) for p in raw["list"]]
    elif kind == "glob":
        out["glob"] = _abs(base_dir, raw["glob"])
    else:
        out[kind] = _abs(base_dir, raw[kind])
    if kind == "hdf5" and not out.get("dataset"):
        raise InvalidParameterError("stimuli.hdf5 needs 'dataset': the name of the uint8 image array (e.g. imgBrick)")
    if "extensions" in out:
        out["extensions"] = sorted({("." + e.lower().lstrip(".")) for e in out["extensions"]})
    if "recursive" in out:
        out["recursive"] = strict_bool(out["recursive"], "stimuli.recursive")
    return out


class StimulusSource:
    """An ordered stimulus collection (see the module docstring for the kinds)."""

    kind: str = "image"  # "image" | "video"

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def ids(self) -> list[str] | np.ndarray:
        """One id per stimulus: relative paths for files, integer indices for arrays."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """A cheap description that changes when the collection does."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """A label for stimulus ``i`` used in error messages (its path, or ``file[dataset][i]``)."""
        raise NotImplementedError

    def stamp(self, i: int) -> Any:
        """A cheap JSON-able state of stimulus ``i``'s file (``None`` when missing).

        A stimulus that failed is recorded with its stamp; when the stamp changes (the file came back or
        was replaced) the next run retries its shard.
        """
        raise NotImplementedError

    def read(self, indices: Sequence[int], threads: int = 1) -> list[np.ndarray | StimulusError]:
        """Decode stimuli ``indices``: uint8 ``(H, W, 3)`` images or ``(T, H, W, 3)`` videos, or the error."""
        raise NotImplementedError


class PathSource(StimulusSource):
    """Files on disk (images or videos), decoded lazily and in parallel threads."""

    def __init__(
        self,
        paths: Sequence[str],
        *,
        kind: str = "image",
        root: str | None = None,
        hash_cache: str | os.PathLike[str] | None = None,
    ):
        self.paths = [os.fspath(p) for p in paths]
        self.kind = kind
        self.root = root
        self.hash_cache = None if hash_cache is None else Path(hash_cache)
        self._fingerprint: dict[str, Any] | None = None
        if not self.paths:
            raise StimulusError(f"no {kind} files found in {root or 'the stimulus list'}")

    def __len__(self) -> int:
        return len(self.paths)

    def ids(self) -> list[str]:
        if self.root is None:
            return list(self.paths)
        return [os.path.relpath(p, self.root) for p in self.paths]

    def fingerprint(self) -> dict[str, Any]:
        """Ids and content of every file (sha256 of its bytes, cached by stat in ``hash_cache``)."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> dict[str, Any]:
        cache = self._read_cache()
        fresh: dict[str, list[Any]] = {}
        h = hashlib.sha256()
        for p, i in zip(self.paths, self.ids()):
            stamp = self.stamp_path(p)
            if stamp is None:
                content = "missing"  # reported by name when it is read, not here
            else:
                hit = cache.get(p)
                if hit is not None and hit[:-1] == stamp:
                    content = hit[-1]
                else:
                    try:
                        content = sha256_file(p)
                    except OSError:
                        content = "unreadable"
                    else:
                        fresh[p] = [*stamp, content]
            h.update(f"{i}\0{content}\n".encode())
        if fresh and self.hash_cache is not None:
            self._write_cache({**cache, **fresh})
        return {"kind": self.kind, "n": len(self.paths), "ids_content_sha256": h.hexdigest()}

    def _read_cache(self) -> dict[str, list[Any]]:
        if self.hash_cache is None:
            return {}
        try:
            data = json.loads(self.hash_cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_cache(self, data: dict[str, list[Any]]) -> None:
        assert self.hash_cache is not None
        try:
            self.hash_cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.hash_cache, json.dumps(data), fsync=False)
        except OSError as exc:  # a cache only: the next run hashes again
            log.debug("cannot write the stimulus hash cache %s: %s", self.hash_cache, exc)

    @staticmethod
    def stamp_path(path: str) -> list[int] | None:
        """``[size, mtime_ns, ctime_ns, inode]`` of a file (the change time catches replaced contents whose
        modification time was preserved, e.g. ``cp -p``), or ``None`` when it is missing."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def stamp(self, i: int) -> list[int] | None:
        return self.stamp_path(self.paths[i])

    def describe(self, i: int) -> str:
        return self.paths[i]

    def _read_one(self, i: int) -> np.ndarray | StimulusError:
        from berg.stimuli import decode_video, load_image

        path = self.paths[i]
        try:
            if self.kind == "video":
                return decode_video(path)[0]
            return load_image(path)
        except StimulusError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - decoders raise many types (bombs, codecs); reported per item
            return StimulusError(f"cannot read {self.kind} {path}: {type(exc).__name__}: {exc}")

    def read(self, indices: Sequence[int], threads: int = 1) -> list[np.ndarray | StimulusError]:
        indices = list(indices)
        if threads <= 1 or len(indices) <= 1:
            return [self._read_one(i) for i in indices]
        # Pillow and PyAV release the GIL while decoding, so threads decode in parallel.
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="berg-decode") as pool:
            return list(pool.map(self._read_one, indices))


class HDF5Source(StimulusSource):
    """A uint8 image brick in an HDF5 file, e.g. NSD's ``nsd_stimuli.hdf5`` ``imgBrick`` ``(73000, 425, 425, 3)``."""

    def __init__(self, path: str, dataset: str):
        import h5py

        self.path, self.dataset = os.fspath(path), dataset
        if not Path(self.path).is_file():
            raise StimulusError(f"HDF5 stimulus file not found: {self.path}")
        with h5py.File(self.path, "r") as f:
            if dataset not in f:
                names: list[str] = []
                f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
                raise StimulusError(f"{self.path} has no dataset {dataset!r}; datasets: {', '.join(names) or 'none'}")
            d = f[dataset]
            self.shape, self.dtype = tuple(d.shape), d.dtype
            if d.ndim != 4 or 3 not in (d.shape[1], d.shape[3]) or d.dtype != np.uint8:
                raise StimulusError(
                    f"{self.path}[{dataset}] is {d.dtype} {d.shape}; an image brick must be uint8 "
                    "(n, H, W, 3) or (n, 3, H, W)"
                )
            self._channels_first = d.shape[3] != 3
            n = d.shape[0]
            head = d[0].tobytes() if n else b""
            tail = d[n - 1].tobytes() if n else b""
        self._sample = hashlib.sha256(head + tail).hexdigest()

    def __len__(self) -> int:
        return self.shape[0]

    def ids(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "file": os.path.basename(self.path),
            "dataset": self.dataset,
            "shape": list(self.shape),
            "first_last_sha256": self._sample,
        }

    def describe(self, i: int) -> str:
        return f"{self.path}[{self.dataset}][{i}]"

    def stamp(self, i: int) -> list[int] | None:
        return PathSource.stamp_path(self.path)

    def read(self, indices: Sequence[int], threads: int = 1) -> list[np.ndarray | StimulusError]:
        import h5py

        indices = list(indices)
        if not indices:
            return []
        lo, hi = min(indices), max(indices) + 1
        try:
            # One contiguous read per shard: HDF5 serialises access anyway, and slabs are fast.
            with h5py.File(self.path, "r") as f:
                block = f[self.dataset][lo:hi]
        except Exception as exc:  # noqa: BLE001 - h5py/filter errors; reported per item with the file named
            err = StimulusError(f"cannot read {self.path}[{self.dataset}][{lo}:{hi}]: {exc}")
            return [err for _ in indices]
        if self._channels_first:
            block = block.transpose(0, 2, 3, 1)
        return [np.ascontiguousarray(block[i - lo]) for i in indices]


def _listing(folder: str, suffixes: Sequence[str], recursive: bool, what: str) -> list[str]:
    root = Path(folder)
    if not root.is_dir():
        raise StimulusError(f"stimulus folder not found: {folder}")
    it = root.rglob("*") if recursive else root.iterdir()
    files = sorted(
        os.fspath(p) for p in it if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )
    if not files:
        raise StimulusError(f"no {what} files ({', '.join(suffixes)}) in {folder}{' (recursive)' if recursive else ''}")
    return files


def open_source(spec: Mapping[str, Any], *, hash_cache: str | os.PathLike[str] | None = None) -> StimulusSource:
    """Open a normalised ``stimuli`` dict (see :func:`normalise_stimuli`).

    Parameters
    ----------
    spec : dict
    hash_cache : path, optional
        JSON file caching the content hashes of stimulus files (a run keeps it in its folder).
    """
    if "hdf5" in spec:
        return HDF5Source(spec["hdf5"], spec["dataset"])
    if "folder" in spec or "videos" in spec:
        video = "videos" in spec
        folder = spec["videos"] if video else spec["folder"]
        suffixes = tuple(spec.get("extensions") or (VIDEO_SUFFIXES if video else IMAGE_SUFFIXES))
        files = _listing(folder, suffixes, bool(spec.get("recursive", False)), "video" if video else "image")
        return PathSource(files, kind="video" if video else "image", root=folder, hash_cache=hash_cache)
    if "glob" in spec:
        files = sorted(p for p in _glob.glob(spec["glob"], recursive=True) if os.path.isfile(p))
        if not files:
            raise StimulusError(f"no files match {spec['glob']}")
        kind = "video" if all(p.lower().endswith(VIDEO_SUFFIXES) for p in files) else "image"
        root = os.path.commonpath([os.path.dirname(p) for p in files])
        return PathSource(files, kind=kind, root=root, hash_cache=hash_cache)
    if "list_file" in spec:
        listing = Path(spec["list_file"])
        if not listing.is_file():
            raise StimulusError(f"stimulus list file not found: {listing}")
        lines = [ln.strip() for ln in listing.read_text(encoding="utf-8").splitlines()]
        files = [_abs(listing.parent, ln) for ln in lines if ln and not ln.startswith("#")]
        kind = "video" if files and all(p.lower().endswith(VIDEO_SUFFIXES) for p in files) else "image"
        return PathSource(files, kind=kind, hash_cache=hash_cache)
    files = list(spec["list"])
    kind = "video" if all(str(p).lower().endswith(VIDEO_SUFFIXES) for p in files) else "image"
    return PathSource(files, kind=kind, hash_cache=hash_cache)
