"""Durable downloads: temp file in the destination directory, resume, retries, verify, fsync, rename.

A crash or kill at any point leaves either no file or the old complete file under the final name;
the ``.part`` file it leaves behind is resumed by the next attempt (if the remote object is unchanged).
One process/thread downloads a given file at a time (``filelock``); the others wait and then find
the verified file.

Caches may be shared with other users, so nothing here follows a symbolic link planted under one of
berg's bookkeeping names: partial files, their resume records and lock files are opened with
``O_NOFOLLOW``, and a link found under such a name is removed (the link, never its target) before the
download starts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berg.env import env_int, env_str
from berg.errors import ArtifactError, IntegrityError, InvalidParameterError
from berg.fsutil import atomic_write_text
from berg.store.manifest import FileInfo

__all__ = [
    "RetryPolicy",
    "TransientError",
    "RemoteObject",
    "download_atomic",
    "file_lock",
    "open_nofollow",
    "drop_planted_link",
]

log = logging.getLogger(__name__)

_BLOCK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _env_float(name: str, default: float) -> float:
    value = env_str(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise InvalidParameterError(f"{name}={value!r} is not a number; unset it or give a number") from None


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o666) -> int:
    """``os.open`` that refuses a symbolic link as the last component (``O_NOFOLLOW``).

    Raises
    ------
    ArtifactError
        When ``path`` is a link: berg never makes links in its cache, so one is planted.
    """
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArtifactError(
                f"{path} is a symbolic link; berg never makes links in its cache, so it was not followed. "
                "Remove the link (someone with write access to the cache planted it)"
            ) from exc
        raise


def drop_planted_link(path: Path) -> None:
    """Remove a symbolic link found under one of berg's bookkeeping names (never its target)."""
    if os.path.islink(path):
        log.warning(
            "removing the symbolic link %s -> %s: berg does not follow links in its cache", path, os.readlink(path)
        )
        path.unlink()


class TransientError(Exception):
    """A failure worth retrying (timeout, connection reset, truncated body, 5xx)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts, exponential backoff (with jitter) and socket timeouts.

    Defaults come from ``BERG_RETRIES`` (6), ``BERG_BACKOFF`` (0.5 s) and ``BERG_TIMEOUT`` (60 s).
    Files of at least ``BERG_PARALLEL_MIN_MB`` (32) MiB are fetched as ``BERG_CHUNK_MB`` (8) MiB
    ranges by ``BERG_PARALLEL`` (4) threads; ``BERG_PARALLEL=1`` streams them in one request.
    """

    attempts: int = field(default_factory=lambda: env_int("BERG_RETRIES", 6, minimum=1))
    parallel: int = field(default_factory=lambda: env_int("BERG_PARALLEL", 4, minimum=1))
    parallel_min: int = field(default_factory=lambda: int(_env_float("BERG_PARALLEL_MIN_MB", 32) * 2**20))
    chunk: int = field(default_factory=lambda: max(1, int(_env_float("BERG_CHUNK_MB", 8) * 2**20)))
    backoff: float = field(default_factory=lambda: _env_float("BERG_BACKOFF", 0.5))
    max_backoff: float = 30.0
    timeout: float = field(default_factory=lambda: _env_float("BERG_TIMEOUT", 60))

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


def file_lock(path: Path, timeout: float | None = None, *, what: str = ""):
    """A cross-process lock guarding the download (or derivation) of ``path`` (a context manager).

    The lock file is ``<path>.lock``. A symbolic link planted under that name is removed first (the
    lock is opened with ``O_NOFOLLOW``), so a shared cache cannot be made to deadlock or to touch a
    file outside it. Waiting is bounded (:func:`berg.fsutil.process_lock`): a holder that is stopped or
    gone ends the wait at once, naming its pid; any wait ends after ``timeout`` seconds (default
    ``BERG_LOCK_TIMEOUT``, 900).
    """
    from berg.fsutil import process_lock

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    drop_planted_link(lock)
    return process_lock(lock, timeout=timeout, what=what or f"writing {path.name}")


def _fsync(path: Path) -> None:
    fd = open_nofollow(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_part(path: Path, mode: str):
    """Open a partial file without following links (``"ab"`` appends/creates, ``"rb"`` reads)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT if mode == "ab" else os.O_RDONLY
    return os.fdopen(open_nofollow(path, flags), mode)


def _read_meta(path: Path) -> Any:
    with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as fh:
        return json.loads(fh.read())


def _progress(total: int, initial: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    from berg.env import progress_enabled  # BERG_QUIET / `berg -q` silence every bar

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        disable=not progress_enabled(enabled) or total < (8 << 20),
        leave=False,
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
    open_range: Callable[[int, int], Iterator[bytes]] | None = None,
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
    policy : RetryPolicy, optional
        Attempts, backoff, timeouts, and the parallel-range settings.
    show_progress : bool
        tqdm bar (bytes and rate) for files of 8 MiB or more.
    open_range : callable, optional
        ``open_range(start, stop)`` yields bytes ``[start, stop)``. When given, files of at least
        ``policy.parallel_min`` bytes are fetched as ``policy.chunk``-sized ranges by
        ``policy.parallel`` threads; finished ranges are recorded so an interrupted download resumes.

    Notes
    -----
    The ``.part.json`` file beside the ``.part`` file identifies the remote object (size, ETag,
    mode) so a resumed download never mixes bytes of two versions of an object.
    """
    policy = policy or RetryPolicy()
    if expected is not None and expected.size is not None and expected.size != remote.size:
        raise IntegrityError(f"{label}: remote size {remote.size} bytes, the manifest says {expected.size}")
    part = dest.with_name(dest.name + ".part")
    meta = dest.with_name(dest.name + ".part.json")
    for planted in (part, meta):
        drop_planted_link(planted)
    ranged = open_range is not None and policy.parallel > 1 and remote.size >= policy.parallel_min
    ident = {
        "size": remote.size,
        "etag": remote.etag,
        "mode": "ranges" if ranged else "stream",
        "chunk": policy.chunk if ranged else None,
    }
    done: list[int] = []
    if part.exists():
        try:
            state = _read_meta(meta)
            same = state.get("ident") == ident
            done = [int(i) for i in state.get("done", [])] if same else []
        except (OSError, ValueError, AttributeError, TypeError):
            same = False
        if not same or part.lstat().st_size > remote.size:
            part.unlink()
            done = []
    _write_json(meta, {"ident": ident, "done": done})
    hasher = _Hasher(with_md5=remote.md5 is not None and (expected is None or expected.sha256 is None))
    try:
        with _progress(remote.size, 0, label, show_progress) as bar:
            if ranged:
                _fill_ranges(part, meta, ident, set(done), remote.size, open_range, hasher, bar, policy, label)
            else:
                _fill_stream(part, remote.size, open_stream, hasher, bar, policy, label)
        sha, md5 = hasher.result()
    finally:
        hasher.close()
    digest = _verify_part(part, remote, expected, label, sha, md5)
    _fsync(part)
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    return digest


def _write_json(path: Path, obj: Any) -> None:
    # a per-process temporary name, then a rename (which replaces a link, never writes through it);
    # no fsync: the record is only a resume hint, checked against the remote object on use
    atomic_write_text(path, json.dumps(obj), fsync=False)


def _give_up(label: str, attempt: int, exc: Exception, part: Path, size: int | None = None) -> ArtifactError:
    from berg.store.network import classify, fetch_error, ways_out

    return fetch_error(
        label,
        classify(exc),
        size=size,
        attempts=attempt,
        ways=f"{ways_out()} (the partial file {part.name} is kept, and the next attempt resumes it)",
    )


def _after_failure(
    attempt: int, exc: Exception, policy: RetryPolicy, label: str, part: Path, size: int | None = None
) -> int:
    """Count a transient failure: give up with a clear error, or log, back off and return the new count."""
    attempt += 1
    if attempt >= policy.attempts:
        raise _give_up(label, attempt, exc, part, size) from exc
    log.info("%s: %s; retry %d/%d", label, exc, attempt, policy.attempts - 1)
    policy.sleep(attempt)
    return attempt


def _fill_stream(part, size, open_stream, hasher, bar, policy, label) -> None:
    """One GET from the current end of ``part``; on a transient failure resume with a Range."""
    attempt = 0
    bar.update(part.stat().st_size if part.exists() else 0)
    while True:
        offset = part.stat().st_size if part.exists() else 0
        hasher.catch_up(part, offset)
        try:
            if offset < size:
                with _open_part(part, "ab") as fh:
                    for chunk in open_stream(offset):
                        fh.write(chunk)
                        hasher.update(chunk)
                        bar.update(len(chunk))
            got = part.stat().st_size if part.exists() else 0
            if got > size:
                part.unlink()
                raise TransientError(f"body longer than {size} bytes; starting over")
            if got != size:
                raise TransientError(f"body ended at {got} of {size} bytes")
            return
        except TransientError as exc:
            attempt = _after_failure(attempt, exc, policy, label, part, size)


def _fill_ranges(part, meta, ident, done, size, open_range, hasher, bar, policy, label) -> None:
    """Fetch ``chunk``-sized ranges with a few threads into a preallocated ``part``.

    Ranges are hashed in file order as they arrive (at most ``2 * parallel`` ranges are held), and
    each finished range is recorded in ``meta`` so a killed download resumes where it stopped.
    """
    from concurrent.futures import ThreadPoolExecutor

    chunk = policy.chunk
    n = (size + chunk - 1) // chunk
    with _open_part(part, "ab") as fh:  # create without truncating what a previous run fetched
        fh.truncate(size)
    state_lock = threading.Lock()

    def fetch(i: int) -> bytes:
        start, stop = i * chunk, min(size, (i + 1) * chunk)
        attempt = 0
        while True:
            try:
                data = b"".join(open_range(start, stop))
                if len(data) != stop - start:
                    raise TransientError(f"range {start}-{stop - 1}: got {len(data)} of {stop - start} bytes")
                break
            except TransientError as exc:
                attempt = _after_failure(attempt, exc, policy, label, part, size)
        fd = open_nofollow(part, os.O_WRONLY)
        try:
            os.pwrite(fd, data, start)
        finally:
            os.close(fd)
        with state_lock:
            done.add(i)
            _write_json(meta, {"ident": ident, "done": sorted(done)})
            bar.update(len(data))
        return data

    bar.update(sum(min(size, (i + 1) * chunk) - i * chunk for i in done))
    window = 2 * policy.parallel
    with ThreadPoolExecutor(policy.parallel, thread_name_prefix="berg-range") as pool:
        futures: dict[int, Any] = {}
        submitted = 0
        try:
            with _open_part(part, "rb") as reader:
                for i in range(n):
                    while submitted < n and submitted < i + window:
                        if submitted not in done:
                            futures[submitted] = pool.submit(fetch, submitted)
                        submitted += 1
                    if i in futures:
                        hasher.update(futures.pop(i).result())
                    else:  # fetched by an earlier, interrupted run
                        reader.seek(i * chunk)
                        hasher.update(reader.read(min(size, (i + 1) * chunk) - i * chunk))
        finally:
            for fut in futures.values():
                fut.cancel()


class _Hasher:
    """sha256 (and MD5 for ETag checks) of the bytes written, computed in a helper thread.

    Hashing overlaps with receiving and writing (hashlib releases the GIL on large buffers), so a
    verified download costs little more than an unverified one. After a retry or a resumed ``.part``
    file, :meth:`catch_up` re-reads whatever prefix of the file the digests have not seen.
    """

    def __init__(self, with_md5: bool):
        import queue
        import threading

        self.with_md5 = with_md5
        self._new()
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="berg-hash", daemon=True)
        self._thread.start()

    def _new(self) -> None:
        self.sha = hashlib.sha256()
        self.md5 = hashlib.md5() if self.with_md5 else None  # noqa: S324 - MD5 only to compare with S3's ETag
        self.seen = 0

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            try:
                if chunk is None:
                    return
                self.sha.update(chunk)
                if self.md5 is not None:
                    self.md5.update(chunk)
            finally:
                self._queue.task_done()

    def update(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        self._queue.put(chunk)

    def catch_up(self, part: Path, offset: int) -> None:
        """Make the digests cover exactly ``part[:offset]``."""
        if self.seen == offset:
            return
        self._queue.join()
        self._new()
        if offset:
            with _open_part(part, "rb") as fh:
                left = offset
                while left:
                    block = fh.read(min(_BLOCK, left))
                    if not block:
                        break
                    self.update(block)
                    left -= len(block)

    def result(self) -> tuple[str, str | None]:
        self._queue.join()
        return self.sha.hexdigest(), self.md5.hexdigest() if self.md5 is not None else None

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)


def _verify_part(
    part: Path, remote: RemoteObject, expected: FileInfo | None, label: str, sha: str, md5: str | None
) -> str:
    if expected is not None and expected.sha256 is not None:
        if sha != expected.sha256:
            part.unlink()
            raise IntegrityError(f"{label}: downloaded sha256 {sha}, expected {expected.sha256}; discarded")
        return sha
    if remote.md5 is not None and md5 != remote.md5:
        part.unlink()
        raise IntegrityError(f"{label}: downloaded MD5 {md5} does not match the ETag {remote.md5}; discarded")
    if remote.md5 is None:
        log.info("%s: multipart ETag %s, only the size could be checked", label, remote.etag)
    return sha
