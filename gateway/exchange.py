"""The exchange: one request and its answer, as it moves through the pipeline.

An :class:`Exchange` is created when a request head is complete and lives until its response is
written.  Stages read the request fields and may add what later stages need (the caller identity
of the authentication stages, the limits of throttling); the backend handler streams the answer
through :meth:`Exchange.respond_head`, :meth:`respond_body` and :meth:`respond_end`, which the
client connection owns.  Errors are answered through :meth:`fail` only.
"""
from __future__ import annotations

from email.utils import formatdate
from time import perf_counter, time

from fastpath import response_head
from gateway.errors import REASONS, error_body, reason

try:
    import cython

    _COMPILED = cython.compiled
except ImportError:  # pragma: no cover - without Cython only the interpreted form exists
    _COMPILED = False

STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, text.encode()) for code, text in REASONS.items()}
_STATUS_BY_CODE = [STATUS_LINES.get(code) for code in range(1000)]   # (indexed without boxing)
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"
_NOTHING = b""
_HEX = b"0123456789abcdef"


def monotonic():
    """Seconds of the monotonic clock, for durations: ``time.perf_counter()``.

    Compiled, a direct ``clock_gettime(CLOCK_MONOTONIC)`` (the clock perf_counter reads on
    Linux), instead of a Python call and a float object, four times per request.
    """
    if _COMPILED:
        # clock_gettime, CLOCK_MONOTONIC and the timespec ts come from exchange.pxd
        clock_gettime(CLOCK_MONOTONIC, cython.address(ts))
        return ts.tv_sec + ts.tv_nsec * 1e-9
    return perf_counter()


def date_line(when=None):
    """The ``Date: ...\r\n`` header line (RFC 9110 §6.6.1, IMF-fixdate) for a POSIX time."""
    return b"Date: " + formatdate(when, usegmt=True).encode("ascii") + b"\r\n"


class Clock:
    """The worker's coarse clock (event-loop time), advanced by the worker's sweep, and the
    ``Date`` line of the answers the gateway writes itself, renewed each second.

    Deadlines only need the sweep's precision; a typed field read is far cheaper per request
    than a call to the loop's clock or an attribute of the (Python) worker object.
    """

    def __init__(self, now):
        self.now = now
        self.second = 0
        self.date = b""
        self.advance(now)

    def advance(self, now):
        """Set the loop time; renew the Date line when the wall-clock second changed."""
        self.now = now
        wall = int(time())
        if wall != self.second:
            self.second = wall
            self.date = date_line(wall)


class Connection:
    """What an exchange needs of the client connection that carries it.

    A base class so that, compiled, these calls are C calls (gateway/http/server.py's
    ClientConnection is the implementation).
    """

    def __init__(self):
        self.draining = False
        self.corked = False
        self.tls = False
        self.clock = None
        self.deadline = 0.0
        self.deadline_kind = 0
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.reading_paused = False

    def write(self, data):
        raise NotImplementedError

    def uncork(self):
        raise NotImplementedError

    def exchange_finished(self, ex):
        raise NotImplementedError

    def abort_exchange(self, ex):
        raise NotImplementedError

    def log_error(self, ex, error):
        raise NotImplementedError

    def set_deadline(self, kind, seconds):
        raise NotImplementedError

    def body_backpressure(self, paused):
        raise NotImplementedError


class Handler:
    """A backend handler: what answers an exchange once the pipeline's stages let it through.

    The client connection calls these in order: ``on_head``, ``on_body`` for each request body
    chunk, ``on_request_end``; and ``on_timeout``, ``on_abort`` or ``on_client_paused`` when
    those happen.  ``timeout_s`` bounds the wait for the backend.
    """

    def __init__(self):
        self.timeout_s = 0.0

    def on_head(self, ex):
        pass

    def on_body(self, ex, chunk):
        pass

    def on_request_end(self, ex):
        pass

    def on_timeout(self, ex):
        pass

    def on_abort(self, ex):
        pass

    def on_client_paused(self, ex, paused):
        pass


class CompiledApi:
    """One API as served in one environment (built by gateway.snapshot; attribute types:
    gateway/exchange.pxd, so the hot path reads them as C fields)."""

    def __init__(self, name, env, group, handler, stages, stats, fingerprint=""):
        self.name = name
        self.env = env
        self.group = group
        self.handler = handler
        self.stages = stages      # tuple of callables stage(ex), run in order; may raise
        self.stats = stats        # the metrics of this (api, env), or None when only validating
        # what the API is made of in this environment (see gateway.snapshot): a reload that
        # changes it ends the WebSocket tunnels opened through the old one
        self.fingerprint = fingerprint
        # a CORS API's answer to preflights (a CompiledApi of the gateway.policy.cors handler),
        # None for the others: the backend's Access-Control-* fields are then left out too
        self.preflight = None

    def __repr__(self):
        return f"<CompiledApi {self.name}@{self.env}>"


class RequestIds:
    """Request ids: 32 hex characters, a random per-process prefix and a counter (bytes: they
    are written in heads; ``Exchange.request_id`` is the str, made when read)."""

    def __init__(self, prefix):
        self.prefix = prefix.encode("ascii")
        self.counter = 0

    def next(self):
        self.counter += 1
        if _COMPILED:
            # 16 hex digits of the counter after the prefix, written in C: no str, no format
            out = PyBytes_FromStringAndSize(cython.NULL, 32)
            dst = PyBytes_AS_STRING(out)
            memcpy(dst, PyBytes_AS_STRING(self.prefix), 16)
            n = self.counter
            for i in range(31, 15, -1):
                dst[i] = _HEX[n & 15]
                n >>= 4
            return out
        return b"%s%016x" % (self.prefix, self.counter)


class Exchange:
    """One request and its answer (attribute types: gateway/exchange.pxd).

    ``head`` is the request's head (fastpath.http1.Head): its method, target and header fields,
    read by the stages through its accessors (``head.get(b"x-name")``, ``head.items()``...).
    """

    def __init__(self, conn, method, head, version, keep_alive, started):
        self.setup(conn, method, head, version, keep_alive, started)

    def setup(self, conn, method, head, version, keep_alive, started):
        """Every field (the hot path makes exchanges with ``Exchange.__new__(Exchange)`` and
        this, a C call when compiled, instead of a Python call to the class)."""
        self.conn = conn
        self.method = method
        self.head = head
        self.raw_target = b""           # origin-form target (path and query) as received
        self.version = version
        self.keep_alive = keep_alive
        self.started = started
        self.caller = None              # set by authentication stages (app, user, account)
        self.path = ""                  # normalised path: what is routed is what is forwarded
        self.query = b""                # raw query string, without '?'
        self.host = ""
        self.host_bytes = b""
        self.rid = b""                  # the request id (see request_id)
        self.client_ip = conn.client_ip     # (typed on Connection: a C field read)
        self.env = "RELEASE"
        self.stage = None               # the X-Stage header (bytes) when the request had one
        self.api = None                 # the CompiledApi once routed
        self.handler = None             # its backend handler (api.handler), typed for C calls
        self.params = None
        self.rest = ""
        self.content_length = -1        # -1: no Content-Length
        self.chunked = False
        self.expect_continue = False
        self.upstream_started = 0.0
        self.upstream_elapsed = -1.0
        self.status = 0
        self.bytes_sent = 0
        self.response_started = False
        self.done = False
        self.error_code = ""
        self.handler_state = None       # owned by the backend handler
        self.request_complete = False
        self.body_received = 0
        self.upstream_addr = ""
        self.resp_chunked = False
        self.resp_until_close = False   # the response body ends when the connection closes
        self.head_request = method == "HEAD"
        self.held = None                # a body held until a stage's check (pipeline.HeldBody)
        self.body_digest = None         # its SHA-256 (hex bytes) once it was held whole
        self.next_stage = 0             # where the pipeline resumes after a stage suspended it
        self.waiting = None             # the task a stage waits on (pipeline.Wait)
        self.continued = False          # '100 Continue' was sent
        self.auth_state = None          # what an authentication stage keeps while it waits
        self.resp_lines = b""           # header lines stages add to the answer (CORS, limits)

    @property
    def has_body(self):
        return self.chunked or self.content_length > 0

    @property
    def request_id(self):
        """The request id as str (errors, logs); the head carries ``rid``, its bytes."""
        return self.rid.decode("ascii")

    # -- answering -----------------------------------------------------------------------
    def respond_head(self, status, head, lines, content_length, body=b""):
        """Start the response, in one write.

        ``head`` is a backend's response head whose end-to-end fields are forwarded (or None);
        ``lines`` are more complete ``Name: value\r\n`` lines (a mock's, an error's), never
        framing ones; ``content_length`` -1 means the length is unknown and the body is chunked
        (HTTP/1.1) or delimited by closing (HTTP/1.0); ``body`` is the whole body when it is
        known already (sent with the head).  The gateway's Date is added unless the backend
        sent one: RFC 9110 §6.6.1 wants one on every answer, from the gateway as an origin
        (errors, mocks) or as a proxy."""
        self.status = status
        self.response_started = True
        conn = self.conn
        if conn.draining or (not self.request_complete and (self.chunked or self.content_length > 0)):
            # a request whose body we did not read to the end cannot be followed by another
            self.keep_alive = False
        status_line = _STATUS_BY_CODE[status] if 0 <= status < 1000 else None
        if status_line is None:
            status_line = b"HTTP/1.1 %d %s\r\n" % (status, reason(status).encode())
        bodiless = self.head_request or status == 204 or status == 304 or status < 200
        tail = _NOTHING
        if content_length >= 0:
            if status == 204 or status == 304:
                content_length = -1         # (no Content-Length on these)
        elif not bodiless:
            if self.version == "1.1":
                self.resp_chunked = True
                tail = _CHUNKED
            else:
                self.keep_alive = False
                self.resp_until_close = True
        if not self.keep_alive:
            tail = _CLOSE if tail is _NOTHING else tail + _CLOSE
        elif self.version == "1.0":
            tail = _KEEP_ALIVE if tail is _NOTHING else tail + _KEEP_ALIVE
        if self.head_request or bodiless:
            body = _NOTHING
        elif body:
            self.bytes_sent += len(body)
        dated = head is not None and head.dated
        if head is not None and self.api is not None and self.api.preflight is not None:
            head.drop_prefix(b"access-control-")    # (the gateway's CORS fields replace them)
        if self.resp_lines:
            lines = lines + self.resp_lines
        conn.write(response_head(status_line, head, lines, self.rid,
                                 _NOTHING if dated else conn.clock.date, content_length, tail,
                                 body))

    def respond_body(self, chunk):
        if self.head_request or not chunk:
            return
        self.bytes_sent += len(chunk)
        if self.resp_chunked:
            self.conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            self.conn.write(chunk)

    def respond_end(self):
        if self.resp_chunked and not self.head_request:
            self.conn.write(b"0\r\n\r\n")
        self.conn.exchange_finished(self)

    def respond_full(self, status, lines, body):
        """A whole response at once (mocks, errors): one write."""
        self.respond_head(status, None, lines, len(body), body)
        self.conn.exchange_finished(self)

    def fail(self, error):
        """Answer with the gateway's own error, or cut the connection if the answer started."""
        if self.done:
            return
        self.error_code = error.code
        self.conn.log_error(self, error)
        if self.response_started:
            # too late for an error document: the client sees a truncated response
            self.keep_alive = False
            self.conn.abort_exchange(self)
            return
        if error.close:
            self.keep_alive = False
        self.respond_full(error.status, b"Content-Type: application/json\r\n" + error.lines,
                          error_body(error, self.request_id))
