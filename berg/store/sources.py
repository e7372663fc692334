"""Remote sources named in ``registry.yaml``: S3 buckets (any S3-compatible server) and PyPI wheels.

A source downloads one key into the cache (``download``). New kinds (HTTPS, ...) add a class here
and an entry in :data:`SOURCE_KINDS`.
"""

from __future__ import annotations

import html
import importlib
import re
import logging
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berg.errors import ArtifactError, ArtifactNotFoundError, IntegrityError, InvalidParameterError
from berg.store.download import RemoteObject, RetryPolicy, TransientError, download_atomic, file_lock
from berg.store.manifest import MANIFEST_NAME, FileInfo, read_manifest, sha256_file

if TYPE_CHECKING:  # pragma: no cover
    from berg.store import Store

__all__ = ["S3Source", "PyPIWheelSource", "source_for", "SOURCE_KINDS"]

log = logging.getLogger(__name__)

_TRANSIENT_HTTP = {500, 502, 503, 504, 429}
_SESSION = None
_CLIENTS: dict[tuple, Any] = {}
_SESSION_LOCK = threading.Lock()


class S3Source:
    """Objects under ``bucket/prefix`` of an S3(-compatible) server.

    Registry keys: ``bucket``, ``prefix``, ``region`` (optional), ``endpoint`` (optional; the
    ``BERG_S3_ENDPOINT`` environment variable overrides it), ``anonymous`` (default true: unsigned
    requests, as for public buckets). Set ``BERG_S3_SIGNED=1`` (or ``anonymous: false``) to use your AWS
    credentials/profile instead.
    """

    def __init__(self, cfg: Mapping[str, Any], policy: RetryPolicy | None = None):
        if not cfg.get("bucket"):
            raise InvalidParameterError("an s3 source needs a 'bucket'")
        self.bucket = cfg["bucket"]
        self.prefix = cfg.get("prefix", "")
        self.region = cfg.get("region")
        self.endpoint = os.environ.get("BERG_S3_ENDPOINT") or cfg.get("endpoint")
        signed_env = os.environ.get("BERG_S3_SIGNED", "").lower() in ("1", "true", "yes")
        self.anonymous = bool(cfg.get("anonymous", True)) and not signed_env
        # berg-native artifacts carry manifest.json; third-party trees (BERG's bucket) say manifest: false.
        self.has_manifest = bool(cfg.get("manifest", True))
        self.policy = policy or RetryPolicy()
        self._client = None

    @property
    def client(self):
        """A boto3 S3 client (unsigned unless configured otherwise); retries are ours, not botocore's."""
        with _SESSION_LOCK:  # boto3 sessions are not thread-safe
            if self._client is None:
                self._client = self._make_client()
        return self._client

    def _make_client(self):
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        global _SESSION
        config = Config(
            signature_version=UNSIGNED if self.anonymous else None,
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=self.policy.timeout,
            read_timeout=self.policy.timeout,
            max_pool_connections=16,
            s3={"addressing_style": "path"} if self.endpoint else None,
        )
        region = self.region or "us-east-1"
        if not self.anonymous:
            # A fresh session picks up the credentials/profile configured right now.
            return boto3.session.Session().client("s3", region_name=region, endpoint_url=self.endpoint, config=config)
        # Unsigned clients are shared (they are thread-safe and hold no secrets): creating one costs
        # ~0.25 s of botocore model loading, more than fetching a small file.
        ident = (region, self.endpoint, self.policy.timeout)
        if ident not in _CLIENTS:
            if _SESSION is None:
                _SESSION = boto3.session.Session()
            _CLIENTS[ident] = _SESSION.client("s3", region_name=region, endpoint_url=self.endpoint, config=config)
        return _CLIENTS[ident]

    def remote_key(self, key: str) -> str:
        """Object key of an artifact key."""
        return f"{self.prefix}{key}"

    def _where(self, key: str) -> str:
        endpoint = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.remote_key(key)}{endpoint}"

    def _classify(self, exc: Exception, key: str) -> Exception:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            EndpointConnectionError,
            ReadTimeoutError,
            ResponseStreamingError,
        )

        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = exc.response.get("Error", {}).get("Code", "")
            if status == 404 or code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                return ArtifactNotFoundError(
                    f"{self._where(key)} does not exist (404). Check the model id/subject, or that the "
                    f"bucket {self.bucket!r} and prefix {self.prefix!r} in registry.yaml are right."
                )
            if status == 403 or code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                how = ("requests are anonymous; if this bucket is private set BERG_S3_SIGNED=1 and configure "
                       "AWS credentials") if self.anonymous else "check your AWS credentials/profile"
                return ArtifactError(f"access denied (403) to {self._where(key)}: {how}.")
            if status in _TRANSIENT_HTTP or status >= 500:
                return TransientError(f"HTTP {status} {code}")
            return ArtifactError(f"{self._where(key)}: {code or status}: {exc}")
        if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ResponseStreamingError)):
            return TransientError(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, (BotoCoreError, OSError)):
            return TransientError(f"{type(exc).__name__}: {exc}")
        return exc

    def _with_retries(self, fn, key: str):
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below
                err = self._classify(exc, key)
                if not isinstance(err, TransientError):
                    raise err from exc
                attempt += 1
                if attempt >= self.policy.attempts:
                    raise ArtifactError(f"{self._where(key)}: giving up after {attempt} attempts ({err})") from exc
                self.policy.sleep(attempt)

    def head(self, key: str) -> RemoteObject:
        """Size and ETag of an object."""
        resp = self._with_retries(lambda: self.client.head_object(Bucket=self.bucket, Key=self.remote_key(key)), key)
        return RemoteObject(size=int(resp["ContentLength"]), etag=resp.get("ETag"))

    def _stream(self, key: str, offset: int, stop: int | None = None) -> Iterator[bytes]:
        """The object's bytes ``[offset, stop)`` (to the end when ``stop`` is None or the size)."""
        try:
            if stop is not None and stop > offset:
                kwargs = {"Range": f"bytes={offset}-{stop - 1}"}
            else:
                kwargs = {"Range": f"bytes={offset}-"} if offset else {}
            resp = self.client.get_object(Bucket=self.bucket, Key=self.remote_key(key), **kwargs)
            body = resp["Body"]
            received = 0
            for chunk in body.iter_chunks(chunk_size=1 << 20):
                received += len(chunk)
                yield chunk
        except Exception as exc:  # noqa: BLE001 - classified
            err = self._classify(exc, key)
            raise err from exc

    def download(self, store: "Store", model_id: str, key: str, dest: Path, expected: FileInfo | None) -> None:
        """Fetch ``key`` into ``dest`` (locked, resumable, verified, atomic)."""
        with file_lock(dest):
            if dest.is_file():  # another process finished it while we waited for the lock
                return
            remote = self.head(key)
            digest = download_atomic(
                dest, remote, lambda off: self._stream(key, off),
                expected=expected, label=self._where(key), policy=self.policy,
                open_range=lambda start, stop: self._stream(key, start, stop),
            )
            store.index(model_id).record(key, dest, digest, etag=remote.etag, source=self._where(key))

    def list_keys(self) -> list[str]:
        """Every artifact key under the prefix (for ``berg fetch --all`` of layouts without a manifest)."""
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in self._with_retries(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self.prefix)), ""):
            keys += [obj["Key"][len(self.prefix):] for obj in page.get("Contents", [])]
        return sorted(k for k in keys if k and not k.endswith("/"))


class PyPIWheelSource:
    """A published wheel converted into a berg artifact by a converter function.

    Registry keys: ``package``, ``version``, ``sha256`` (pinned hash of the wheel), ``converter``
    (``"pkg.mod:function"`` with signature ``convert(wheel_path, out_dir)`` writing a berg artifact),
    optional ``filename`` and ``index_url`` (a PEP 503 "simple" index; default ``BERG_PYPI_URL`` or
    https://pypi.org/simple, so mirrors work too).
    """

    has_manifest = True

    def __init__(self, cfg: Mapping[str, Any], policy: RetryPolicy | None = None):
        missing = [k for k in ("package", "version", "sha256", "converter") if not cfg.get(k)]
        if missing:
            raise InvalidParameterError(f"a pypi_wheel source needs {missing}")
        self.cfg = dict(cfg)
        self.index_url = (cfg.get("index_url") or os.environ.get("BERG_PYPI_URL") or "https://pypi.org/simple").rstrip("/")
        self.policy = policy or RetryPolicy()

    def _http(self, url: str) -> bytes:
        attempt = 0
        while True:
            try:
                with urllib.request.urlopen(url, timeout=self.policy.timeout) as resp:  # noqa: S310 - https URL from the registry
                    return resp.read()
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise ArtifactNotFoundError(f"{url}: not found (404)") from exc
                if exc.code not in _TRANSIENT_HTTP:
                    raise ArtifactError(f"{url}: HTTP {exc.code}") from exc
                err: Exception = exc
            except (urllib.error.URLError, OSError) as exc:
                err = exc
            attempt += 1
            if attempt >= self.policy.attempts:
                raise ArtifactError(f"{url}: giving up after {attempt} attempts ({err})")
            self.policy.sleep(attempt)

    def wheel_path(self, store: "Store") -> Path:
        """The verified wheel in the cache (downloaded once)."""
        pkg, version, pinned = self.cfg["package"], self.cfg["version"], self.cfg["sha256"]
        folder = store.cache_dir / "_wheels"
        folder.mkdir(parents=True, exist_ok=True)
        name = self.cfg.get("filename") or f"{pkg}-{version}-py3-none-any.whl"
        dest = folder / name
        with file_lock(dest):
            if dest.is_file():
                if sha256_file(dest) == pinned:
                    return dest
                log.warning("cached wheel %s does not match the pinned sha256; fetching it again", dest)
                dest.unlink()
            if store.offline:
                from berg.errors import OfflineError

                raise OfflineError(f"offline: wheel {name} is not cached at {dest}")
            page = self._http(f"{self.index_url}/{pkg}/").decode("utf-8", "replace")
            links = re.findall(r'href="([^"]+)"', page)
            chosen = next((urllib.parse.urljoin(f"{self.index_url}/{pkg}/", html.unescape(u)) for u in links
                           if u.split("#")[0].rsplit("/", 1)[-1] == name and f"sha256={pinned}" in u), None)
            if chosen is None:
                raise IntegrityError(f"no {name} with the pinned sha256 {pinned} on {self.index_url}/{pkg}/")
            data = self._http(chosen.split("#")[0])
            tmp = dest.with_name(dest.name + ".part")
            tmp.write_bytes(data)
            if sha256_file(tmp) != pinned:
                tmp.unlink()
                raise IntegrityError(f"downloaded {chosen} does not match the pinned sha256 {pinned}")
            os.replace(tmp, dest)
        return dest

    def download(self, store: "Store", model_id: str, key: str, dest: Path, expected: FileInfo | None) -> None:
        """Convert the wheel into the model's cache directory (all files at once), then check ``key``."""
        root = store.model_cache(model_id)
        root.mkdir(parents=True, exist_ok=True)
        with file_lock(root / MANIFEST_NAME):
            if not (root / MANIFEST_NAME).is_file() or not dest.is_file():
                wheel = self.wheel_path(store)
                module, _, func = self.cfg["converter"].partition(":")
                convert = getattr(importlib.import_module(module), func)
                tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}.convert-", dir=store.cache_dir))
                try:
                    out = tmp / "artifact"
                    convert(wheel, out)
                    manifest = read_manifest(out / MANIFEST_NAME)
                    index = store.index(model_id)
                    for k, info in manifest["files"].items():
                        target = root / k
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(out / k, target)
                        index.record(k, target, info["sha256"], source=f"converted from {wheel.name}")
                    os.replace(out / MANIFEST_NAME, root / MANIFEST_NAME)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_file():
            raise ArtifactNotFoundError(f"the converted artifact of {model_id} has no file {key}")
        if expected is not None and expected.sha256 and sha256_file(dest) != expected.sha256:
            raise IntegrityError(f"converted {dest} does not match its manifest")


SOURCE_KINDS = {"s3": S3Source, "pypi_wheel": PyPIWheelSource}


def source_for(cfg: Mapping[str, Any]):
    """The source object a registry ``source:`` mapping describes."""
    kind = cfg.get("kind")
    if kind not in SOURCE_KINDS:
        raise InvalidParameterError(f"unknown source kind {kind!r}; valid kinds: {', '.join(SOURCE_KINDS)}")
    return SOURCE_KINDS[kind](cfg)
