"""The client side of the data plane: one asyncio protocol per client connection.

Requests are parsed by ``fastpath.http1`` (llhttp, strict mode; compiled, llhttp's C API with no
Python object per header) and handed to the pipeline as soon as their head is complete; bodies
stream through the backend handler without being held whole.  The design keeps the per-request
path free of coroutines and timers:

* the connection is a callback-driven state machine; nothing awaits per request;
* one request is served at a time: the parser stops at the end of each request and the bytes
  of a pipelined one stay unparsed (reading paused) until the answer to the current one is out,
  so responses go out in order and at most one read is buffered;
* every wait is a ``deadline`` field checked by the worker's periodic sweep
  (:meth:`ClientConnection.check_deadline`), not a timer object per request.

A request the parser refuses (framing, limits, versions) is answered with the parser's status
and the connection closed (:meth:`ClientConnection.reject`).
"""
from __future__ import annotations

import fastpath
from fastpath.http1_rules import BODY, END, HEAD, NEED_DATA
from gateway.errors import FramingError, GatewayError, TooLarge, error_body, reason
from gateway.exchange import Connection, Exchange, monotonic
from gateway.http.sockets import reset_on_close
from gateway.pipeline import HeldBody
from gateway.tls import client_identity

# What a Host (or an absolute-form authority) may hold (RFC 3986 §3.2.2-3: a reg-name, an IPv4
# address or an IP literal in brackets, then ':' and a port): anything else (a space, '/', '@',
# '\\', controls) is refused, so no backend or log ever reads a Host as something else
_HOST_BYTES = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               b"-._~%!$&'()*+,;=:[]")


def _valid_host(host):
    """Whether ``host`` is made of the bytes a Host may hold (checked once per connection
    and Host, not per request)."""
    return not host.translate(None, _HOST_BYTES)

# deadline kinds (UPSTREAM is set by backend handlers: waiting for / reading from a backend)
UPSTREAM = 4
_NONE, _HEAD, _IDLE, _BODY, _UPSTREAM, _SEND, _DRAIN, _LINGER, _FLUSH, _WAIT = range(10)   # C constants

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# (the parser's event numbers, as C constants of the compiled form)
_E_NEED_DATA, _E_HEAD, _E_BODY, _E_END = NEED_DATA, HEAD, BODY, END


class ClientConnection(Connection):
    """One client connection (an asyncio protocol).

    ``worker`` is the worker's shared state (snapshot, pool, ...).  No asyncio.Protocol base
    class: uvloop needs only the methods, and the compiled form is an extension type.
    """

    # attributes and their types: gateway/http/server.pxd

    def __init__(self, worker, tls=False):
        self.worker = worker
        self.tls = tls               # a TLS connection (X-Forwarded-Proto: https)
        self.tls_client = None       # its verified client certificate's subject (mTLS)
        self.clock = worker.clock
        limits = self.limits = worker.limits
        self.max_body = limits.max_body_bytes
        self.head_timeout = limits.head_timeout_s
        self.body_timeout = limits.body_timeout_s
        self.keepalive_timeout = limits.keepalive_timeout_s
        self.pipeline = worker.pipeline
        self.request_ids = worker.request_ids
        self.metrics = worker.metrics
        self.access_log = worker.access_log
        self.transport = None
        self.send_bytes = None       # transport.write, bound once (not looked up per write)
        self.parser = fastpath.RequestParser(limits.max_uri_bytes, limits.max_header_bytes,
                                    limits.max_headers_bytes, limits.max_headers_count,
                                    limits.head_guard_bytes, limits.underscores_in_headers)
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.last_host = None        # the Host of the last request and its str (clients keep
        self.last_host_str = ""      # to one host per connection: decoded once)
        self.current = None          # the exchange being received or answered
        self.running = False         # _run is on the stack (an answer may come from within it)
        self.peer_eof = False        # the client half-closed: no request can follow
        self.dropped_underscore = 0  # the parser's drop counts already reported
        self.dropped_alias = 0
        self.reading_paused = False
        self.body_paused = False     # reading paused by the backend's backpressure
        self.writing_paused = False
        self.deadline = 0.0
        self.deadline_kind = _NONE
        self.closed = False
        self.draining = worker.draining
        self.requests = 0
        self.corked = False          # while True, writes are collected and sent as one
        self.lingering = False       # answered and half-closed; discarding what still comes
        self.linger_bytes = 0
        self.out = []

    # -- connection events ---------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self.send_bytes = transport.write
        if self.tls:    # (uvloop calls this once the handshake is done)
            allowed, self.tls_client = client_identity(transport.get_extra_info("ssl_object"))
            if not allowed:
                self.worker.count_tls_failure("client_certificate")
                transport.abort()               # no certificate where one is required
                self.closed = True
                return
            self.worker.tls_handshakes += 1
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        self.client_ip_bytes = self.client_ip.encode()
        self.worker.connections.add(self)
        self.set_deadline(_HEAD, self.limits.head_timeout_s)

    def connection_lost(self, exc):
        self.closed = True
        self.worker.connections.discard(self)
        ex = self.current
        if ex is not None and not ex.done:
            _cancel_wait(ex)
            ex.handler.on_abort(ex)
            self._account(ex, True)
        self.current = None

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
            if ex.waiting is not None:      # (a stage waits: the backend is not called yet)
                self.set_deadline(_WAIT, ex.waiting.timeout_s)
                return
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
        self.parser.feed(data)
        self._run()

    def eof_received(self):
        """The client half-closed (FIN).  Complete requests already received are answered
        (a client may half-close after sending); a request still being received can never
        complete, so it is an abort: its backend connection (a half-sent request is never
        pooled) and this connection are closed at once.  So is a request whose stage is
        waiting (an authorizer call): a FIN then is taken as the client gone, as nginx takes
        it, since nothing has been asked of the backend yet -- the call is cancelled."""
        if self.lingering:
            return False
        if self.tls:
            # TLS has no half-close the transport keeps: it closes after this whatever we
            # answer, and connection_lost aborts what is in flight
            return False
        self.peer_eof = True
        ex = self.current
        if ex is not None and not ex.done:
            if not ex.request_complete or ex.waiting is not None:
                # (a client that leaves while a stage waits for it, an authorizer call, is
                # taken as gone: nothing has been asked of the backend yet)
                ex.handler.on_abort(ex)
                self.abort_exchange(ex)
                return False
            return True     # answered first; exchange_finished closes after the last one
        if self.parser.in_message:
            return False    # a partial head: nothing to answer
        return self.parser.has_pending()    # pipelined requests still to answer

    # -- reading requests ------------------------------------------------------------------
    def _run(self):
        """Take the parser's events until it needs more bytes, or until the request received
        must be answered before the next is read."""
        if self.running:
            return
        self.running = True
        self.corked = True
        parser = self.parser
        try:
            while not self.closed and not self.lingering:
                ex = self.current
                if ex is not None and ex.request_complete:
                    # the next request waits, unparsed, until this one is answered
                    if parser.has_pending():
                        self.pause_reading()
                    return
                event = parser.next()
                if event == _E_NEED_DATA:
                    break
                if event == _E_HEAD:
                    self._on_head()
                elif event == _E_BODY:
                    self._on_body(parser.body)
                elif event == _E_END:
                    self._on_end()
                else:
                    self.reject(FramingError(parser.error_message, parser.error_detail,
                                             status=parser.error_status))
                    return
        except GatewayError as error:
            self.reject(error)
            return
        finally:
            self.running = False
            self.uncork()
        if self.closed or self.lingering:
            return
        ex = self.current
        if ex is None:
            # between requests: the next one has begun (its head timeout runs from its first
            # byte), or the connection is idle
            if self.peer_eof:
                self.close()        # answered everything the client sent before its FIN (a
                return              # partial head after it can never complete)
            if parser.in_message:
                if self.deadline_kind != _HEAD:
                    self.set_deadline(_HEAD, self.head_timeout)
            elif self.deadline_kind != _IDLE:
                self.set_deadline(_IDLE, self.keepalive_timeout)
            self.resume_reading()
        elif not ex.request_complete:
            # the request's body is still to come, and reading may have been paused while an
            # earlier request was answered (this one was read with it, pipelined)
            if self.peer_eof:
                ex.handler.on_abort(ex)     # its FIN came first: it can never complete
                self.abort_exchange(ex)
            elif not self.body_paused:
                self.resume_reading()

    def _on_head(self):
        head = self.parser.head
        version = "1.1" if head.http_minor >= 1 else "1.0"   # (the parser refuses major != 1)
        ex = Exchange.__new__(Exchange)
        ex.setup(self, head.method, head, version, head.keep_alive and not self.draining,
                 monotonic())
        ex.rid = self.request_ids.next()
        if head.websocket:
            # the parser stops after this request: if it is not switched to a tunnel, nothing
            # more can be read on this connection
            ex.keep_alive = False
        stage = head.stage_value()
        if stage is not None:
            ex.stage = stage
        self.requests += 1
        self.current = ex
        self.body_paused = False
        parser = self.parser
        if (parser.dropped_underscore != self.dropped_underscore
                or parser.dropped_alias != self.dropped_alias):
            self._count_drops()
        self._check_framing(ex, head)
        self._start(ex)

    def _count_drops(self):
        parser = self.parser
        for _ in range(parser.dropped_underscore - self.dropped_underscore):
            self.metrics.count_dropped_header("underscore")
        for _ in range(parser.dropped_alias - self.dropped_alias):
            self.metrics.count_dropped_header("alias")
        self.dropped_underscore = parser.dropped_underscore
        self.dropped_alias = parser.dropped_alias

    def _check_framing(self, ex, head):
        """What the parser leaves to the connection: the body limit, the target and Host."""
        if head.chunked:
            ex.chunked = True
        elif head.content_length >= 0:
            if head.content_length > self.max_body:
                raise TooLarge("Request body too large", f"Content-Length {head.content_length}",
                               status=413)
            ex.content_length = head.content_length
        host = head.host_value()
        target = head.target()
        if len(target) == 0 or target[0] != 47:     # not origin-form ('/...')
            host = self._absolute_form(ex, target, host)
        else:
            ex.raw_target = target
        if host is None:
            if ex.version == "1.1":
                raise FramingError("Missing Host header")
            host = b""
        ex.host_bytes = host
        if host != self.last_host:
            if not _valid_host(host):
                raise FramingError("Invalid Host header", f"host {host[:64]!r}")
            self.last_host = host
            self.last_host_str = host.decode("latin-1")
        ex.host = self.last_host_str
        expect = head.expect_value()
        if expect is not None:
            if expect.lower() != b"100-continue":
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

    def _on_body(self, chunk):
        ex = self.current
        if ex is None:
            return
        ex.body_received += len(chunk)
        if ex.body_received > self.max_body:
            raise TooLarge("Request body too large", status=413)
        if not ex.done:
            if self.deadline_kind == _BODY:  # the client is making progress
                self.set_deadline(_BODY, self.body_timeout)
            if ex.held is not None:
                ex.held.add(chunk)      # (bounded by the body limit above)
                if ex.waiting is not None and not self.body_paused:
                    self.body_backpressure(True)    # held back while a stage waits
            else:
                ex.handler.on_body(ex, chunk)

    def _on_end(self):
        ex = self.current
        if ex is None:
            return
        ex.request_complete = True
        if not self.parser.head.keep_alive:
            ex.keep_alive = False       # 'Connection: close' in the trailer fields
        if not ex.done:
            if self.deadline_kind == _BODY:
                self.set_deadline(_NONE, 0)
            if ex.waiting is not None:
                pass                # (the stage's resumption sees the request complete)
            elif ex.held is not None:
                self._release(ex)
            else:
                ex.handler.on_request_end(ex)

    def _release(self, ex):
        """A held body is complete: the check of the stage that asked for it runs, then the
        rest of the pipeline, then the backend gets the request (or the client the refusal)."""
        held = ex.held
        ex.body_digest = held.hasher.hexdigest().encode()
        finish = held.finish
        held.finish = None
        try:
            pending = finish(ex, ex.body_digest) if finish is not None else None
            if pending is None:
                pending = self.pipeline.resume(ex)
        except GatewayError as error:
            ex.fail(error)
            return
        except Exception as exc:
            self._stage_failed(ex, exc)
            return
        self._advance(ex, pending)

    # -- running exchanges ----------------------------------------------------------------
    def _start(self, ex):
        """Route the exchange and run its stages; then its backend handler takes over."""
        try:
            pending = self.pipeline.enter(ex)
        except GatewayError as error:
            self.set_deadline(_NONE, 0)
            ex.fail(error)
            return
        except Exception as exc:    # a stage's bug: a 500 for this request, not a dead connection
            self.set_deadline(_NONE, 0)
            self._stage_failed(ex, exc)
            return
        self._advance(ex, pending)

    def _stage_failed(self, ex, exc):
        self.worker.log.error("a stage of %s failed", ex.api.name if ex.api is not None else "?",
                              exc_info=exc)
        ex.fail(GatewayError("Internal error"))

    # -- stages that suspend the exchange (see gateway/pipeline.py) -------------------------
    def _advance(self, ex, pending):
        """A stage suspended the exchange (``pending``: a HeldBody or a Wait), or, with None,
        every stage has passed and the backend takes over."""
        if ex.done:
            return
        if pending is None:
            self._proceed(ex)
        elif isinstance(pending, HeldBody):
            if ex.held is None:
                ex.held = pending
            else:                   # (part of the body was held back during a wait)
                ex.held.finish = pending.finish
            if ex.request_complete:
                self._release(ex)
                return
            self._continue(ex)
            self.set_deadline(_BODY, self.body_timeout)
            self.body_backpressure(False)
        else:
            if not ex.request_complete and (ex.chunked or ex.content_length > 0):
                if ex.held is None:
                    ex.held = HeldBody()    # body bytes already read are kept; no more is read
                self.body_backpressure(True)
            # (without a body, reading goes on: a client leaving is seen and ends the wait)
            task = self.worker.loop.create_task(pending.awaitable)
            ex.waiting = pending
            pending.awaitable = task
            task.add_done_callback(self._resumed)
            self.set_deadline(_WAIT, pending.timeout_s)

    def _resumed(self, task):
        """A stage's wait ended: go on with the pipeline (or answer its refusal)."""
        ex = self.current
        if ex is None or ex.waiting is None or ex.waiting.awaitable is not task:
            return          # (the exchange was answered, aborted or timed out meanwhile)
        waiting = ex.waiting
        ex.waiting = None
        if ex.done or self.closed:
            return
        self.corked = True
        try:
            # (cancelled by someone else than this connection: the stage gave up)
            error = waiting.error if task.cancelled() else task.exception()
            if error is not None:
                if not isinstance(error, GatewayError):
                    self.worker.log.error("a stage of %s failed: %r", ex.api.name, error)
                    error = GatewayError("Internal error")
                ex.fail(error)
                return
            self.set_deadline(_NONE, 0)
            self._advance(ex, self.pipeline.resume(ex))
        except GatewayError as error:
            ex.fail(error)
        except Exception as exc:
            self._stage_failed(ex, exc)
        finally:
            self.uncork()

    def _continue(self, ex):
        """Ask for the body ('100 Continue') if the client waits for one, once (a request
        without a body waits for nothing: RFC 9110 §10.1.1 lets a server omit the 100, and
        WebSocket clients do not expect one before the 101)."""
        if ex.expect_continue and not ex.continued and not ex.request_complete:
            ex.continued = True
            self.write(_CONTINUE)

    def _proceed(self, ex):
        """Every stage passed: the backend gets the request, with what was held of its body."""
        held = ex.held
        ex.held = None
        if ex.request_complete:
            self.set_deadline(_NONE, 0)
        elif ex.chunked or ex.content_length > 0:
            self._continue(ex)
            self.set_deadline(_BODY, self.body_timeout)
        else:
            self.set_deadline(_NONE, 0)
        handler = ex.handler
        handler.on_head(ex)
        if held is not None:
            for chunk in held.chunks:
                if ex.done:
                    return
                handler.on_body(ex, chunk)
        if ex.done:
            return
        if ex.request_complete:
            handler.on_request_end(ex)
        else:
            self.body_backpressure(False)

    def exchange_finished(self, ex):
        """Called once an exchange's response is fully written (or it was aborted)."""
        if ex.done:
            return
        ex.done = True
        _cancel_wait(ex)          # (answered while a stage waited: a refusal, an error)
        self._account(ex, False)
        ex.handler_state = None   # the handler's state points back at ex: free it without the GC
        if self.current is ex:
            self.current = None
        if self.closed:
            return
        if not ex.keep_alive:
            if ex.request_complete and not self.parser.has_pending() and not self.parser.in_message:
                self.close()
            else:
                self.linger()    # the client may still be sending the request we answered
            return
        if not self.running:
            self._run()         # a pipelined request may be waiting, unparsed

    def switch_protocols(self, ex):
        """The exchange is answered by a protocol switch (a WebSocket tunnel takes this
        connection's transport over): account for it and let go.  Returns what the client sent
        after its request (the tunnel's first bytes to the backend) and whether the client's
        transport holds more than it should (then the tunnel does not read the backend yet)."""
        self.uncork()
        ex.done = True
        self._account(ex, False)
        ex.handler_state = None
        if self.current is ex:
            self.current = None
        self.closed = True
        self.worker.connections.discard(self)
        return self.parser.detach(), self.writing_paused, self.peer_eof

    def abort_exchange(self, ex):
        """The exchange cannot be answered properly any more: cut the connection.

        A response whose head was sent is truncated: the client sees the connection end
        before the response does (no last chunk, fewer bytes than its Content-Length).  When
        the body was to end with the connection, only a reset tells the client it is cut."""
        if not ex.done:
            ex.done = True
            _cancel_wait(ex)
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
        """A protocol-level error: answer it and close the connection."""
        error.close = True
        self.pause_reading()
        ex = self.current
        if ex is not None and not ex.done:
            # the request being received is the one refused: its answer is this error
            if ex.handler is not None:
                ex.handler.on_abort(ex)
            ex.fail(error)
            if not self.closed:
                self.linger()
            return
        self._write_error(error)

    def _write_error(self, error):
        rid = self.request_ids.next()
        request_id = rid.decode("ascii")
        self.worker.count_protocol_error(error)
        self.worker.log_protocol_error(self, error, request_id)
        body = error_body(error, request_id)
        head = (b"HTTP/1.1 %d %s\r\n%bContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"X-Request-Id: %s\r\nConnection: close\r\n\r\n"
                % (error.status, reason(error.status).encode(), self.clock.date, len(body),
                   rid))
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
            self.send_bytes(data)

    def uncork(self):
        """Send what was written while corked, in one system call."""
        self.corked = False
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()         # before writing: a failed write must not be retried forever
            if not self.closed:
                self.send_bytes(data)

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
            self.transport.close()
            if self.transport.get_write_buffer_size():
                # the transport closes once what it holds is sent: a client that does not read
                # must not keep the socket and the buffer for ever, so the sweep still watches
                # this connection (connection_lost takes it out when the close completes)
                self.set_deadline(_FLUSH, self.limits.send_timeout_s)
            else:
                self.worker.connections.discard(self)

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
            reset_on_close(self.transport)
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
        """The backend cannot take the request body as fast as the client sends it (or can
        again)."""
        self.body_paused = paused
        if paused:
            self.pause_reading()
        else:
            ex = self.current
            if ex is not None and not ex.request_complete:
                self.resume_reading()   # (once it is complete, a pipelined request waits)

    def set_deadline(self, kind, seconds):
        self.deadline_kind = kind
        self.deadline = self.clock.now + seconds if kind != _NONE else 0.0

    def check_deadline(self, now):
        """Called by the worker's sweep; acts when this connection's deadline has passed."""
        if self.deadline == 0.0 or now < self.deadline:
            return
        if self.closed:
            if self.deadline_kind == _FLUSH:    # its close did not complete in time
                self.deadline = 0.0
                self.worker.connections.discard(self)
                self.transport.abort()
            return
        kind = self.deadline_kind
        self.deadline_kind = _NONE
        self.deadline = 0.0
        ex = self.current
        if kind == _UPSTREAM and ex is not None and not ex.done:
            ex.handler.on_timeout(ex)
        elif kind == _WAIT and ex is not None and not ex.done:
            error = ex.waiting.error if ex.waiting is not None else None
            _cancel_wait(ex)
            ex.fail(error if error is not None else GatewayError("Internal error"))
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
        elif self.current is None and not self.parser.in_message:
            self.close()
        elif self.current is not None:
            self.current.keep_alive = False


def _cancel_wait(ex):
    """End the wait of a stage whose exchange is over (answered, aborted, timed out)."""
    waiting = ex.waiting
    if waiting is not None:
        ex.waiting = None
        waiting.awaitable.cancel()
