"""A real WebSocket backend for the tests (the ``websockets`` library), on its own thread.

Paths:

* ``/echo``       echoes every message, text as text and binary as binary
* ``/hello``      sends ``hello`` at once (it reaches the gateway right behind the 101), then echoes
* ``/refuse``     refuses the upgrade: 403 with a body
* ``/close``      closes at once with code 4002, reason ``bye``
* ``/flood?mb=N`` sends N MB in 64 KB binary messages as fast as the connection takes them
                  (``flood_sent``: bytes sent so far), then waits for the client to close

Every handshake request is recorded (path and headers) in ``requests``; the close code a client
sent is in ``close_codes``.
"""
from __future__ import annotations

import asyncio
import http
import threading
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


class WebSocketBackend:
    def __init__(self, ssl_context=None):
        self.ssl_context = ssl_context
        self.requests: list[tuple[str, dict]] = []
        self.close_codes: list[int | None] = []
        self.flood_sent = 0
        self.port = 0
        self._loop = None
        self._thread = None
        self._stop = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self):
        ready = threading.Event()

        async def main():
            self._stop = asyncio.Event()
            async with serve(self._handle, "127.0.0.1", 0, ssl=self.ssl_context,
                             process_request=self._process_request, max_size=None,
                             compression=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                await self._stop.wait()

        def run():
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(main())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("websocket backend did not start")
        return self

    def stop(self):
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def _process_request(self, connection, request):
        self.requests.append((request.path, {k.lower(): v for k, v in request.headers.raw_items()}))
        if request.path.startswith("/refuse"):
            return connection.respond(http.HTTPStatus.FORBIDDEN, "no tunnel for you\n")
        return None

    async def _handle(self, ws):
        parts = urlsplit(ws.request.path)
        try:
            if parts.path == "/hello":
                await ws.send("hello")
            if parts.path == "/close":
                await ws.close(4002, "bye")
                return
            if parts.path == "/flood":
                mb = int(parse_qs(parts.query).get("mb", ["1"])[0])
                block = bytes(range(256)) * 256
                for _ in range(mb * 16):
                    await ws.send(block)
                    self.flood_sent += len(block)
                await ws.wait_closed()
                return
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)
