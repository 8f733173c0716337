"""The floor of the chosen stack: the least a uvloop + httptools proxy can do per request.

Not a product: no routing, no limits, no framing checks, no timeouts, no metrics, one upstream,
GET only, responses assumed to carry Content-Length.  The harness runs it beside Tollgate and
nginx so that the report can say how much of Tollgate's cost is the stack (uvloop's protocol
dispatch, httptools' callbacks) and how much is Tollgate's own pipeline.

    python -m benchmarks.floor_proxy LISTEN_PORT UPSTREAM_PORT
"""
from __future__ import annotations

import asyncio
import socket
import sys
from collections import deque

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, pool):
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.client = None
        self.transport = None
        self.head = []

    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_header(self, name, value):
        if name.lower() != b"connection":
            self.head.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self):
        self.head.insert(0, b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code())
        self.head.append(b"\r\n")

    def on_body(self, body):
        self.head.append(body)

    def on_message_complete(self):
        client = self.client
        self.client = None
        client.transport.write(b"".join(self.head))
        self.head = []
        self.pool.append(self)
        client.next()


class Client(asyncio.Protocol):
    def __init__(self, loop, pool, port):
        self.loop, self.pool, self.port = loop, pool, port
        self.parser = httptools.HttpRequestParser(self)
        self.queue = deque()
        self.busy = False
        self.url = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_url(self, url):
        self.url += url

    def on_message_complete(self):
        self.queue.append(self.url)
        self.url = b""
        if not self.busy:
            self.next()

    def next(self):
        if not self.queue:
            self.busy = False
            return
        self.busy = True
        url = self.queue.popleft()
        data = b"GET %s HTTP/1.1\r\nHost: upstream\r\n\r\n" % url
        if self.pool:
            up = self.pool.pop()
            up.client = self
            up.transport.write(data)
        else:
            self.loop.create_task(self._connect(data))

    async def _connect(self, data):
        _, up = await self.loop.create_connection(lambda: Upstream(self.pool), "127.0.0.1", self.port)
        up.client = self
        up.transport.write(data)


def main():
    listen, upstream = int(sys.argv[1]), int(sys.argv[2])
    loop = uvloop.new_event_loop()
    pool = []
    server = loop.run_until_complete(
        loop.create_server(lambda: Client(loop, pool, upstream), "127.0.0.1", listen, backlog=4096))
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
