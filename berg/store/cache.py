"""The local cache: a per-model index of verified files, and list/size/verify/clear for ``berg cache``.

Layout: ``<cache_dir>/<model_id>/<key>`` plus ``<cache_dir>/<model_id>/.berg-index.jsonl`` which records
for each key its size, mtime and sha256 at the time it was verified. Files berg derives on this
machine (``Store.derived``) live under ``<cache_dir>/<model_id>/converted/`` and are recorded in the same
index with ``"derived": true`` and the inputs they were made from. Files up to ``REHASH_LIMIT`` bytes
are re-hashed on every use; bigger ones (multi-GB projections) are re-hashed when their size or mtime
changed, and fully by ``berg cache verify``.

Caches may be shared, copied or read-only:

* nothing is written when nothing needs to be: index records that cannot be written (read-only
  folder) are skipped, and the files are verified all the same;
* records are keyed by artifact key (relative path), never by absolute path, so a cache moved or
  copied elsewhere keeps its records;
* when a write *is* needed and impossible, :class:`CacheWriteError` names the folder, keeps the
  operating system's errno text, and says how to point berg at a writable cache.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from berg.errors import ArtifactError, IntegrityError
from berg.fsutil import clean_stale_temporaries
from berg.store.artifacts import reserved_reason
from berg.store.manifest import sha256_file

__all__ = [
    "CacheIndex",
    "CacheWriteError",
    "cache_list",
    "cache_size",
    "cache_verify",
    "cache_clear",
    "clean_stale",
    "cache_write_error",
    "is_writable",
    "unwritable_reason",
    "INDEX_NAME",
    "WRITE_ERRNOS",
]

log = logging.getLogger(__name__)

INDEX_NAME = ".berg-index.jsonl"
REHASH_LIMIT = 256 * 1024 * 1024
# Rewrite the append-only index once it holds this many superseded lines.
_COMPACT_AFTER = 4096
#: errno values that mean "this folder cannot be written" (permissions, read-only mount, disk full, quota).
WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name)
)
# Temporaries are named by berg.fsutil.temporary_name (".<name>.<pid>.<token>.tmp<suffix>"): files, and
# the staging folders of ArtifactWriter and the wheel converter; a shared cache cleans them with the age
# guard of clean_stale below.
#: a dead writer's temporary is removed once untouched for this long (seconds)
STALE_AFTER_S = 600.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class CacheWriteError(ArtifactError, OSError):
    """The cache folder must be written (a fetch, a derived file, a record) and cannot be.

    Carries the operating system's ``errno`` (``EACCES``, ``EROFS``, ``ENOSPC``...) and its text in the
    message, so both ``except BERGError`` and ``except OSError`` catch it.
    """

    def __init__(self, message: str, *, errno_: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno = errno_
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def cache_write_error(exc: OSError, folder: Path, what: str) -> CacheWriteError:
    """A :class:`CacheWriteError` for ``exc`` raised while ``what`` in the cache ``folder``."""
    text = exc.strerror or str(exc)
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "?"
    where = f" ({exc.filename})" if exc.filename else ""
    hint = (
        "free some space (berg cache size / berg cache clear ID) or point"
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG)
        else "point"
    )
    return CacheWriteError(
        f"cannot write to the cache folder {folder} while {what}: {text} [{code}]{where}. This cache is "
        f"read-only or full: {hint} BERG_CACHE (or --cache-dir, or BERG(cache_dir=...)) at a writable "
        "folder, or fetch the missing files once where this cache is writable (berg fetch ID --all). "
        "Reading a read-only cache works when every needed file is already there.",
        errno_=exc.errno,
        filename=exc.filename,
    )


def is_writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (or in its nearest existing parent, if it is absent)."""
    folder = Path(folder)
    while not folder.exists():
        if folder.parent == folder:
            return False
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


def unwritable_reason(folder: Path) -> OSError:
    """The OSError a write below ``folder`` would meet: ``EROFS`` on a read-only mount, else ``EACCES``."""
    folder = Path(folder)
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    code = errno.EACCES
    with contextlib.suppress(OSError, AttributeError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            code = errno.EROFS
    return OSError(code, os.strerror(code), str(folder))


def clean_stale(folder: Path, *, min_age: float = STALE_AFTER_S) -> list[Path]:
    """Remove temporaries (files and staging folders) of dead processes below ``folder``; best effort.

    A temporary is stale when its writer's pid is gone *and* it was not modified for ``min_age``
    seconds: pids are per host, and a cache shared over NFS may hold a live temporary of a process on
    another node (which keeps touching it while it writes). Returns what was removed. Does nothing in
    a folder this process cannot write (a read-only cache).
    """
    folder = Path(folder)
    if not folder.is_dir() or not is_writable(folder):
        return []
    removed = clean_stale_temporaries(folder, recursive=True, min_age=min_age)
    if removed:
        log.info("removed %d stale temporary file(s) of dead processes below %s", len(removed), folder)
    return removed


class CacheIndex:
    """Recorded sha256 of the cached files of one model.

    The index is an append-only JSON-lines file (one ``{"key", "size", "mtime_ns", "sha256", ...}``
    record per line, the last record of a key wins): recording a file is one small appended write
    under a file lock instead of rewriting the whole index, so fetching thousands of small files stays
    linear. A line torn by a crash is ignored. One instance re-reads only what other processes
    appended since its last look. In a folder that cannot be written, :meth:`record` is a no-op (the
    files are still verified, just not re-recorded).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / INDEX_NAME
        self._records: dict[str, dict[str, Any]] = {}
        self._lines = 0
        self._pos = 0
        self._ino: int | None = None
        self._mutex = threading.RLock()  # one instance is shared by a Store's fetch threads
        # big files this process hashed itself: (size, mtime_ns, ino) -> sha256, so a read-only copy whose
        # records cannot be refreshed is not re-hashed on every use
        self._hashed: dict[str, tuple[tuple[int, int, int], str]] = {}
        self.read_only = False

    def _refresh(self) -> None:
        with self._mutex:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        try:
            st = os.lstat(self.path)
        except OSError:
            self._records, self._lines, self._pos, self._ino = {}, 0, 0, None
            return
        if not os.path.isfile(self.path) or os.path.islink(self.path):
            log.warning("ignoring %s: it is not a regular file (berg never makes links in its cache)", self.path)
            self._records, self._lines, self._pos, self._ino = {}, 0, 0, None
            return
        if st.st_ino != self._ino or st.st_size < self._pos:  # replaced (compacted) or new: read all
            self._records, self._lines, self._pos, self._ino = {}, 0, 0, st.st_ino
        if st.st_size == self._pos:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW)
        except OSError:
            return
        with os.fdopen(fd, "rb") as fh:
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

    def record(self, key: str, path: Path, sha256: str, **extra: Any) -> bool:
        """Record a verified file (one appended line under the model's index lock).

        Returns False (and writes nothing) when the cache folder is not writable: a read-only cache is
        still usable, its files are just re-verified instead of re-recorded.
        """
        from filelock import FileLock

        from berg.store.download import drop_planted_link, open_nofollow

        st = path.stat()
        self._remember(key, st, sha256)
        if self.read_only or not is_writable(self.root):
            self.read_only = True
            log.debug("cache %s is not writable; %s not re-recorded", self.root, key)
            return False
        rec = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256, **extra}
        line = json.dumps({"key": key, **rec}, sort_keys=True).encode() + b"\n"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = self.path.with_name(INDEX_NAME + ".lock")
            drop_planted_link(lock)
            with self._mutex, FileLock(str(lock)):
                drop_planted_link(self.path)
                fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                with os.fdopen(fd, "ab") as fh:
                    fh.write(line)
                self._refresh()
                if self._lines - len(self._records) > _COMPACT_AFTER:
                    self._compact()
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            self.read_only = True
            log.debug("cannot record %s in %s (%s); continuing without a record", key, self.path, exc)
            return False
        return True

    def _compact(self) -> None:
        # Called with the index lock held: rewrite one line per key, atomically.
        from berg.fsutil import atomic_write

        with atomic_write(self.path, "wb", fsync=False) as fh:
            for key, rec in sorted(self._records.items()):
                fh.write(json.dumps({"key": key, **rec}, sort_keys=True).encode() + b"\n")
        self._refresh()

    def _remember(self, key: str, st: os.stat_result, sha256: str) -> None:
        if st.st_size > REHASH_LIMIT:
            self._hashed[key] = ((st.st_size, st.st_mtime_ns, st.st_ino), sha256)

    def _known_digest(self, key: str, rec: dict[str, Any] | None, path: Path) -> str | None:
        """The sha256 of a big file whose stat says it has not changed since it was hashed, else None."""
        st = path.stat()
        if st.st_size <= REHASH_LIMIT:
            return None
        seen = self._hashed.get(key)
        if seen and seen[0] == (st.st_size, st.st_mtime_ns, st.st_ino):
            return seen[1]
        if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            return rec.get("sha256")
        return None

    def unchanged(self, rec: dict[str, Any] | None, path: Path) -> bool:
        if not rec:
            return False
        st = path.stat()
        return rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns

    def digest(self, key: str, path: Path, rec: dict[str, Any] | None = None) -> str:
        """sha256 of a cached file: from the record/memo for big unchanged files, else computed."""
        known = self._known_digest(key, rec, path)
        if known is not None:
            return known
        digest = sha256_file(path)
        self._remember(key, path.stat(), digest)
        return digest

    def verify_known(self, key: str, path: Path, sha256: str) -> None:
        """Check a cached file against a known sha256 (from a manifest)."""
        rec = self.get(key)
        digest = self.digest(key, path, rec if rec and rec.get("sha256") == sha256 else None)
        if digest != sha256:
            raise IntegrityError(f"cached {path}: sha256 {digest}, expected {sha256}")
        if not rec or rec.get("sha256") != digest or not self.unchanged(rec, path):
            self.record(key, path, digest)

    def verify_recorded(self, key: str, path: Path) -> None:
        """Check a cached third-party file against the sha256 recorded when it was downloaded."""
        rec = self.get(key)
        if rec is None:
            # A file we did not verify ourselves (e.g. copied in by hand): record it now (if we can).
            self.record(key, path, self.digest(key, path), origin="found-in-cache")
            return
        digest = self.digest(key, path, rec)
        if digest != rec.get("sha256"):
            raise IntegrityError(f"cached {path}: sha256 {digest} differs from the recorded {rec.get('sha256')}")
        if not self.unchanged(rec, path):  # e.g. copied with cp -r: record the new mtime (if we can)
            self.record(key, path, digest, **{k: v for k, v in rec.items() if k not in ("size", "mtime_ns", "sha256")})


def _models(cache_dir: Path, model_id: str | None) -> list[Path]:
    if not cache_dir.is_dir():
        return []
    if model_id is not None:
        root = cache_dir / model_id
        return [root] if root.is_dir() else []
    return sorted(p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(root: Path) -> list[Path]:
    # berg's own bookkeeping (index, locks, partial downloads, temporaries) is not a cached file
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and (reserved_reason(p.relative_to(root).as_posix()) is None or _is_derived_path(root, p))
    )


def _is_derived_path(root: Path, path: Path) -> bool:
    from berg.store.artifacts import DERIVED_DIR

    rel = path.relative_to(root).parts
    return (
        len(rel) > 1
        and rel[0] == DERIVED_DIR
        and not any(part.startswith(".") for part in rel)
        and not rel[-1].endswith((".lock", ".part", ".part.json"))
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

    Returns one record per file: ``model_id``, ``key``, ``kind`` (``"manifest"`` for files listed in
    the artifact's manifest, ``"derived"`` for files berg derived on this machine, ``"downloaded"`` for
    third-party files recorded at download) and ``status``: ``"ok"``, ``"corrupt"`` (deleted when
    ``delete_bad`` and the cache is writable, so it is fetched or derived again on next use; ``deleted``
    says whether it was) or ``"unrecorded"`` (nothing to compare with).
    """
    from berg.store.manifest import MANIFEST_NAME, read_manifest

    results = []
    for root in _models(Path(cache_dir), model_id):
        index = CacheIndex(root).load()
        # files listed by a manifest: the model's own, and those of converted artifacts kept below it
        # (e.g. <cache>/_wheels/<wheel>-<hash>/manifest.json)
        manifest_files: dict[Path, str] = {}
        for manifest_path in sorted(root.rglob(MANIFEST_NAME)):
            if manifest_path.is_symlink() or not manifest_path.is_file():
                continue
            try:
                files = read_manifest(manifest_path)["files"]
            except ArtifactError:
                continue
            for k, info in files.items():
                manifest_files.setdefault(manifest_path.parent / k, info.get("sha256"))
        for p in _files(root):
            key = p.relative_to(root).as_posix()
            rec = index.get(key) or {}
            if p in manifest_files:
                kind, want = "manifest", manifest_files[p]
            elif rec.get("derived"):
                kind, want = "derived", rec.get("sha256")
            else:
                kind, want = "downloaded", rec.get("sha256")
            entry = {"model_id": root.name, "key": key, "kind": kind}
            if want is None:
                entry["status"] = "unrecorded"
            else:
                entry["status"] = "ok" if sha256_file(p) == want else "corrupt"
                if entry["status"] == "corrupt" and delete_bad:
                    try:
                        p.unlink()
                        entry["deleted"] = True
                    except OSError as exc:  # a read-only cache: report, do not fail the whole check
                        entry["deleted"] = False
                        log.warning("cannot delete corrupt %s: %s", p, exc)
            results.append(entry)
    return results


def cache_clear(cache_dir: Path, model_id: str | None = None) -> int:
    """Delete a model's cached files (all models when ``model_id`` is None); returns bytes freed."""
    freed = sum(cache_size(Path(cache_dir), model_id).values())
    for root in _models(Path(cache_dir), model_id):
        try:
            shutil.rmtree(root)
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise cache_write_error(exc, Path(cache_dir), f"clearing {root.name}") from exc
            raise
    return freed
