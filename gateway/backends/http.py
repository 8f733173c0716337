"""The ``http`` backend: forward the exchange to a backend over a pooled keep-alive connection.

A :class:`HttpBackend` is compiled once per (API, environment): the backend address, the path
template with environment variables already substituted, the method, the timeout and the retry
policy.  Each exchange gets a :class:`ProxyCall`, which streams the request body up and the
response body down, both ways with flow control, and decides what a failure means:

* connect failure: retried on a new connection as the ``retries`` policy allows
  (-1: idempotent methods once, POST/PATCH never; 0..10: that many times, any method, since a
  backend that never accepted the connection never saw the request);
* a pooled connection that the backend had closed (lost before any response byte): the request
  is replayed on a fresh connection when it is idempotent and its body is still held
  (<= ``replay_body_bytes``); this is the keep-alive race, and the replay does not use up
  ``retries``;
* lost after the request was sent on a fresh connection: retried only for idempotent methods;
* no response head within ``timeout_ms`` (or no byte for that long while streaming): 504.
"""
from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from gateway.errors import BackendTimeout, BackendUnavailable
from gateway.exchange import Handler, monotonic
from gateway.http.server import UPSTREAM
from gateway.http.tunnel import open_tunnel
from gateway.http.upstream import CHUNKED, LENGTH, UNTIL_CLOSE, UpstreamOwner
from fastpath import request_head

IDEMPOTENT = frozenset(("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"))
_METHODS = {m: m.encode() for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")}
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_CHUNK_END = b"0\r\n\r\n"
_UPGRADE = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
#: a WebSocket tunnel's idle timeout when the API sets none
DEFAULT_WEBSOCKET_IDLE_MS = 300000
_QUEUE_PAUSE_BYTES = 256 * 1024
_MAX_STALE_REPLAYS = 2


class BackendConfigError(ValueError):
    pass


class HttpBackend(Handler):
    """The compiled plan of an http backend for one API in one environment.

    Attribute types: gateway/backends/http.pxd.
    """

    def __init__(self, runtime, url, method, timeout_ms, retries, host_header, prefix,
                 tls_context=None, server_name=None, websocket_idle_ms=None, rewrite=None,
                 channel=None):
        self.runtime = runtime
        self.pool = runtime.pool if runtime is not None else None   # typed: C calls per request
        # a load balance channel (gateway.channels.plan.ChannelPlan): ``url`` is then the path,
        # and each call's member is picked by the channel
        self.channel = channel
        if channel is not None:
            url = ("https://" if tls_context is not None else "http://") + "channel" + url
        (scheme, hostname, port, port_error, credentials, fragment, netloc, path,
         query) = _split(url)
        if scheme not in ("http", "https"):
            raise BackendConfigError(f"backend url {url!r}: expected http:// or https://")
        if (scheme == "https") != (tls_context is not None):
            raise BackendConfigError(f"backend url {url!r}: TLS settings apply to https:// only")
        if not hostname:
            raise BackendConfigError(f"backend url {url!r}: no host")
        if port_error is not None:
            raise BackendConfigError(f"backend url {url!r}: {port_error}")
        port = port or (443 if tls_context is not None else 80)
        if credentials:
            raise BackendConfigError(f"backend url {url!r}: credentials in the url are not allowed")
        if fragment:
            raise BackendConfigError(f"backend url {url!r}: a fragment is not allowed")
        # the pool's key: where, and how (an https backend's context and the name it checks:
        # connections of other TLS settings are never shared); a channel's members have theirs
        self.key = None if channel is not None else (
            hostname, port, tls_context,
            (server_name or hostname) if tls_context is not None else None)
        # the pool's list of idle connections to this backend, looked up once
        self.idle = (runtime.pool.slot(self.key)
                     if runtime is not None and channel is None else None)
        if channel is None:
            self.authority = netloc
            self.host_header = (host_header or netloc).encode("latin-1")
        else:
            self.authority = f"channel {channel.name}"
            # the client's Host goes to the members, unless the API sets one
            self.host_header = host_header.encode("latin-1") if host_header else None
        # (a client without Host: HTTP/1.0)
        self.channel_host = channel.name.encode() if channel is not None else b""
        self.path_parts = _path_template(path or "/")
        self.replay_limit = runtime.limits.replay_body_bytes if runtime is not None else 0
        self.path_has_params = len(self.path_parts) > 1
        self.base_query = query.encode("latin-1")
        self.method = method.encode() if method and method != "ANY" else None
        self.timeout_s = timeout_ms / 1000.0
        self.retries = retries
        self.prefix = prefix
        self.websocket_idle_s = (websocket_idle_ms or DEFAULT_WEBSOCKET_IDLE_MS) / 1000.0
        # backend parameters and signature (gateway.backends.rewrite), or None: most APIs
        # have neither, and their heads are built by request_head alone
        self.rewrite = rewrite

    # -- handler interface (called by the client connection) --------------------------------
    def on_head(self, ex):
        call = ProxyCall.__new__(ProxyCall)
        call.setup(self, ex)
        ex.handler_state = call
        call.dispatch(False)

    def on_body(self, ex, chunk):
        ex.handler_state.send_body(b"%x\r\n%b\r\n" % (len(chunk), chunk) if ex.chunked else chunk)

    def on_request_end(self, ex):
        call = ex.handler_state
        if ex.chunked:
            call.send_body(_CHUNK_END)
        ex.conn.set_deadline(UPSTREAM, self.timeout_s)   # wait for the response

    def on_timeout(self, ex):
        call = ex.handler_state
        where = self.authority
        if call is not None:
            if call.target is not None:
                where = call.target.authority
                # (still connecting: a connect that outlasts the call is a dead member)
                self.channel.failed(call.target, call.connecting,
                                    "no connection in time" if call.connecting
                                    else "no answer in time")
            call.drop_upstream()
        ex.fail(BackendTimeout("Backend timeout", f"no response from {where} "
                                                   f"within {self.timeout_s * 1000:.0f} ms"))

    def on_abort(self, ex):
        call = ex.handler_state
        if call is not None:
            call.drop_upstream()

    def on_client_paused(self, ex, paused):
        call = ex.handler_state
        if call is not None and call.upstream is not None:
            call.upstream.pause_reading(paused)

    # -- request building -----------------------------------------------------------------
    def build_head(self, ex):
        if self.rewrite is not None:
            return self._rewritten_head(ex)
        parts = self.path_parts
        if self.path_has_params:
            params = ex.params or {}
            pieces = []
            for i in range(len(parts)):
                pieces.append(params.get(parts[i], "") if i % 2 else parts[i])
            path = "".join(pieces)
        else:
            path = parts[0]
        if self.prefix and ex.rest:
            n = len(path)
            path = (path[:n - 1] if n > 0 and path[n - 1] == "/" else path) + ex.rest
        target = path.encode("latin-1")
        query = ex.query
        if self.base_query:
            query = self.base_query + b"&" + query if query else self.base_query
        if query:
            target += b"?" + query
        method = self.method or _METHODS.get(ex.method) or ex.method.encode()
        if ex.chunked:
            framing = _CHUNKED
        elif ex.content_length >= 0 and (ex.content_length > 0 or method not in (b"GET", b"HEAD")):
            framing = b"Content-Length: %d\r\n" % ex.content_length
        else:
            framing = b""
        if ex.head.websocket:
            framing = _UPGRADE      # (hop-by-hop: the client's are not copied; it has no body)
        # the client's end-to-end fields are copied from its head, the gateway's own added
        host = self.host_header
        if host is None:
            host = ex.host_bytes or self.channel_host
        return request_head(ex.head, method, target, host, ex.conn.client_ip_bytes,
                            ex.host_bytes, ex.rid, framing, ex.conn.tls, ex.forward_chain)

    def _rewritten_head(self, ex):
        """build_head for an API with backend parameters or a signature key."""
        rewrite = self.rewrite
        values, pairs, lines = rewrite.path_values(ex)
        parts = self.path_parts
        path = "".join(values.get(parts[i], "") if i % 2 else parts[i] for i in range(len(parts)))
        if self.prefix and ex.rest:
            path = (path[:-1] if path.endswith("/") else path) + ex.rest
        target = path.encode("latin-1")
        query = rewrite.query(ex.query, pairs)
        if self.base_query:
            query = self.base_query + b"&" + query if query else self.base_query
        if query:
            target += b"?" + query
        method = self.method or _METHODS.get(ex.method) or ex.method.encode()
        framing = self._framing(ex, method)
        host = self.host_header
        if host is None:
            host = ex.host_bytes or self.channel_host
        head = request_head(ex.head, method, target, host, ex.conn.client_ip_bytes,
                            ex.host_bytes, ex.rid, framing, ex.conn.tls, ex.forward_chain)
        return rewrite.finish_head(head, lines, method, target, host, ex.body_digest)

    def _framing(self, ex, method):
        if ex.head.websocket:
            return _UPGRADE
        if ex.chunked:
            return _CHUNKED
        if ex.content_length >= 0 and (ex.content_length > 0 or method not in (b"GET", b"HEAD")):
            return b"Content-Length: %d\r\n" % ex.content_length
        return b""


#: url -> what HttpBackend needs of it (see _split); bounded, emptied when full
_SPLIT = {}
_SPLIT_MAX = 4096


def _split(url):
    """``(scheme, hostname, port, port_error, credentials, fragment, netloc, path, query)`` of
    ``url``, remembered: the APIs of a document share a few backend addresses, and a compile
    builds one HttpBackend per (API, environment)."""
    found = _SPLIT.get(url)
    if found is None:
        parts = urlsplit(url)
        port_error = None
        try:
            port = parts.port
        except ValueError as exc:
            port = None
            port_error = str(exc)
        found = (parts.scheme, parts.hostname, port, port_error,
                 bool(parts.username or parts.password), parts.fragment, parts.netloc,
                 parts.path, parts.query)
        if len(_SPLIT) >= _SPLIT_MAX:
            _SPLIT.clear()
        _SPLIT[url] = found
    return found


def _path_template(path: str) -> list:
    """Split a backend path into [literal, param, literal, param, ..., literal]."""
    parts = []
    pos = 0
    while True:
        start = path.find("{", pos)
        if start < 0:
            parts.append(path[pos:])
            return parts
        end = path.find("}", start)
        if end < 0:
            raise BackendConfigError(f"backend path {path!r}: unclosed '{{'")
        parts.append(path[pos:start])
        parts.append(path[start + 1:end].rstrip("+"))
        pos = end + 1


class ProxyCall(UpstreamOwner):
    """One exchange's trip to the backend; the owner of an UpstreamConnection while it lasts.

    Attribute types: gateway/backends/http.pxd.
    """

    def __init__(self, backend, ex):
        self.setup(backend, ex)

    def setup(self, backend, ex):
        """Every field (made with ``ProxyCall.__new__`` and this on the hot path: C calls)."""
        self.backend = backend
        self.ex = ex
        self.upstream = None
        self.head = self.backend.build_head(self.ex)    # typed: a C call when compiled
        self.queued = None             # body bytes received before a connection was there
        self.queued_bytes = 0
        self.sent = None               # body bytes written so far, kept while small (a replay)
        self.replay_bytes = len(self.head)
        self.replayable = self.replay_bytes <= self.backend.replay_limit
        self.idempotent = self.ex.method in IDEMPOTENT    # (self.ex, self.backend: typed C fields)
        retries = self.backend.retries
        self.retries_left = (1 if self.idempotent else 0) if retries < 0 else retries
        self.stale_replays = 0
        self.connecting = False
        self.finished = False
        self.target = None             # a channel's member serving the call (picked at dispatch)
        self.tried = None              # the members tried before it (retries go elsewhere)

    # -- sending ----------------------------------------------------------------------------
    def dispatch(self, fresh):
        backend = self.backend
        # the upstream time runs from here: a new connection's connect and TLS handshake count
        self.ex.upstream_started = monotonic()
        if backend.channel is None:
            idle = backend.idle
        else:
            if self.target is None and not self._pick():
                return
            idle = self.target.idle
        conn = None if fresh else backend.pool.take(idle)
        if conn is not None:
            self.attach(conn)
        else:
            self.connecting = True
            backend.runtime.spawn(self.connect())

    async def connect(self):
        backend = self.backend
        runtime = backend.runtime
        while True:
            target = self.target
            try:
                conn = await runtime.pool.connect(backend.key if target is None else target.key)
                if conn.closed:
                    # accepted and closed before we could send: nothing reached the backend
                    raise ConnectionResetError("closed by the backend right after connecting")
            except (OSError, TimeoutError) as exc:
                if self.finished or self.ex.done:
                    self._settle()
                    return
                if target is not None:      # (a failed TLS handshake too: the request
                    backend.channel.failed(target, True,     # never reached that member)
                                           f"connect: {exc or type(exc).__name__}")
                # (the one backend of a url refuses its certificate again: no retry there;
                # a channel's next member may be fine)
                if self.retries_left > 0 and (target is not None
                                              or not isinstance(exc, ssl.SSLError)):
                    self.retries_left -= 1
                    if target is None or self._pick_another():
                        continue
                    return
                self.connecting = False
                where = backend.authority if target is None else target.authority
                self._settle()
                detail = f"connect to {where}: {exc or type(exc).__name__}"
                self.ex.fail(BackendUnavailable("Backend unavailable", detail))
                return
            break
        self.connecting = False
        if self.finished or self.ex.done:
            conn.close()
            self._settle()
            return
        self.attach(conn)

    # -- channel members --------------------------------------------------------------------
    def _pick(self):
        """Pick the channel member for the call; answer 502 at once when none can serve."""
        channel = self.backend.channel
        target = channel.pick(self.ex, self.tried)
        if target is None:
            self.connecting = False
            self.finished = True
            if self.tried:
                detail = f"channel {channel.name}: no other member to retry on"
            else:
                detail = f"channel {channel.name}: no healthy member"
            self.ex.fail(BackendUnavailable("Backend unavailable", detail))
            return False
        self.target = target
        return True

    def _pick_another(self):
        """A retry: the member tried so far is set aside, another one picked."""
        target = self.target
        if self.tried is None:
            self.tried = [target.index]
        else:
            self.tried.append(target.index)
        self._settle()
        return self._pick()

    def _settle(self):
        """The call is done with its member (its in-flight count)."""
        target = self.target
        if target is not None:
            self.target = None
            self.backend.channel.release(target)

    def attach(self, conn):
        self.upstream = conn
        ex = self.ex
        queued = self.queued
        if queued is None:
            data = self.head
        else:
            self.queued = None
            self.queued_bytes = 0
            for part in queued:
                self._remember(part)
            queued.insert(0, self.head)
            data = b"".join(queued)
        conn.send(self, data, ex.head_request, ex.head.websocket)
        if ex.conn.reading_paused and not ex.request_complete:
            ex.conn.body_backpressure(False)

    def send_body(self, data):
        conn = self.upstream
        if conn is not None:
            self._remember(data)
            conn.write(data)
        elif not self.finished:
            if self.queued is None:
                self.queued = []
            self.queued.append(data)
            self.queued_bytes += len(data)
            if self.queued_bytes > _QUEUE_PAUSE_BYTES:
                self.ex.conn.body_backpressure(True)

    def _remember(self, data):
        if self.replayable:
            self.replay_bytes += len(data)
            if self.replay_bytes > self.backend.replay_limit:
                self.replayable = False
                self.sent = None
            else:
                if self.sent is None:
                    self.sent = []
                self.sent.append(data)

    def _retry(self, fresh):
        """Send the whole request again on a new connection (it is all still held)."""
        parts = (self.sent or []) + (self.queued or [])
        self.queued = parts or None
        self.queued_bytes = sum(len(b) for b in parts)
        self.sent = None
        self.replay_bytes = len(self.head)
        self.upstream = None
        self.dispatch(fresh)

    def drop_upstream(self):
        self.finished = True
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.close()
        if not self.connecting:
            self._settle()      # (a connect under way settles when it returns)

    # -- events from the upstream connection ----------------------------------------------------
    def upstream_head(self, conn, status, head, body):
        ex = self.ex
        ex.upstream_elapsed = monotonic() - ex.upstream_started
        ex.conn.set_deadline(UPSTREAM, self.backend.timeout_s)   # from now on, a read-idle timeout
        if self.target is not None:
            self.backend.channel.succeeded(self.target)
        if head.chunked:
            ex.respond_head(status, head, b"", -1, body)
            return CHUNKED
        ex.respond_head(status, head, b"", head.content_length, body)
        return LENGTH if head.content_length >= 0 else UNTIL_CLOSE

    def upstream_body(self, chunk):
        ex = self.ex
        ex.respond_body(chunk)
        conn = ex.conn
        if conn.deadline_kind == UPSTREAM:
            conn.deadline = conn.clock.now + self.backend.timeout_s

    def upstream_done(self, conn, reusable):
        self.upstream = None
        self.finished = True
        if self.target is not None:
            self._settle()
        ex = self.ex
        if reusable and ex.request_complete and self.queued is None:
            self.backend.pool.give_back(conn, ex.conn.clock.now)
        else:
            conn.close()
        ex.respond_end()

    def upstream_bad_response(self, conn, detail):
        self.upstream = None
        self.finished = True
        where = self.backend.authority
        if self.target is not None:
            where = self.target.authority
            self.backend.channel.failed(self.target, False, f"invalid response: {detail}")
            self._settle()
        self.ex.fail(BackendUnavailable("Backend returned an invalid response",
                                        f"{where}: {detail}"))

    def upstream_switched(self, conn, head, rest):
        self.upstream = None
        self.finished = True
        if self.target is not None:
            self._settle()
        ex = self.ex
        ex.upstream_elapsed = monotonic() - ex.upstream_started
        open_tunnel(ex, conn.transport, head, rest, self.backend.websocket_idle_s)

    def upstream_lost(self, conn, exc):
        self.upstream = None
        ex = self.ex
        if ex.done or self.finished:
            self._settle()
            return
        target = self.target
        what = "closed the connection" if exc is None else f"failed: {exc}"
        stale = conn.uses > 1 and not conn.got_bytes
        if target is not None and not stale:
            self.backend.channel.failed(target, False, what)
        if not ex.response_started and not conn.got_bytes and self.replayable:
            if stale and self.idempotent and self.stale_replays < _MAX_STALE_REPLAYS:
                # keep-alive race: the backend closed the pooled connection as we reused it
                self.stale_replays += 1
                self._retry(fresh=True)
                return
            if self.idempotent and self.retries_left > 0:
                self.retries_left -= 1
                if target is None or self._pick_another():
                    self._retry(fresh=True)
                return
        self.finished = True
        where = self.backend.authority
        if target is not None:
            where = target.authority
            self._settle()
        ex.fail(BackendUnavailable("Backend unavailable", f"{where} {what}"))
