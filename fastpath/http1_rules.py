"""What both forms of :mod:`fastpath.http1` decide alike: event and field-kind numbers, which
header names mean what, and the answer to a message that is refused.

Kept in one plain module that both forms import, so that the compiled parser (llhttp's C API)
and its interpreted twin (httptools, the same llhttp underneath) cannot drift apart on policy;
only the mechanics differ between them.  Nothing here runs per request on the compiled form's
success path: the name tables are turned into C lookups at import, and the functions below run
only when a message is refused.
"""
from __future__ import annotations

import re

# -- events returned by Parser.next() -------------------------------------------------------------
NEED_DATA, HEAD, BODY, END, ERROR = 0, 1, 2, 3, 4

# -- what a header field is to the gateway (kinds below FIRST_DROPPED are forwarded) ---------------
K_OTHER, K_STAGE, K_DATE = 0, 1, 2
FIRST_DROPPED = 3
K_DROP, K_CONNECTION, K_CONTENT_LENGTH, K_TRANSFER_ENCODING, K_FORWARDED_FOR, K_HOST, K_EXPECT = \
    range(3, 10)

_HOP_BY_HOP = ("keep-alive", "proxy-connection", "te", "trailer", "upgrade")

#: request header fields (lower-case) -> kind; the others are K_OTHER
REQUEST_KINDS = {
    "host": K_HOST, "content-length": K_CONTENT_LENGTH, "transfer-encoding": K_TRANSFER_ENCODING,
    "connection": K_CONNECTION, "expect": K_EXPECT, "x-stage": K_STAGE,
    "x-forwarded-for": K_FORWARDED_FOR,
    # set by the gateway itself, or hop-by-hop: never forwarded as the client sent them
    **{name: K_DROP for name in _HOP_BY_HOP + ("proxy-authorization", "x-forwarded-proto",
                                               "x-forwarded-host", "x-request-id")},
}
#: response header fields (lower-case) -> kind
RESPONSE_KINDS = {
    "content-length": K_CONTENT_LENGTH, "transfer-encoding": K_TRANSFER_ENCODING,
    "connection": K_CONNECTION, "date": K_DATE,
    **{name: K_DROP for name in _HOP_BY_HOP + ("proxy-authenticate", "x-request-id")},
}

#: Connection header options that name no other header field
PLAIN_CONNECTION = frozenset((b"keep-alive", b"close"))


def kind_of(name: bytes, request: bool) -> int:
    return (REQUEST_KINDS if request else RESPONSE_KINDS).get(name.decode("latin-1").lower(), K_OTHER)


def underscore_alias(name: bytes) -> bool:
    """A request field name with '_' that a CGI/WSGI backend reads as one the gateway drops or
    sets itself (``Transfer_Encoding``, ``X_Forwarded_For``): dropped even when names with '_'
    are kept."""
    return kind_of(name.replace(b"_", b"-"), True) >= FIRST_DROPPED


def connection_tokens(values) -> frozenset:
    """The field names listed by Connection header values (lower-case bytes)."""
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip(b" \t").lower()
            if token and token not in PLAIN_CONNECTION:
                tokens.add(token)
    return frozenset(tokens)


def _connection_options(connection_values) -> set:
    tokens = set()
    for value in connection_values:
        tokens.update(t.strip(b" \t").lower() for t in value.split(b","))
    return tokens


def says_close(connection_values) -> bool:
    """Whether the Connection values hold ``close``: the connection ends after this message
    whatever else they say (RFC 9112 §9.3; llhttp keeps an HTTP/1.0 message that says both
    ``keep-alive`` and ``close`` alive, so both forms apply this on top of it)."""
    return b"close" in _connection_options(connection_values)


def keep_alive_of(major: int, minor: int, connection_values) -> bool:
    """Whether a message that is complete at its head leaves the connection open, by its
    version and Connection values (llhttp's rule when no body is read to the close)."""
    tokens = _connection_options(connection_values)
    if b"close" in tokens:
        return False
    return (major > 0 and minor > 0) or b"keep-alive" in tokens


def is_chunked(value: bytes) -> bool:
    """A Transfer-Encoding value of exactly ``chunked`` (any case) as llhttp reads one: spaces
    and tabs before it, spaces only after it (after a tab, llhttp does not take the body as
    chunked, so neither may the gateway: such a message is refused)."""
    return value.lstrip(b" \t").rstrip(b" ").lower() == b"chunked"


# -- refused messages ------------------------------------------------------------------------------

# What a client is told of a backend's response the gateway refuses (the reason is for the log)
BAD_RESPONSE = "Backend returned an invalid response"

# Refusals that exist on both sides: (request status, request message, request detail,
# response detail); see refusal()
TE_TWICE = (400, "Repeated Transfer-Encoding header", "Transfer-Encoding twice",
            "Transfer-Encoding twice from a backend")
TE_NOT_CHUNKED = (400, "Transfer-Encoding other than chunked is not supported", "Transfer-Encoding",
                  "Transfer-Encoding other than chunked from a backend")
TRAILERS_TOO_LARGE = (494, "Request trailer fields too large", "trailer fields",
                      "response trailer fields too large")


def refusal(request: bool, status: int, message: str, detail: str,
            backend_detail: str) -> tuple[int, str, str]:
    """(status, message, detail) of a refused message: a request's own, or for a backend's
    response always 502 BAD_RESPONSE, ``backend_detail`` for the log."""
    if request:
        return status, message, detail
    return 502, BAD_RESPONSE, backend_detail

# A request line with a method token (RFC 9110 §9.1) llhttp does not know: 501, not 400 (the
# request is well-formed; the method is what the gateway does not implement).  llhttp says only
# that the method is unknown, so the bytes of the refused message (from its start, empty lines
# allowed before it) are matched against a whole request line.
_UNKNOWN_METHOD_LINE = re.compile(
    rb"(?:\r?\n)*[!#$%&'*+.^_`|~0-9A-Za-z-]+ [^ \r\n]+ HTTP/[0-9]\.[0-9]\r\n")

# llhttp's reasons for what is not malformed but not served
_NOT_SERVED = {
    # a method llhttp knows for RTSP or ICE only (DESCRIBE, SETUP, ...)
    "Invalid method for HTTP/x.x request": (501, "Method not implemented"),
    # "PRI * HTTP/2.0": an HTTP/2 client with prior knowledge (the whole preface, or a broken one)
    "Pause on PRI/Upgrade": (505, "HTTP version not supported"),
    "Expected HTTP/2 Connection Preface": (505, "HTTP version not supported"),
}


def request_error(reason: str, invalid_method: bool, data: bytes) -> tuple[int, str]:
    """(status, public message) for a request llhttp refused with ``reason``; ``data``: the
    refused message's bytes from its start, as far as they were read."""
    if invalid_method:
        if _UNKNOWN_METHOD_LINE.match(data) is not None:
            return 501, "Method not implemented"
        return 400, "Malformed HTTP request"
    return _NOT_SERVED.get(reason, (400, "Malformed HTTP request"))


# The largest Content-Length either form takes (2**63 - 1: a signed 64-bit length); llhttp
# reads up to 2**64 - 1.  A larger one is refused, never wrapped.
MAX_CONTENT_LENGTH = (1 << 63) - 1


def content_length_error(request: bool, length: int) -> tuple[int, str, str]:
    """(status, message, detail) for a Content-Length over MAX_CONTENT_LENGTH."""
    return refusal(request, 413, "Request body too large", f"Content-Length {length}",
                   f"Content-Length {length} from a backend")


def response_line_error(major: int, minor: int, status: int) -> tuple[int, str, str] | None:
    """A backend's status line the gateway does not take: a version other than 1.x (it speaks
    HTTP/1.1 to backends), or a status over 599 (RFC 9110 §15: 100-599).  (Below 100 llhttp
    refuses.)"""
    if major != 1 or status > 599:
        return 502, BAD_RESPONSE, f"HTTP/{major}.{minor} {status} from a backend"
    return None


def interim_with_body(status: int, chunked: bool, content_length: int) -> bool:
    """An interim (1xx) response that announces a body: it has none (RFC 9110 §15.2, it ends
    at its head), yet llhttp would read one; refused rather than guessed (101, an upgrade, is
    judged by the gateway)."""
    return 100 <= status < 200 and status != 101 and (chunked or content_length > 0)


def version_error(major: int, minor: int) -> tuple[int, str, str] | None:
    """An HTTP version this gateway does not serve: (status, message, detail), else None.
    Any 1.x is served (a higher minor version as 1.1, RFC 9112 §2.6)."""
    if major != 1:
        return 505, "HTTP version not supported", f"HTTP/{major}.{minor}"
    return None


# -- WebSocket upgrades ---------------------------------------------------------------------------
# A request that asks to switch to WebSocket (RFC 6455 §4.1: llhttp's upgrade flag -- an Upgrade
# field and 'upgrade' in Connection -- with 'websocket' among the Upgrade protocols) ends the
# HTTP conversation on its connection: both parsers stop at its end and keep what follows as raw
# bytes (the tunnel's first bytes, or nothing to read when the backend refuses).  Other upgrades
# (h2c, ...) are plain requests: Upgrade is hop-by-hop and never forwarded.

def lists_websocket(upgrade_values) -> bool:
    """Whether Upgrade field values name the ``websocket`` protocol (any case, any version
    suffix refused: RFC 6455 names it without one)."""
    for value in upgrade_values:
        for token in value.split(b","):
            if token.strip(b" \t").lower() == b"websocket":
                return True
    return False


def websocket_error(method: str, minor: int, chunked: bool, content_length: int):
    """(status, message, detail) for a WebSocket upgrade request that cannot open a tunnel
    (RFC 6455 §4.1: a GET of HTTP/1.1 or later, no body), else None."""
    if method != "GET":
        return 400, "WebSocket upgrade must be a GET request", f"{method} with Upgrade: websocket"
    if minor < 1:
        return 400, "WebSocket upgrade needs HTTP/1.1", "HTTP/1.0 with Upgrade: websocket"
    if chunked or content_length > 0:
        return 400, "WebSocket upgrade request with a body", "Upgrade: websocket with a body"
    return None
