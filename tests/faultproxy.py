"""A small HTTP proxy (loopback only) in front of the test S3 server that injects faults.

Faults are queued with :meth:`FaultProxy.inject` and consumed one per matching GET of an object:
``("status", 503)``, ``("reset", None)`` (connection dropped mid-body), ``("truncate", None)``
(body shorter than Content-Length), ``("etag", None)`` (a wrong ETag on HEAD/GET), ``("slow", s)``
(sleep ``s`` seconds before answering).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

WRONG_ETAG = '"00000000000000000000000000000000"'


class FaultProxy:
    def __init__(self, upstream: str):
        up = urlparse(upstream)
        self.upstream = (up.hostname, up.port)
        self.faults: deque = deque()
        self.sticky_etag = False
        self.gets: list[str] = []
        self.served: dict[str, int] = {}  # object path -> body bytes sent (all GETs, ranged or not)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                return resp, data

            def _send(self, status, headers, data, *, cut=None, close=False):
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                if close:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    body = data if cut is None else data[:cut]
                    if 200 <= status < 300:
                        with proxy.lock:
                            path = self.path.split("?")[0]
                            proxy.served[path] = proxy.served.get(path, 0) + len(body)
                    self.wfile.write(body)
                self.wfile.flush()

            def handle_one(self):
                is_object_get = (
                    self.command == "GET" and "list-type" not in self.path and "?" not in self.path.split("/")[-1]
                )
                fault = None
                with proxy.lock:
                    if is_object_get:
                        proxy.gets.append(self.path)
                        if proxy.faults:
                            fault = proxy.faults.popleft()
                resp, data = self._forward()
                headers = resp.getheaders()
                if proxy.sticky_etag or (fault and fault[0] == "etag"):
                    headers = [(k, WRONG_ETAG if k.lower() == "etag" else v) for k, v in headers]
                if fault is None or fault[0] == "etag":
                    return self._send(resp.status, headers, data)
                kind, arg = fault
                if kind == "status":
                    return self._send(
                        arg,
                        [("Content-Type", "application/xml")],
                        b"<Error><Code>InternalError</Code></Error>",
                        close=True,
                    )
                if kind == "slow":
                    time.sleep(arg)
                    return self._send(resp.status, headers, data)
                if kind in ("reset", "truncate"):
                    self._send(resp.status, headers, data, cut=max(1, len(data) // 2), close=True)
                    if kind == "reset":
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                    self.close_connection = True
                    return None
                raise ValueError(kind)

            def do_GET(self):  # noqa: N802
                self.handle_one()

            def do_HEAD(self):  # noqa: N802
                resp, data = self._forward()
                headers = resp.getheaders()
                if proxy.sticky_etag:
                    headers = [(k, WRONG_ETAG if k.lower() == "etag" else v) for k, v in headers]
                self.send_response(resp.status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.end_headers()

            def do_PUT(self):  # noqa: N802
                resp, data = self._forward()
                self._send(resp.status, resp.getheaders(), data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def inject(self, *faults):
        with self.lock:
            self.faults.extend(faults)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
