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
    "CacheTarget",
    "resolve_target",
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
        from berg.fsutil import process_lock
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
            with self._mutex, process_lock(lock, what=f"recording {key} in {self.path.name}"):
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


class CacheTarget:
    """What a ``berg cache`` argument names, resolved inside the cache.

    Attributes
    ----------
    cache_dir : Path
        The cache root, symbolic links resolved.
    models : list of Path
        The model folders concerned (resolved, each a direct child of ``cache_dir``).
    sub : str or None
        A file or folder below the one model folder (POSIX, relative), or None for the whole folder.
    """

    def __init__(self, cache_dir: Path, models: list[Path], sub: str | None = None):
        self.cache_dir, self.models, self.sub = cache_dir, models, sub


def _is_berg_folder(folder: Path) -> bool:
    """Whether berg made ``folder`` (its index or a manifest is there, or it is berg's wheel folder)."""
    from berg.store.manifest import MANIFEST_NAME

    return folder.name == "_wheels" or any(
        (folder / name).is_file() and not (folder / name).is_symlink() for name in (INDEX_NAME, MANIFEST_NAME)
    )


def _cached_names(cache_dir: Path) -> list[str]:
    if not cache_dir.is_dir():
        return []
    return sorted(
        p.name for p in cache_dir.iterdir() if not p.name.startswith(".") and not p.is_symlink() and p.is_dir()
    )


def resolve_target(cache_dir: str | os.PathLike[str], target: Any = None) -> CacheTarget:
    """Resolve a ``berg cache`` argument to model folders (or one file/folder of a model) inside the cache.

    Parameters
    ----------
    cache_dir : path
        The cache root.
    target : str, path or None
        ``None``: every model folder berg made in the cache. Otherwise a model id (``fmri-x``), a path
        below a model folder (``fmri-x/metadata/file.npy``), relative to the cache (never to the current
        folder), or an absolute path inside the cache.

    Returns
    -------
    CacheTarget

    Raises
    ------
    InvalidParameterError
        The argument is empty, not text, holds a NUL byte, names the cache itself, resolves (after
        symbolic links) outside the cache, passes through a symbolic link, names a folder berg did not
        make, or names a model that is not cached (the message lists the cached models).
    """
    from berg.errors import InvalidParameterError, close_matches

    cache_dir = Path(cache_dir).expanduser()
    root = cache_dir.resolve()
    cached = _cached_names(root)
    form = "a model id from `berg cache list` (e.g. berg cache clear fmri-bold5000-resnet18), or no argument for every model"
    if target is None:
        models = []
        for name in cached:
            folder = root / name
            if _is_berg_folder(folder):
                models.append(folder)
            else:
                log.warning("leaving %s alone: berg did not make it (no %s or manifest.json)", folder, INDEX_NAME)
        return CacheTarget(root, models)
    if isinstance(target, bytes) or not isinstance(target, (str, os.PathLike)):
        raise InvalidParameterError(f"cache argument {target!r} ({type(target).__name__}) is not valid; give {form}")
    text = os.fspath(target)
    if not text.strip():
        raise InvalidParameterError(f"cache argument is empty; give {form}")
    if "\x00" in text:
        raise InvalidParameterError(f"cache argument {text!r} contains a NUL byte; give {form}")
    given = Path(text).expanduser()
    # relative arguments are read from the cache root, never from the current folder
    lexical = Path(os.path.normpath(given if given.is_absolute() else root / given))
    spelled = Path(os.path.normpath(cache_dir.absolute()))
    if given.is_absolute() and not _lexically_inside(lexical, root) and _lexically_inside(lexical, spelled):
        lexical = root / lexical.relative_to(spelled)  # the cache named through a link to it (BERG_CACHE)
    real = lexical.resolve()
    if not _lexically_inside(real, root) or not _lexically_inside(lexical, root):
        raise InvalidParameterError(
            f"cache argument {text!r} resolves to {real}, outside the cache {root}; berg cache only touches "
            f"files inside the cache. Give {form}"
        )
    if real == root:
        raise InvalidParameterError(f"cache argument {text!r} names the cache itself ({root}); give {form}")
    # a symbolic link anywhere on the way: berg never makes links in its cache, so it is not followed
    probe = root
    for part in lexical.relative_to(root).parts:
        probe = probe / part
        if probe.is_symlink():
            raise InvalidParameterError(
                f"cache argument {text!r} passes through the symbolic link {probe} -> {os.readlink(probe)}; berg "
                "never makes links in its cache and does not follow them. Remove the link by hand"
            )
    parts = real.relative_to(root).parts
    model = root / parts[0]
    if not model.is_dir():
        near = close_matches(parts[0], cached)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise InvalidParameterError(
            f"{parts[0]!r} is not in the cache {root}{hint}; cached: {', '.join(cached) or 'nothing'}"
        )
    if not _is_berg_folder(model):
        raise InvalidParameterError(
            f"{model} was not made by berg (no {INDEX_NAME} or manifest.json in it), so berg cache leaves it alone"
        )
    sub = "/".join(parts[1:]) or None
    if sub is not None and not real.exists():
        raise InvalidParameterError(f"{sub!r} is not a cached file of {parts[0]} ({real} does not exist)")
    return CacheTarget(root, [model], sub)


def _lexically_inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _models(cache_dir: Path, model_id: Any) -> list[Path]:
    return resolve_target(cache_dir, model_id).models


def _files(root: Path, sub: str | None = None) -> list[Path]:
    # berg's own bookkeeping (index, locks, partial downloads, temporaries) is not a cached file; links
    # are never followed (os.walk with followlinks=False, and no file that is a link)
    start = root / sub if sub else root
    if start.is_file() and not start.is_symlink():
        candidates = [start]
    else:
        candidates = [
            Path(folder) / name for folder, _dirs, names in os.walk(start, followlinks=False) for name in names
        ]
    return sorted(
        p
        for p in candidates
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
    """Cached files: ``[{"model_id", "key", "size"}]`` (``model_id``: see :func:`resolve_target`)."""
    out = []
    target = resolve_target(cache_dir, model_id)
    for root in target.models:
        for p in _files(root, target.sub):
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
    target = resolve_target(cache_dir, model_id)
    for root in target.models:
        index = CacheIndex(root).load()
        # files listed by a manifest: the model's own, and those of converted artifacts kept below it
        # (e.g. <cache>/_wheels/<wheel>-<hash>/manifest.json)
        manifest_files: dict[Path, str] = {}
        for manifest_path in _files(root):
            if manifest_path.name != MANIFEST_NAME:
                continue
            try:
                files = read_manifest(manifest_path)["files"]
            except ArtifactError:
                continue
            for k, info in files.items():
                manifest_files.setdefault(manifest_path.parent / k, info.get("sha256"))
        for p in _files(root, target.sub):
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
    """Delete a model's cached files (every model berg made when ``model_id`` is None); returns bytes freed.

    ``model_id`` may also name one file or folder below a model folder (``ID/metadata``); see
    :func:`resolve_target` for what is refused. Only folders berg made are deleted, links are never
    followed, and nothing outside the cache is touched.
    """
    target = resolve_target(cache_dir, model_id)
    freed = 0
    for root in target.models:
        doomed = root / target.sub if target.sub else root
        freed += sum(p.stat().st_size for p in _files(root, target.sub))
        try:
            if doomed.is_dir() and not doomed.is_symlink():
                shutil.rmtree(doomed)
            else:
                doomed.unlink()
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise cache_write_error(exc, target.cache_dir, f"clearing {root.name}") from exc
            raise
    return freed
