"""Connections to backends and the keep-alive pool that holds them.

An :class:`UpstreamConnection` carries one request at a time for its ``owner`` (the backend
call, see :mod:`gateway.backends.http`), parses the response with httptools and tells the owner
what happened.  The pool keeps idle connections per backend address, most recently used first,
so warm connections are reused and cold ones age out; the worker's sweep closes the ones idle
longer than the limit.  A connection the backend closed while idle leaves the pool at once (its
``connection_lost`` fires), which narrows the keep-alive race; the backend call covers the rest
by replaying a safe request on a fresh connection.
"""
from __future__ import annotations

import asyncio
import socket

import httptools

from gateway.exchange import Connection
from gateway.http.headbuffer import HeadBuffer


class UpstreamOwner:
    """What an upstream connection reports to the backend call it carries a request for.

    A base class so that, compiled, these calls are C calls (gateway/backends/http.py's
    ProxyCall is the implementation).  ``ex`` is the exchange being served.
    """

    def __init__(self):
        self.ex = None

    def upstream_head(self, conn, status, headers):
        raise NotImplementedError

    def upstream_body(self, chunk):
        raise NotImplementedError

    def upstream_done(self, conn, reusable):
        raise NotImplementedError

    def upstream_bad_response(self, conn, detail):
        raise NotImplementedError

    def upstream_lost(self, conn, exc):
        raise NotImplementedError


class BadResponse(Exception):
    """Raised from a response parser callback: the backend's answer cannot be forwarded."""


class _Leftover(Exception):
    """Raised from a response parser callback: bytes follow the response that just ended."""


class UpstreamConnection:
    """A connection to a backend (an asyncio protocol; attribute types in upstream.pxd).

    Framing is never trusted: the connection goes back to the pool only when its response
    ended exactly at the end of what the backend sent (no byte after it, the parser between
    messages), the backend allowed keep-alive and the whole request was sent.  Bytes after a
    response, in the same read or while idle, mean the backend and the gateway disagree about
    where a message ends; such a connection is closed, so its leftovers can never reach
    another client.  (Empty lines between messages are the one exception llhttp makes, as
    RFC 9112 §2.2 allows: they are skipped, never delivered.)
    """

    def __init__(self, pool, key):
        self.pool = pool
        self.key = key
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.owner = None
        self.headers = []
        self.uses = 0                # requests sent on this connection so far
        self.idle_since = 0.0
        self.got_bytes = False       # any byte of the current response received
        self.closed = False
        self.interim = False         # the response being parsed is a 1xx
        self.skip_body = False       # the current request was HEAD: the response has no body
        self.eof_body = False        # the current response's body ends when the backend closes
        self.reading_paused = False
        self.in_head = False         # a response head has begun and is not complete
        self.head_size = 0           # bytes of header lines in the current head
        self.head_buffer = None      # a head arriving in pieces (gateway.http.headbuffer)
        self.completed = False       # the response ended during the current feed
        self.keep_alive = False      # ... and the backend allows another request after it
        self.leftover = False        # ... and more bytes followed it

    # -- lifecycle --------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.pool.opened += 1

    def connection_lost(self, exc):
        was_closed = self.closed
        self.closed = True
        if not was_closed:
            self.pool.opened -= 1
        self.pool.forget(self)
        owner = self.owner
        if owner is not None:
            self.owner = None
            if exc is None and self.eof_body and self.got_bytes and not self.interim:
                # a body delimited by the close ended with a FIN: complete.  A reset (exc set)
                # is a loss: the client must see a truncated response, never a complete one.
                owner.upstream_done(self, False)
            else:
                owner.upstream_lost(self, exc)

    def eof_received(self):
        return False  # close our side too; connection_lost follows

    def pause_writing(self):
        # the backend reads the request body slower than the client sends it
        owner = self.owner
        if owner is not None:
            owner.ex.conn.body_backpressure(True)

    def resume_writing(self):
        owner = self.owner
        if owner is not None:
            owner.ex.conn.body_backpressure(False)

    def close(self):
        if not self.closed:
            self.closed = True
            self.pool.opened -= 1
            self.pool.forget(self)
            self.owner = None
            self.transport.close()

    # -- sending ------------------------------------------------------------------------------
    def send(self, owner, data, skip_body):
        """Start a request on this connection for ``owner``; ``data`` is the head (and body)."""
        self.owner = owner
        self.uses += 1
        self.got_bytes = False
        self.interim = False
        self.eof_body = False
        self.skip_body = skip_body
        self.headers = []
        self.transport.write(data)

    def write(self, data):
        if not self.closed:
            self.transport.write(data)

    def pause_reading(self, paused):
        if self.closed or paused == self.reading_paused:
            return
        self.reading_paused = paused
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # -- receiving ----------------------------------------------------------------------------
    def data_received(self, data):
        owner = self.owner
        if owner is None:
            # bytes from a backend with no request outstanding: it is confused; drop it
            self.close()
            return
        self.got_bytes = True
        buffer = self.head_buffer
        if buffer is not None:
            data = buffer.add(data)
            if buffer.size > self.pool.head_guard:
                self._bad(owner, "response head too large")
                return
            if data is None:
                return
        # what this read makes the client connection send leaves in one write (head and body
        # of a small response together), not one per parser callback
        client: Connection = owner.ex.conn
        client.corked = True
        try:
            self._feed(owner, data)
        finally:
            client.uncork()

    def _feed(self, owner, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp pauses after a 101 (on_headers_complete refuses it before) or a response
            # to CONNECT; neither is ever asked for
            if not self.completed:
                self._bad(owner, "unexpected protocol switch")
                return
            self.leftover = True
        except httptools.HttpParserError as exc:
            if not self.completed:
                cause = exc.__context__
                self._bad(owner, str(cause) if isinstance(cause, BadResponse)
                          else f"invalid response: {exc}")
                return
            self.leftover = True    # what follows the response is not even a response
        if self.completed:
            self.completed = False
            self.head_buffer = None
            reusable = self.keep_alive and not self.leftover
            if self.skip_body or not reusable:
                # llhttp does not know that a response to HEAD has no body: it may be waiting
                # for one; a fresh parser starts the next response clean
                self.parser = httptools.HttpResponseParser(self)
            self.leftover = False
            self._finish(owner, reusable)
        elif self.in_head and self.head_buffer is None:
            self.head_buffer = HeadBuffer(data)

    def _bad(self, owner, detail):
        self.owner = None
        self.head_buffer = None
        self.close()
        owner.upstream_bad_response(self, detail)

    # -- parser callbacks (raise BadResponse to refuse the response) ----------------------------
    def on_message_begin(self):
        if self.completed:
            raise _Leftover()
        self.in_head = True
        self.head_size = 0

    def on_header(self, name, value):
        size = len(name) + len(value)
        self.head_size += size
        self.headers.append((name, value))
        pool = self.pool
        if (size > pool.max_header or self.head_size > pool.max_headers
                or len(self.headers) > pool.max_count):
            raise BadResponse("response head too large")

    def on_headers_complete(self):
        self.in_head = False
        self.head_buffer = None
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                # the gateway never forwards an upgrade request, so a switch is unasked for
                raise BadResponse("protocol switch (101) to a request that asked for none")
            # 1xx (100 Continue, 103 Early Hints): interim, not forwarded; the final follows
            self.interim = True
            self.headers = []
            return
        self.interim = False
        owner = self.owner
        headers = self.headers
        self.headers = []
        try:
            framed = owner.upstream_head(self, status, headers)
        except ValueError as exc:        # framing headers the gateway cannot forward
            raise BadResponse(str(exc)) from None
        self.eof_body = not framed and not self.skip_body and status not in (204, 304)
        if self.skip_body:
            # a response to HEAD ends with its head whatever its framing headers say
            self.completed = True
            self.keep_alive = parser.should_keep_alive()

    def on_body(self, chunk):
        if self.completed:
            raise _Leftover()           # a body sent after the head of a response to HEAD
        if not self.interim:
            self.owner.upstream_body(chunk)

    def on_message_complete(self):
        if self.interim:
            self.interim = False
            return
        if not self.completed:      # (a response to HEAD was complete at its head)
            self.completed = True
            self.keep_alive = self.parser.should_keep_alive()

    def _finish(self, owner, keep_alive):
        self.owner = None
        self.eof_body = False
        owner.upstream_done(self, keep_alive)


class UpstreamPool:
    """Idle keep-alive connections per backend address ``(host, port)``."""
    # attribute types: gateway/http/upstream.pxd

    def __init__(self, loop, limits):
        self.loop = loop
        self.limits = limits
        self.idle = {}           # (host, port) -> [UpstreamConnection], oldest first
        self.opened = 0          # connections open now (idle + busy), for the metrics
        self.max_idle = limits.upstream_max_idle_per_backend
        self.idle_timeout = limits.upstream_idle_timeout_s
        # response heads are bounded like request heads (over the bound: 502, connection closed)
        self.max_header = limits.max_header_bytes
        self.max_headers = limits.max_headers_bytes
        self.max_count = limits.max_headers_count
        self.head_guard = limits.head_guard_bytes

    def take(self, key):
        """An idle connection to ``key`` or None.  Most recently used first."""
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            if not conn.closed and not conn.transport.is_closing():
                return conn
        return None

    def give_back(self, conn, now):
        if conn.closed or conn.transport.is_closing():
            return
        conns = self.idle.get(conn.key)
        if conns is None:
            conns = self.idle[conn.key] = []
        if len(conns) >= self.max_idle:
            conn.close()
            return
        if conn.reading_paused:
            conn.pause_reading(False)
        conn.idle_since = now
        conns.append(conn)

    def forget(self, conn):
        conns = self.idle.get(conn.key)
        if conns:
            try:
                conns.remove(conn)
            except ValueError:
                pass

    async def connect(self, key):
        host, port = key
        _transport, conn = await asyncio.wait_for(
            self.loop.create_connection(lambda: UpstreamConnection(self, key), host, port),
            self.limits.upstream_connect_timeout_s)
        return conn

    def sweep(self, now):
        """Close connections idle longer than the limit (called by the worker's sweep)."""
        limit = self.idle_timeout
        for conns in self.idle.values():
            # oldest first: the list is ordered by the time they were given back
            while conns and now - conns[0].idle_since > limit:
                conns.pop(0).close()

    @property
    def idle_count(self):
        return sum(len(c) for c in self.idle.values())

    def close_all(self):
        for conns in list(self.idle.values()):
            for conn in list(conns):
                conn.close()
        self.idle.clear()
