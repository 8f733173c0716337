"""A real HTTP/1.1 backend for the tests, on its own thread and event loop.

It listens on a free 127.0.0.1 port and answers by path (query ``k=v`` tunes each):

* ``/echo...``            200 JSON: method, target, headers, body length and sha256; no Date
                          header unless ``date=VALUE``
* ``/bytes?n=N``          200 with N bytes (Content-Length); ``&chunked=1`` chunked in 16 KB parts
* ``/eof?n=N``            200 with N bytes and no length: the body ends when it closes
* ``/slow?ms=M``          waits M ms, then as /echo
* ``/status?code=C``      that status, empty body
* ``/close``              /echo with ``Connection: close``, then closes
* ``/garbage``            an invalid response
* ``/smuggle``            a response with both Content-Length and Transfer-Encoding
* ``/hang``               never answers
* ``/reset``              closes the connection without answering
* anything else           as /echo

``idle_close_s``: close keep-alive connections idle that long, like Node's keepAliveTimeout
(used to provoke the keep-alive race).  Every request is recorded in ``requests``.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from urllib.parse import parse_qs, urlsplit

import httptools


class _Conn(asyncio.Protocol):
    def __init__(self, backend):
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.idle_timer = None
        self.busy = False

    def connection_made(self, transport):
        self.transport = transport
        self.backend.connections += 1
        self.backend.open.add(transport)
        self._arm_idle()

    def connection_lost(self, exc):
        self.backend.open.discard(self.transport)
        if self.idle_timer:
            self.idle_timer.cancel()

    def _arm_idle(self):
        if self.backend.idle_close_s is not None:
            if self.idle_timer:
                self.idle_timer.cancel()
            self.idle_timer = asyncio.get_running_loop().call_later(
                self.backend.idle_close_s, self._idle_close)

    def _idle_close(self):
        if not self.busy:
            self.transport.close()

    def data_received(self, data):
        if self.idle_timer:
            self.idle_timer.cancel()
        self.busy = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self):
        self.url = b""
        self.headers = []
        self.body = hashlib.sha256()
        self.body_len = 0

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, chunk):
        self.body.update(chunk)
        self.body_len += len(chunk)

    def on_message_complete(self):
        record = {
            "method": self.parser.get_method().decode(),
            "target": self.url.decode("latin-1"),
            "headers": self.headers,
            "body_length": self.body_len,
            "body_sha256": self.body.hexdigest(),
            "version": self.parser.get_http_version(),
        }
        self.backend.requests.append(record)
        keep = self.parser.should_keep_alive()
        asyncio.get_running_loop().create_task(self.answer(record, keep))

    async def answer(self, record, keep):
        parts = urlsplit(record["target"])
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        t = self.transport
        echo = json.dumps(record).encode()
        if path.startswith("/slow"):
            await asyncio.sleep(int(query.get("ms", "100")) / 1000)
        if path.startswith("/hang"):
            return
        if path.startswith("/reset"):
            t.close()
            return
        if path.startswith("/garbage"):
            t.write(b"HTTP/1.1 2x0 What\r\nContent-Length: 3\r\n\r\nabc")
            t.close()
            return
        if path.startswith("/smuggle"):
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            t.close()
            return
        if path.startswith("/status"):
            code = int(query.get("code", "200"))
            t.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % code if code not in (204, 304)
                    else b"HTTP/1.1 %d X\r\n\r\n" % code)
        elif path.startswith("/bytes"):
            n = int(query.get("n", "0"))
            block = bytes(range(256)) * 64
            if query.get("chunked"):
                t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                sent = 0
                while sent < n:
                    part = block[: min(len(block), n - sent)]
                    t.write(b"%x\r\n%b\r\n" % (len(part), part))
                    sent += len(part)
                    await asyncio.sleep(0)
                t.write(b"0\r\n\r\n")
            else:
                t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % n)
                sent = 0
                while sent < n:
                    part = block[: min(len(block), n - sent)]
                    t.write(part)
                    sent += len(part)
                    await asyncio.sleep(0)
        elif path.startswith("/eof"):
            n = int(query.get("n", "0"))
            t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + b"e" * n)
            t.close()
            return
        else:
            close = path.startswith("/close") or not keep
            date = b"Date: %s\r\n" % query["date"].encode() if "date" in query else b""
            t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Backend: %d\r\n"
                    b"Keep-Alive: timeout=5\r\n%sContent-Length: %d\r\n%s\r\n%b"
                    % (self.backend.port, date, len(echo), b"Connection: close\r\n" if close else b"", echo))
            if close:
                t.close()
                return
        if not keep:
            t.close()
            return
        self.busy = False
        self._arm_idle()


class Backend:
    """Start with ``Backend().start()``; stop with ``.stop()``."""

    def __init__(self, idle_close_s: float | None = None, ssl_context=None, port: int = 0):
        self.idle_close_s = idle_close_s
        self.ssl_context = ssl_context      # serve https with it
        self.requests: list[dict] = []
        self.connections = 0
        self.open: set = set()      # transports of the connections open now
        self.port = port            # 0: a free port; a stopped backend starts again on its own
        self._loop = None
        self._thread = None
        self._server = None

    def start(self):
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            self.port = sock.getsockname()[1]
            self._server = self._loop.run_until_complete(
                self._loop.create_server(lambda: _Conn(self), sock=sock, ssl=self.ssl_context))
            ready.set()
            self._loop.run_forever()
            self._server.close()
            self._loop.run_until_complete(self._abort_all())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("backend did not start")
        return self

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    async def _abort_all(self):
        # Abort, not close: close() waits for unsent bytes (a gateway that stopped reading)
        # and the loop would be gone first.  Twice: a connection accepted just before the
        # listener closed is made a moment later, and the GC must find no socket open.
        for _ in range(2):
            for transport in list(self.open):
                transport.abort()
            await asyncio.sleep(0.05)

    def stop(self):
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
