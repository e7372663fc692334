"""Where artifact files come from: the :class:`Source` protocol and the kinds ``registry.yaml`` names.

A registry entry's ``source:`` mapping picks a kind:

* ``s3`` — objects under ``bucket/prefix`` of an S3(-compatible) server (:class:`S3Source`);
* ``pypi_wheel`` — a published wheel, converted into a berg artifact by a converter function
  (:class:`PyPIWheelSource`);
* ``build`` — a model built on the user's machine from a dataset by ``berg build`` (:class:`BuildSource`):
  never downloaded, verified against its ``manifest.json``;
* ``"pkg.mod:Class"`` — any :class:`Source` subclass (imported only when the model is used).

A source only moves bytes: :meth:`Source.fetch` writes one key to the path the store gives it and
says what it wrote. The :class:`~berg.store.Store` decides where files live, holds the per-file lock,
verifies, and records the cache index — so a new source kind is a small class, not a second cache.
"""

from __future__ import annotations

import html
import importlib
import json
import logging
import os
import re
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berg.env import env_flag, env_str, parse_bool
from berg.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    IntegrityError,
    InvalidParameterError,
    ModelNotBuiltError,
    OfflineError,
)
from berg.fsutil import atomic_path, sha256_bytes, sha256_file, temporary_name
from berg.store.download import RemoteObject, RetryPolicy, TransientError, download_atomic, file_lock
from berg.store.manifest import MANIFEST_NAME, FileInfo, read_manifest, verify_file
from berg.store.network import Cause, classify, fetch_error

if TYPE_CHECKING:  # pragma: no cover
    from berg.store import Store

__all__ = [
    "Source",
    "SourceContext",
    "S3Source",
    "PyPIWheelSource",
    "BuildSource",
    "source_for",
    "SOURCE_KINDS",
]

log = logging.getLogger(__name__)

_TRANSIENT_HTTP = {500, 502, 503, 504, 429}
_SESSION = None
_CLIENTS: dict[tuple, Any] = {}
_SESSION_LOCK = threading.Lock()


@dataclass(frozen=True)
class SourceContext:
    """What a source may know about the store that uses it.

    Attributes
    ----------
    cache_dir : Path
        The cache root (sources that keep working files, e.g. downloaded wheels, keep them under it).
    offline : bool
        The store must not use the network.
    build_dir : Path or None
        Folder of models built on this machine (``<build_dir>/<model_id>/``), when not the cache.
    """

    cache_dir: Path
    offline: bool = False
    build_dir: Path | None = None


class Source(ABC):
    """Where the files of a model come from (the protocol every source kind implements).

    Subclasses are constructed as ``Source(cfg, context)`` from the registry entry's ``source:``
    mapping and a :class:`SourceContext`. A registry entry can name a subclass of its own as
    ``kind: "pkg.mod:Class"``.

    Class attributes
    ----------------
    has_manifest : bool
        Files are berg-native and listed with size and sha256 in ``manifest.json`` (fetched first).
    remote : bool
        ``fetch`` uses the network (offline mode then refuses it, unless :meth:`is_local` says the key is
        available without it).
    """

    has_manifest: bool = True
    remote: bool = True

    def __init__(self, cfg: Mapping[str, Any], context: SourceContext | None = None):
        self.cfg = dict(cfg)
        self.context = context

    @abstractmethod
    def describe(self) -> str:
        """Where files come from, in words (recorded in the cache index and shown in errors)."""

    @abstractmethod
    def head(self, key: str) -> FileInfo:
        """What the source knows about ``key`` before fetching it (size, and sha256/ETag when known).

        Raises :class:`~berg.errors.ArtifactNotFoundError` when the key does not exist.
        """

    @abstractmethod
    def fetch(self, key: str, dest: Path, expected: FileInfo | None) -> FileInfo:
        """Write ``key`` to ``dest`` and return what was written (size and sha256, ETag if any).

        The store calls this with ``dest``'s folder created and ``dest``'s lock held. Write under a
        temporary name in ``dest``'s folder and rename into place, so a crash never leaves a partial
        file under the final name; check ``expected`` (size and sha256) when given and raise
        :class:`~berg.errors.IntegrityError` on a mismatch. Do not record anything: the store does.
        """

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (for ``berg fetch ID --all`` of layouts without a manifest)."""

    def is_local(self, key: str) -> bool:
        """True when :meth:`fetch` of ``key`` needs no network right now (checked in offline mode)."""
        return not self.remote

    def local_root(self, model_id: str) -> Path | None:
        """Folder holding the model's files when they do not live in ``<cache>/<model_id>/`` (else None)."""
        return None


# --------------------------------------------------------------------------------------- S3


class S3Source(Source):
    """Objects under ``bucket/prefix`` of an S3(-compatible) server.

    Registry keys: ``bucket``, ``prefix``, ``region`` (optional), ``endpoint`` (optional; the
    ``BERG_S3_ENDPOINT`` environment variable overrides it), ``anonymous`` (default true: unsigned
    requests, as for public buckets), ``manifest`` (default true; third-party trees such as BERG's own
    bucket say ``false``). Set ``BERG_S3_SIGNED=1`` (or ``anonymous: false``) to use your AWS
    credentials/profile instead.
    """

    def __init__(self, cfg: Mapping[str, Any], context: SourceContext | None = None, policy: RetryPolicy | None = None):
        super().__init__(cfg, context)
        if not cfg.get("bucket"):
            raise InvalidParameterError("an s3 source needs a 'bucket' (the bucket name, e.g. bucket: my-models)")
        self.bucket = cfg["bucket"]
        self.prefix = cfg.get("prefix", "")
        self.region = cfg.get("region")
        self.endpoint = env_str("BERG_S3_ENDPOINT") or cfg.get("endpoint")
        # registry booleans may come from hand-written YAML/JSON as text: read them strictly
        self.anonymous = parse_bool(cfg.get("anonymous", True), "s3 source 'anonymous'") and not env_flag(
            "BERG_S3_SIGNED"
        )
        self.has_manifest = parse_bool(cfg.get("manifest", True), "s3 source 'manifest'")
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

    def describe(self) -> str:
        return self._where("")

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
            if status == 403 or code in (
                "403",
                "AccessDenied",
                "Forbidden",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
            ):
                how = (
                    (
                        "requests are anonymous; if this bucket is private set BERG_S3_SIGNED=1 and configure "
                        "AWS credentials"
                    )
                    if self.anonymous
                    else "check your AWS credentials/profile"
                )
                cause = Cause("forbidden", f"access denied (HTTP 403; {how})", False)
                return fetch_error(key, cause, where=self._where(key))
            if status in _TRANSIENT_HTTP or status >= 500:
                return TransientError(f"HTTP {status} {code}")
            return ArtifactError(f"{self._where(key)}: {code or status}: {exc}")
        if isinstance(
            exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ResponseStreamingError)
        ) or isinstance(exc, (BotoCoreError, OSError)):
            cause = classify(exc)
            if not cause.transient:  # a refused connection or no route: retrying only delays the answer
                return fetch_error(key, cause, where=self._where(key))
            return TransientError(f"{cause.text}: {type(exc).__name__}: {exc}")
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
                    raise fetch_error(key, classify(exc), where=self._where(key), attempts=attempt) from exc
                self.policy.sleep(attempt)

    def head(self, key: str) -> FileInfo:
        """Size and ETag of an object."""
        resp = self._with_retries(lambda: self.client.head_object(Bucket=self.bucket, Key=self.remote_key(key)), key)
        return FileInfo(size=int(resp["ContentLength"]), etag=resp.get("ETag"))

    def _stream(self, key: str, offset: int, stop: int | None = None) -> Iterator[bytes]:
        """The object's bytes ``[offset, stop)`` (to the end when ``stop`` is None or the size)."""
        try:
            if stop is not None and stop > offset:
                kwargs = {"Range": f"bytes={offset}-{stop - 1}"}
            else:
                kwargs = {"Range": f"bytes={offset}-"} if offset else {}
            resp = self.client.get_object(Bucket=self.bucket, Key=self.remote_key(key), **kwargs)
            yield from resp["Body"].iter_chunks(chunk_size=1 << 20)
        except Exception as exc:  # noqa: BLE001 - classified
            err = self._classify(exc, key)
            raise err from exc

    def fetch(self, key: str, dest: Path, expected: FileInfo | None) -> FileInfo:
        """Download ``key`` into ``dest`` (resumable, retried, verified, atomic)."""
        info = self.head(key)
        remote = RemoteObject(size=info.size, etag=info.etag)
        digest = download_atomic(
            dest,
            remote,
            lambda off: self._stream(key, off),
            expected=expected,
            label=self._where(key),
            policy=self.policy,
            open_range=lambda start, stop: self._stream(key, start, stop),
        )
        return FileInfo(size=info.size, sha256=digest, etag=info.etag)

    def list(self, prefix: str = "") -> list[str]:
        """Every artifact key under the source's prefix (and ``prefix`` below it)."""
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        full = self.prefix + prefix
        for page in self._with_retries(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)), prefix):
            keys += [obj["Key"][len(self.prefix) :] for obj in page.get("Contents", [])]
        return sorted(k for k in keys if k and not k.endswith("/"))

    def list_keys(self) -> list[str]:
        """Every artifact key under the prefix (same as ``list()``)."""
        return self.list()


# --------------------------------------------------------------------------------------- PyPI wheels


def _link_or_copy(src: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``src`` (the same bytes, stored once), or a copy across file systems.

    The converted artifact under ``_wheels`` and the model folder then share their files' storage: the
    cache holds each converted byte once (a copy doubled it). Neither is ever written in place (the
    store replaces files by rename), so sharing an inode cannot change one through the other.
    """
    try:
        os.link(src, dest)
    except OSError:  # another file system, or links not supported: copy
        shutil.copyfile(src, dest)


class PyPIWheelSource(Source):
    """A published wheel converted into a berg artifact by a converter function.

    Registry keys: ``package``, ``version``, ``sha256`` (pinned hash of the wheel), ``converter``
    (``"pkg.mod:function"`` with signature ``convert(wheel_path, out_dir)`` writing a berg artifact),
    optional ``filename`` and ``index_url`` (a PEP 503 "simple" index; default ``BERG_PYPI_URL`` or
    https://pypi.org/simple, so mirrors work too).

    The wheel is kept in ``<cache>/_wheels/`` and converted once into ``<cache>/_wheels/<name>-<hash>/``
    (the hash covers the converter's name); :meth:`fetch` copies one converted file into the model's
    cache folder, so later keys need no network.
    """

    has_manifest = True

    def __init__(self, cfg: Mapping[str, Any], context: SourceContext | None = None, policy: RetryPolicy | None = None):
        super().__init__(cfg, context)
        missing = [k for k in ("package", "version", "sha256", "converter") if not cfg.get(k)]
        if missing:
            raise InvalidParameterError(
                f"a pypi_wheel source needs {missing} (package, version, the wheel's pinned sha256, and "
                "converter: 'pkg.mod:function')"
            )
        self.index_url = (cfg.get("index_url") or env_str("BERG_PYPI_URL") or "https://pypi.org/simple").rstrip("/")
        self.policy = policy or RetryPolicy()

    @property
    def filename(self) -> str:
        """The wheel's file name."""
        return self.cfg.get("filename") or f"{self.cfg['package']}-{self.cfg['version']}-py3-none-any.whl"

    def describe(self) -> str:
        return f"converted from {self.filename} ({self.cfg['converter']})"

    def _http(self, url: str, what: str | None = None) -> bytes:
        """GET ``url``; a refused connection or 403 fails at once, transient faults are retried."""
        what = what or url
        attempt = 0
        while True:
            try:
                with urllib.request.urlopen(url, timeout=self.policy.timeout) as resp:  # noqa: S310 - URL from the registry
                    return resp.read()
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise ArtifactNotFoundError(f"{url}: not found (404)") from exc
                cause = classify(exc, status=exc.code)
                err: Exception = exc
            except (urllib.error.URLError, OSError) as exc:
                cause = classify(exc)
                err = exc
            attempt += 1
            if not cause.transient or attempt >= self.policy.attempts:
                raise fetch_error(what, cause, where=url, attempts=attempt, ways=self._ways()) from err
            self.policy.sleep(attempt)

    def _ways(self) -> str:
        return (
            f"where there is network run `berg fetch ID --subject N` (it downloads {self.filename} into the cache), "
            f"or download {self.filename} from {self.index_url}/{self.cfg['package']}/ and put it in the cache's "
            "_wheels folder; or, with the converted files at hand, pass berg_dir=DIR (--berg-dir) or set BERG_OFFLINE=1"
        )

    def _context(self, store: Store | None) -> SourceContext:
        if store is not None:
            return SourceContext(cache_dir=store.cache_dir, offline=store.offline)
        if self.context is None:
            raise ArtifactError("this pypi_wheel source was made without a store context; pass a Store")
        return self.context

    def wheel_path(self, store: Store | None = None) -> Path:
        """The verified wheel in the cache (downloaded once, pinned sha256 checked)."""
        ctx = self._context(store)
        pkg, pinned, name = self.cfg["package"], self.cfg["sha256"], self.filename
        dest = ctx.cache_dir / "_wheels" / name
        if dest.is_file() and not dest.is_symlink() and sha256_file(dest) == pinned:
            return dest  # no lock, no write: works in a read-only cache
        if ctx.offline:
            raise OfflineError(f"offline: wheel {name} is not cached at {dest}")
        with file_lock(dest):
            if dest.is_file() and not dest.is_symlink():
                if sha256_file(dest) == pinned:
                    return dest
                log.warning("cached wheel %s does not match the pinned sha256; fetching it again", dest)
            page = self._http(f"{self.index_url}/{pkg}/", f"the index page of {pkg}").decode("utf-8", "replace")
            links = re.findall(r'href="([^"]+)"', page)
            chosen = next(
                (
                    urllib.parse.urljoin(f"{self.index_url}/{pkg}/", html.unescape(u))
                    for u in links
                    if u.split("#")[0].rsplit("/", 1)[-1] == name and f"sha256={pinned}" in u
                ),
                None,
            )
            if chosen is None:
                raise IntegrityError(f"no {name} with the pinned sha256 {pinned} on {self.index_url}/{pkg}/")
            data = self._http(chosen.split("#")[0], name)
            if sha256_bytes(data) != pinned:
                raise IntegrityError(f"downloaded {chosen} does not match the pinned sha256 {pinned}")
            with atomic_path(dest) as tmp:
                tmp.write_bytes(data)
        return dest

    def _staged(self) -> Path:
        ctx = self._context(None)
        tag = sha256_bytes(json.dumps([self.cfg["sha256"], self.cfg["converter"]]).encode())[:12]
        return ctx.cache_dir / "_wheels" / f"{Path(self.filename).stem}-{tag}"

    def _converted(self) -> Path:
        """The wheel converted into a berg artifact (once), under ``_wheels``."""
        staged = self._staged()
        if (staged / MANIFEST_NAME).is_file():
            return staged
        wheel = self.wheel_path()
        with file_lock(staged):
            if (staged / MANIFEST_NAME).is_file():
                return staged
            module, _, func = self.cfg["converter"].partition(":")
            try:
                convert = getattr(importlib.import_module(module), func)
            except (ImportError, AttributeError, ValueError) as exc:
                raise ArtifactError(f"cannot import the converter {self.cfg['converter']!r}: {exc}") from exc
            tmp = temporary_name(staged)  # per process: a killed conversion is cleaned on the next open
            tmp.mkdir(parents=True)
            try:
                out = tmp / "artifact"
                convert(wheel, out)
                manifest = read_manifest(out / MANIFEST_NAME)
                for k, info in manifest["files"].items():
                    verify_file(out / k, FileInfo(size=info["size"], sha256=info["sha256"]), label=f"converted {k}")
                if staged.exists():
                    shutil.rmtree(staged)
                os.replace(out, staged)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return staged

    def is_local(self, key: str) -> bool:
        staged = self._staged()
        return (staged / MANIFEST_NAME).is_file() or (
            self._context(None).cache_dir / "_wheels" / self.filename
        ).is_file()

    def head(self, key: str) -> FileInfo:
        manifest = read_manifest(self._converted() / MANIFEST_NAME)
        info = manifest["files"].get(key) if key != MANIFEST_NAME else None
        if key == MANIFEST_NAME:
            return FileInfo(size=(self._converted() / MANIFEST_NAME).stat().st_size)
        if info is None:
            raise ArtifactNotFoundError(f"the converted artifact of {self.filename} has no file {key}")
        return FileInfo(size=info["size"], sha256=info["sha256"])

    def fetch(self, key: str, dest: Path, expected: FileInfo | None) -> FileInfo:
        """Copy one file of the converted artifact into ``dest`` (verified against its manifest)."""
        staged = self._converted()
        if key == MANIFEST_NAME:
            want = expected
        else:
            want = self.head(key)
            if expected is not None and expected.sha256 and expected.sha256 != want.sha256:
                raise IntegrityError(
                    f"{key}: the converted artifact has sha256 {want.sha256}, expected {expected.sha256}"
                )
        src = staged / key
        if not src.is_file():
            raise ArtifactNotFoundError(f"the converted artifact of {self.filename} has no file {key}")
        with atomic_path(dest) as tmp:
            _link_or_copy(src, tmp)
            digest = verify_file(tmp, want, label=f"converted {key}") if want and want.sha256 else sha256_file(tmp)
        return FileInfo(size=dest.stat().st_size, sha256=digest)

    def list(self, prefix: str = "") -> list[str]:
        manifest = read_manifest(self._converted() / MANIFEST_NAME)
        return sorted(k for k in manifest["files"] if k.startswith(prefix))


# --------------------------------------------------------------------------------------- built on this machine


class BuildSource(Source):
    """A model built on the user's machine from a dataset (``berg build ID --data DIR``).

    Registry keys (all optional): ``command`` (the exact command that builds it; default
    ``berg build <model_id> --data DIR``), ``data`` (what data it needs, in words; default: the dataset
    its card names), ``prefix`` (where a built copy sits inside ``berg_dir``), ``path`` (default
    folder of the built artifact). The artifact lives in ``<cache>/<model_id>/`` unless a folder is
    chosen: ``Store(build_dir=...)``, then ``BERG_BUILD_DIR`` (both hold ``<folder>/<model_id>/``), then
    the entry's ``path``; a copy under ``berg_dir/<prefix>`` is used in place. Files are verified
    against the built ``manifest.json`` and never downloaded; when the artifact is absent, every
    access raises :class:`~berg.errors.ModelNotBuiltError` with the command and the data.
    """

    has_manifest = True
    remote = False

    def __init__(self, cfg: Mapping[str, Any], context: SourceContext | None = None):
        super().__init__(cfg, context)
        for key in ("command", "data", "path"):
            if key in cfg and not isinstance(cfg[key], str):
                raise InvalidParameterError(
                    f"a build source's {key!r} must be a string (command: 'berg build MODEL_ID --data DIR', "
                    f"data: what data it needs, in words), got {type(cfg[key]).__name__}"
                )

    def local_root(self, model_id: str) -> Path:
        ctx = self.context
        chosen = (ctx.build_dir if ctx and ctx.build_dir else None) or (
            Path(env_str("BERG_BUILD_DIR")).expanduser() if env_str("BERG_BUILD_DIR") else None
        )
        if chosen is not None:
            return Path(chosen) / model_id
        if self.cfg.get("path"):
            return Path(self.cfg["path"]).expanduser()
        if ctx is None:
            raise ArtifactError("this build source was made without a store context")
        return ctx.cache_dir / model_id

    def command(self, model_id: str) -> str:
        """The command that builds the model."""
        return (self.cfg.get("command") or "berg build {model_id} --data DIR").replace("{model_id}", model_id)

    def describe(self) -> str:
        return f"built on this machine by `{self.cfg.get('command') or 'berg build'}`"

    def not_built(self, root: Path, missing: str) -> ModelNotBuiltError:
        """The error for an absent built artifact (``root``: its folder; ``missing``: the absent key)."""
        model_id = self.cfg.get("model_id") or root.name
        data = self.cfg.get("data") or f"the dataset its model card names (berg describe {model_id})"
        return ModelNotBuiltError(
            f"{model_id} is built on your machine from its dataset and has not been built yet "
            f"({root / missing} is missing). Build it with:\n    {self.command(model_id)}\n"
            f"It needs: {data}. The built files go to {root} (set BERG_BUILD_DIR to use another "
            "folder, holding <folder>/<model_id>/)."
        )

    def head(self, key: str) -> FileInfo:
        raise ModelNotBuiltError(f"{key} is made on this machine by `berg build`, never fetched")

    def fetch(self, key: str, dest: Path, expected: FileInfo | None) -> FileInfo:
        # dest is <root>/<key>: a build source never downloads, it says how to build
        raise self.not_built(dest.parents[key.count("/")], key)

    def list(self, prefix: str = "") -> list[str]:
        return []


SOURCE_KINDS: dict[str, type[Source]] = {"s3": S3Source, "pypi_wheel": PyPIWheelSource, "build": BuildSource}


def source_for(cfg: Mapping[str, Any], context: SourceContext | None = None) -> Source:
    """The source object a registry ``source:`` mapping describes.

    ``kind`` is one of :data:`SOURCE_KINDS` or ``"pkg.mod:Class"`` naming a :class:`Source` subclass.
    """
    if not isinstance(cfg, Mapping):
        raise InvalidParameterError(f"a source must be a mapping with a 'kind', got {type(cfg).__name__}")
    kind = cfg.get("kind")
    if isinstance(kind, str) and ":" in kind:
        from berg._imports import import_class

        cls = import_class(kind, Source, "source class")
    elif kind in SOURCE_KINDS:
        cls = SOURCE_KINDS[kind]
    else:
        raise InvalidParameterError(
            f"unknown source kind {kind!r}; valid kinds: {', '.join(SOURCE_KINDS)}, or 'pkg.mod:Class' naming a "
            "berg.store.sources.Source subclass"
        )
    return cls(cfg, context)
