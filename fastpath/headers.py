# cython: annotation_typing=False
"""Header work of the proxy: what is forwarded each way, and the response framing.

Hop-by-hop headers (RFC 9110 §7.6.1) never cross the gateway, nor does any header a
``Connection`` header names.  Headers the gateway sets itself (Host, framing, X-Forwarded-*,
X-Request-Id) are dropped from what the client sent, so a client cannot forge them.
Names are compared case-insensitively; values pass unchanged (llhttp has already refused
NUL, bare CR/LF and obs-fold).

Cost: every header of every request and response passes through here, so the compiled form
classifies a name without allocating: it looks only at the names of the same length and
compares them byte by byte, folding case with ``| 0x20`` (exact for HTTP token characters
against the lower-case letters and ``-`` of the names below: no other token character folds
onto them).  The interpreted form lower-cases the name and looks it up in a dict.  A
Content-Length value is read by a digit loop in the compiled form (llhttp has checked it).
"""
from __future__ import annotations

try:
    import cython

    _COMPILED = cython.compiled
except ImportError:  # pragma: no cover - without Cython only the interpreted form exists
    _COMPILED = False

# What a header name means to the filters.  Codes below _DROP are forwarded as they are:
# _KEEP, and _DATE (a response's Date, which the caller must know about: a proxy adds one
# when the backend sent none, RFC 9110 §6.6.1).
_KEEP, _DATE, _DROP, _CONNECTION, _CONTENT_LENGTH, _TRANSFER_ENCODING, _FORWARDED_FOR = range(7)

_HOP_BY_HOP = (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
               b"transfer-encoding", b"upgrade")
# dropped from requests before forwarding (lower-case)
REQUEST_DROP = frozenset(_HOP_BY_HOP + (
    b"proxy-authorization", b"host", b"content-length", b"expect",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id",
))
# dropped from responses before forwarding (lower-case); framing is set by the gateway
RESPONSE_DROP = frozenset(_HOP_BY_HOP + (b"proxy-authenticate", b"content-length", b"x-request-id"))

_SPECIAL = {b"connection": _CONNECTION, b"content-length": _CONTENT_LENGTH,
            b"transfer-encoding": _TRANSFER_ENCODING, b"x-forwarded-for": _FORWARDED_FOR}


def _codes(drop: frozenset) -> dict:
    return {name: _SPECIAL.get(name, _DROP) for name in drop}


def name_table(codes: dict) -> list:
    """The lookup table of :func:`name_code` for ``codes`` ({lower-case name: int code > 0}).

    ``table[n]``: the ``(name, code)`` pairs of the names n bytes long."""
    table = [() for _ in range(max(len(n) for n in codes) + 1)]
    for name, code in sorted(codes.items()):
        table[len(name)] += ((name, code),)
    return table


_REQUEST_CODES = _codes(REQUEST_DROP)
_RESPONSE_CODES = _codes(RESPONSE_DROP)
_RESPONSE_CODES[b"date"] = _DATE
_REQUEST_BY_LENGTH = name_table(_REQUEST_CODES)
_RESPONSE_BY_LENGTH = name_table(_RESPONSE_CODES)

# Connection options that name no other header: the common values need no second pass.
_PLAIN_CONNECTION = frozenset((b"keep-alive", b"close"))
_MAX_LENGTH = 2 ** 63 - 1


def _same_at(value: bytes, start: int, lower: bytes) -> bool:
    """``value[start:start + len(lower)]`` equals ``lower`` ignoring case (compiled form)."""
    a = value
    b = lower
    for i in range(len(lower)):
        if (a[start + i] | 0x20) != b[i]:
            return False
    return True


def name_code(name: bytes, by_length: list, codes: dict) -> int:
    """The code of header ``name`` in ``codes`` ignoring case, or 0; ``by_length`` is
    ``name_table(codes)``.  Allocation-free when compiled."""
    if _COMPILED:
        n = len(name)
        if n >= len(by_length):
            return _KEEP
        for known, code in by_length[n]:
            if _same_at(name, 0, known):
                return code
        return _KEEP
    return codes.get(name.lower(), _KEEP)


def underscore_kind(name: bytes) -> int:
    """0 when header ``name`` has no ``_``; else 2 when the name, read with ``-`` for ``_`` as
    CGI and WSGI servers read it, is one the gateway drops or sets itself (``Transfer_Encoding``,
    ``Content_Length``, ``X_Forwarded_For``, ...), and 1 otherwise.  Allocation-free when
    compiled and the name has no ``_`` (the usual case)."""
    if _COMPILED:
        p = name
        found = False
        for i in range(len(name)):
            if p[i] == 95:
                found = True
                break
        if not found:
            return 0
    elif b"_" not in name:
        return 0
    alias = name.replace(b"_", b"-")
    return 2 if name_code(alias, _REQUEST_BY_LENGTH, _REQUEST_CODES) >= _DROP else 1


def _ows_start(value: bytes) -> int:
    """Index of the first byte of ``value`` that is not a space or tab (compiled form)."""
    p = value
    start = 0
    while start < len(value) and (p[start] == 32 or p[start] == 9):
        start += 1
    return start


def _ows_end(value: bytes, start: int) -> int:
    """End of ``value`` without trailing spaces and tabs, not before ``start`` (compiled form)."""
    p = value
    end = len(value)
    while end > start and (p[end - 1] == 32 or p[end - 1] == 9):
        end -= 1
    return end


def _is_chunked(value: bytes) -> bool:
    """A Transfer-Encoding value of exactly ``chunked`` (any case, optional spaces)."""
    if _COMPILED:
        start = _ows_start(value)
        end = _ows_end(value, start)
        return end - start == 7 and _same_at(value, start, b"chunked")
    return value.strip(b" \t").lower() == b"chunked"


def _is_plain_connection(value: bytes) -> bool:
    """A Connection value of only ``keep-alive`` or ``close`` (any case, optional spaces)."""
    if _COMPILED:
        start = _ows_start(value)
        end = _ows_end(value, start)
        if end - start == 10:
            return _same_at(value, start, b"keep-alive")
        if end - start == 5:
            return _same_at(value, start, b"close")
        return False
    return value.strip().lower() in _PLAIN_CONNECTION


def _content_length(value: bytes) -> int:
    """The number a Content-Length value holds (llhttp has checked it is one).

    Raises ValueError when it is not a number, or one too large to be a length here
    (over 2**63 - 1: llhttp accepts up to 2**64 - 1).
    """
    if _COMPILED:
        p = value
        n = 0
        start = _ows_start(value)
        end = _ows_end(value, start)
        if start == end or end - start > 18:
            return _length_by_int(value)       # empty or too long for the C integer: Python decides
        for i in range(start, end):
            c = p[i]
            if c < 48 or c > 57:
                return _length_by_int(value)   # not digits: int() raises the error it should
            n = n * 10 + (c - 48)
        return n
    return _length_by_int(value)


def _length_by_int(value: bytes) -> int:
    """Content-Length read by int(): empty, non-digit or long values (and the interpreted form)."""
    n = int(value)
    if not 0 <= n <= _MAX_LENGTH:
        raise ValueError(f"Content-Length out of range: {value[:32]!r}")
    return n


def _kept_lines(headers: list, by_length: list, codes: dict, total: int) -> bytes:
    """The ``Name: value\r\n`` lines of the headers forwarded (code < _DROP), ``total`` bytes.

    Compiled, written into one new bytes object (no list of pieces, no join; memcpy and the
    PyBytes_* functions are cimported by headers.pxd).  Interpreted, a join."""
    if not _COMPILED:
        return b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers
                        if name_code(name, by_length, codes) < _DROP)
    out = PyBytes_FromStringAndSize(cython.NULL, total)
    dst = PyBytes_AS_STRING(out)
    pos = 0
    for name, value in headers:
        if name_code(name, by_length, codes) < _DROP:
            if pos + len(name) + len(value) + 4 > total:   # never write past the buffer
                raise RuntimeError("header lines outgrew their computed size")
            n = len(name)
            src = name
            memcpy(dst + pos, src, n)
            pos += n
            dst[pos] = 58       # ':'
            dst[pos + 1] = 32   # ' '
            pos += 2
            n = len(value)
            src = value
            memcpy(dst + pos, src, n)
            pos += n
            dst[pos] = 13       # CR
            dst[pos + 1] = 10   # LF
            pos += 2
    return out


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
    forwarded = None
    total = 0
    extra = None
    for name, value in headers:
        code = name_code(name, _REQUEST_BY_LENGTH, _REQUEST_CODES)
        if code < _DROP:        # the predicate _kept_lines uses: the sizes must agree
            total += len(name) + len(value) + 4
        elif code == _FORWARDED_FOR:
            forwarded = value if forwarded is None else forwarded + b", " + value
        elif code == _CONNECTION and extra is None and not _is_plain_connection(value):
            extra = _connection_tokens(headers)
    if extra:
        return forwarded, b"".join(_without(headers, REQUEST_DROP, extra))
    return forwarded, _kept_lines(headers, _REQUEST_BY_LENGTH, _REQUEST_CODES, total)


def filter_response_headers(headers: list):
    """Return ``(lines, content_length, framed, dated)`` for a backend response being forwarded.

    ``content_length`` is the backend's Content-Length or -1; ``framed`` says whether the body
    has its own end (a length or chunked) rather than ending when the backend closes;
    ``dated`` whether the backend sent a Date (kept in ``lines``).

    Raises ValueError for framing the gateway will not forward: a Transfer-Encoding other than
    one ``chunked`` (as nginx, which answers 502: relabelling a gzip-coded or close-delimited
    body as chunked would change what the client receives), or a bad Content-Length.
    """
    total = 0
    length = -1
    framed = False
    chunked = False
    dated = False
    extra = None
    for name, value in headers:
        code = name_code(name, _RESPONSE_BY_LENGTH, _RESPONSE_CODES)
        if code < _DROP:        # the predicate _kept_lines uses: the sizes must agree
            total += len(name) + len(value) + 4
            if code == _DATE:
                dated = True
        elif code == _CONTENT_LENGTH:
            length = _content_length(value)
            framed = True
        elif code == _TRANSFER_ENCODING:
            if chunked or not _is_chunked(value):   # a second one, or another coding
                raise ValueError(f"Transfer-Encoding {value[:32]!r} is not supported from a backend")
            framed = True
            chunked = True
            length = -1
        elif code == _CONNECTION and extra is None and not _is_plain_connection(value):
            extra = _connection_tokens(headers)
    if extra:
        dated = dated and b"date" not in extra      # a Date the Connection header named is dropped
        return b"".join(_without(headers, RESPONSE_DROP, extra)), length, framed, dated
    return _kept_lines(headers, _RESPONSE_BY_LENGTH, _RESPONSE_CODES, total), length, framed, dated
