"""The artifact store: find, fetch, verify and cache the files a model needs.

Resolution order for a key of a model (see docs/architecture.md):

1. ``berg_dir / source["prefix"] / key`` — a local copy of the bucket tree, used in place, read-only;
2. the model's folder: the cache, ``<cache_dir>/<model_id>/<key>`` (or, for models built on this
   machine, the folder the build source names);
3. the source named in the registry entry (:mod:`berg.store.sources`: S3, a PyPI wheel plus converter,
   or any :class:`~berg.store.sources.Source` class).

Files of berg-native artifacts are verified against the artifact's ``manifest.json`` (size and
sha256); third-party files by size and S3 ETag, after which their sha256 is recorded in the cache
index so later corruption of the cached copy is detected and the file fetched again. Files berg makes
from other files (a folded projection) are made by :meth:`Store.derived`, recorded and verified the
same way.

Shared and read-only caches: nothing is written (no lock, no record) when every needed file is
present and verified; links in the cache are never followed; when a write is needed and impossible,
:class:`~berg.store.cache.CacheWriteError` says which folder and how to choose another.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from berg.env import env_flag, env_int, env_str, parse_bool
from berg.errors import ArtifactError, BERGError, IntegrityError, InvalidParameterError, OfflineError
from berg.fsutil import atomic_path, sha256_bytes, sha256_file
from berg.store.artifacts import DERIVED_DIR, check_key
from berg.store.cache import (
    INDEX_NAME,
    WRITE_ERRNOS,
    CacheWriteError,
    cache_write_error,
    clean_stale,
    is_writable,
    unwritable_reason,
)
from berg.store.manifest import MANIFEST_NAME, FileInfo, parse_manifest, verify_file

if TYPE_CHECKING:  # pragma: no cover
    from berg.store.cache import CacheIndex
    from berg.store.sources import Source

__all__ = ["Store", "default_cache_dir", "CacheWriteError"]

log = logging.getLogger(__name__)

# Index records that memoise the sha256 of berg_dir files (keyed by their key, never by absolute path).
_BERG_DIR_RECORDS = ".berg-dir/"


def _folder_param(value: Any, what: str) -> Path | None:
    """A folder parameter as a Path; NUL bytes and non-path values raise InvalidParameterError."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidParameterError(f"{what} must be a folder path (str or os.PathLike), got {type(value).__name__}")
    text = os.fspath(value)
    if isinstance(text, bytes) or "\x00" in text:
        raise InvalidParameterError(
            f"{what} {text!r} contains a NUL byte (or is bytes); give a plain folder path, "
            "e.g. BERG_CACHE=~/.cache/berg or --cache-dir /scratch/berg-cache"
        )
    if not text:
        raise InvalidParameterError(f"{what} is empty; give a folder path or leave it unset for the default")
    return Path(text).expanduser()


def default_cache_dir() -> Path:
    """``$BERG_CACHE`` or the platform's user cache directory for berg."""
    env = env_str("BERG_CACHE")
    if env:
        return _folder_param(env, "BERG_CACHE")
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("berg", appauthor=False))


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn an OS error while reading a local file (permissions, I/O) into a clear ArtifactError."""
    try:
        yield
    except BERGError:
        raise
    except OSError as exc:
        raise ArtifactError(
            f"cannot read {path}: {exc.strerror or exc} [{errno.errorcode.get(exc.errno, exc.errno)}]. In a shared "
            "cache ask its owner to make it readable (chmod -R a+rX, or g+rX for a group), or point BERG_CACHE "
            "(or --cache-dir) at a cache of your own"
        ) from exc


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _annexed(berg_dir: Path, real: Path) -> bool:
    """A file of berg_dir's git-annex object store (``.git/annex/objects/``): a content-addressed copy."""
    try:
        parts = real.relative_to(berg_dir.resolve()).parts
    except ValueError:
        return False
    return any(parts[i : i + 3] == (".git", "annex", "objects") for i in range(len(parts)))


def _derived_key(name: str, digest: str) -> str:
    pure = PurePosixPath(name)
    suffix = "".join(pure.suffixes)
    stem = pure.name[: len(pure.name) - len(suffix)] if suffix else pure.name
    parent = "" if str(pure.parent) == "." else f"{pure.parent}/"
    return f"{DERIVED_DIR}/{parent}{stem}-{digest[:16]}{suffix}"


class Store:
    """Resolves artifact keys to verified local files.

    Parameters
    ----------
    berg_dir : path, optional
        Local copy of the bucket tree (BERG layout); never modified.
    cache_dir : path, optional
        Cache root (default :func:`default_cache_dir`).
    offline : bool
        Never use the network (also ``BERG_OFFLINE=1``).
    build_dir : path, optional
        Folder of models built on this machine, as ``<build_dir>/<model_id>/`` (also ``BERG_BUILD_DIR``;
        default: the cache).
    """

    def __init__(
        self,
        berg_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        offline: bool = False,
        *,
        build_dir: str | os.PathLike[str] | None = None,
    ):
        self.berg_dir = _folder_param(berg_dir, "berg_dir")
        self.cache_dir = _folder_param(cache_dir, "cache_dir") or default_cache_dir()
        self.build_dir = _folder_param(build_dir, "build_dir") or _folder_param(
            env_str("BERG_BUILD_DIR"), "BERG_BUILD_DIR"
        )
        self.offline = parse_bool(offline, "offline") or env_flag("BERG_OFFLINE")
        self._manifests: dict[str, dict[str, Any] | None] = {}
        self._sources: dict[str, Any] = {}
        self._indexes: dict[Path, Any] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ paths
    def model_cache(self, model_id: str) -> Path:
        """Cache directory of one model."""
        check_key(model_id)
        if "/" in model_id or model_id.startswith(("_", ".")):
            raise ArtifactError(
                f"invalid model id {model_id!r} for a cache folder: ids must not contain '/' or start with "
                "'_' or '.' (berg keeps its own folders, such as _wheels, there)"
            )
        return self.cache_dir / model_id

    def model_folder(self, model_id: str, source: Mapping[str, Any]) -> Path:
        """Where a model's files live: ``<cache>/<model_id>/``, or the chosen folder of a built model.

        ``berg build`` writes its artifact here (e.g. ``ArtifactWriter(store.model_folder(id, source), id)``).
        """
        return self._root(model_id, self._source(source))

    def _root(self, model_id: str, src: Source) -> Path:
        root = src.local_root(model_id)
        return Path(root) if root is not None else self.model_cache(model_id)

    def _local_berg_dir(self, source: Mapping[str, Any], key: str) -> Path | None:
        """``berg_dir/<prefix>/<key>`` when it is there, and is that model's own file under that name.

        BERG's bucket (and so a copy of it) holds every file of a model under its own name inside the
        model's folder, with no links. A file that resolves (through symbolic links) outside its model
        folder, or to another file of it (another subject's weights), would be used silently in its
        place, so it is refused. Links into a git-annex/DataLad object store of ``berg_dir`` are
        content-addressed copies and are admitted.
        """
        if self.berg_dir is None:
            return None
        root = self.berg_dir / source.get("prefix", "")
        path = root / key
        if not path.is_file():
            return None
        real, real_root = path.resolve(), root.resolve()
        if real == real_root / key or _annexed(self.berg_dir, real):
            return path
        try:
            other = real.relative_to(real_root).as_posix()
        except ValueError:
            other = None
        where = (
            f"another file of the same model folder ({other})"
            if other is not None
            else f"{real}, outside its model folder {real_root}"
        )
        raise ArtifactError(
            f"berg_dir file {path} resolves to {where}; refused: BERG's layout holds each file of a model "
            "under its own name in the model's folder (no links), and a link to another file would be used "
            f"silently in its place. Replace the link with a copy of the right file ({key}), or remove it and "
            "let berg fetch the file"
        )

    @staticmethod
    def _entry(root: Path, key: str) -> Path:
        """``root / key``, refusing symbolic links anywhere below ``root`` (berg never makes them)."""
        path = root
        for part in PurePosixPath(key).parts:
            path = path / part
            if os.path.islink(path):
                raise ArtifactError(
                    f"cache entry {path} is a symbolic link (to {os.readlink(path)}); berg never makes links in "
                    f"its cache and does not follow them. Remove it (rm {path}) and berg fetches the file again"
                )
        return path

    def _cache_path(self, model_id: str, key: str) -> Path:
        return self._entry(self.model_cache(model_id), key)

    def _opened(self, root: Path) -> None:
        """First use of a model folder by this store: remove temporaries of dead processes (if writable)."""
        clean_stale(root)

    # ------------------------------------------------------------------ manifest
    def manifest(self, model_id: str, source: Mapping[str, Any]) -> dict[str, Any] | None:
        """The artifact's ``manifest.json`` (fetched once), or ``None`` for sources without one."""
        if model_id in self._manifests:
            return self._manifests[model_id]
        src = self._source(source)
        if not src.has_manifest:
            self._manifests[model_id] = None
            return None
        path = self._resolve(model_id, source, MANIFEST_NAME, None, src)
        with _reading(path):
            data = path.read_bytes()
        manifest = parse_manifest(data, origin=str(path))
        self._manifests[model_id] = manifest
        return manifest

    def _expected(self, model_id: str, source: Mapping[str, Any], key: str) -> FileInfo | None:
        manifest = self.manifest(model_id, source)
        if manifest is None:
            return None
        info = manifest["files"].get(key)
        if info is None:
            raise ArtifactError(
                f"{key} is not listed in the manifest of {model_id}; listed: {', '.join(sorted(manifest['files']))}"
            )
        return FileInfo(size=info["size"], sha256=info["sha256"])

    # ------------------------------------------------------------------ fetching
    def fetch(
        self,
        model_id: str,
        source: Mapping[str, Any],
        key: str,
        *,
        expected: FileInfo | None = None,
    ) -> Path:
        """Local, verified path of ``key`` (from berg_dir, the cache, or downloaded)."""
        return self.fetch_many(model_id, source, [key], expected={key: expected} if expected else None)[key]

    def fetch_many(
        self,
        model_id: str,
        source: Mapping[str, Any],
        keys: Iterable[str],
        *,
        expected: Mapping[str, FileInfo] | None = None,
    ) -> dict[str, Path]:
        """Fetch several keys, a few at a time (``BERG_FETCH_THREADS``, default 8).

        In offline mode all missing keys are reported in one error.
        """
        keys = list(dict.fromkeys(check_key(k) for k in keys))
        src = self._source(source)
        missing: list[str] = []
        manifest_known = True
        if src.has_manifest and any(k != MANIFEST_NAME and not (expected or {}).get(k) for k in keys):
            try:
                self.manifest(model_id, source)
            except OfflineError:
                missing.append(MANIFEST_NAME)
                manifest_known = False

        def one(key: str) -> Path | None:
            exp = (expected or {}).get(key)
            if exp is None and key != MANIFEST_NAME and src.has_manifest and manifest_known:
                exp = self._expected(model_id, source, key)
            try:
                return self._resolve(model_id, source, key, exp, src)
            except OfflineError:
                return None

        threads = env_int("BERG_FETCH_THREADS", 8, minimum=1)
        if len(keys) <= 1 or threads == 1:
            results = [one(k) for k in keys]
        else:
            from concurrent.futures import ThreadPoolExecutor

            from tqdm.auto import tqdm

            with ThreadPoolExecutor(min(threads, len(keys)), thread_name_prefix="berg-fetch") as pool:
                results = list(
                    tqdm(
                        pool.map(one, keys),
                        total=len(keys),
                        unit="file",
                        leave=False,
                        desc=f"{model_id}",
                        disable=len(keys) < 50,
                    )
                )
        out = {k: p for k, p in zip(keys, results) if p is not None}
        missing += [k for k, p in zip(keys, results) if p is None]
        if missing:
            missing = list(dict.fromkeys(missing))
            raise OfflineError(
                f"offline mode: {len(missing)} file(s) of {model_id} are not available locally: "
                f"{', '.join(missing)}. On a machine with network access run: berg fetch {model_id} --all "
                f"(with BERG_CACHE pointing at {self.cache_dir}), or unset BERG_OFFLINE."
            )
        return out

    def _source(self, source: Mapping[str, Any]) -> Source:
        # One source object (and so one S3 client and connection pool) per source and environment.
        from berg.store.sources import SourceContext, source_for

        ident = json.dumps(
            [dict(source), env_str("BERG_S3_ENDPOINT"), env_str("BERG_S3_SIGNED")], sort_keys=True, default=str
        )
        with self._lock:
            if ident not in self._sources:
                context = SourceContext(cache_dir=self.cache_dir, offline=self.offline, build_dir=self.build_dir)
                self._sources[ident] = source_for(source, context)
            return self._sources[ident]

    def source(self, source: Mapping[str, Any]) -> Source:
        """The :class:`~berg.store.sources.Source` object of a registry ``source:`` mapping (shared)."""
        return self._source(source)

    def list_keys(self, source: Mapping[str, Any], prefix: str = "") -> list[str]:
        """Keys the source lists under ``prefix`` that berg can cache (``berg fetch ID --all`` without a manifest).

        Keys that are invalid or collide with berg's bookkeeping names are left out with a warning: they
        could never be fetched (see :func:`berg.store.artifacts.reserved_reason`).
        """
        keys = []
        for key in self._source(source).list(prefix):
            try:
                keys.append(check_key(key))
            except ArtifactError as exc:
                log.warning("skipping a listed key: %s", exc)
        return keys

    def index(self, model_id: str) -> CacheIndex:
        """The cache index of one model (shared by this store's threads)."""
        return self._index_at(self.model_cache(model_id))

    def _index_at(self, root: Path) -> CacheIndex:
        from berg.store.cache import CacheIndex

        with self._lock:
            if root not in self._indexes:
                self._opened(root)
                self._indexes[root] = CacheIndex(root)
            return self._indexes[root]

    def _resolve(
        self, model_id: str, source: Mapping[str, Any], key: str, expected: FileInfo | None, src: Source
    ) -> Path:
        from berg.store.network import FetchError

        try:
            return self._resolve_here(model_id, source, key, expected, src)
        except FetchError as exc:
            # one line naming this model's file, its size, the cause and this model's `berg fetch` command
            raise exc.for_model(model_id, key, expected.size if expected is not None else None) from None

    def _resolve_here(
        self, model_id: str, source: Mapping[str, Any], key: str, expected: FileInfo | None, src: Source
    ) -> Path:
        local = self._local_berg_dir(source, key)
        if local is not None:
            if expected is not None:
                with _reading(local):
                    verify_file(local, expected, label=f"berg_dir file {local}")
            return local
        root = self._root(model_id, src)
        path = self._entry(root, key)
        index = self._index_at(root)
        if os.path.lexists(path):
            if not path.is_file():
                raise ArtifactError(f"cache entry {path} is not a regular file; remove it and berg fetches it again")
            try:
                with _reading(path):
                    if expected is not None and expected.sha256 is not None:
                        index.verify_known(key, path, expected.sha256)
                    else:
                        if index.get(key) is None:
                            self._check_unrecorded(model_id, key, path, expected, src)
                        index.verify_recorded(key, path)
                return path
            except IntegrityError as exc:
                if not src.remote:
                    raise IntegrityError(
                        f"{exc}. It cannot be fetched again: {src.describe()} (run that command again to rebuild it)"
                    ) from exc
                log.warning("cached file is corrupt, fetching it again: %s", exc)
                try:
                    path.unlink()
                except OSError as unlink_exc:
                    raise IntegrityError(
                        f"{exc}; the cache is not writable ({unlink_exc.strerror}), so it cannot be fetched again. "
                        "Point BERG_CACHE (or --cache-dir) at a writable folder, or repair this cache "
                        "(berg cache verify) where it is writable"
                    ) from exc
        if src.remote and self.offline and not src.is_local(key):
            raise OfflineError(key)

        def download() -> Path:
            if path.is_file():  # another process finished it while we waited for the lock
                return path
            info = src.fetch(key, path, expected)
            index.record(key, path, info.sha256 or sha256_file(path), etag=info.etag, source=src.describe())
            return path

        # a source that is not remote (a model built on this machine) is asked without taking a lock:
        # it writes nothing here, it says how to make the file
        return self._write(root, f"fetching {key} of {model_id}", download, lock=path if src.remote else None)

    def _check_unrecorded(self, model_id: str, key: str, path: Path, expected: FileInfo | None, src: Source) -> None:
        """A cached file berg has no record of (copied in by hand): check it before trusting it.

        Its size against what is expected, then, for remote sources, its size and (single-part) ETag
        against the source. Raises :class:`~berg.errors.IntegrityError` (the file is then fetched again)
        on a mismatch; offline, where nothing can be compared, an :class:`~berg.errors.ArtifactError`
        that says how to use a hand-made copy (``berg_dir``) instead.
        """
        size = path.stat().st_size
        if expected is not None and expected.size is not None and size != expected.size:
            raise IntegrityError(f"cached {path} (not recorded by berg): size {size} bytes, expected {expected.size}")
        if not src.remote:
            return
        if self.offline:
            raise ArtifactError(
                f"cached {path} was not fetched by berg (no record of it in {INDEX_NAME}) and cannot be checked "
                f"offline, so it is not used. To use a copy you made yourself, give its folder as berg_dir= "
                f"(--berg-dir; a copy of the bucket tree, used in place and verified), or run berg fetch {model_id} "
                "once where there is network"
            )
        from berg.store.download import RemoteObject

        info = src.head(key)
        if info.size is not None and info.size != size:
            raise IntegrityError(f"cached {path} (not recorded by berg): size {size} bytes, the source has {info.size}")
        md5 = RemoteObject(size=size, etag=info.etag).md5
        if md5 is not None:
            import hashlib

            h = hashlib.md5()  # noqa: S324 - only to compare with the S3 ETag
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(8 << 20), b""):
                    h.update(block)
            if h.hexdigest() != md5:
                raise IntegrityError(
                    f"cached {path} (not recorded by berg): MD5 {h.hexdigest()} differs from the source's ETag {md5}"
                )

    def _write(self, root: Path, what: str, work: Callable[[], Any], *, lock: Path | None) -> Any:
        """Run ``work`` (which writes below ``root``) under ``lock``'s file lock; write errors say so clearly."""
        from berg.store.download import file_lock

        if lock is not None and not is_writable(root):
            raise cache_write_error(unwritable_reason(root), root, what)
        try:
            if lock is None:
                return work()
            with file_lock(lock, what=what):
                return work()
        except BERGError:
            raise
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise cache_write_error(exc, root, what) from exc
            raise

    # ------------------------------------------------------------------ checksums
    def sha256(self, model_id: str, source: Mapping[str, Any], key: str) -> str:
        """sha256 of a key's local file: from the manifest / cache index when known, else computed.

        For files used in place from ``berg_dir`` the digest is remembered in the model's cache index
        (keyed by the key, with the file's size and mtime), so a multi-GB file is hashed once, not on
        every load.
        """
        exp = None
        try:
            exp = self._expected(model_id, source, key)
        except ArtifactError:
            exp = None
        if exp is not None and exp.sha256:
            return exp.sha256
        index = self.index(model_id)
        if self._local_berg_dir(source, key) is None:
            cached = self._cache_path(model_id, key)
            recorded = index.get(key)
            if recorded and recorded.get("sha256") and cached.is_file() and index.unchanged(recorded, cached):
                return recorded["sha256"]  # verified when it was recorded, unchanged since
        path = self.fetch(model_id, source, key)
        if self.berg_dir is not None and not _inside(self.model_cache(model_id), path):
            memo = _BERG_DIR_RECORDS + key
            return self._memo_digest(index, memo, path)
        recorded = index.get(key)
        if recorded and recorded.get("sha256"):
            return recorded["sha256"]
        return sha256_file(path)

    @staticmethod
    def _memo_digest(index: CacheIndex, memo: str, path: Path) -> str:
        rec = index.get(memo)
        st = path.stat()
        if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns and rec.get("sha256"):
            return rec["sha256"]
        digest = index.digest(memo, path)
        index.record(memo, path, digest, origin="berg_dir")
        return digest

    # ------------------------------------------------------------------ derived artifacts
    def derived(
        self,
        model_id: str,
        name: str,
        inputs: Mapping[str, str],
        build: Callable[[Path], None],
    ) -> Path:
        """A file berg derives from other files (e.g. a folded projection), made once and verified on reuse.

        Parameters
        ----------
        model_id : str
            The model whose cache folder holds it.
        name : str
            Relative file name, e.g. ``"projection.safetensors"``. The file lives at
            ``<cache>/<model_id>/converted/<stem>-<hash of inputs><suffix>``, so different inputs never
            share a file (two berg versions sharing a cache do not overwrite each other's file).
        inputs : mapping of str to str
            Everything the result depends on: the sha256 of each input file and a version string of
            the derivation code. A change in any of them makes a new file.
        build : callable
            ``build(tmp_path)`` writes the result to ``tmp_path`` (a per-process temporary name beside
            the final file); it is then hashed, renamed into place and recorded in the cache index.

        Returns
        -------
        Path
            The verified file. A file whose bytes no longer match its record is rebuilt (or, in a
            read-only cache, raises :class:`~berg.errors.IntegrityError`); a missing file that cannot be
            written raises :class:`~berg.store.cache.CacheWriteError`.
        """
        inputs = {str(k): str(v) for k, v in dict(inputs).items()}
        check_key(name)
        digest = sha256_bytes(json.dumps(inputs, sort_keys=True).encode())
        key = _derived_key(name, digest)
        root = self.model_cache(model_id)
        path = self._entry(root, key)
        index = self._index_at(root)

        def current() -> bool:
            if not os.path.lexists(path):
                return False
            rec = index.get(key)
            if not path.is_file() or not rec or not rec.get("derived") or rec.get("inputs") != inputs:
                log.warning("derived file %s is not recorded with these inputs; deriving it again", path)
                return False
            got = index.digest(key, path, rec)
            if got == rec.get("sha256"):
                return True
            log.warning(
                "derived file %s is corrupt (sha256 %s, recorded %s); deriving it again", path, got, rec["sha256"]
            )
            return False

        with _reading(path):
            if current():
                return path
        if os.path.lexists(path) and not is_writable(path.parent):
            raise IntegrityError(
                f"derived file {path} does not match its record and the cache is not writable, so it cannot be "
                "made again. Point BERG_CACHE (or --cache-dir) at a writable folder, or run berg cache verify "
                "where this cache is writable"
            )

        def make() -> Path:
            if current():  # another process made it while we waited for the lock
                return path
            suffix = "".join(PurePosixPath(name).suffixes)
            with atomic_path(path, suffix) as tmp:
                build(tmp)
                if not tmp.is_file():
                    raise ArtifactError(f"deriving {name} of {model_id} wrote no file at {tmp}")
                sha = sha256_file(tmp)
            index.record(key, path, sha, derived=True, name=name, inputs=inputs)
            self._drop_superseded(root, index, name, key)
            return path

        return self._write(root, f"deriving {name} of {model_id}", make, lock=path)

    def _drop_superseded(self, root: Path, index: CacheIndex, name: str, keep: str) -> None:
        # older versions of the same derived file (other inputs) would otherwise stay forever (GBs):
        # recorded ones, and unrecorded ones of the same name pattern (made before derived files were
        # recorded; converted/ is berg's own folder, nothing else lives there)
        records = index.load()
        stale = {key for key, rec in records.items() if key != keep and rec.get("derived") and rec.get("name") == name}
        pattern = _derived_key(name, "*" * 16).rsplit("/", 1)[-1].replace("*" * 16, "[0-9a-f]" * 16)
        folder = (root / keep).parent
        stale |= {p.relative_to(root).as_posix() for p in folder.glob(pattern)} - set(records) - {keep}
        for key in sorted(stale):
            old = root / key
            if old.is_file() and not old.is_symlink():
                try:
                    old.unlink()
                    log.info("removed superseded derived file %s", old)
                except OSError:
                    pass
