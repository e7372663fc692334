"""The one home of berg's file-system helpers: atomic writes, sha256, stale temporaries.

Every writer in berg (responses, artifacts, caches, run stores, plots) goes through :func:`atomic_path`
or :func:`atomic_write`, so a reader never sees half a file under its final name.

Durability policy (stated once, here): the temporary file is ``fsync``-ed before the rename, and the
folder is ``fsync``-ed after it, so a file that is visible under its final name survives a crash.
Temporary names carry the writer's pid and a random token (``.<name>.<pid>.<token>.tmp<suffix>``), so
concurrent writers never share one, and :func:`clean_stale_temporaries` can remove those whose
process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_stale_temporaries",
    "fsync_dir",
    "sha256_bytes",
    "sha256_file",
    "temporary_name",
]

_CHUNK = 1 << 20
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.tmp(?P<suffix>.*)$")


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 8 * _CHUNK) -> str:
    """Hex sha256 of a file, read in chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of in-memory bytes."""
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """``fsync`` a folder so a rename inside it is durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def temporary_name(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """A fresh per-process temporary path beside ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "", *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    Use it for writers that take a file name (h5py, nibabel, safetensors). The temporary file is
    created by the writer with the user's umask (not ``mkstemp``'s 0600). ``suffix`` keeps an
    extension writers look at (``".nii.gz"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", *, fsync: bool = True, **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    if "w" not in mode and "x" not in mode:
        raise ValueError(f"atomic_write needs a write mode, got {mode!r}")
    with atomic_path(path, fsync=False) as tmp:
        with open(tmp, mode.replace("x", "w"), **open_kwargs) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
    if fsync:
        fsync_dir(Path(path).parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "wb", fsync=fsync) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temporaries(
    folder: str | os.PathLike[str], *, recursive: bool = False, min_age: float = 0.0
) -> list[Path]:
    """Remove berg temporaries (files and staging folders) in ``folder`` whose writer is gone.

    Only names made by :func:`temporary_name` are considered. A temporary is stale when its writer's
    pid no longer exists on this host *and* it was not modified for ``min_age`` seconds (pids are per
    host: on a cache shared over NFS a live writer on another node keeps touching its temporary, so
    shared folders pass a positive ``min_age``). Errors (read-only folders, races with another
    cleaner) are ignored: cleaning is best effort.

    Returns
    -------
    list of Path
        What was removed.
    """
    import shutil
    import time

    folder = Path(folder)
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if min_age and now - entry.lstat().st_mtime < min_age:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed
