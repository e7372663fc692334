"""Every lock wait is bounded, notices a stopped or gone holder, and names the holder's pid (issue 24)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_store_sources import _native, folder_source

from berg.errors import BERGError
from berg.fsutil import LockBusyError, lock_holder, process_lock
from berg.store import Store

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks and signals are POSIX")

HOLDER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from berg.fsutil import process_lock
    lock, mode = sys.argv[1], sys.argv[2]
    with process_lock(lock, what="a test holder"):
        sys.stdout.write("held\\n"); sys.stdout.flush()
        if mode == "orphan":
            # a child inherits the locked file and outlives us: the recorded holder is gone, the lock is not
            fds = [int(f) for f in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{f}") == os.path.realpath(lock)]
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=fds)
            os._exit(0)
        time.sleep(60)
    """
)


def _hold(lock: Path, mode: str = "hold") -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock), mode], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _end(proc: subprocess.Popen) -> None:
    # the holder's whole session (an orphaned child too), and only it
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_stopped_holder_is_named_within_seconds(tmp_path):
    lock = tmp_path / "x.lock"
    proc = _hold(lock)
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(LockBusyError) as info:
            with process_lock(lock, timeout=60):
                pass
        took = time.monotonic() - t0
        msg = str(info.value)
        assert took < 10, took
        assert f"process {proc.pid}" in msg and "stopped" in msg and f"kill -CONT {proc.pid}" in msg
        assert "a test holder" in msg
        assert info.value.holder["pid"] == proc.pid and isinstance(info.value, BERGError)
        assert isinstance(info.value, TimeoutError)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        _end(proc)


def test_running_holder_times_out_with_its_pid(tmp_path):
    lock = tmp_path / "x.lock"
    proc = _hold(lock)
    try:
        assert lock_holder(lock)["pid"] == proc.pid and lock_holder(lock)["state"] == "running"
        t0 = time.monotonic()
        with pytest.raises(LockBusyError, match=rf"gave up after 1 s .* process {proc.pid} \(running"):
            with process_lock(lock, timeout=1):
                pass
        assert 0.9 < time.monotonic() - t0 < 10
    finally:
        _end(proc)


def test_timeout_comes_from_the_environment(tmp_path, monkeypatch):
    lock = tmp_path / "x.lock"
    proc = _hold(lock)
    try:
        monkeypatch.setenv("BERG_LOCK_TIMEOUT", "1")
        with pytest.raises(LockBusyError, match="BERG_LOCK_TIMEOUT"):
            with process_lock(lock):
                pass
    finally:
        _end(proc)


def test_killed_holder_releases_the_lock(tmp_path):
    lock = tmp_path / "x.lock"
    proc = _hold(lock)
    _end(proc)  # SIGKILL: the kernel drops the flock
    with process_lock(lock, timeout=5):
        assert lock_holder(lock)["pid"] == os.getpid()


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="the kernel's lock list is Linux's /proc/locks")
def test_gone_holder_whose_lock_lives_on_in_a_child(tmp_path):
    lock = tmp_path / "x.lock"
    proc = _hold(lock, "orphan")
    try:
        proc.wait(timeout=30)  # the recorded holder exited; its child still holds the lock
        with pytest.raises(LockBusyError) as info:
            with process_lock(lock, timeout=30):
                pass
        assert str(proc.pid) in str(info.value) and "gone" in str(info.value)
    finally:
        _end(proc)


def test_fetch_waiting_on_a_stopped_fetch_fails_fast(tmp_path):
    remote = tmp_path / "remote"
    _native(remote)
    source = folder_source(remote)
    cache = tmp_path / "cache"
    store = Store(cache_dir=cache)
    store.fetch("plug", source, "manifest.json")
    proc = _hold(cache / "plug" / "metadata" / "sub-01.json.lock")
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(LockBusyError, match=rf"process {proc.pid} .*stopped"):
            store.fetch("plug", source, "metadata/sub-01.json")
        assert time.monotonic() - t0 < 10
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        _end(proc)
    # once the holder is gone the same fetch works
    assert store.fetch("plug", source, "metadata/sub-01.json").is_file()


def test_lock_is_not_a_link_target(tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    lock = tmp_path / "x.lock"
    lock.symlink_to(outside)
    with pytest.raises(OSError):
        with process_lock(lock, timeout=1):
            pass
    assert outside.read_bytes() == b"keep"


def test_taking_a_lock_twice_in_one_thread_fails_at_once(tmp_path):
    lock = tmp_path / "x.lock"
    with process_lock(lock, timeout=60):
        t0 = time.monotonic()
        with pytest.raises(LockBusyError, match="already locked by this thread"):
            with process_lock(lock, timeout=60):
                pass
        assert time.monotonic() - t0 < 1
    with process_lock(lock, timeout=1):  # released normally afterwards
        pass


def test_other_threads_wait_for_the_holder(tmp_path):
    import threading

    lock = tmp_path / "x.lock"
    order = []

    def second():
        with process_lock(lock, timeout=10):
            order.append("second")

    with process_lock(lock, timeout=10):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first")
    t.join(10)
    assert order == ["first", "second"]
