"""Durable downloads: temp file in the destination directory, resume, retries, verify, fsync, rename.

A crash or kill at any point leaves either no file or the old complete file under the final name;
the ``.part`` file it leaves behind is resumed by the next attempt (if the remote object is unchanged).
One process/thread downloads a given file at a time (``filelock``); the others wait and then find
the verified file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from berg.errors import ArtifactError, IntegrityError
from berg.store.manifest import FileInfo, sha256_file

__all__ = ["RetryPolicy", "TransientError", "RemoteObject", "download_atomic", "file_lock"]

log = logging.getLogger(__name__)

_BLOCK = 1 << 20


class TransientError(Exception):
    """A failure worth retrying (timeout, connection reset, truncated body, 5xx)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts, exponential backoff (with jitter) and socket timeouts.

    Defaults come from ``BERG_RETRIES`` (6), ``BERG_BACKOFF`` (0.5 s) and ``BERG_TIMEOUT`` (60 s).
    """

    attempts: int = field(default_factory=lambda: int(os.environ.get("BERG_RETRIES", "6")))
    backoff: float = field(default_factory=lambda: float(os.environ.get("BERG_BACKOFF", "0.5")))
    max_backoff: float = 30.0
    timeout: float = field(default_factory=lambda: float(os.environ.get("BERG_TIMEOUT", "60")))

    def sleep(self, attempt: int) -> None:
        """Wait before retry number ``attempt`` (1-based)."""
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        time.sleep(delay * (0.5 + random.random() / 2))


@dataclass(frozen=True)
class RemoteObject:
    """What the remote says about an object before we download it."""

    size: int
    etag: str | None = None

    @property
    def md5(self) -> str | None:
        """The MD5 hex digest when the ETag is one (single-part uploads); ``None`` for multipart."""
        if not self.etag:
            return None
        tag = self.etag.strip('"')
        return tag if len(tag) == 32 and "-" not in tag else None


def file_lock(path: Path, timeout: float = -1):
    """A cross-process lock guarding the download of ``path``."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(path.name + ".lock")), timeout=timeout)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _progress(total: int, initial: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
        desc=label, disable=not enabled or total < (8 << 20), leave=False,
    )


def download_atomic(
    dest: Path,
    remote: RemoteObject,
    open_stream: Callable[[int], Iterator[bytes]],
    *,
    expected: FileInfo | None,
    label: str,
    policy: RetryPolicy | None = None,
    show_progress: bool = True,
) -> str:
    """Download into ``dest`` durably; returns the file's sha256.

    Parameters
    ----------
    dest : Path
        Final path. Data goes to ``dest.part`` first (same directory, so the rename is atomic).
    remote : RemoteObject
        Size (and ETag) of the object.
    open_stream : callable
        ``open_stream(offset)`` yields the object's bytes from ``offset`` (a ranged request); raise
        :class:`TransientError` for failures worth retrying.
    expected : FileInfo, optional
        Size/sha256 the file must have (from a manifest).
    label : str
        Names the object in errors and the progress bar.
    """
    policy = policy or RetryPolicy()
    if expected is not None and expected.size is not None and expected.size != remote.size:
        raise IntegrityError(f"{label}: remote size {remote.size} bytes, the manifest says {expected.size}")
    part = dest.with_name(dest.name + ".part")
    meta = dest.with_name(dest.name + ".part.json")
    ident = {"size": remote.size, "etag": remote.etag}
    if part.exists():
        try:
            same = json.loads(meta.read_text()) == ident
        except (OSError, ValueError):
            same = False
        if not same or part.stat().st_size > remote.size:
            part.unlink()
    meta.write_text(json.dumps(ident))
    attempt = 0
    with _progress(remote.size, part.stat().st_size if part.exists() else 0, label, show_progress) as bar:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            try:
                if offset < remote.size:
                    with open(part, "ab") as fh:
                        for chunk in open_stream(offset):
                            fh.write(chunk)
                            bar.update(len(chunk))
                got = part.stat().st_size if part.exists() else 0
                if got > remote.size:
                    part.unlink()
                    raise TransientError(f"body longer than {remote.size} bytes; starting over")
                if got != remote.size:
                    raise TransientError(f"body ended at {got} of {remote.size} bytes")
                break
            except TransientError as exc:
                attempt += 1
                if attempt >= policy.attempts:
                    raise ArtifactError(
                        f"{label}: download failed after {attempt} attempts ({exc}); the partial file "
                        f"{part} is kept and the next attempt resumes it"
                    ) from exc
                log.info("%s: %s; retry %d/%d", label, exc, attempt, policy.attempts - 1)
                policy.sleep(attempt)
    digest = _verify_part(part, remote, expected, label)
    _fsync(part)
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    return digest


def _verify_part(part: Path, remote: RemoteObject, expected: FileInfo | None, label: str) -> str:
    if expected is not None and expected.sha256 is not None:
        digest = sha256_file(part)
        if digest != expected.sha256:
            part.unlink()
            raise IntegrityError(f"{label}: downloaded sha256 {digest}, expected {expected.sha256}; discarded")
        return digest
    sha, md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324 - MD5 only to compare with S3's ETag
    with open(part, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            sha.update(block)
            md5.update(block)
    if remote.md5 is not None and md5.hexdigest() != remote.md5:
        part.unlink()
        raise IntegrityError(f"{label}: downloaded MD5 {md5.hexdigest()} does not match the ETag {remote.md5}; discarded")
    if remote.md5 is None:
        log.info("%s: multipart ETag %s, only the size could be checked", label, remote.etag)
    return sha.hexdigest()
