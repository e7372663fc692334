"""Source kinds of published models: S3, HTTPS and local folders, each pinned to a manifest sha256.

A registry entry from outside never names these classes itself: :func:`berg.registry.check_outside_entry`
turns the fragment's ``source:`` (a path beside the fragment, or an S3/HTTPS location inside the
registry's own) into one of them, adding ``manifest_sha256`` (from the fragment, which is itself pinned)
and ``cache`` (``namespace/id/version``). So the manifest is verified against the published hash, every
file against the manifest, and each version lives in its own cache folder
``<cache>/_hub/<namespace>/<id>/<version>/<manifest sha256[:16]>/``.
"""

from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from berg.errors import ArtifactError, ArtifactNotFoundError, IntegrityError, InvalidParameterError
from berg.fsutil import atomic_path
from berg.store.download import RemoteObject, RetryPolicy, TransientError, download_atomic
from berg.store.manifest import MANIFEST_NAME, FileInfo, verify_file
from berg.store.sources import S3Source, Source, SourceContext

__all__ = ["PinnedS3Source", "PinnedHTTPSource", "PinnedFolderSource", "HUB_DIR"]

#: Folder of published models inside the cache.
HUB_DIR = "_hub"
_CACHE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*/[A-Za-z0-9][A-Za-z0-9_-]*/[0-9]+$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class _Pinned:
    """What every published source shares: the pinned manifest and a cache folder per version."""

    cfg: dict[str, Any]
    context: SourceContext | None

    def _check_pin(self) -> None:
        pin, cache = self.cfg.get("manifest_sha256"), self.cfg.get("cache")
        if not isinstance(pin, str) or not _SHA_RE.match(pin):
            raise InvalidParameterError("a published source needs manifest_sha256 (64 hex digits)")
        if not isinstance(cache, str) or not _CACHE_RE.match(cache):
            raise InvalidParameterError(f"a published source needs cache 'namespace/id/version', got {cache!r}")

    def local_root(self, model_id: str) -> Path:
        if self.context is None:
            raise ArtifactError("this published source was made without a store context")
        return self.context.cache_dir / HUB_DIR / self.cfg["cache"] / self.cfg["manifest_sha256"][:16]

    def _expected(self, key: str, expected: FileInfo | None) -> FileInfo | None:
        if key == MANIFEST_NAME:
            pin = self.cfg["manifest_sha256"]
            if expected is not None and expected.sha256 not in (None, pin):
                raise IntegrityError(f"{key}: asked for sha256 {expected.sha256}, the registry pins {pin}")
            return FileInfo(size=expected.size if expected else None, sha256=pin)
        return expected

    def _where_published(self) -> str:
        reg = self.cfg.get("registry") or {}
        return f"{self.cfg.get('model', '')} of registry {reg.get('name')!r} ({reg.get('url')})"

    def _pinned_fetch(self, fetch, key: str, dest: Path, expected: FileInfo | None) -> FileInfo:
        try:
            return fetch(key, dest, self._expected(key, expected))
        except IntegrityError as exc:
            raise IntegrityError(
                f"{exc}: the published artifact of {self._where_published()} is not what its registry pins "
                "(changed after publishing, or damaged); nothing was used. Tell its publisher, or run "
                "`berg registry update NAME` if they published a new version"
            ) from None


class PinnedS3Source(_Pinned, S3Source):
    """A published model in an S3(-compatible) bucket (the endpoint is the registry's own)."""

    def __init__(self, cfg: Mapping[str, Any], context: SourceContext | None = None, policy: RetryPolicy | None = None):
        super().__init__(cfg, context, policy)
        self._check_pin()
        if cfg.get("endpoint"):  # the registry's endpoint wins over BERG_S3_ENDPOINT (set for other models)
            self.endpoint = cfg["endpoint"]
        self.has_manifest = True

    def fetch(self, key: str, dest: Path, expected: FileInfo | None) -> FileInfo:
        return self._pinned_fetch(super().fetch, key, dest, expected)


class PinnedHTTPSource(_Pinned, Source):
    """A published model below an HTTPS URL (``url`` ends with ``/``; keys are appended)."""

    has_manifest = True

    def __init__(self, cfg: Mapping[str, Any], context: SourceContext | None = None, policy: RetryPolicy | None = None):
        super().__init__(cfg, context)
        self._check_pin()
        url = cfg.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise InvalidParameterError(f"a published https source needs url, got {url!r}")
        self.url = url if url.endswith("/") else url + "/"
        self.policy = policy or RetryPolicy()

    def describe(self) -> str:
        return self.url

    def _request(self, key: str, method: str = "GET", offset: int = 0):
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        req = urllib.request.Request(self.url + key, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=self.policy.timeout)  # noqa: S310 - http(s) checked
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise ArtifactNotFoundError(f"{self.url}{key} does not exist (404)") from None
            if exc.code >= 500 or exc.code == 429:
                raise TransientError(f"HTTP {exc.code}") from None
            raise ArtifactError(f"{self.url}{key}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise TransientError(f"{self.url}{key}: {getattr(exc, 'reason', exc)}") from None

    def head(self, key: str) -> FileInfo:
        with self._request(key, "HEAD") as resp:
            size = resp.headers.get("Content-Length")
            if not (size and size.isdigit()):
                raise ArtifactError(f"{self.url}{key}: the server does not say the size")
            return FileInfo(size=int(size), etag=resp.headers.get("ETag"))

    def _stream(self, key: str, offset: int) -> Iterator[bytes]:
        with self._request(key, offset=offset) as resp:
            if offset and resp.status != 206:
                raise ArtifactError(f"{self.url}{key}: the server ignores ranged requests; cannot resume")
            while chunk := resp.read(1 << 20):
                yield chunk

    def _fetch(self, key: str, dest: Path, expected: FileInfo | None) -> FileInfo:
        info = self.head(key)
        digest = download_atomic(
            dest,
            RemoteObject(size=info.size),
            lambda off: self._stream(key, off),
            expected=expected,
            label=self.url + key,
            policy=self.policy,
        )
        return FileInfo(size=info.size, sha256=digest)

    def fetch(self, key: str, dest: Path, expected: FileInfo | None) -> FileInfo:
        return self._pinned_fetch(self._fetch, key, dest, expected)

    def list(self, prefix: str = "") -> list[str]:
        return []  # every file is listed in the (pinned) manifest


class PinnedFolderSource(_Pinned, Source):
    """A published model in a local folder (copied into the cache, verified, so the folder may change later)."""

    has_manifest = True

    def __init__(self, cfg: Mapping[str, Any], context: SourceContext | None = None):
        super().__init__(cfg, context)
        self._check_pin()
        if not isinstance(cfg.get("path"), str):
            raise InvalidParameterError("a published folder source needs path")
        self.root = Path(cfg["path"])

    def describe(self) -> str:
        return str(self.root)

    def is_local(self, key: str) -> bool:
        return True

    def _file(self, key: str) -> Path:
        path = self.root / key
        if not path.is_file():
            raise ArtifactNotFoundError(f"{path} does not exist")
        if path.is_symlink() or not path.resolve().is_relative_to(self.root.resolve()):
            raise ArtifactError(f"{path} is a link or leaves {self.root}; refused")
        return path

    def head(self, key: str) -> FileInfo:
        return FileInfo(size=self._file(key).stat().st_size)

    def _fetch(self, key: str, dest: Path, expected: FileInfo | None) -> FileInfo:
        src = self._file(key)
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
            digest = verify_file(tmp, expected, label=str(src)) if expected and expected.sha256 else None
        from berg.fsutil import sha256_file

        return FileInfo(size=dest.stat().st_size, sha256=digest or sha256_file(dest))

    def fetch(self, key: str, dest: Path, expected: FileInfo | None) -> FileInfo:
        return self._pinned_fetch(self._fetch, key, dest, expected)

    def list(self, prefix: str = "") -> list[str]:
        return []
