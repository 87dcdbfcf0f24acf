"""A loopback HTTP proxy in front of the moto S3 server that misbehaves like a bad network.

It fails a share of requests with 500 InternalError answers, resets connections before or after
the request reached S3, and cuts GET bodies off half-way. Faults are bounded (at most
`max_faults`), so a client that retries always gets through; the proxy shuts itself down after
`lifetime` seconds even if a test forgets to stop it.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}
ERROR_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
              b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class _Reset(Exception):
    """The connection was reset on purpose."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib's name)
        pass

    def handle(self) -> None:
        with contextlib.suppress(_Reset, ConnectionError, OSError):
            super().handle()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    def _reset(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST: the client sees "connection reset by peer".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True
        raise _Reset()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _relay(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        fault = proxy.pick_fault(self.command, self.path)
        if proxy.delay:
            time.sleep(proxy.delay)
        if fault == "reset-before":
            self._reset()
        if fault == "500":
            self.send_response(500)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(ERROR_BODY)))
            self.end_headers()
            self.wfile.write(ERROR_BODY)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST")
                             else None, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
            status, resp_headers = resp.status, resp.getheaders()
        finally:
            upstream.close()
        if fault == "reset-after":  # S3 did the work; the answer is lost on the way back
            self._reset()
        self.send_response(status)
        for k, v in resp_headers:
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", dict((k.lower(), v) for k, v in resp_headers).get("content-length", "0"))
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault == "truncate" and len(data) > 1024:
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self._reset()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay  # noqa: N815 (stdlib's names)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultyProxy


class FaultyProxy:
    def __init__(self, upstream: str, failure_rate: float = 0.3, max_faults: int = 60, delay: float = 0.0,
                 lifetime: float = 300.0, seed: int = 1234, only: str | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.failure_rate = failure_rate
        self.max_faults = max_faults
        self.delay = delay
        self.lifetime = lifetime
        self.only = only  # fail only requests whose path contains this
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def pick_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            if self.only is not None and self.only not in path:
                return None
            if sum(self.faults.values()) >= self.max_faults or self._random.random() >= self.failure_rate:
                return None
            kinds = ["500", "reset-before", "reset-after"] + (["truncate", "truncate"] if method == "GET" else [])
            kind = self._random.choice(kinds)
            self.faults[kind] += 1
            return kind

    def start(self) -> FaultyProxy:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-s3-proxy", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
