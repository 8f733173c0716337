"""The client side of the data plane: one asyncio protocol per client connection.

Requests are parsed by httptools (llhttp, strict mode) and handed to the pipeline as soon as
their head is complete; bodies stream through the backend handler without being held whole.
The design keeps the per-request path free of coroutines and timers:

* the connection is a callback-driven state machine; nothing awaits per request;
* responses go out in request order: one exchange is answered at a time and a pipelined request
  that arrives meanwhile is queued with reading paused, so at most one read's worth is buffered;
* every wait is a ``deadline`` field checked by the worker's periodic sweep
  (:meth:`ClientConnection.check_deadline`), not a timer object per request.

Protocol-level problems (framing, limits) raise :class:`~gateway.errors.GatewayError` out of the
parser callbacks, which stops llhttp at once; :meth:`ClientConnection.data_received` turns them
into one error answer and closes the connection.
"""
from __future__ import annotations

import re
import socket
import struct
from collections import deque

import httptools

from fastpath import name_code, name_table, underscore_kind
from gateway.errors import (FramingError, GatewayError, InternalError, TooLarge, error_body,
                            reason)
from gateway.exchange import Connection, Exchange, monotonic
from gateway.http.headbuffer import HeadBuffer

# deadline kinds (UPSTREAM is set by backend handlers: waiting for / reading from a backend)
_NONE, _HEAD, _IDLE, _BODY, UPSTREAM, _SEND, _DRAIN, _LINGER = range(8)
_UPSTREAM = UPSTREAM

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_RESET = struct.pack("ii", 1, 0)     # SO_LINGER on, 0 s: close() sends a reset

# Headers the connection itself must look at while the head is parsed (lower-case).
_H_HOST, _H_CL, _H_TE, _H_EXPECT, _H_STAGE = 1, 2, 3, 4, 5
_WATCHED = {b"host": _H_HOST, b"content-length": _H_CL, b"transfer-encoding": _H_TE,
            b"expect": _H_EXPECT, b"x-stage": _H_STAGE}
_WATCHED_TABLE = name_table(_WATCHED)

_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
                                      "TRACE", "CONNECT")}

# A request line with a method token (RFC 9110 §9.1) llhttp does not know: 501, not 400 (the
# request is well-formed; the method is what the gateway does not implement).
_UNKNOWN_METHOD_LINE = re.compile(rb"(?:^|\n)[!#$%&'*+.^_`|~0-9A-Za-z-]+ [^ \r\n]+ HTTP/[0-9]\.[0-9]\r\n")

# Header names with '_' (underscore_kind): CGI and WSGI backends read X_Foo and X-Foo as the same
# variable, so Transfer_Encoding would reach them as framing the gateway never checked.
_UNDERSCORE_DROPPED, _UNDERSCORE_ALIAS = 1, 2


def _request_parser(protocol):
    """llhttp in strict mode, with the two leniencies RFC 9112 asks of a recipient: any
    HTTP/1.x version (a higher minor version is served as 1.1, §2.6; another major version gets
    505) and whitespace between a chunk size and its extensions (BWS, §7.1.1).  A space right
    after the ';' of a chunk extension stays refused: llhttp has no setting for it."""
    parser = httptools.HttpRequestParser(protocol)
    parser.set_dangerous_leniencies(lenient_version=True, lenient_spaces_after_chunk_size=True)
    return parser


# llhttp's reasons (httptools gives no other handle) for what is not malformed but not served
_NOT_SERVED = {
    # a method llhttp knows for RTSP or ICE only (DESCRIBE, SETUP, ...)
    "Invalid method for HTTP/x.x request": ("Method not implemented", 501),
    # "PRI * HTTP/2.0": an HTTP/2 client with prior knowledge
    "Expected HTTP/2 Connection Preface": ("HTTP version not supported", 505),
}


def _parse_error(exc):
    """The answer to a request llhttp refused."""
    message, status = _NOT_SERVED.get(str(exc), ("Malformed HTTP request", 400))
    return FramingError(message, f"parser: {exc}", status=status)


def _version(text):
    """The version an HTTP/1.x request is served as; 505 for any other major version."""
    if text[:2] != "1.":
        raise FramingError("HTTP version not supported", f"HTTP/{text}", status=505)
    return "1.1"


class _StopParsing(Exception):
    """Raised from a parser callback once the connection is lingering or closed: whatever the
    client sends after the answer that ended the connection is never parsed, routed or
    forwarded."""


class ClientConnection(Connection):
    """One client connection (an asyncio protocol).

    ``worker`` is the worker's shared state (snapshot, pool, ...).  No asyncio.Protocol base
    class: uvloop needs only the methods, and the compiled form is an extension type.
    """

    # attributes and their types: gateway/http/server.pxd

    def __init__(self, worker):
        self.worker = worker
        self.clock = worker.clock
        limits = self.limits = worker.limits
        self.max_uri = limits.max_uri_bytes
        self.max_header = limits.max_header_bytes
        self.max_headers = limits.max_headers_bytes
        self.max_count = limits.max_headers_count
        self.max_body = limits.max_body_bytes
        self.head_guard = limits.head_guard_bytes
        self.head_timeout = limits.head_timeout_s
        self.body_timeout = limits.body_timeout_s
        self.keepalive_timeout = limits.keepalive_timeout_s
        self.pipeline = worker.pipeline
        self.request_ids = worker.request_ids
        self.metrics = worker.metrics
        self.access_log = worker.access_log
        self.underscores = limits.underscores_in_headers
        self.transport = None
        self.parser = _request_parser(self)
        self.client_ip = ""
        self.url = b""
        self.headers = []
        self.in_head = False
        self.head_buffer = None      # a head arriving in pieces (gateway.http.headbuffer)
        self.headers_size = 0
        self.peer_eof = False        # the client half-closed: no request can follow
        self.header_count = 0
        self.body_seen = False       # the current read carried body bytes
        self.stall_bytes = 0         # bytes of a chunked body read without a body byte
        self.h_host = None
        self.h_te = None
        self.h_cl = None
        self.h_expect = None
        self.h_stage = None
        self.parsing = None          # exchange whose request is still being received
        self.current = None          # exchange being answered
        self.pending = deque()       # pipelined exchanges waiting for their turn
        self.reading_paused = False
        self.writing_paused = False
        self.deadline = 0.0
        self.deadline_kind = _NONE
        self.closed = False
        self.draining = worker.draining
        self.deferred_error = None
        self.requests = 0
        self.corked = False          # while True, writes are collected and sent as one
        self.lingering = False       # answered and half-closed; discarding what still comes
        self.linger_bytes = 0
        self.out = []

    # -- connection events ---------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        self.worker.connections.add(self)
        self.set_deadline(_HEAD, self.limits.head_timeout_s)

    def connection_lost(self, exc):
        self.closed = True
        self.worker.connections.discard(self)
        ex = self.current
        if ex is not None and not ex.done:
            ex.handler.on_abort(ex)
            self._account(ex, True)
        self.current = None
        self.pending.clear()
        self.parsing = None

    def pause_writing(self):
        self.writing_paused = True
        ex = self.current
        if ex is not None and not ex.done:
            ex.handler.on_client_paused(ex, True)
        if not self.lingering:      # lingering keeps its own (shorter) bound
            self.set_deadline(_SEND, self.limits.send_timeout_s)

    def resume_writing(self):
        self.writing_paused = False
        ex = self.current
        if ex is not None and not ex.done:
            ex.handler.on_client_paused(ex, False)
            self.set_deadline(_UPSTREAM, ex.handler.timeout_s)

    def data_received(self, data):
        if self.closed:
            return
        if self.lingering:
            self.linger_bytes += len(data)
            if self.linger_bytes > self.limits.linger_max_bytes:
                self.close()
            return
        buffer = self.head_buffer
        if buffer is not None:
            data = buffer.add(data)
            if buffer.size > self.head_guard:
                self.reject(TooLarge("Request headers too large", status=494))
                return
            if data is None:
                return
        self.body_seen = False
        self.corked = True
        try:
            self.parser.feed_data(data)
        except GatewayError as error:
            self.reject(error)
            return
        except httptools.HttpParserInvalidMethodError:
            # 501 when what failed is a request line with a method token llhttp does not know
            # (llhttp does not say where it failed: the read holds the line, or its end)
            token = _UNKNOWN_METHOD_LINE.search(data) is not None
            self.reject(FramingError("Method not implemented", "unknown method", status=501)
                        if token else FramingError("Malformed HTTP request", "invalid method"))
            return
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp stops after a request carrying Upgrade (or CONNECT).  Upgrades are not
            # proxied: the request was answered as a plain one, and what follows it on the wire
            # is parsed as the next request by a fresh parser.
            self._after_upgrade(data, upgrade)
            return
        except httptools.HttpParserCallbackError as exc:
            # httptools wraps what a callback raised; the original is the exception's context
            cause = exc.__context__
            if isinstance(cause, _StopParsing):
                return
            if isinstance(cause, GatewayError):
                self.reject(cause)
            else:
                self.worker.log.error("request callback failed", exc_info=cause or exc)
                self.reject(InternalError("Internal error", f"callback: {cause!r}"))
            return
        except httptools.HttpParserError as exc:
            self.reject(_parse_error(exc))
            return
        finally:
            self.uncork()
        if self.in_head:
            if self.head_buffer is None and not self.closed and not self.lingering:
                self.head_buffer = HeadBuffer(data)
        elif self.parsing is not None and self.parsing.chunked:
            # reads that carry no body byte of a chunked body are chunk lines or trailer
            # fields: bounded, so an endless trailer field cannot grow the worker
            if self.body_seen:
                self.stall_bytes = 0
            else:
                self.stall_bytes += len(data)
                if self.stall_bytes > self.max_header:
                    self.reject(TooLarge("Request trailer fields too large", status=494))

    def _after_upgrade(self, data, upgrade):
        offset = upgrade.args[0] if upgrade.args else len(data)
        self.parser = _request_parser(self)
        rest = data[offset:]
        if rest:
            self.data_received(rest)

    def eof_received(self):
        """The client half-closed (FIN).  Complete requests already received are answered
        (a client may half-close after sending); a request still being received can never
        complete, so it is an abort: its backend connection (a half-sent request is never
        pooled) and this connection are closed at once."""
        if self.lingering:
            return False
        self.peer_eof = True
        ex = self.current
        if self.in_head or self.parsing is not None:
            partial = self.parsing
            self.in_head = False
            self.head_buffer = None
            self.parsing = None
            if partial is not None and partial is ex and not ex.done:
                if ex.handler is not None:
                    ex.handler.on_abort(ex)
                self.abort_exchange(ex)
                return False
            self.pending.clear()    # a partial request queued behind the current one
        # complete requests are answered in order; exchange_finished closes after the last
        return ex is not None and not ex.done

    # -- parser callbacks (raise GatewayError to stop parsing) -----------------------------
    def on_message_begin(self):
        if self.lingering or self.closed:
            raise _StopParsing()
        self.in_head = True
        self.headers_size = 0
        self.header_count = 0
        self.url = b""
        self.headers = []
        self.h_host = self.h_te = self.h_cl = self.h_expect = self.h_stage = None
        if self.deadline_kind == _IDLE:
            self.set_deadline(_HEAD, self.head_timeout)

    def on_url(self, url):
        self.url += url
        if len(self.url) > self.max_uri:
            raise TooLarge("Request URI too large", status=414)

    def on_header(self, name, value):
        size = len(name) + len(value)
        self.headers_size += size
        self.header_count += 1
        if not self.in_head:
            # a trailer field of a chunked body: bounded, never forwarded (the body is re-framed
            # without trailers) and never mistaken for a header of the request
            if self.headers_size > self.max_header or self.header_count > self.max_count:
                raise TooLarge("Request trailer fields too large", status=494)
            return
        if size > self.max_header:
            raise TooLarge("Request header too large", f"header {name[:64]!r}: {size} bytes", status=494)
        if self.headers_size > self.max_headers or self.header_count > self.max_count:
            raise TooLarge("Request headers too large", status=494)
        underscore = underscore_kind(name)
        if underscore != 0 and (underscore == _UNDERSCORE_ALIAS or not self.underscores):
            self.metrics.count_dropped_header("alias" if underscore == _UNDERSCORE_ALIAS
                                              else "underscore")
            return
        watched = name_code(name, _WATCHED_TABLE, _WATCHED)
        if watched != 0:
            if watched == _H_HOST:
                if self.h_host is not None:
                    raise FramingError("Repeated Host header")
                self.h_host = value
            elif watched == _H_TE:
                if self.h_te is not None:
                    raise FramingError("Repeated Transfer-Encoding header")
                self.h_te = value
            elif watched == _H_CL:
                if self.h_cl is not None:
                    raise FramingError("Repeated Content-Length header")
                self.h_cl = value
            elif watched == _H_STAGE:
                self.h_stage = value.strip()
            else:
                self.h_expect = value
        self.headers.append((name, value))

    def on_headers_complete(self):
        self.in_head = False
        self.head_buffer = None     # this head is complete; the next one gets its own
        self.headers_size = 0       # from here on, what on_header sees are trailer fields
        self.header_count = 0
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            version = _version(version)
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii", "replace")
        if method == "CONNECT":
            raise FramingError("CONNECT is not supported", "CONNECT request")
        ex = Exchange(self, method, self.url, self.headers, version,
                      parser.should_keep_alive() and not self.draining, monotonic())
        ex.request_id = self.request_ids.next()
        ex.stage = self.h_stage
        self.requests += 1
        self._check_framing(ex)
        self.parsing = ex
        if self.current is None:
            self.current = ex
            self._start(ex)
        else:
            if len(self.pending) >= self.limits.max_pipelined:
                raise FramingError("Too many pipelined requests")
            ex.handler_state = []      # body chunks received before its turn
            self.pending.append(ex)
            self.pause_reading()

    def _check_framing(self, ex):
        """Refuse every request whose framing a backend could read differently."""
        te = self.h_te
        cl = self.h_cl
        if te is not None:
            if cl is not None:
                raise FramingError("Both Content-Length and Transfer-Encoding")
            if ex.version == "1.0":
                # RFC 9112 §6.1: faulty framing from an HTTP/1.0 client; close after answering
                raise FramingError("Transfer-Encoding in an HTTP/1.0 request")
            if te.strip().lower() != b"chunked":
                raise FramingError("Transfer-Encoding other than chunked is not supported",
                                   f"Transfer-Encoding: {te[:64]!r}")
            ex.chunked = True
        elif cl is not None:
            # llhttp has checked the digits; the limit is ours
            length = int(cl)
            if length > self.max_body:
                raise TooLarge("Request body too large", f"Content-Length {length}", status=413)
            ex.content_length = length
        host = self.h_host
        target = self.url
        if len(target) == 0 or target[0] != 47:     # not origin-form ('/...')
            host = self._absolute_form(ex, target, host)
        else:
            ex.raw_target = target
        if host is None:
            if ex.version == "1.1":
                raise FramingError("Missing Host header")
            host = b""
        ex.host = host.decode("latin-1")
        if self.h_expect is not None:
            if self.h_expect.lower() != b"100-continue":
                raise GatewayError("Unsupported Expect header", status=417)
            ex.expect_continue = ex.version == "1.1"

    def _absolute_form(self, ex, target, host):
        lower = target[:8].lower()
        if lower.startswith(b"http://"):
            rest = target[7:]
        elif lower.startswith(b"https://"):
            rest = target[8:]
        else:
            raise FramingError("Malformed request target", f"target {target[:64]!r}")
        slash = rest.find(b"/")
        query = rest.find(b"?")
        end = min(i for i in (slash, query, len(rest)) if i >= 0)
        authority = rest[:end]
        if not authority or b"@" in authority:
            raise FramingError("Malformed request target", "absolute-form authority")
        if host is not None and host.lower() != authority.lower():
            raise FramingError("Request target authority does not match Host",
                               f"authority {authority[:64]!r} host {host[:64]!r}")
        path = rest[end:]
        ex.raw_target = path if path[:1] == b"/" else b"/" + path
        return authority

    def on_body(self, chunk):
        self.body_seen = True
        ex = self.parsing
        if ex is None:
            return
        ex.body_received += len(chunk)
        if ex.body_received > self.max_body:
            raise TooLarge("Request body too large", status=413)
        if ex is self.current:
            if not ex.done:
                if self.deadline_kind == _BODY:  # the client is making progress
                    self.set_deadline(_BODY, self.body_timeout)
                ex.handler.on_body(ex, chunk)
        else:
            ex.handler_state.append(chunk)

    def on_message_complete(self):
        ex = self.parsing
        self.parsing = None
        self.stall_bytes = 0
        if ex is None:
            return
        ex.request_complete = True
        if ex is self.current and not ex.done:
            if self.deadline_kind == _BODY:
                self.set_deadline(_NONE, 0)
            ex.handler.on_request_end(ex)

    # -- running exchanges ----------------------------------------------------------------
    def _start(self, ex):
        """Route the exchange and run its stages; then its backend handler takes over."""
        queued_body = ex.handler_state
        ex.handler_state = None
        try:
            self.pipeline.enter(ex)
        except GatewayError as error:
            self.set_deadline(_NONE, 0)
            ex.fail(error)
            return
        handler = ex.handler
        if ex.expect_continue and not ex.request_complete:
            self.write(_CONTINUE)
        if (ex.chunked or ex.content_length > 0) and not ex.request_complete:
            self.set_deadline(_BODY, self.body_timeout)
        else:
            self.set_deadline(_NONE, 0)
        handler.on_head(ex)
        if queued_body and not ex.done:
            for chunk in queued_body:
                handler.on_body(ex, chunk)
        if ex.request_complete and not ex.done:
            handler.on_request_end(ex)

    def exchange_finished(self, ex):
        """Called once an exchange's response is fully written (or it was aborted)."""
        if ex.done:
            return
        ex.done = True
        self._account(ex, False)
        ex.handler_state = None   # the handler's state points back at ex: free it without the GC
        if self.current is ex:
            self.current = None
        if self.closed:
            return
        if not ex.keep_alive:
            if (ex.request_complete and self.parsing is None and not self.in_head
                    and not self.pending and not self.reading_paused):
                self.close()
            else:
                self.linger()    # the client may still be sending the request we answered
            return
        if self.deferred_error is not None:
            error, self.deferred_error = self.deferred_error, None
            self._write_error(error)
            return
        if self.pending:
            nxt = self.pending.popleft()
            self.current = nxt
            if not self.pending:
                # nothing else is queued: the request now answered may still need its body
                self.resume_reading()
            self._start(nxt)
            return
        if self.peer_eof:
            self.close()        # the client half-closed: nothing more can come
            return
        self.resume_reading()
        if self.parsing is None and not self.in_head:
            self.set_deadline(_IDLE, self.keepalive_timeout)

    def abort_exchange(self, ex):
        """The exchange cannot be answered properly any more: cut the connection.

        A response whose head was sent is truncated: the client sees the connection end
        before the response does (no last chunk, fewer bytes than its Content-Length).  When
        the body was to end with the connection, only a reset tells the client it is cut."""
        if not ex.done:
            ex.done = True
            self._account(ex, True)
            if ex.response_started:
                self.metrics.truncated += 1
        ex.handler_state = None
        if self.current is ex:
            self.current = None
        if ex.resp_until_close and ex.response_started:
            self.reset()
        else:
            self.close()

    def _account(self, ex, aborted):
        try:
            self.metrics.observe(ex, aborted)
            if self.access_log is not None:
                self.access_log.log(ex, monotonic() - ex.started, aborted)
        except Exception:  # observation must never break the data path
            self.worker.log.exception("observing an exchange failed")

    # -- errors ---------------------------------------------------------------------------
    def reject(self, error):
        """A protocol-level error: answer it (in order) and close the connection."""
        error.close = True
        self.in_head = False
        self.pause_reading()
        ex = self.parsing
        if ex is not None and ex is self.current and not ex.done:
            # the request being received is the one answered now: its answer is this error
            self.parsing = None
            if ex.handler is not None:
                ex.handler.on_abort(ex)
            ex.fail(error)
            return
        self.parsing = None
        if self.current is not None and not self.current.done:
            self.deferred_error = error
            self.pending.clear()
            return
        self._write_error(error)

    def _write_error(self, error):
        request_id = self.request_ids.next()
        self.worker.count_protocol_error(error)
        self.worker.log_protocol_error(self, error, request_id)
        body = error_body(error, request_id)
        head = (b"HTTP/1.1 %d %s\r\n%bContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"X-Request-Id: %s\r\nConnection: close\r\n\r\n"
                % (error.status, reason(error.status).encode(), self.clock.date, len(body),
                   request_id.encode()))
        self.write(head + body)
        self.linger()

    def log_error(self, ex, error):
        self.worker.log_exchange_error(ex, error)

    # -- I/O helpers ----------------------------------------------------------------------
    def write(self, data):
        if self.lingering:
            return              # the answer that ended the connection was the last
        if self.corked:
            self.out.append(data)
        elif not self.closed:
            self.transport.write(data)

    def uncork(self):
        """Send what was written while corked, in one system call."""
        self.corked = False
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()         # before writing: a failed write must not be retried forever
            if not self.closed:
                self.transport.write(data)

    def linger(self):
        """Close after an answer sent while the client may still be sending (an error, a
        request body not read to its end): send FIN, then read and discard for a while.

        Closing at once with unread bytes in the socket makes the kernel answer them with a
        reset, which can destroy the response in the client's receive buffer before the
        client reads it: the client would see a reset instead of our 413.  Bounded by
        ``linger_timeout_s`` and ``linger_max_bytes``.
        """
        if self.closed or self.lingering:
            return
        self.uncork()
        self.lingering = True
        self.in_head = False
        self.head_buffer = None
        self.parsing = None
        self.pending.clear()
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            self.close()
            return
        self.resume_reading()
        self.set_deadline(_LINGER, self.limits.linger_timeout_s)

    def close(self):
        if not self.closed:
            self.uncork()
            self.closed = True
            self.worker.connections.discard(self)
            self.transport.close()

    def hard_close(self):
        """Close without waiting to send what is buffered (a peer that does not read)."""
        if not self.closed:
            self.corked = False
            self.out.clear()
            self.closed = True
            self.worker.connections.discard(self)
            self.transport.abort()

    def reset(self):
        """Close with a reset (RST), not a FIN: the one way to tell a client reading a body to
        the end of the connection that it is cut short."""
        if not self.closed:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
            self.hard_close()

    def pause_reading(self):
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self):
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def body_backpressure(self, paused):
        """The backend cannot take the request body as fast as the client sends it."""
        if paused:
            self.pause_reading()
        elif not self.pending:
            self.resume_reading()

    def set_deadline(self, kind, seconds):
        self.deadline_kind = kind
        self.deadline = self.clock.now + seconds if kind != _NONE else 0.0

    def check_deadline(self, now):
        """Called by the worker's sweep; acts when this connection's deadline has passed."""
        if self.deadline == 0.0 or now < self.deadline or self.closed:
            return
        kind = self.deadline_kind
        self.deadline_kind = _NONE
        self.deadline = 0.0
        ex = self.current
        if kind == _UPSTREAM and ex is not None and not ex.done:
            ex.handler.on_timeout(ex)
        elif kind == _LINGER:
            self.hard_close()
        elif kind in (_HEAD, _BODY):
            if ex is not None and not ex.done and ex.response_started:
                self.abort_exchange(ex)
            else:
                self.reject(GatewayError("Request not received in time", status=408))
        else:  # idle keep-alive, a client not reading its response, drain
            if kind != _IDLE:
                self.hard_close()   # unsent data would otherwise hold the socket open
            if ex is not None and not ex.done:
                ex.handler.on_abort(ex)
                self.abort_exchange(ex)
            self.close()

    def start_drain(self):
        """SIGTERM: finish what is under way, then close; close idle connections now."""
        self.draining = True
        if self.lingering:
            pass                # ends by itself within linger_timeout_s
        elif self.current is None and self.parsing is None and not self.in_head:
            self.close()
        elif self.current is not None:
            self.current.keep_alive = False
