"""The local cache: a per-model index of verified files, and list/size/verify/clear for ``berg cache``.

Layout: ``<cache_dir>/<model_id>/<key>`` plus ``<cache_dir>/<model_id>/.berg-index.jsonl`` which records
for each key its size, mtime and sha256 at the time it was verified. Files up to
``REHASH_LIMIT`` bytes are re-hashed on every use; bigger ones (multi-GB projections) are re-hashed
when their size or mtime changed, and fully by ``berg cache verify``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from berg.errors import ArtifactError, IntegrityError
from berg.store.manifest import sha256_file

__all__ = ["CacheIndex", "cache_list", "cache_size", "cache_verify", "cache_clear", "INDEX_NAME"]

INDEX_NAME = ".berg-index.jsonl"
REHASH_LIMIT = 256 * 1024 * 1024
# Rewrite the append-only index once it holds this many superseded lines.
_COMPACT_AFTER = 4096


class CacheIndex:
    """Recorded sha256 of the cached files of one model.

    The index is an append-only JSON-lines file (one ``{"key", "size", "mtime_ns", "sha256", ...}``
    record per line, the last record of a key wins): recording a file is one small appended write
    under a file lock instead of rewriting the whole index, so fetching thousands of small files stays
    linear. A line torn by a crash is ignored. One instance re-reads only what other processes
    appended since its last look.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / INDEX_NAME
        self._records: dict[str, dict[str, Any]] = {}
        self._lines = 0
        self._pos = 0
        self._ino: int | None = None
        self._mutex = threading.RLock()  # one instance is shared by a Store's fetch threads

    def _refresh(self) -> None:
        with self._mutex:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            self._records, self._lines, self._pos, self._ino = {}, 0, 0, None
            return
        if st.st_ino != self._ino or st.st_size < self._pos:  # replaced (compacted) or new: read all
            self._records, self._lines, self._pos, self._ino = {}, 0, 0, st.st_ino
        if st.st_size == self._pos:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self._pos)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a partial last line is being written (or torn): read it later
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
                self._records[rec.pop("key")] = rec
                self._lines += 1
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        self._pos += end

    def load(self) -> dict[str, dict[str, Any]]:
        """The index as ``{key: {"size", "mtime_ns", "sha256", ...}}`` (empty if none)."""
        with self._mutex:
            self._refresh_locked()
            return dict(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of ``key``, if any."""
        with self._mutex:
            self._refresh_locked()
            return self._records.get(key)

    def record(self, key: str, path: Path, sha256: str, **extra: Any) -> None:
        """Record a verified file (one appended line under the model's index lock)."""
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        st = path.stat()
        rec = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256, **extra}
        line = json.dumps({"key": key, **rec}, sort_keys=True).encode() + b"\n"
        with self._mutex, FileLock(str(self.path) + ".lock"):
            with open(self.path, "ab") as fh:
                fh.write(line)
            self._refresh()
            if self._lines - len(self._records) > _COMPACT_AFTER:
                self._compact()

    def _compact(self) -> None:
        # Called with the index lock held: rewrite one line per key, atomically.
        tmp = self.path.with_name(f"{INDEX_NAME}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            for key, rec in sorted(self._records.items()):
                fh.write(json.dumps({"key": key, **rec}, sort_keys=True).encode() + b"\n")
        os.replace(tmp, self.path)
        self._refresh()

    def _unchanged(self, rec: dict[str, Any] | None, path: Path) -> bool:
        if not rec:
            return False
        st = path.stat()
        return rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns

    def verify_known(self, key: str, path: Path, sha256: str) -> None:
        """Check a cached file against a known sha256 (from a manifest)."""
        rec = self.get(key)
        if rec and rec.get("sha256") == sha256 and self._unchanged(rec, path) and path.stat().st_size > REHASH_LIMIT:
            return
        digest = sha256_file(path)
        if digest != sha256:
            raise IntegrityError(f"cached {path}: sha256 {digest}, expected {sha256}")
        if not rec or rec.get("sha256") != digest or not self._unchanged(rec, path):
            self.record(key, path, digest)

    def verify_recorded(self, key: str, path: Path) -> None:
        """Check a cached third-party file against the sha256 recorded when it was downloaded."""
        rec = self.get(key)
        if rec is None:
            # A file we did not verify ourselves (e.g. copied in by hand): record it now.
            self.record(key, path, sha256_file(path), origin="found-in-cache")
            return
        if self._unchanged(rec, path) and path.stat().st_size > REHASH_LIMIT:
            return
        digest = sha256_file(path)
        if digest != rec.get("sha256"):
            raise IntegrityError(f"cached {path}: sha256 {digest} differs from the recorded {rec.get('sha256')}")


def _models(cache_dir: Path, model_id: str | None) -> list[Path]:
    if not cache_dir.is_dir():
        return []
    if model_id is not None:
        root = cache_dir / model_id
        return [root] if root.is_dir() else []
    return sorted(p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".berg-") and ".tmp" not in p.name and not p.name.endswith(".lock")
    )


def cache_list(cache_dir: Path, model_id: str | None = None) -> list[dict[str, Any]]:
    """Cached files: ``[{"model_id", "key", "size"}]``."""
    out = []
    for root in _models(Path(cache_dir), model_id):
        for p in _files(root):
            out.append({"model_id": root.name, "key": p.relative_to(root).as_posix(), "size": p.stat().st_size})
    return out


def cache_size(cache_dir: Path, model_id: str | None = None) -> dict[str, int]:
    """Bytes used per model id."""
    sizes: dict[str, int] = {}
    for entry in cache_list(cache_dir, model_id):
        sizes[entry["model_id"]] = sizes.get(entry["model_id"], 0) + entry["size"]
    return sizes


def cache_verify(cache_dir: Path, model_id: str | None = None, *, delete_bad: bool = True) -> list[dict[str, Any]]:
    """Re-hash every cached file against the manifest or the recorded sha256.

    Returns one record per file with ``status`` ``"ok"``, ``"corrupt"`` (deleted when ``delete_bad``)
    or ``"unrecorded"``.
    """
    from berg.store.manifest import MANIFEST_NAME, read_manifest

    results = []
    for root in _models(Path(cache_dir), model_id):
        index = CacheIndex(root).load()
        manifest_files: dict[str, Any] = {}
        if (root / MANIFEST_NAME).is_file():
            try:
                manifest_files = read_manifest(root / MANIFEST_NAME)["files"]
            except ArtifactError:
                manifest_files = {}
        for p in _files(root):
            key = p.relative_to(root).as_posix()
            want = (manifest_files.get(key) or {}).get("sha256") or (index.get(key) or {}).get("sha256")
            if want is None:
                status = "unrecorded"
            else:
                status = "ok" if sha256_file(p) == want else "corrupt"
                if status == "corrupt" and delete_bad:
                    p.unlink()
            results.append({"model_id": root.name, "key": key, "status": status})
    return results


def cache_clear(cache_dir: Path, model_id: str | None = None) -> int:
    """Delete a model's cached files (all models when ``model_id`` is None); returns bytes freed."""
    freed = sum(cache_size(Path(cache_dir), model_id).values())
    for root in _models(Path(cache_dir), model_id):
        shutil.rmtree(root)
    return freed
