"""Connections to backends and the keep-alive pool that holds them.

An :class:`UpstreamConnection` carries one request at a time for its ``owner`` (the backend
call, see :mod:`gateway.backends.http`), parses the response (fastpath.http1) and tells the owner
what happened.  The pool keeps idle connections per backend address and reuses the one idle the
longest (first in, first out); the worker's sweep closes the ones idle longer than the limit.  A
connection the backend closed while idle leaves the pool at once (its ``connection_lost``
fires), which narrows the keep-alive race; the backend call covers the rest by replaying a safe
request on a fresh connection.

A backend that sends bytes nobody asked for (after a complete response) is out of step with the
gateway: whatever it sends next could be taken for the answer to another client's request.  Its
connection is closed, and for ``DISTRUST_S`` seconds no connection to that backend is reused, so
one such backend cannot keep feeding its leftovers to other clients through the pool.  Reusing the
longest-idle connection serves the same end: bytes that arrive just after a response (in a
segment of their own) are read, and close the connection, before it is reused, because the event
loop has polled its socket since; the most recently returned connection could be handed out in
the same round of events, before the loop reads what waits on it.  (Checking each socket with
MSG_PEEK before reuse was measured instead: a system call per request, ~4% of the throughput.)
"""
from __future__ import annotations

import asyncio
import logging
import socket

import fastpath
from fastpath.http1_rules import BODY, END, HEAD, NEED_DATA, lists_websocket
from gateway.exchange import Connection

log = logging.getLogger("tollgate.gateway")

# How a response's body ends (UpstreamOwner.upstream_head's answer); the _ names are the C
# constants of the compiled form
UNTIL_CLOSE, LENGTH, CHUNKED = 0, 1, 2
_UNTIL_CLOSE, _CHUNKED = UNTIL_CLOSE, CHUNKED
# (the parser's event numbers, as C constants of the compiled form)
_E_NEED_DATA, _E_HEAD, _E_BODY, _E_END = NEED_DATA, HEAD, BODY, END

#: seconds a backend that sent unasked bytes gets no reused connection
DISTRUST_S = 60.0
_TLS_SHUTDOWN_TIMEOUT_S = 2.0    # a closing TLS connection to a backend waits this long at most


class UpstreamOwner:
    """What an upstream connection reports to the backend call it carries a request for.

    A base class so that, compiled, these calls are C calls (gateway/backends/http.py's
    ProxyCall is the implementation).  ``ex`` is the exchange being served.
    """

    def __init__(self):
        self.ex = None

    def upstream_head(self, conn, status, head, body):
        """The response head arrived (``head``: a fastpath.http1.Head; ``body``: the whole body
        when it came with the head, else b""); return how its body ends (UNTIL_CLOSE, LENGTH,
        CHUNKED)."""
        raise NotImplementedError

    def upstream_body(self, chunk):
        raise NotImplementedError

    def upstream_done(self, conn, reusable):
        raise NotImplementedError

    def upstream_bad_response(self, conn, detail):
        raise NotImplementedError

    def upstream_lost(self, conn, exc):
        raise NotImplementedError

    def upstream_switched(self, conn, head, rest):
        """The backend switched protocols (101 to a WebSocket upgrade): ``conn`` has left the
        pool and its transport is the caller's; ``rest``: what came after the head."""
        raise NotImplementedError


class UpstreamConnection:
    """A connection to a backend (an asyncio protocol; attribute types in upstream.pxd).

    Framing is never trusted: the connection goes back to the pool only when its response
    ended exactly at the end of what the backend sent (no byte after it but empty lines, which
    RFC 9112 §2.2 lets a recipient skip), the backend allowed keep-alive and the whole request
    was sent.  Bytes after a response, in the same read or while idle, mean the backend and the
    gateway disagree about where a message ends; such a connection is closed and its backend
    distrusted (see the module's docstring for the race that remains).
    """

    def __init__(self, pool, key):
        self.pool = pool
        self.key = key
        self.idle = pool.slot(key)   # where this connection waits when idle
        self.transport = None
        self.send_bytes = None       # transport.write, bound once (not looked up per write)
        # response heads are bounded like request heads (over the bound: 502, connection closed)
        self.parser = fastpath.ResponseParser(pool.max_header, pool.max_header, pool.max_headers,
                                     pool.max_count, pool.head_guard, True)
        self.owner = None
        self.uses = 0                # requests sent on this connection so far
        self.idle_since = 0.0
        self.got_bytes = False       # any byte of the current response received
        self.closed = False
        self.interim = False         # the response being parsed is a 1xx
        self.skip_body = False       # the current request was HEAD: the response has no body
        self.upgrading = False       # the current request asks for a WebSocket tunnel
        self.eof_body = False        # the current response's body ends when the backend closes
        self.reading_paused = False
        self.waiting = None          # a head held back until its body (all in this read) follows

    # -- lifecycle --------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self.send_bytes = transport.write
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
    def send(self, owner, data, skip_body, upgrading):
        """Start a request on this connection for ``owner``; ``data`` is the head (and body);
        ``upgrading``: it asks for a WebSocket tunnel (a 101 answers it)."""
        self.owner = owner
        if upgrading != self.upgrading:
            self.upgrading = upgrading
            self.parser.expect_switch(upgrading)
        self.uses += 1
        self.got_bytes = False
        self.interim = False
        self.eof_body = False
        self.skip_body = skip_body
        self.parser.expect_no_body(skip_body)
        self.send_bytes(data)

    def write(self, data):
        if not self.closed:
            self.send_bytes(data)

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
            # bytes from a backend with no request outstanding: it is out of step
            self.pool.distrust(self.key, "sent bytes while no request was outstanding")
            self.close()
            return
        self.got_bytes = True
        # what this read makes the client connection send leaves in one write (head and body
        # of a small response together), not one per event
        client: Connection = owner.ex.conn
        client.corked = True
        try:
            self.parser.feed(data)
            self._run(owner)
        finally:
            client.uncork()

    def _run(self, owner):
        parser = self.parser
        while True:
            event = parser.next()
            if self.waiting is not None:
                head = self.waiting
                self.waiting = None
                if event == _E_BODY and len(parser.body) == head.content_length:
                    # the whole body came with the head: one bytes object, one write
                    self._head(owner, head, parser.body)
                    continue
                self._head(owner, head, b"")
            if event == _E_NEED_DATA:
                return
            if event == _E_HEAD:
                head = parser.head
                status = head.status
                if status < 200:
                    if status < 100:
                        self._bad(owner, f"status {status} is not an HTTP status")
                        return
                    if status == 101:
                        self._switch(owner, head)
                        return
                    self.interim = True     # 100 Continue, 103 Early Hints: not forwarded
                elif head.content_length > 0 and not self.skip_body:
                    self.waiting = head
                else:
                    self._head(owner, head, b"")
            elif event == _E_BODY:
                if not self.interim:
                    owner.upstream_body(parser.body)
            elif event == _E_END:
                if self.interim:
                    self.interim = False
                    continue
                leftover = parser.leftover()
                if leftover:
                    self.pool.distrust(self.key, "sent bytes after a complete response")
                self.owner = None
                self.eof_body = False
                owner.upstream_done(self, parser.head.keep_alive and not leftover)
                return
            else:
                self._bad(owner, parser.error_detail)
                return
            if self.owner is not owner:
                return          # the exchange failed or the connection closed under us

    def _switch(self, owner, head):
        if not self.upgrading:
            self._bad(owner, "protocol switch (101) to a request that asked for none")
        elif not lists_websocket(head.get_all(b"upgrade")):
            self._bad(owner, "101 to a WebSocket upgrade switches to another protocol")
        else:
            # the connection leaves the pool's accounting: a tunnel owns its transport now
            rest = self.parser.detach()
            self.owner = None
            self.closed = True
            self.pool.opened -= 1
            self.pool.forget(self)
            owner.upstream_switched(self, head, rest)

    def _head(self, owner, head, body):
        framing = owner.upstream_head(self, head.status, head, body)
        self.eof_body = (framing == _UNTIL_CLOSE and not self.skip_body
                         and head.status != 204 and head.status != 304)

    def _bad(self, owner, detail):
        self.owner = None
        self.waiting = None
        self.close()
        owner.upstream_bad_response(self, detail)


class UpstreamPool:
    """Idle keep-alive connections per backend address ``(host, port)``."""
    # attribute types: gateway/http/upstream.pxd

    def __init__(self, loop, limits):
        self.loop = loop
        self.limits = limits
        self.idle = {}           # (host, port) -> [UpstreamConnection], longest idle first
        self.opened = 0          # connections open now (idle + busy), for the metrics
        self.max_idle = limits.upstream_max_idle_per_backend
        self.idle_timeout = limits.upstream_idle_timeout_s
        # response heads are bounded like request heads (over the bound: 502, connection closed)
        self.max_header = limits.max_header_bytes
        self.max_headers = limits.max_headers_bytes
        self.max_count = limits.max_headers_count
        self.head_guard = limits.head_guard_bytes
        self.distrusted = {}     # (host, port) -> loop time until which nothing is reused
        self.desyncs = 0         # times a backend sent unasked bytes, for the metrics

    def slot(self, key):
        """The list of idle connections to backend ``key`` (longest idle first).  Made once and
        kept: backends and connections hold it, so a request looks nothing up by key."""
        conns = self.idle.get(key)
        if conns is None:
            conns = self.idle[key] = []
        return conns

    def take(self, conns):
        """An idle connection from ``conns`` (a slot) or None: the one idle the longest (see
        the module's docstring)."""
        while conns:
            conn = conns[0]         # at most max_idle items move: cheaper than a deque's call
            del conns[0]            # (and than pop(0), which compiles to a method call)
            if not conn.closed:     # (a transport that is closing has been closed by us, or
                return conn         # its connection_lost, which sets closed, is on the way)
        return None

    def give_back(self, conn, now):
        if conn.closed:
            return
        if self.distrusted:
            until = self.distrusted.get(conn.key)
            if until is not None:
                if now < until:
                    conn.close()
                    return
                del self.distrusted[conn.key]
        conns = conn.idle
        if len(conns) >= self.max_idle:
            conn.close()
            return
        if conn.reading_paused:
            conn.pause_reading(False)
        conn.idle_since = now
        conns.append(conn)

    def distrust(self, key, what):
        """A backend sent bytes nobody asked for: reuse none of its connections for a while."""
        self.desyncs += 1
        now = self.loop.time()
        if self.distrusted.get(key, 0.0) <= now:
            log.warning("backend %s:%s %s; its connections are not reused for %.0f s",
                        key[0], key[1], what, DISTRUST_S)
        self.distrusted[key] = now + DISTRUST_S
        conns = self.slot(key)
        while conns:
            conns.pop().close()

    def forget(self, conn):
        conns = conn.idle
        if conns:
            try:
                conns.remove(conn)
            except ValueError:
                pass

    async def connect(self, key):
        host, port, tls_context, server_name = key
        if tls_context is None:
            connecting = self.loop.create_connection(lambda: UpstreamConnection(self, key),
                                                     host, port)
        else:   # the handshake is bounded by the same connect timeout
            connecting = self.loop.create_connection(
                lambda: UpstreamConnection(self, key), host, port, ssl=tls_context,
                server_hostname=server_name, ssl_handshake_timeout=self.limits.upstream_connect_timeout_s,
                ssl_shutdown_timeout=_TLS_SHUTDOWN_TIMEOUT_S)
        _transport, conn = await asyncio.wait_for(connecting, self.limits.upstream_connect_timeout_s)
        return conn

    def sweep(self, now):
        """Close connections idle longer than the limit (called by the worker's sweep)."""
        limit = self.idle_timeout
        for conns in self.idle.values():
            # longest idle first: the list is ordered by the time they were given back
            while conns and now - conns[0].idle_since > limit:
                conns.pop(0).close()

    @property
    def idle_count(self):
        return sum(len(c) for c in self.idle.values())

    def close_all(self):
        for conns in self.idle.values():
            while conns:
                conns.pop().close()
