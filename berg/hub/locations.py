"""Where registries and published models live: an S3(-compatible) prefix, an HTTPS folder, a local folder.

A :class:`Location` reads keys below its base (bounded in size) and, for S3 and folders, writes them
(``berg publish``). Reads of S3 are anonymous unless ``BERG_S3_SIGNED=1``; writes use your AWS
credentials (environment, profile or instance role, as boto3 finds them). The S3 endpoint of a URL not on
AWS comes from ``--endpoint`` or ``BERG_S3_ENDPOINT``.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from berg.env import env_str
from berg.errors import ArtifactError, ArtifactNotFoundError, InvalidParameterError
from berg.fsutil import atomic_path, atomic_write_bytes, sha256_file

__all__ = ["Location", "S3Location", "HTTPLocation", "FolderLocation", "location_for", "split_fragment_url"]

FRAGMENT_NAME = "registry.yaml"
_CHUNK = 1 << 20


def split_fragment_url(path: str) -> tuple[str, str]:
    """``"a/b/registry.yaml"`` -> ``("a/b/", "registry.yaml")``; ``"a/b"`` -> ``("a/b/", "registry.yaml")``."""
    if path.endswith((".yaml", ".yml")):
        head, _, name = path.rpartition("/")
        return (head + "/" if head else ""), name
    path = path.strip("/")
    return (path + "/" if path else ""), FRAGMENT_NAME


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\x00" in key or ".." in parts or "." in parts:
        raise InvalidParameterError(f"invalid key {key!r}: keys are relative POSIX paths without '..'")
    return key


class Location(ABC):
    """A folder-like place holding a registry fragment, cards and artifacts (keys are relative paths)."""

    #: name of the fragment file inside the location
    fragment: str = FRAGMENT_NAME

    @abstractmethod
    def base(self) -> dict[str, Any]:
        """Plain data saying where the location is (what a :class:`~berg.registry.RegistrySource` keeps)."""

    @abstractmethod
    def describe(self, key: str = "") -> str:
        """URL of ``key`` (for messages)."""

    @abstractmethod
    def read(self, key: str, max_bytes: int) -> bytes:
        """The bytes of ``key``; :class:`~berg.errors.ArtifactNotFoundError` when absent, an error when larger
        than ``max_bytes`` (checked before downloading where the server says the size)."""

    @abstractmethod
    def stat(self, key: str) -> dict[str, Any] | None:
        """``{"size": int, "sha256": str or None}`` of ``key``, or ``None`` when absent."""

    def put_file(self, key: str, path: Path, sha256: str, progress: Callable[[int], None] | None = None) -> None:
        """Store a local file under ``key`` (atomically: readers see the old object or the whole new one)."""
        raise InvalidParameterError(f"{self.describe()} is read-only: publish to an s3:// URL or a local folder")

    def put_bytes(self, key: str, data: bytes, sha256: str) -> None:
        """Store ``data`` under ``key`` (atomically)."""
        raise InvalidParameterError(f"{self.describe()} is read-only: publish to an s3:// URL or a local folder")

    def _too_big(self, key: str, size: int, max_bytes: int) -> ArtifactError:
        return ArtifactError(
            f"{self.describe(key)} is {size} bytes; at most {max_bytes} bytes are read from a registry "
            "(a registry fragment or card is a few kB); refused"
        )


class FolderLocation(Location):
    """A local folder (``/path/to/models`` or ``file:///path/to/models``)."""

    def __init__(self, root: str | os.PathLike[str], fragment: str = FRAGMENT_NAME):
        self.root = Path(root).expanduser().resolve()
        self.fragment = fragment

    def base(self) -> dict[str, Any]:
        return {"kind": "folder", "path": str(self.root)}

    def describe(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def _path(self, key: str) -> Path:
        path = self.root / _check_key(key)
        if path.is_symlink() or not path.resolve().is_relative_to(self.root):
            raise ArtifactError(f"{path} is a link or leaves {self.root}; refused")
        return path

    def read(self, key: str, max_bytes: int) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactNotFoundError(f"{path} does not exist")
        size = path.stat().st_size
        if size > max_bytes:
            raise self._too_big(key, size, max_bytes)
        return path.read_bytes()

    def stat(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return {"size": path.stat().st_size, "sha256": sha256_file(path)}

    def put_file(self, key: str, path: Path, sha256: str, progress: Callable[[int], None] | None = None) -> None:
        with atomic_path(self._path(key)) as tmp, open(path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
                if progress:
                    progress(len(chunk))

    def put_bytes(self, key: str, data: bytes, sha256: str) -> None:
        atomic_write_bytes(self._path(key), data)


class S3Location(Location):
    """``s3://bucket/prefix/`` on AWS or any S3-compatible server (``endpoint``)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None, region: str | None = None,
                 fragment: str = FRAGMENT_NAME):  # fmt: skip
        if not bucket:
            raise InvalidParameterError("an s3:// URL needs a bucket: s3://BUCKET/PREFIX/")
        self.bucket, self.prefix, self.fragment = bucket, prefix, fragment
        self.endpoint = endpoint or env_str("BERG_S3_ENDPOINT")
        self.region = region
        self._reader = None
        self._writer = None
        #: ``berg publish`` sets this: reads then use the signed client too
        self.for_writing = False

    def base(self) -> dict[str, Any]:
        return {"kind": "s3", "bucket": self.bucket, "prefix": self.prefix, "endpoint": self.endpoint,
                "region": self.region}  # fmt: skip

    def describe(self, key: str = "") -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{key}{where}"

    def _source(self):
        from berg.store.sources import S3Source

        if self._reader is None:
            cfg = {"bucket": self.bucket, "prefix": self.prefix, "region": self.region, "endpoint": self.endpoint}
            self._reader = S3Source(cfg)
            self._reader.endpoint = self.endpoint  # this location's endpoint, even under BERG_S3_ENDPOINT
        return self._reader

    def _client(self, write: bool):
        if not write:
            return self._source().client
        if self._writer is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path"} if self.endpoint else None,
            )
            self._writer = boto3.session.Session().client(
                "s3", region_name=self.region or "us-east-1", endpoint_url=self.endpoint, config=config
            )
        return self._writer

    def read(self, key: str, max_bytes: int) -> bytes:
        src = self._source()
        info = src.head(_check_key(key))  # raises ArtifactNotFoundError for a missing key
        if info.size > max_bytes:
            raise self._too_big(key, info.size, max_bytes)
        data = b"".join(src._stream(key, 0))
        if len(data) > max_bytes:
            raise self._too_big(key, len(data), max_bytes)
        return data

    def stat(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        # signed when publishing (the publisher reads what it wrote, even in a private bucket)
        client = self._client(write=self.for_writing)
        try:
            head = client.head_object(Bucket=self.bucket, Key=self.prefix + _check_key(key))
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status == 404 or exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise ArtifactError(f"{self.describe(key)}: {exc}") from None
        return {"size": int(head["ContentLength"]), "sha256": (head.get("Metadata") or {}).get("sha256")}

    def put_file(self, key: str, path: Path, sha256: str, progress: Callable[[int], None] | None = None) -> None:
        # one PUT (multipart above boto3's threshold): S3 makes the object visible only when complete
        self._client(write=True).upload_file(
            str(path),
            self.bucket,
            self.prefix + _check_key(key),
            ExtraArgs={"Metadata": {"sha256": sha256}},
            Callback=progress,
        )

    def put_bytes(self, key: str, data: bytes, sha256: str) -> None:
        self._client(write=True).put_object(
            Bucket=self.bucket, Key=self.prefix + _check_key(key), Body=data, Metadata={"sha256": sha256}
        )


def _loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class HTTPLocation(Location):
    """An HTTPS folder (``https://host/path/``; plain ``http://`` only on this machine, for tests and mirrors)."""

    def __init__(self, url: str, fragment: str = FRAGMENT_NAME, timeout: float = 60.0):
        self.url = url if url.endswith("/") else url + "/"
        self.fragment = fragment
        self.timeout = timeout

    def base(self) -> dict[str, Any]:
        return {"kind": "https", "url": self.url}

    def describe(self, key: str = "") -> str:
        return self.url + key

    def _open(self, key: str, method: str = "GET"):
        req = urllib.request.Request(self.url + _check_key(key), method=method)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 - http(s) only, checked
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise ArtifactNotFoundError(f"{self.describe(key)} does not exist (404)") from None
            raise ArtifactError(f"{self.describe(key)}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ArtifactError(f"{self.describe(key)}: {getattr(exc, 'reason', exc)}") from None

    def read(self, key: str, max_bytes: int) -> bytes:
        with self._open(key) as resp:
            size = resp.headers.get("Content-Length")
            if size is not None and size.isdigit() and int(size) > max_bytes:
                raise self._too_big(key, int(size), max_bytes)
            data = resp.read(max_bytes + 1)  # never more than the limit, whatever the server says
        if len(data) > max_bytes:
            raise self._too_big(key, len(data), max_bytes)
        return data

    def stat(self, key: str) -> dict[str, Any] | None:
        try:
            with self._open(key, "HEAD") as resp:
                size = resp.headers.get("Content-Length")
                return {"size": int(size) if size and size.isdigit() else None, "sha256": None}
        except ArtifactNotFoundError:
            return None


def location_for(url: Any, *, endpoint: str | None = None) -> Location:
    """The :class:`Location` of ``url``: ``s3://bucket/prefix/``, ``https://...``, ``file://...`` or a local folder.

    A URL ending in ``.yaml``/``.yml`` names the fragment file itself; otherwise the fragment is
    ``registry.yaml`` inside it.

    Raises
    ------
    InvalidParameterError
        Not a URL or path of those kinds (the message lists them).
    """
    form = "give s3://BUCKET/PREFIX/, https://HOST/PATH/ or a local folder (optionally ending in registry.yaml)"
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url or "\x00" in url:
        raise InvalidParameterError(f"registry location {url!r} is not valid; {form}")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "s3":
        prefix, fragment = split_fragment_url(parsed.path.lstrip("/"))
        return S3Location(parsed.netloc, prefix, endpoint=endpoint, fragment=fragment)
    if parsed.scheme in ("http", "https"):
        if parsed.scheme == "http" and not _loopback(parsed.hostname):
            raise InvalidParameterError(f"{url}: plain http is refused (anyone on the way could change it); use https")
        prefix, fragment = split_fragment_url(parsed.path.lstrip("/"))
        return HTTPLocation(f"{parsed.scheme}://{parsed.netloc}/{prefix}", fragment)
    if parsed.scheme in ("file", ""):
        path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else url
        path = os.path.expanduser(path)
        if path.endswith((".yaml", ".yml")):
            return FolderLocation(Path(path).parent, Path(path).name)
        return FolderLocation(path)
    raise InvalidParameterError(f"registry location {url!r}: scheme {parsed.scheme!r} is not supported; {form}")
