"""HTTP/1.1 messages for the data plane, interpreted: the twin of fastpath/http1.pyx over httptools.

The same API and the same decisions as the compiled form (llhttp's C API), made with httptools'
Python callbacks -- the same llhttp underneath, pinned to the same version
(``tests/fastpath/test_http1_differential.py`` feeds both the same byte streams).  Read the
compiled form's docstring for what a parser and a head are.  Where the mechanics differ:

* httptools cannot pause llhttp, so a read is parsed at once and its events are queued; the
  caller sees them in the same order as from the compiled form, one ``next()`` at a time;
* httptools hands a header over only when it is complete, and joins the pieces of one that
  arrives in several reads by concatenation (quadratic); a head that does not fit in one read
  is therefore collected (gateway.http.headbuffer's scheme) and fed in a few large pieces;
* a head is kept as its fields, not as offsets into the received bytes.
"""
from __future__ import annotations

from collections import deque

import httptools

from fastpath.http1_rules import (
    BAD_RESPONSE, TE_NOT_CHUNKED, TE_TWICE, TRAILERS_TOO_LARGE, refusal,
    BODY, END, ERROR, FIRST_DROPPED, HEAD, K_CONNECTION, K_CONTENT_LENGTH, K_DATE, K_DROP, K_EXPECT,
    K_FORWARDED_FOR, K_HOST, K_OTHER, K_STAGE, K_TRANSFER_ENCODING, NEED_DATA, PLAIN_CONNECTION,
    MAX_CONTENT_LENGTH, REQUEST_KINDS, RESPONSE_KINDS, connection_tokens, content_length_error,
    interim_with_body, is_chunked, keep_alive_of, lists_websocket, request_error,
    response_line_error, says_close, underscore_alias, version_error, websocket_error,
)

__all__ = ["NEED_DATA", "HEAD", "BODY", "END", "ERROR", "Head", "RequestParser",
           "ResponseParser", "request_head", "response_head"]

_BEGIN, _LEFTOVER = -1, -2          # queue markers: a message began; bytes after a response
_TERMINATOR = b"\r\n\r\n"
_MIN_BATCH = 4096


class Head:
    """A request or response head (see the compiled form)."""

    __slots__ = ("method", "status", "http_major", "http_minor", "content_length", "chunked",
                 "keep_alive", "upgrade", "websocket", "dated", "connection_tokens", "_names",
                 "_values",
                 "_kinds", "_target", "_host", "_stage", "_expect", "_te")

    def __init__(self):
        self.method = ""
        self.status = 0
        self.http_major = self.http_minor = 0
        self.content_length = -1
        self.chunked = self.keep_alive = self.upgrade = self.websocket = self.dated = False
        self.connection_tokens = False
        self._names: list[bytes] = []
        self._values: list[bytes] = []
        self._kinds: list[int] = []
        self._target = b""
        self._host = self._stage = self._expect = self._te = -1

    @property
    def field_count(self):
        return len(self._names)

    @property
    def version(self):
        return f"{self.http_major}.{self.http_minor}"

    def name(self, i):
        if not 0 <= i < len(self._names):
            raise IndexError(i)
        return self._names[i]

    def value(self, i):
        if not 0 <= i < len(self._values):
            raise IndexError(i)
        return self._values[i]

    def get(self, name, default=None):
        if not isinstance(name, bytes):
            raise TypeError(f"a field name is bytes, not {type(name).__name__}")
        lower = name.lower()
        for n, v in zip(self._names, self._values):
            if len(n) == len(lower) and n.lower() == lower:
                return v
        return default

    def get_all(self, name):
        if not isinstance(name, bytes):
            raise TypeError(f"a field name is bytes, not {type(name).__name__}")
        lower = name.lower()
        return [v for n, v in zip(self._names, self._values) if n.lower() == lower]

    def get_last(self, name, default=None):
        values = self.get_all(name)
        return values[-1] if values else default

    def items(self):
        return list(zip(self._names, self._values))

    def target(self):
        return self._target

    def host_value(self):
        return self._values[self._host] if self._host >= 0 else None

    def stage_value(self):
        return self._values[self._stage].strip() if self._stage >= 0 else None

    def expect_value(self):
        return self._values[self._expect] if self._expect >= 0 else None

    def drop_prefix(self, prefix):
        count = 0
        n = len(prefix)
        for i, name in enumerate(self._names):
            if len(name) >= n and self._kinds[i] < FIRST_DROPPED and name[:n].lower() == prefix:
                self._kinds[i] = K_DROP
                count += 1
        return count

    def _add(self, name, value, kind):
        self._names.append(name)
        self._values.append(value)
        self._kinds.append(kind)
        return len(self._names) - 1


class _Stop(Exception):
    """Raised from a parser callback: parse no further (what follows is a leftover)."""


class _Switch(Exception):
    """Raised from a parser callback: the response switched protocols; what follows its head is
    the other protocol's (kept raw)."""


class _Refused(Exception):
    """Raised from a parser callback: the message is refused with this answer."""

    def __init__(self, status, message, detail):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


class _Parser:
    is_request = True

    def __init__(self, max_uri=32768, max_header=32768, max_headers=131072, max_count=256,
                 head_guard=167936, underscores=False):
        self.max_uri = max_uri
        self.max_header = max_header
        self.max_headers = max_headers
        self.max_count = max_count
        self.head_guard = head_guard
        self.underscores = underscores
        self.head = None
        self.body = None
        self.in_message = False
        self.in_trailers = False
        self.error_status = 0
        self.error_message = None
        self.error_detail = None
        self.dropped_underscore = 0
        self.dropped_alias = 0
        self.skip_body = False
        self._events = deque()
        self._parser = self._make()
        self._building = None
        self._in_head = False
        self._buffer = None         # a head arriving in pieces: (bytearray, fed, skip)
        self._skipped = False       # a response to HEAD ended at its head
        self._progress = False      # this read ended a head or carried body bytes
        self._stall = 0
        self._chunked = False
        self._upgrade_body = None   # framing of an upgrade request's body (see _run)
        self.switch_expected = False    # a 101 to the next response opens a tunnel
        self._stopped = False       # after a protocol switch: nothing more is parsed
        self._raw = b""             # ... and what was read after it
        self._framing_only = False  # parsing the stand-in head of that body (see _run)
        self._message_head = None   # the head of the message being read (its events may wait)
        self._chunk = b""           # what _run_once feeds (see _after_skipped_head)
        self._carry = b""           # the last bytes fed before it
        self._carried_head = False  # a head was in progress when _chunk began
        self._heads_in_chunk = 0    # heads completed in _chunk

    def _make(self):
        parser = (httptools.HttpRequestParser if self.is_request else httptools.HttpResponseParser)(self)
        if self.is_request:
            parser.set_dangerous_leniencies(lenient_version=True, lenient_spaces_after_chunk_size=True)
        return parser

    # -- the API ---------------------------------------------------------------------------------
    def feed(self, data: bytes):
        if data is None:
            raise TypeError("feed() takes bytes, not None")
        if self.error_status:
            return
        if self._stopped:
            self._raw += data       # (bounded by the caller, who pauses reading meanwhile)
            return
        if self._buffer is not None:
            data = self._collect(data)
            if data is None:
                return
        self._progress = False
        self._run(data)
        if self.error_status:
            return
        if self._in_head:
            if self._buffer is None:
                self._buffer = [bytearray(data[-3:]), 0, len(data[-3:]), 0]
        elif self._chunked and self.in_message:
            # Reads of a chunked body that end no head and carry no body byte are chunk lines
            # or trailer fields.  Complete trailer fields are bounded exactly as in the compiled
            # form (on_header); this bounds what httptools holds of an unfinished one (or of
            # chunk lines), more loosely since it counts raw bytes.
            if self._progress:
                self._stall = 0
            else:
                self._stall += len(data)
                if self._stall > 2 * self.max_header + _MIN_BATCH:
                    self._refuse(*self._trailer_error())

    def next(self):
        while self._events:
            kind, payload = self._events.popleft()
            if kind == _BEGIN or kind == _LEFTOVER:
                continue
            if kind == HEAD:
                self.head = payload
            elif kind == BODY:
                self.body = payload
            return kind
        return ERROR if self.error_status else NEED_DATA

    def has_pending(self):
        return bool(self._events) or bool(self._raw)

    def detach(self):
        """After a protocol switch (see the compiled form): what was read after the message."""
        raw = bytes(self._raw)
        self._raw = b""
        return raw

    def leftover(self):
        # (after a protocol switch, the raw bytes kept count as the compiled form's unparsed ones)
        return bool(self._events) or bool(self._raw.strip(b"\r\n"))

    # -- feeding httptools ------------------------------------------------------------------------
    def _collect(self, data):
        """The head goes on in pieces: collect them, feed when complete or doubled."""
        buf, fed, skip, size = self._buffer
        start = len(buf) - 3 if len(buf) > 3 else 0
        buf += data
        pending = len(buf) - skip
        end = buf.find(_TERMINATOR, start)
        size = fed + (end + 4 - skip if end >= 0 else pending)
        self._buffer[3] = size
        if size > self.head_guard:
            self._buffer = None
            self._refuse(*self._too_large("head", size))
            return None
        if end < 0 and pending < (fed if fed > _MIN_BATCH else _MIN_BATCH):
            return None
        out = bytes(buf[skip:])
        self._buffer[1] = fed + pending
        del buf[:-3]
        self._buffer[2] = len(buf)
        return out

    def _run(self, data):
        # (a loop, not a recursion from the handler of the upgrade: a refusal raised while
        # handling another exception would be chained to it, and reads of many upgrade requests
        # would exhaust the stack)
        while data is not None:
            data = self._run_once(data)

    def _run_once(self, data):
        """Feed ``data`` to httptools; what is left to feed to a fresh parser, or None."""
        if self._skipped:
            # httptools was stopped at the head of a response to HEAD: what follows it in later
            # reads is judged by its bytes (see _after_skipped_head)
            if data.strip(b"\r\n"):
                self._events.append((_LEFTOVER, None))
            return None
        self._chunk = data
        self._carried_head = self._in_head
        self._heads_in_chunk = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The gateway switches no protocol: an upgrade request is a plain request, and what
            # follows it is HTTP.  httptools ends such a request at its head (llhttp reads the
            # rest as "the other protocol"), so a fresh parser goes on from there; when the
            # request has a body, it is first given a stand-in head carrying the body's framing
            # alone (nothing of it is reported: _framing_only), so that it reads the body by its
            # framing, as the compiled form does, and not as a next request.
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._parser = self._make()
            rest = data[offset:]
            if self._stopped:       # a WebSocket upgrade: what follows is the tunnel's
                self._raw = rest
                return None
            framing = self._upgrade_body
            if framing is not None:
                self._upgrade_body = None
                self._framing_only = True
                return b"PUT / HTTP/1.1\r\n" + framing + b"\r\n" + rest
            return rest or None
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Stop):
                return None
            if isinstance(cause, _Switch):
                buf, pos = self._head_end()
                self._raw = buf[pos:]
                return None
            if isinstance(cause, _Refused):
                self._refuse(cause.status, cause.message, cause.detail)
            else:
                self._refuse(500, "Internal error", f"parser callback: {cause!r}")
        except httptools.HttpParserError as exc:
            if self.is_request:
                status, message = request_error(str(exc), isinstance(
                    exc, httptools.HttpParserInvalidMethodError), data)
                self._refuse(status, message, f"parser: {exc}")
            else:
                self._refuse(502, BAD_RESPONSE, f"invalid response: {exc}")
        finally:
            # (only the tail: joining the whole read would copy it on every feed)
            self._carry = data[-3:] if len(data) >= 3 else (self._carry + data)[-3:]
        return None

    def _refuse(self, status, message, detail):
        if not self.error_status:
            self.error_status, self.error_message, self.error_detail = status, message, detail
            self._events.append((ERROR, None))

    def _too_large(self, what, size):
        return refusal(self.is_request, 494, "Request header too large" if what == "header" else
                       "Request headers too large", f"{what}: {size} bytes",
                       "response head too large")

    def _trailer_error(self):
        return refusal(self.is_request, *TRAILERS_TOO_LARGE)

    # -- httptools' callbacks -----------------------------------------------------------------------
    def on_message_begin(self):
        if self._framing_only:
            return
        self._events.append((_BEGIN, None))
        self.in_message = True
        self.in_trailers = False
        self._in_head = True
        self._building = Head()
        self._headers_bytes = 0
        self._count = 0
        self._trailer_bytes = 0
        self._url = b""
        self._says_close = False

    def on_url(self, url):
        if self._framing_only:
            return
        self._url += url
        if len(self._url) > self.max_uri:
            raise _Refused(414, "Request URI too large", f"{len(self._url)} bytes")

    def on_header(self, name, value):
        if self._framing_only:
            return
        if not self._in_head:
            self._trailer_bytes += len(name) + len(value)
            if self._trailer_bytes > self.max_header:
                raise _Refused(*self._trailer_error())
            return
        size = len(name) + len(value)
        if size > self.max_header:
            raise _Refused(*self._too_large("header", size))
        self._headers_bytes += size
        self._count += 1
        if self._headers_bytes > self.max_headers or self._count > self.max_count:
            raise _Refused(*self._too_large("headers", self._headers_bytes))
        head = self._building
        kind = (REQUEST_KINDS if self.is_request else RESPONSE_KINDS).get(
            name.decode("latin-1").lower(), K_OTHER)
        if self.is_request and kind == K_OTHER and b"_" in name:
            if underscore_alias(name):
                self.dropped_alias += 1
                return
            if not self.underscores:
                self.dropped_underscore += 1
                return
        index = head._add(name, value, kind)
        if kind == K_OTHER:
            return
        if kind == K_HOST:
            if head._host >= 0:
                raise _Refused(400, "Repeated Host header", "Host twice")
            head._host = index
        elif kind == K_TRANSFER_ENCODING:
            if head._te >= 0:
                raise _Refused(*refusal(self.is_request, *TE_TWICE))
            head._te = index
        elif kind == K_STAGE:
            if head._stage < 0:
                head._stage = index
        elif kind == K_EXPECT:
            if head._expect < 0:
                head._expect = index
        elif kind == K_DATE:
            head.dated = True
        elif kind == K_CONNECTION:
            if value.strip(b" \t").lower() not in PLAIN_CONNECTION:
                head.connection_tokens = True
            if says_close((value,)):
                self._says_close = True

    def on_headers_complete(self):
        if self._framing_only:
            self._framing_only = False      # the stand-in head: the body that follows is reported
            self._in_head = False
            return
        self._in_head = False
        self._buffer = None
        self._progress = True
        self._heads_in_chunk += 1
        head = self._building
        self._building = None
        self._message_head = head
        parser = self._parser
        major, minor = (int(x) for x in parser.get_http_version().split("."))
        head.http_major, head.http_minor = major, minor
        # (llhttp keeps an HTTP/1.0 message that says both keep-alive and close alive; close
        # wins, RFC 9112 §9.3)
        head.keep_alive = parser.should_keep_alive() and not self._says_close
        head.upgrade = parser.should_upgrade()
        head._target = self._url
        if self.is_request:
            raw_method = parser.get_method()
            head.method = raw_method.decode("ascii", "replace")
            refused = version_error(major, minor)
            if refused is not None:
                raise _Refused(*refused)
            if head.method == "CONNECT":
                raise _Refused(400, "CONNECT is not supported", "CONNECT request")
        else:
            head.status = parser.get_status_code()
            refused = response_line_error(major, minor, head.status)
            if refused is not None:
                raise _Refused(*refused)
        if head._te >= 0:
            head.chunked = True
            if not is_chunked(head._values[head._te]):
                raise _Refused(*refusal(self.is_request, *TE_NOT_CHUNKED))
            if self.is_request and major == 1 and minor == 0:
                raise _Refused(400, "Transfer-Encoding in an HTTP/1.0 request", "HTTP/1.0 chunked")
        else:
            for i, kind in enumerate(head._kinds):
                if kind == K_CONTENT_LENGTH:     # llhttp has checked it (and refused a second)
                    head.content_length = int(head._values[i])
                    break
            if head.content_length > MAX_CONTENT_LENGTH:
                raise _Refused(*content_length_error(self.is_request, head.content_length))
        if not self.is_request and interim_with_body(head.status, head.chunked,
                                                      head.content_length):
            raise _Refused(502, BAD_RESPONSE, "interim response with a body")
        self._chunked = head.chunked
        self._stall = 0
        if self.is_request and head.upgrade and lists_websocket(
                [v for n, v in zip(head._names, head._values) if n.lower() == b"upgrade"]):
            refused = websocket_error(head.method, minor, head.chunked, head.content_length)
            if refused is not None:
                raise _Refused(*refused)
            head.websocket = True
            self._stopped = True    # (httptools' upgrade exception follows the message's end)
        if self.is_request and head.upgrade and (head.chunked or head.content_length > 0):
            self._upgrade_body = (b"Transfer-Encoding: chunked\r\n" if head.chunked else
                                  b"Content-Length: %d\r\n" % head.content_length)
        self._events.append((HEAD, head))
        if self.switch_expected and head.status == 101:
            self._stopped = True
            self.in_message = False
            raise _Switch()
        if self.skip_body and head.status >= 200:
            # complete at its head, so llhttp's "read until close" does not apply to it
            head.keep_alive = keep_alive_of(head.http_major, head.http_minor, [
                v for v, k in zip(head._values, head._kinds) if k == K_CONNECTION])
            # a response to HEAD has no body whatever its framing says (llhttp does not know the
            # request's method: the compiled form tells it; here the message ends now)
            self._skipped = True
            self.in_message = False
            self._events.append((END, None))
            self._after_skipped_head()

    def _after_skipped_head(self):
        """A response to HEAD ends at its head: stop httptools there (it would read the body
        the head announces) and judge the rest of the read as the compiled form does, where
        llhttp is told there is no body: empty lines between messages are nothing, any other
        byte is a leftover (a body, a chunk line, another response).  httptools does not say
        where in the read it is, so the head's end is found by counting the heads it completed
        in this read (interim 1xx heads before it; none has a body) to as many blank lines."""
        buf, pos = self._head_end()
        if buf[pos:].strip(b"\r\n"):
            self._events.append((_LEFTOVER, None))
        raise _Stop()

    def _head_end(self):
        """(bytes, offset of the end of the last head completed in them)."""
        buf = (self._carry + self._chunk) if self._carried_head else self._chunk
        pos = 0
        try:
            for _ in range(self._heads_in_chunk):
                pos = buf.index(_TERMINATOR, pos) + 4
        except ValueError:      # (cannot happen with llhttp's strict line ends; distrust it)
            pos = len(buf) - 1
        return buf, pos

    def on_body(self, body):
        self._progress = True
        self._events.append((BODY, body))


    def on_message_complete(self):
        if self._upgrade_body is not None:
            return          # httptools ended an upgrade request at its head: its body follows
        self.in_message = False
        self._chunked = False
        head = self._message_head
        if head is not None and head.keep_alive and not self._parser.should_keep_alive():
            head.keep_alive = False     # 'Connection: close' in the trailer fields
        self._events.append((END, None))


class RequestParser(_Parser):
    is_request = True


class ResponseParser(_Parser):
    is_request = False

    def expect_switch(self, expected):
        """The next response answers a WebSocket upgrade (see the compiled form)."""
        self.switch_expected = expected

    def expect_no_body(self, skip):
        """The next response answers a HEAD request (see the compiled form)."""
        self.skip_body = skip
        if self._skipped:
            # llhttp may still be waiting for the body the last response to HEAD announced
            self._parser = self._make()
            self._skipped = False


# -- forwarding heads -------------------------------------------------------------------------------

def _kept(head: Head):
    tokens = (connection_tokens([v for v, k in zip(head._values, head._kinds) if k == K_CONNECTION])
              if head.connection_tokens else None)
    out = []
    for name, value, kind in zip(head._names, head._values, head._kinds):
        if kind >= FIRST_DROPPED or (tokens is not None and name.lower() in tokens):
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    return b"".join(out)


def request_head(head, method, target, host, client_ip, forwarded_host, request_id, framing,
                 https=False):
    values = (v.rstrip(b" \t,") for v, k in zip(head._values, head._kinds) if k == K_FORWARDED_FOR)
    chain = b"".join(v + b", " for v in values if v)    # an empty element is never sent on
    return b"".join((
        method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n", _kept(head),
        b"X-Forwarded-For: ", chain, client_ip,
        b"\r\nX-Forwarded-Proto: https\r\n" if https else b"\r\nX-Forwarded-Proto: http\r\n",
        b"X-Forwarded-Host: ", forwarded_host, b"\r\nX-Request-Id: ", request_id, b"\r\n",
        framing, b"\r\n"))


def response_head(status_line, head, lines, request_id, date_line, content_length, tail, body):
    length = b"Content-Length: %d\r\n" % content_length if content_length >= 0 else b""
    return b"".join((status_line, _kept(head) if head is not None else b"", lines,
                     b"X-Request-Id: ", request_id, b"\r\n", date_line, length, tail, b"\r\n",
                     body))
