"""The one home of berg's file-system helpers: atomic writes, sha256, stale temporaries.

Every writer in berg (responses, artifacts, caches, run stores, plots) goes through :func:`atomic_path`
or :func:`atomic_write`, so a reader never sees half a file under its final name.

Durability policy (stated once, here): the temporary file is ``fsync``-ed before the rename, and the
folder is ``fsync``-ed after it, so a file that is visible under its final name survives a crash.
Temporary names carry the writer's pid and a random token (``.<name>.<pid>.<token>.tmp<suffix>``), so
concurrent writers never share one, and :func:`clean_stale_temporaries` can remove those whose
process is gone.

Locks: :func:`process_lock` is the one cross-process lock of berg (downloads, derived files, cache
index records). Every wait on it has a timeout, notices a holder that is stopped (``SIGSTOP``, Ctrl-Z)
or gone, and names the process that holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from berg.errors import BERGError

__all__ = [
    "LockBusyError",
    "lock_holder",
    "process_lock",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_stale_temporaries",
    "fsync_dir",
    "sha256_bytes",
    "sha256_file",
    "temporary_name",
    "canonical_json",
    "digest",
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


# ------------------------------------------------------------------------------------------- locks

#: Seconds a holder may stay stopped (SIGSTOP / Ctrl-Z) or unaccounted for before a waiter gives up.
STALLED_AFTER_S = 2.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class LockBusyError(BERGError, TimeoutError):
    """A lock could not be taken: its holder is stopped, gone, or did not release it in time.

    ``holder`` is what is known of the process holding it (``pid``, ``host``, ``state``, ``what``).
    """

    def __init__(self, message: str, holder: dict[str, Any] | None = None):
        super().__init__(message)
        self.holder = holder or {}

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_LOCAL = threading.local()


def _held_here() -> set[tuple[int, int]]:
    """(device, inode) of the lock files this thread holds."""
    if not hasattr(_LOCAL, "held"):
        _LOCAL.held = set()
    return _LOCAL.held


def _proc_state(pid: int) -> str | None:
    """The process state letter from ``/proc/<pid>/stat`` (``R``, ``S``, ``T`` stopped, ``Z``...), None if gone.

    Where ``/proc`` does not exist, ``"?"`` for a live process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode("ascii", "replace")
        return text[text.rindex(")") + 2 :].split(" ", 1)[0]  # the name may hold spaces and parentheses
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else ("?" if _pid_alive(pid) else None)
    except (OSError, ValueError, IndexError):
        return "?" if _pid_alive(pid) else None


def _flock_pids(fd: int) -> list[int]:
    """Pids the kernel lists as holding an ``flock`` on the file of ``fd`` (Linux ``/proc/locks``)."""
    try:
        st = os.fstat(fd)
        with open("/proc/locks", "rb") as fh:
            lines = fh.read().decode("ascii", "replace").splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 08:01:1234567 0 EOF" (blocked waiters carry "->")
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if int(inode) == st.st_ino and (int(major, 16), int(minor, 16)) == (
                os.major(st.st_dev),
                os.minor(st.st_dev),
            ):
                pids.append(int(fields[4]))
        except ValueError:
            continue
    return pids


def lock_holder(lock_path: str | os.PathLike[str], fd: int | None = None) -> dict[str, Any]:
    """What is known of the process holding the lock file: ``pid``, ``host``, ``what``, ``since``, ``state``.

    The holder writes its pid, host and purpose into the lock file when it takes the lock; on Linux the
    kernel's own list (``/proc/locks``) confirms or corrects the pid. ``state`` is ``"running"``,
    ``"stopped"``, ``"gone"``, ``"zombie"``, or ``"unknown"`` (a holder on another host).
    """
    import json
    import socket

    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        with open(os.open(lock_path, os.O_RDONLY | _NOFOLLOW), "rb") as fh:
            info = json.loads(fh.read(4096) or b"{}")
    if not isinstance(info, dict):
        info = {}
    if fd is not None:
        kernel = _flock_pids(fd)
        if kernel and info.get("pid") not in kernel:
            info = {"pid": kernel[0], "host": socket.gethostname()}
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") not in (None, socket.gethostname()):
        info["state"] = "unknown"
        return info
    letter = _proc_state(pid)
    info["state"] = {None: "gone", "T": "stopped", "t": "stopped", "Z": "zombie", "X": "gone"}.get(letter, "running")
    return info


def _describe_holder(holder: dict[str, Any]) -> str:
    pid, state = holder.get("pid"), holder.get("state")
    if pid is None:
        return "another process (it did not record its pid)"
    where = f" on {holder['host']}" if holder.get("state") == "unknown" and holder.get("host") else ""
    what = f", {holder['what']}" if holder.get("what") else ""
    return f"process {pid}{where} ({state}{what})"


@contextlib.contextmanager
def process_lock(
    path: str | os.PathLike[str],
    *,
    timeout: float | None = None,
    what: str = "",
    poll: float = 0.05,
    stalled_after: float | None = None,
) -> Iterator[Path]:
    """Hold an exclusive cross-process lock on the file ``path`` (``fcntl.flock``; created if absent).

    The kernel releases the lock when its holder dies (even on SIGKILL). While waiting, the holder is
    watched: a holder that stays stopped (``SIGSTOP``, Ctrl-Z) or whose process is gone for
    ``stalled_after`` seconds makes the wait fail at once with its pid; any wait ends after ``timeout``.

    Parameters
    ----------
    path : path-like
        The lock file (never a symbolic link: it is opened with ``O_NOFOLLOW``).
    timeout : float, optional
        Seconds to wait at most (default ``BERG_LOCK_TIMEOUT``, 900).
    what : str
        What the holder is doing, recorded for waiters' messages (``"fetching weights.npy of fmri-x"``).
    poll : float
        Seconds between attempts.
    stalled_after : float, optional
        Grace for a stopped or gone holder (default :data:`STALLED_AFTER_S`).

    Yields
    ------
    Path
        The lock file.

    Raises
    ------
    LockBusyError
        The holder is stopped or gone, or did not release the lock within ``timeout``; the message
        names its pid and what to do.
    """
    import fcntl
    import json
    import socket
    import time

    from berg.env import env_int

    path = Path(path)
    timeout = float(env_int("BERG_LOCK_TIMEOUT", 900, minimum=0)) if timeout is None else float(timeout)
    stalled_after = STALLED_AFTER_S if stalled_after is None else stalled_after
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666)
    st = os.fstat(fd)
    ident = (st.st_dev, st.st_ino)
    held = _held_here()
    if ident in held:  # this thread already holds it: waiting would wait for itself, forever
        os.close(fd)
        raise LockBusyError(
            f"{path} is already locked by this thread (process {os.getpid()}); a lock taken twice by the same "
            "code path would wait for itself. This is a bug in berg: please report it",
            {"pid": os.getpid(), "state": "running"},
        )
    try:
        start = time.monotonic()
        stalled_since: float | None = None
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            now = time.monotonic()
            holder = lock_holder(path, fd)
            if holder.get("pid") == os.getpid():
                holder["state"] = "running"  # another thread of this process
            if not announced:
                import logging

                logging.getLogger(__name__).info("waiting for %s to release %s", _describe_holder(holder), path)
                announced = True
            if holder.get("state") in ("stopped", "gone", "zombie"):
                stalled_since = now if stalled_since is None else stalled_since
                if now - stalled_since >= stalled_after:
                    pid = holder.get("pid")
                    fix = {
                        "stopped": f"resume it (kill -CONT {pid}, or fg in its shell) or end it (kill {pid})",
                        "zombie": f"its parent has not reaped it; end the parent of {pid}",
                        "gone": "a process that inherited its lock file still holds it; end that process",
                    }[holder["state"]]
                    raise LockBusyError(
                        f"{path} is locked by {_describe_holder(holder)}, which is {holder['state']}: {fix}, "
                        "then try again",
                        holder,
                    )
            else:
                stalled_since = None
            if now - start >= timeout:
                raise LockBusyError(
                    f"gave up after {timeout:.0f} s waiting for {path}, held by {_describe_holder(holder)}; "
                    "wait for it to finish and try again, or set BERG_LOCK_TIMEOUT (seconds) to wait longer",
                    holder,
                )
            time.sleep(poll)
        record = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what[:300]}
        ).encode()
        with contextlib.suppress(OSError):  # the record only helps waiters' messages
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        held.add(ident)
        try:
            yield path
        finally:
            held.discard(ident)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def canonical_json(obj: Any) -> str:
    """Sorted-key, compact JSON: the form every content hash (run plans, stores, hub fragments) is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-able")


def digest(obj: Any) -> str:
    """sha256 hex of an object's canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()
