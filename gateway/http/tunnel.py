"""WebSocket tunnels: after a backend's 101, bytes go both ways unchanged.

A request with ``Upgrade: websocket`` runs the API's stages like any other and is forwarded with
its upgrade fields; both HTTP parsers stop at the switch (fastpath.http1: what they read past it
is kept raw).  When the backend answers 101, a :class:`Tunnel` takes over both transports: their
protocol objects are replaced by its two ends, the client gets the 101 and then whatever the
backend sent after it, the backend whatever the client sent after its request.  Frames are not
parsed: the gateway's policies apply at the upgrade, and the bytes are the two peers' business.

Flow control is end to end: when one side's transport holds more than its high-water mark of
unsent bytes (a slow reader), the other side is not read until it drains, so a tunnel holds at
most one transport buffer and one read in each direction whatever the peers do.

Every tunnel has an idle timeout (``backend.websocket_idle_timeout_ms`` of its API; no byte in
either direction for that long closes it), also when flow control stopped it.  A half-close is
passed on over plain TCP; TLS has none, so an end of either side closes the tunnel.  When the
worker drains (SIGTERM), tunnels get ``tunnel_drain_grace_s`` more, then are closed.  A reload
only touches the tunnels opened through an API it changed or removed (its fingerprint, see
gateway.snapshot): they get the same grace, then are closed; the others keep running with the
settings they were opened with.
"""
from __future__ import annotations

import logging

from fastpath import response_head
from gateway.http.sockets import reset_on_close

log = logging.getLogger("tollgate.gateway")

#: what a tunnel's close is counted as (tollgate_websocket_tunnels_closed_total{reason})
CLOSE_REASONS = ("client", "backend", "idle", "drain", "reload", "error")
#: the close reason when a side ends the tunnel, by ``from_client``
_SIDE = ("backend", "client")


class TunnelStats:
    """A worker's tunnel totals, for the metrics."""

    def __init__(self):
        self.opened = 0
        self.open = 0
        self.to_backend = 0          # bytes sent to backends through tunnels
        self.to_client = 0           # bytes sent to clients through tunnels
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)

    def export(self):
        return {"opened": self.opened, "open": self.open, "to_backend": self.to_backend,
                "to_client": self.to_client, "closed": dict(self.closed)}


class _End:
    """The protocol of one side of a tunnel (replaces the HTTP protocol on its transport)."""

    def __init__(self, tunnel, from_client):
        self.tunnel = tunnel
        self.from_client = from_client

    def connection_made(self, transport):   # (never called: the transport exists already)
        pass

    def data_received(self, data):
        self.tunnel.forward(self.from_client, data)

    def eof_received(self):
        return self.tunnel.peer_eof(self.from_client)

    def connection_lost(self, exc):
        self.tunnel.lost(self.from_client, exc)

    def pause_writing(self):
        # this side reads slower than the other sends: stop reading the other side
        self.tunnel.hold(not self.from_client, True)

    def resume_writing(self):
        self.tunnel.hold(not self.from_client, False)


class Tunnel:
    """One open WebSocket tunnel; lives in the worker's ``connections`` (its sweep checks the
    deadline, its drain calls ``start_drain``).  Attribute types: tunnel.pxd."""

    @property
    def current(self):
        return None                 # (no exchange in flight: a connection's field)

    def __init__(self, worker, client, backend, idle_s, api):
        self.worker = worker
        self.stats = worker.tunnel_stats
        self.clock = worker.clock
        self.client = client        # transports
        self.backend = backend
        self.idle_s = idle_s
        self.name = f"{api.name}@{api.env}"           # for the log
        self.api_key = (api.name, api.env)            # what a reload looks it up by
        self.fingerprint = api.fingerprint            # ... and compares
        self.drain_reason = "drain"
        self.deadline = self.clock.now + idle_s
        self.draining_until = 0.0
        self.eof_from = [False, False]    # [backend, client] half-closed toward the other
        # [backend, client]: that side's transport is plain TCP (a half-close of it can be
        # passed on; a TLS transport ends as a whole)
        self.plain = [backend.get_extra_info("sslcontext") is None,
                      client.get_extra_info("sslcontext") is None]
        self.gone = [False, False]        # [backend, client]: that side's connection is lost
        self.closed = False
        self.flushing = False             # closed, with bytes still to send (see close)

    def start(self, head, to_client, to_backend, client_paused, client_eof):
        """Take over both transports; send the client ``head`` (the 101) and what each side is
        owed first."""
        self.client.set_protocol(_End(self, True))
        self.backend.set_protocol(_End(self, False))
        self.worker.connections.add(self)
        self.stats.opened += 1
        self.stats.open += 1
        # (either transport may have been paused by the HTTP side: both are read from now on,
        # but the backend's not while the client is not reading; writing more than a
        # transport's high-water mark below pauses the other side through the ends)
        self.client.resume_reading()
        if client_paused:
            self.backend.pause_reading()
        else:
            self.backend.resume_reading()
        self.client.write(head + to_client)
        self.stats.to_client += len(to_client)     # (the 101 head is not the tunnel's)
        if to_backend:
            self.backend.write(to_backend)
            self.stats.to_backend += len(to_backend)
        if client_eof:      # the client half-closed while the backend answered
            self.peer_eof(True)
        if self.worker.draining:
            self.start_drain()
        else:
            # (a reload may have come between the upgrade request and this 101)
            self.check_api(self.worker.snapshot.apis)

    # -- from the ends ---------------------------------------------------------------------------
    def forward(self, from_client, data):
        if self.closed:
            return
        if from_client:
            self.backend.write(data)
            self.stats.to_backend += len(data)
        else:
            self.client.write(data)
            self.stats.to_client += len(data)
        if not self.draining_until:
            self.deadline = self.clock.now + self.idle_s

    def peer_eof(self, from_client):
        """One side half-closed: pass the FIN on where the other side can carry one."""
        if self.closed:
            return False
        other = self.backend if from_client else self.client
        self.eof_from[from_client] = True
        if self.plain[from_client] and other.can_write_eof():
            other.write_eof()
            if self.eof_from[not from_client]:
                self.close(_SIDE[from_client])
                return False
            return True         # keep reading the other direction
        self.close(_SIDE[from_client])
        return False

    def lost(self, from_client, exc):
        self.gone[from_client] = True
        if self.closed:
            if self.flushing and self.gone[0] and self.gone[1]:
                self.worker.connections.discard(self)   # flushed (or given up): all done
            return
        if exc is not None:
            # a reset or an error: the other side must not take it for an orderly end
            reset_on_close(self.client if not from_client else self.backend)
            self.abort(_SIDE[from_client])
        else:
            self.close(_SIDE[from_client])

    def hold(self, side_is_client, paused):
        """Flow control: stop (or go on) reading ``side_is_client``'s side."""
        if self.closed:
            return
        transport = self.client if side_is_client else self.backend
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    # -- ending ------------------------------------------------------------------------------------
    def close(self, reason):
        """Both sides end after what is buffered for them is sent: within the send timeout
        (a peer that does not read must not hold its socket and the buffer for ever), so
        until then the tunnel stays in the worker's connections, its deadline that bound."""
        if self._finish(reason):
            self.client.close()
            self.backend.close()
            if not (self.gone[0] and self.gone[1]) and (
                    self.client.get_write_buffer_size() or self.backend.get_write_buffer_size()):
                self.flushing = True
                self.deadline = self.clock.now + self.worker.limits.send_timeout_s
                self.worker.connections.add(self)

    def abort(self, reason):
        """Both sides end now (a timeout: what is buffered may never be read)."""
        if self._finish(reason):
            self.client.abort()
            self.backend.abort()

    def hard_close(self):
        """(The worker's sweep, when checking this tunnel failed.)"""
        if self.flushing:
            self._stop_flushing()
        else:
            self.abort("error")

    def _stop_flushing(self):
        """A closed tunnel's peer did not read what was left in time: drop it."""
        self.flushing = False
        self.worker.connections.discard(self)
        self.client.abort()
        self.backend.abort()

    def _finish(self, reason):
        if self.closed:
            return False
        self.closed = True
        self.worker.connections.discard(self)
        self.stats.open -= 1
        self.stats.closed[reason] += 1
        return True

    def check_deadline(self, now):
        if self.flushing:
            if now >= self.deadline:
                self._stop_flushing()
            return
        if not self.closed and now >= self.deadline:
            if self.draining_until:
                self.abort(self.drain_reason)
            else:
                log.info("websocket tunnel of %s idle for %.0f s: closed", self.name, self.idle_s)
                self.abort("idle")

    def check_api(self, apis):
        """After a reload (``apis``: the new snapshot's): is the API this tunnel was opened
        through still there, unchanged?  If not, a grace, then a close.  True if so."""
        api = apis.get(self.api_key)
        if api is not None and api.fingerprint == self.fingerprint:
            return True
        if not self.draining_until:
            self.start_drain("reload")
        return False

    def start_drain(self, reason="drain"):
        """The worker drains (or a reload changed this tunnel's API): a bounded grace, then a
        close."""
        if self.closed or self.draining_until:
            return          # (flushing: bounded already; draining: the first grace holds)
        self.drain_reason = reason
        grace = self.worker.limits.tunnel_drain_grace_s
        self.draining_until = self.clock.now + grace
        self.deadline = min(self.deadline, self.draining_until)


def open_tunnel(ex, upstream, head, rest, idle_s):
    """A backend answered ``ex``'s upgrade with 101 (``head``; ``rest``: what it sent after the
    head) on ``upstream`` (handed over by the pool): answer the client and splice."""
    conn = ex.conn
    worker = conn.worker
    if conn.closed or ex.done:
        upstream.abort()     # the client went away while the backend answered
        return
    switch = response_head(b"HTTP/1.1 101 Switching Protocols\r\n", head, _SWITCH_LINES,
                           ex.rid, b"", -1, b"", b"")
    ex.status = 101
    ex.response_started = True
    client_rest, client_paused, client_eof = conn.switch_protocols(ex)
    Tunnel(worker, conn.transport, upstream, idle_s, ex.api).start(switch, rest, client_rest,
                                                                     client_paused, client_eof)


_SWITCH_LINES = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"

