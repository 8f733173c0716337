"""Header work of the proxy: what is forwarded each way, and the response framing.

Hop-by-hop headers (RFC 9110 §7.6.1) never cross the gateway, nor does any header a
``Connection`` header names.  Headers the gateway sets itself (Host, framing, X-Forwarded-*,
X-Request-Id) are dropped from what the client sent, so a client cannot forge them.
Names are compared case-insensitively; values pass unchanged (llhttp has already refused
NUL, bare CR/LF and obs-fold).
"""
import cython

# dropped from requests before forwarding (lower-case)
REQUEST_DROP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authorization", b"host", b"content-length", b"expect",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id",
))
# dropped from responses before forwarding (lower-case); framing is set by the gateway
RESPONSE_DROP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"content-length", b"x-request-id",
))


# Connection options that name no other header: the common values need no second pass.
_PLAIN_CONNECTION = frozenset((b"keep-alive", b"close"))


def _connection_tokens(headers: list) -> frozenset:
    """The header names listed by Connection headers (lower-case), or an empty set."""
    tokens = set()
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token and token not in _PLAIN_CONNECTION:
                    tokens.add(token)
    return frozenset(tokens)


def _without(headers: list, drop: frozenset, extra: frozenset) -> list:
    """The pieces of the ``Name: value\r\n`` lines of headers in neither set (rare path)."""
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname not in drop and lname not in extra:
            out.append(name)
            out.append(b": ")
            out.append(value)
            out.append(b"\r\n")
    return out


def filter_request_headers(headers: list):
    """Return ``(x_forwarded_for, lines)`` for a request being forwarded.

    ``x_forwarded_for`` is the client's X-Forwarded-For chain (joined when repeated) or None;
    ``lines`` is the ``Name: value\r\n`` block of every end-to-end header, in order.
    """
    drop: frozenset = REQUEST_DROP
    plain: frozenset = _PLAIN_CONNECTION
    forwarded = None
    out: list = []
    extra = None
    name: bytes
    value: bytes
    lname: bytes
    for name, value in headers:
        lname = name.lower()
        if lname in drop:
            if lname == b"x-forwarded-for":
                forwarded = value if forwarded is None else forwarded + b", " + value
            elif lname == b"connection" and extra is None and value.strip().lower() not in plain:
                extra = _connection_tokens(headers)
            continue
        out.append(name)
        out.append(b": ")
        out.append(value)
        out.append(b"\r\n")
    if extra:
        out = _without(headers, drop, extra)
    return forwarded, b"".join(out)


def filter_response_headers(headers: list):
    """Return ``(lines, content_length, framed)`` for a backend response being forwarded.

    ``content_length`` is the backend's Content-Length or -1; ``framed`` says whether the body
    has its own end (a length or chunked) rather than ending when the backend closes.
    """
    drop: frozenset = RESPONSE_DROP
    plain: frozenset = _PLAIN_CONNECTION
    out: list = []
    length: cython.longlong = -1
    framed: cython.bint = False
    extra = None
    name: bytes
    value: bytes
    lname: bytes
    for name, value in headers:
        lname = name.lower()
        if lname in drop:
            if lname == b"content-length":
                length = int(value)
                framed = True
            elif lname == b"transfer-encoding":
                framed = True
                length = -1
            elif lname == b"connection" and extra is None and value.strip().lower() not in plain:
                extra = _connection_tokens(headers)
            continue
        out.append(name)
        out.append(b": ")
        out.append(value)
        out.append(b"\r\n")
    if extra:
        out = _without(headers, drop, extra)
    return b"".join(out), length, framed
