"""Differential tests of fastpath.http1: the compiled parser (llhttp's C API, http1.pyx) and its
interpreted twin (httptools over the same llhttp, http1.py) must read every byte stream alike.

A parser that differs between the twins is a request-smuggling risk: the same bytes would be
framed one way by a gateway running compiled and another way by one running interpreted.  So
both forms are fed the same streams, cut into the same reads (one read, every byte, at random),
and driven the way the gateway drives them (gateway/http/server.py for requests,
gateway/http/upstream.py for responses); the events they give must be equal.  Valid streams are
built by generators that know what they wrote (method, target, fields, body, framing), and every
form must give exactly that; malformed streams (the same generators with faults in framing,
fields and lines, then byte mutations, truncation and garbage, sometimes under small limits)
only have to be read alike, and must never make feed() or next() raise.

Where the forms differ by design, the comparison folds exactly that difference (the rules in
"comparing the forms" below) and a test_known_difference_* test pins it, so that a change in it
is noticed.  Differences that are bugs are pinned by test_bug_* tests that assert the right
behaviour, xfail(strict=True) on the form that has the bug; the random tests step around each of
them (known_bug, _KNOWN_BUGS) so that they go on checking everything else.

Hypothesis runs from a fixed seed (``SEED`` in tests/fastpath/conftest.py); set
TOLLGATE_TEST_SEED to try another.  Under TOLLGATE_NO_EXTENSIONS=1 only the interpreted form is
tested: against the generators' expectations, and for never raising.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from .conftest import FORMS, NO_EXTENSIONS, SEED, load_form

NEED_DATA, HEAD, BODY, END, ERROR = 0, 1, 2, 3, 4

SETTINGS = settings(max_examples=300, deadline=None, print_blob=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MALFORMED_SETTINGS = settings(SETTINGS, max_examples=600)

DEFAULT_LIMITS = (32768, 32768, 131072, 256, 167936)    # RequestParser's defaults, underscores aside


@pytest.fixture(scope="module")
def http1_forms():
    """[pure] or [pure, compiled]: the compiled form is left out only under TOLLGATE_NO_EXTENSIONS=1."""
    forms = [load_form("http1", "pure")]
    if not NO_EXTENSIONS:
        forms.append(load_form("http1", "compiled"))  # fails when it is not built
    return forms


def with_bug_in(buggy, reason: str):
    """Both forms as parameters of a test_bug_* test, the form(s) with the bug xfail(strict)."""
    return pytest.mark.parametrize("form", [
        pytest.param(form, marks=[pytest.mark.xfail(strict=True, reason=reason)]
                     if form in buggy else []) for form in FORMS])


# --- driving a parser as the gateway does ---------------------------------------------------------

def reads(stream: bytes, cuts) -> list[bytes]:
    """``stream`` cut at ``cuts`` (positions), without empty reads."""
    out, prev = [], 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        if prev < cut <= len(stream):
            out.append(stream[prev:cut])
            prev = cut
    return out


def snapshot(mod, head, request: bool, parser):
    """Everything the gateway reads of a head, comparable across the forms (taken at once: the
    compiled form reuses a head object for a later message)."""
    forwarded = (mod.request_head(head, b"M", b"/t", b"h", b"1.2.3.4", b"fh", b"rid", b"")
                 if request else mod.response_head(b"HTTP/1.1 200 OK\r\n", head, b"", b"rid",
                                                   b"", -1, b"", b""))
    return {
        "method": head.method, "target": head.target(), "status": head.status,
        "version": head.version, "content_length": head.content_length,
        "chunked": bool(head.chunked), "keep_alive": bool(head.keep_alive),
        "upgrade": bool(head.upgrade), "websocket": bool(head.websocket),
        "items": head.items(), "host": head.host_value(),
        "stage": head.stage_value(), "expect": head.expect_value(),
        "field_count": head.field_count, "dated": bool(head.dated),
        "connection_tokens": bool(head.connection_tokens), "forwarded": forwarded,
    }


@dataclass
class Trace:
    """What a parser gave: events in order, and the sizes of the BODY spans of each message."""
    events: list = field(default_factory=list)
    spans: list = field(default_factory=list)
    details: list = field(default_factory=list)    # error_detail of an ERROR


def drive_requests(mod, pieces, limits=()) -> Trace:
    """Feed ``pieces`` to a RequestParser as gateway/http/server.py does: after each read, take
    events until NEED_DATA; after an END, go on only when has_pending() (the request is answered
    first; with nothing pending the next read comes before the next next()); stop at ERROR (the
    request is refused) and after the END of a request that does not keep the connection alive
    (the connection is closed).  After a WebSocket upgrade request, the rest of the reads are fed
    and what detach() hands over is recorded (the tunnel's bytes): nothing of it is parsed."""
    parser = mod.RequestParser(*limits)
    trace = Trace()
    body, spans = [], []
    for index, piece in enumerate(pieces):
        try:
            parser.feed(piece)
        except Exception as exc:  # a crash is recorded, and assert_forms_agree fails on it
            trace.events.append(("RAISED", "feed", type(exc).__name__, str(exc)))
            return trace
        while True:
            try:
                event = parser.next()
            except Exception as exc:
                trace.events.append(("RAISED", "next", type(exc).__name__, str(exc)))
                return trace
            if event == NEED_DATA:
                break
            if event == HEAD:
                trace.events.append(("HEAD", snapshot(mod, parser.head, True, parser)))
            elif event == BODY:
                body.append(parser.body)
                spans.append(len(parser.body))
            elif event == END:
                # has_pending() decides whether the gateway pauses reading (and, with
                # in_message, whether a request that closes the connection is followed by
                # lingering); leftover() tells the compiled form's pending empty lines apart
                trace.events.append(("END", b"".join(body), parser.has_pending(),
                                     parser.in_message, parser.leftover()))
                trace.spans.append(tuple(spans))
                body, spans = [], []
                if parser.head.websocket:
                    for later in pieces[index + 1:]:
                        parser.feed(later)
                    trace.events.append(("TUNNEL", parser.detach(), parser.next()))
                    return trace
                if not parser.head.keep_alive:
                    trace.events.append(("CLOSE",))
                    return trace
                if not trace.events[-1][2]:
                    break
            elif event == ERROR:
                trace.events.append(("ERROR", parser.error_status, parser.error_message,
                                     b"".join(body)))
                trace.details.append(parser.error_detail)
                return trace
            else:
                trace.events.append(("RAISED", "next", "event", repr(event)))
                return trace
    # the client's FIN: server.eof_received looks at in_message and has_pending(); the drop
    # counters (metrics) are compared once everything is parsed
    trace.events.append(("EOF", b"".join(body), parser.in_message, parser.has_pending(),
                         (parser.dropped_underscore, parser.dropped_alias)))
    trace.spans.append(tuple(spans))
    return trace


def drive_responses(mod, pieces, skips=(), limits=(), switches=()) -> Trace:
    """Feed ``pieces`` to a ResponseParser as gateway/http/upstream.py does: expect_no_body()
    before each request's response (``skips``: the numbers of the exchanges whose request was
    HEAD), 1xx responses passed over, leftover() at the END of a final response; stop at ERROR,
    at a status the gateway refuses (< 100, 101), and when the connection is not reused
    (leftovers, or a response that does not keep it alive).  ``switches``: the exchanges whose
    request was a WebSocket upgrade (expect_switch()): their 101 ends the HTTP conversation, the
    rest of the reads is fed and what detach() hands over recorded."""
    parser = mod.ResponseParser(*limits)
    trace = Trace()
    body, spans = [], []
    exchange, interim, skip = 0, False, 0 in skips
    parser.expect_no_body(skip)
    parser.expect_switch(0 in switches)
    for index, piece in enumerate(pieces):
        try:
            parser.feed(piece)
        except Exception as exc:
            trace.events.append(("RAISED", "feed", type(exc).__name__, str(exc)))
            return trace
        while True:
            try:
                event = parser.next()
            except Exception as exc:
                trace.events.append(("RAISED", "next", type(exc).__name__, str(exc)))
                return trace
            if event == NEED_DATA:
                break
            if event == HEAD:
                head = parser.head
                trace.events.append(("HEAD", snapshot(mod, head, False, parser), skip))
                if head.status == 101 and exchange in switches:
                    for later in pieces[index + 1:]:
                        parser.feed(later)
                    trace.events.append(("SWITCH", parser.detach(), parser.next()))
                    return trace
                if head.status < 200:
                    if head.status < 100 or head.status == 101:
                        trace.events.append(("BAD", head.status))
                        return trace
                    interim = True
            elif event == BODY:
                body.append(parser.body)
                spans.append(len(parser.body))
            elif event == END:
                trace.spans.append(tuple(spans))
                if interim:
                    interim = False
                    trace.events.append(("INTERIM", b"".join(body)))
                    body, spans = [], []
                    continue
                leftover = parser.leftover()
                trace.events.append(("END", b"".join(body), leftover))
                body, spans = [], []
                if leftover or not parser.head.keep_alive:
                    trace.events.append(("CLOSE",))
                    return trace
                # the connection goes back to the pool; the next request is sent on it
                exchange += 1
                skip = exchange in skips
                parser.expect_no_body(skip)
                parser.expect_switch(exchange in switches)
                break       # (upstream._run returns at END: the rest of the read waits)
            elif event == ERROR:
                trace.events.append(("ERROR", parser.error_status, parser.error_message,
                                     b"".join(body)))
                trace.details.append(parser.error_detail)
                return trace
            else:
                trace.events.append(("RAISED", "next", "event", repr(event)))
                return trace
    # the backend closed: a body delimited by the close ends here
    trace.events.append(("EOF", b"".join(body), parser.in_message))
    trace.spans.append(tuple(spans))
    return trace


# --- what the generators write -------------------------------------------------------------------

TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VCHAR = bytes(range(0x21, 0x7f))
PCHAR = b"abcxyzABCXYZ0129-._~!$&'()*+,;=:@%/"       # a path's characters (RFC 3986)
OWS = (b"", b"", b"", b" ", b"  ", b"\t", b" \t ")

#: methods llhttp knows for HTTP (the gateway serves them all but CONNECT)
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "PROPFIND",
           "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "PURGE", "QUERY", "SEARCH",
           "REPORT", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "MKCALENDAR", "LINK",
           "UNLINK", "ACL", "BIND", "REBIND", "UNBIND", "SOURCE", "MKACTIVITY", "CHECKOUT",
           "MERGE")
#: methods llhttp knows for RTSP only: 501 (well-formed, not implemented)
RTSP_METHODS = ("DESCRIBE", "ANNOUNCE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER",
                "SET_PARAMETER", "REDIRECT", "RECORD", "FLUSH")
#: method tokens (RFC 9110 §9.1) that are no method at all: 501 too
UNKNOWN_METHODS = ("FOO", "BREW", "get", "Post", "GETS", "POSTX", "X", "_", "HEADER", "PATCHY",
                   "M-SEARCHX", "MKCOLS", "G~T", "DELETE!", "UNLOCKED", "PROPFINDER")

#: field names with a meaning to llhttp or to the gateway (never drawn as "other" names)
SPECIAL_NAMES = frozenset((
    "host", "content-length", "transfer-encoding", "connection", "proxy-connection", "upgrade",
    "expect", "x-stage", "x-forwarded-for", "keep-alive", "te", "trailer", "proxy-authorization",
    "x-forwarded-proto", "x-forwarded-host", "x-request-id", "date", "proxy-authenticate"))
#: request field names the gateway drops or sets itself, framing included (http1_rules.py's
#: kinds from K_DROP up): with '_' for '-', a name that reads as one of these is always dropped
DROPPED_OR_FRAMING = frozenset((
    "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization",
    "x-forwarded-proto", "x-forwarded-host", "x-request-id", "connection", "content-length",
    "transfer-encoding", "x-forwarded-for", "host", "expect"))

BAD_METHOD = {(501, "Method not implemented")}
MALFORMED = (400, "Malformed HTTP request")


def casing(draw, name: str) -> bytes:
    """``name`` in a case the sender chose."""
    how = draw(_CASINGS)
    if how == 0:
        return "-".join(p[:1].upper() + p[1:] for p in name.split("-")).encode()
    if how == 1:
        return name.encode()
    if how == 2:
        return name.upper().encode()
    flips = draw(_MASKS)
    return "".join(c.upper() if flips >> (i % 32) & 1 else c for i, c in enumerate(name)).encode()


_CASINGS = st.sampled_from([0, 0, 1, 2, 3])
_MASKS = st.integers(0, 2 ** 32 - 1)


def spelled(alphabet: bytes, min_size: int, max_size: int):
    """Strings of ``alphabet``, drawn as one choice (far cheaper than a draw per character)."""
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    return st.binary(min_size=min_size, max_size=max_size).map(lambda raw: raw.translate(table))


TOKENS = spelled(TCHAR, 1, 10)
_NAMES = st.one_of(TOKENS, TOKENS.map(lambda t: b"X-" + t), st.sampled_from([
    b"Accept", b"User-Agent", b"X-A.b~c", b"x!#$%&'*+^`|~", b"X_Custom", b"my_header", b"A", b"0"]))


@st.composite
def other_names(draw):
    """A field name with no meaning to llhttp or the gateway, odd but legal characters welcome."""
    name = draw(_NAMES)
    lower = name.decode().lower()
    if lower in SPECIAL_NAMES or lower.replace("_", "-") in SPECIAL_NAMES:
        name = b"X-" + name + b"-Other"
    return name


_WORDS = st.lists(spelled(VCHAR, 1, 12), max_size=3)
_SEPARATORS = st.sampled_from([b" ", b"\t", b"  ", b" \t"])
_OWS = st.sampled_from(OWS)


@st.composite
def field_values(draw):
    """(raw value as written, value as the parser gives it).  Both forms give a value without
    its leading spaces and tabs and with its trailing ones (Head.value's documented contract)."""
    words = draw(_WORDS)
    core = words[0] if words else b""
    for word in words[1:]:
        core += draw(_SEPARATORS) + word
    lead, trail = draw(_OWS), draw(_OWS)
    return lead + core + trail, (core + trail if core else b"")


_ZEROS = st.sampled_from([0, 0, 0, 1, 3])
_TRAIL = st.sampled_from([b"", b"", b" ", b"\t"])


@st.composite
def content_lengths(draw, n):
    return draw(_OWS) + b"0" * draw(_ZEROS) + b"%d" % n + draw(_TRAIL)


_CHUNKS = st.lists(st.binary(min_size=1, max_size=24), max_size=4)
_EXT_VALUES = st.sampled_from([None, b"v", b"1.0", b'"quoted; ,=value"', b'""'])
_SMALL = st.integers(0, 5)
_EXT_NAMES = spelled(TCHAR, 1, 6)


@st.composite
def chunked_bodies(draw, request: bool):
    """(the chunked encoding of a body, the body): sizes in any case with leading zeros,
    extensions (quoted ones too), trailer fields."""
    chunks = draw(_CHUNKS)
    out = []

    def size_line(n):
        style = draw(_SMALL)
        digits = b"0" * (style % 3) + (b"%X" if style & 1 else b"%x") % n
        if request and draw(_SMALL) == 0:
            digits += draw(_SEPARATORS)     # llhttp, made lenient for requests, takes these
        for _ in range(draw(_SMALL) // 2):
            digits += b";" + draw(_EXT_NAMES)
            value = draw(_EXT_VALUES)
            if value is not None:
                digits += b"=" + value
        return digits + b"\r\n"

    for chunk in chunks:
        out.append(size_line(len(chunk)) + chunk + b"\r\n")
    out.append(size_line(0))
    for _ in range(draw(_SMALL) // 2):
        out.append(draw(other_names()) + b":" + draw(field_values())[0] + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out), b"".join(chunks)


@dataclass
class Message:
    """One generated message: its bytes, and what a parser must make of it."""
    data: bytes
    expect: tuple          # the events it gives (see expected_events), errors as a set of answers
    ends_stream: bool = False       # nothing after it is read (refused, or not kept alive)
    line_end: int = 0               # offset of the end of the start line (unknown-method answers)


def connection_says(values, minor: int) -> bool:
    """keep-alive by RFC 9112 §9.3: 'close' ends it; HTTP/1.0 needs 'keep-alive'."""
    options = {t.strip(b" \t").lower() for v in values for t in v.split(b",")}
    if b"close" in options:
        return False
    return minor >= 1 or b"keep-alive" in options


_PATHS = spelled(PCHAR, 0, 20)
_QUERIES = st.one_of(st.just(b""), spelled(PCHAR + b"?", 0, 12).map(lambda q: b"?" + q))
_TARGET_KINDS = st.sampled_from(["origin"] * 6 + ["absolute", "asterisk"])
_SCHEMES = st.sampled_from([b"http://", b"HTTPS://"])


@st.composite
def targets(draw):
    kind = draw(_TARGET_KINDS)
    if kind == "asterisk":
        return b"*"
    path = b"/" + draw(_PATHS) + draw(_QUERIES)
    if kind == "absolute":
        return draw(_SCHEMES) + b"a.example:8080" + path
    return path


_ROLL = st.integers(0, 19)
_ODD_METHODS = st.sampled_from(UNKNOWN_METHODS + RTSP_METHODS)
_METHODS = st.sampled_from(METHODS[:8] * 3 + METHODS)
_MINORS = st.sampled_from([1, 1, 1, 1, 0, 0, 2, 9])
_MAJORS = st.sampled_from([1] * 29 + [0, 2, 3])
_HOSTS = st.sampled_from([(b"a.example", b"a.example"), (b" a.example:8080", b"a.example:8080"),
                          (b"[::1]:80 ", b"[::1]:80 "), (b"", b"")])
_FEW = st.sampled_from([0, 0, 1, 2])
_STAGES = st.sampled_from([(b"beta", b"beta"), (b"  RELEASE \t", b"RELEASE \t"), (b"", b"")])
_EXPECTS = st.sampled_from([b"100-continue", b" 100-Continue", b"x-unknown"])
_CONNECTIONS = st.lists(st.sampled_from([
    b"close", b"Close", b"keep-alive", b" Keep-Alive", b"x-hop", b"keep-alive, x-hop",
    b"x-hop, close", b"TE", b"x-a,x-b"]), max_size=2)
_HOP_FIELDS = st.sampled_from([
    ("te", b"trailers"), ("keep-alive", b"timeout=5"), ("trailer", b"X-T"),
    ("x-request-id", b"abc"), ("proxy-authorization", b"Basic eDp5"),
    ("x-forwarded-for", b"10.0.0.1, 10.0.0.2"), ("x-forwarded-proto", b"https"),
    ("x-forwarded-host", b"f.example")])
_UNDERSCORED = st.sampled_from([b"X_Custom", b"my_field", b"Transfer_Encoding", b"content_length",
                                b"X_Forwarded_For", b"X-Real_IP"])
_FRAMINGS = st.sampled_from(["none", "none", "length", "length", "chunked"])
_UPGRADES = st.sampled_from([b"Upgrade", b"upgrade, keep-alive"])
_BODIES = st.binary(max_size=40)
_TE_CHUNKED = st.sampled_from([(b"chunked", b"chunked"), (b"Chunked", b"Chunked"),
                               (b" chunked", b"chunked"), (b"\tCHUNKED  ", b"CHUNKED  ")] * 3
                              + [(b"chunked\t", b"chunked\t"), (b"chunked \t", b"chunked \t")])
_PERMUTATION_SEEDS = st.integers(0, 2 ** 32 - 1)


def shuffled(items, key):
    """``items`` in an order drawn as one number (st.permutations draws one per item)."""
    items = list(items)
    random.Random(key).shuffle(items)
    return items


@st.composite
def request_messages(draw, underscores=False):
    """One request and what both forms must make of it (with default limits)."""
    roll = draw(_ROLL)
    if roll == 0:
        method = draw(_ODD_METHODS)
    elif roll == 1:
        method = "CONNECT"
    else:
        method = draw(_METHODS)
    target = b"a.example:443" if method == "CONNECT" else draw(targets())
    minor, major = draw(_MINORS), draw(_MAJORS)
    start = b"%s %s HTTP/%d.%d\r\n" % (method.encode(), target, major, minor)

    fields = []     # (name, raw value, value as parsed)

    def add(name, raw, value=None):
        fields.append((name, raw, raw.lstrip(b" \t") if value is None else value))

    if draw(_ROLL) > 3:
        add(casing(draw, "host"), *draw(_HOSTS))
    for _ in range(draw(_FEW)):
        add(casing(draw, "x-stage"), *draw(_STAGES))
    if draw(_ROLL) < 3:
        add(casing(draw, "expect"), draw(_EXPECTS))
    connections = draw(_CONNECTIONS)
    for value in connections:
        add(casing(draw, "connection"), value)
    for _ in range(draw(_FEW)):
        name, value = draw(_HOP_FIELDS)
        add(casing(draw, name), value)
    for _ in range(draw(_SMALL)):
        add(draw(other_names()), *draw(field_values()))
    if draw(_ROLL) < 5:
        add(draw(_UNDERSCORED), b"v")

    framing = draw(_FRAMINGS)
    # (an upgrade to anything but WebSocket is a plain request to the gateway; a WebSocket one
    # ends the stream and has tests of its own)
    upgrade = draw(_ROLL) < 2
    if upgrade:
        connections.append(draw(_UPGRADES))
        add(casing(draw, "connection"), connections[-1])
        add(casing(draw, "upgrade"), draw(st.sampled_from([b"h2c", b"TLS/1.2, h2c"])))
    body = raw_body = b""
    content_length = -1
    if framing == "length":
        body = raw_body = draw(_BODIES)
        content_length = len(body)
        add(casing(draw, "content-length"), draw(content_lengths(len(body))))
    te_tab = False
    if framing == "chunked":
        raw_body, body = draw(chunked_bodies(request=True))
        add(casing(draw, "transfer-encoding"), *draw(_TE_CHUNKED))
        te_tab = fields[-1][2].rstrip(b" ").endswith(b"\t")
    fields = shuffled(fields, draw(_PERMUTATION_SEEDS))
    data = start + b"".join(n + b":" + r + b"\r\n" for n, r, _ in fields) + b"\r\n" + raw_body

    # what the parser must give
    if major != 1 and method not in UNKNOWN_METHODS + RTSP_METHODS:
        return Message(data, ("ERROR", {(505, "HTTP version not supported")}), True)
    if method in UNKNOWN_METHODS or method in RTSP_METHODS:
        # 501 when llhttp's refusal comes with the whole request line (else the compiled form may
        # say 400: test_known_difference_unknown_method_split_across_reads)
        return Message(data, ("ERROR", BAD_METHOD), True, line_end=len(start))
    if method == "CONNECT":
        return Message(data, ("ERROR", {(400, "CONNECT is not supported")}), True)
    if te_tab:
        # llhttp does not read "chunked<HTAB>" as chunked (RFC 9112 would: it is trailing OWS),
        # so the gateway may not either: refused as a coding other than chunked
        return Message(data, ("ERROR", {(400, "Transfer-Encoding other than chunked is not "
                                                   "supported")}), True)
    if framing == "chunked" and minor == 0:
        return Message(data, ("ERROR", {(400, "Transfer-Encoding in an HTTP/1.0 request")}), True)

    kept, dropped_underscore, dropped_alias = [], 0, 0
    for name, _raw, value in fields:
        if b"_" in name and name.decode().lower() not in SPECIAL_NAMES:
            if name.decode().replace("_", "-").lower() in DROPPED_OR_FRAMING:
                dropped_alias += 1
                continue
            if not underscores:
                dropped_underscore += 1
                continue
        kept.append((name, value))

    def first(name):
        return next((v for n, v in kept if n.decode().lower() == name), None)

    stage = first("x-stage")
    keep_alive = connection_says(connections, minor)
    head = {
        "method": method, "target": target, "version": f"1.{minor}",
        "content_length": content_length, "chunked": framing == "chunked",
        "keep_alive": keep_alive, "upgrade": upgrade, "items": kept, "host": first("host"),
        "stage": stage.strip() if stage is not None else None, "expect": first("expect"),
        "field_count": len(kept), "dropped": (dropped_underscore, dropped_alias),
    }
    return Message(data, ("HEAD", head, body), not keep_alive)


@st.composite
def request_streams(draw, underscores=False):
    """Pipelined requests: (stream, messages, offsets where each message starts)."""
    messages = draw(st.lists(request_messages(underscores), min_size=1, max_size=4))
    starts, stream = [], b""
    for message in messages:
        starts.append(len(stream))
        stream += message.data
        if draw(_ROLL) < 2:
            stream += b"\r\n"       # RFC 9112 §2.2: empty lines before a request are skipped
    if draw(_ROLL) < 2 and all(m.expect[0] == "HEAD" and m.expect[1]["keep_alive"]
                               for m in messages):
        # a WebSocket upgrade ends the stream: whatever follows (frames, a request, garbage)
        # is the tunnel's, handed over raw
        tail = draw(st.one_of(st.binary(max_size=64), st.just(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")))
        starts.append(len(stream))
        messages.append(Message(_WEBSOCKET_REQUEST + tail, ("TUNNEL", tail), True))
        stream += _WEBSOCKET_REQUEST + tail
    return stream, messages, starts


_WEBSOCKET_REQUEST = (b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
                      b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


_INTERIM_STATUSES = st.sampled_from([100, 102, 103])
_STATUSES = st.sampled_from([200] * 6 + [201, 204, 206, 301, 304, 404, 500, 599])
_RESPONSE_MINORS = st.sampled_from([1, 1, 1, 0])
_REASONS = st.sampled_from([b" OK", b" ", b"", b" Some Reason", b" odd\t!#~ reason",
                            b" \xe9t\xe9"])     # obs-text is fine in a reason phrase
_RESPONSE_CONNECTIONS = st.lists(st.sampled_from([
    b"close", b"keep-alive", b"Keep-Alive", b"x-hop", b"x-hop, close"]), max_size=2)
_RESPONSE_HOP_FIELDS = st.sampled_from([("keep-alive", b"timeout=5"), ("x-request-id", b"b"),
                                        ("proxy-authenticate", b"Basic"), ("trailer", b"X-T")])
_RESPONSE_FRAMINGS = st.sampled_from(["length", "length", "chunked", "none"])
_RESPONSE_TE = st.sampled_from([b"chunked", b" Chunked", b"chunked  "] * 3 + [b"chunked\t"])


@st.composite
def response_messages(draw, skip: bool, interim: bool = False):
    """One response and what both forms must make of it; ``skip``: it answers a HEAD request
    (no body whatever its head says); ``interim``: a 1xx before the final response."""
    status = draw(_INTERIM_STATUSES if interim else _STATUSES)
    # (a 1xx is HTTP/1.1 only, RFC 9110 §15.2: after an HTTP/1.0 one, which does not keep the
    # connection, llhttp refuses the final response in both forms)
    minor = 1 if interim else draw(_RESPONSE_MINORS)
    start = b"HTTP/1.%d %03d%s\r\n" % (minor, status, draw(_REASONS))
    fields = []

    def add(name, raw, value=None):
        fields.append((name, raw, raw.lstrip(b" \t") if value is None else value))

    connections = []
    if not interim:
        connections = draw(_RESPONSE_CONNECTIONS)
        for value in connections:
            add(casing(draw, "connection"), value)
        if draw(_ROLL) < 10:
            add(casing(draw, "date"), b"Sun, 06 Nov 1994 08:49:37 GMT")
        for _ in range(draw(_FEW) // 2):
            name, value = draw(_RESPONSE_HOP_FIELDS)
            add(casing(draw, name), value)
    elif draw(_ROLL) < 10:
        add(b"Link", b"</s.css>; rel=preload")
    for _ in range(draw(_SMALL) // 2):
        add(draw(other_names()), *draw(field_values()))

    no_body = interim or skip or status in (204, 304)
    framing = "none" if interim or status in (204, 304) else draw(_RESPONSE_FRAMINGS)
    body = raw_body = b""
    content_length = -1
    if framing == "length":
        body = draw(_BODIES)
        content_length = len(body)
        add(casing(draw, "content-length"), draw(content_lengths(len(body))))
        raw_body = body
    elif framing == "chunked":
        raw_body, body = draw(chunked_bodies(request=False))
        add(casing(draw, "transfer-encoding"), draw(_RESPONSE_TE))
        if fields[-1][1].endswith(b"\t"):
            # (see request_messages): refused
            data = start + b"".join(n + b":" + r + b"\r\n" for n, r, _ in fields) + b"\r\n"
            return Message(data + raw_body, ("ERROR", {(502, "Backend returned an invalid "
                                                             "response")}), True)
    elif not no_body:
        raw_body = body = draw(_BODIES)     # delimited by the close
    if no_body:
        raw_body = body = b""
    fields = shuffled(fields, draw(_PERMUTATION_SEEDS))
    data = start + b"".join(n + b":" + r + b"\r\n" for n, r, _ in fields) + b"\r\n" + raw_body

    until_close = framing == "none" and not no_body
    keep_alive = connection_says(connections, minor) and not until_close
    kept = [(n, v) for n, _r, v in fields]
    head = {
        "status": status, "version": f"1.{minor}", "content_length": content_length,
        "chunked": framing == "chunked", "keep_alive": keep_alive, "items": kept,
        "field_count": len(kept),
    }
    kind = "INTERIM" if interim else ("EOF" if until_close else "END")
    return Message(data, ("HEAD", head, body, kind), not keep_alive)


_INTERIMS = {skip: st.lists(response_messages(skip, interim=True), max_size=2)
             for skip in (False, True)}
_EXCHANGES = st.integers(1, 4)


@st.composite
def response_streams(draw):
    """The responses to a few requests sent one after the other on one connection:
    (stream, exchanges as [(skip, [messages])], offsets where each exchange ends)."""
    exchanges, stream, ends = [], b"", []
    for _ in range(draw(_EXCHANGES)):
        skip = draw(_ROLL) < 5
        interims = draw(_INTERIMS[skip])
        final = draw(response_messages(skip))
        exchanges.append((skip, interims + [final]))
        stream += b"".join(m.data for m in interims + [final])
        if final.ends_stream:
            ends.append(len(stream))
            break
        # empty lines after a response are no leftover (after a response to HEAD too)
        if draw(_ROLL) < 2:
            stream += b"\r\n"
        ends.append(len(stream))
    else:
        if draw(_ROLL) < 2:
            # the last request was a WebSocket upgrade: its 101 ends the conversation, and what
            # follows (frames, a response, garbage) is the tunnel's, handed over raw
            tail = draw(st.one_of(st.binary(max_size=64),
                                  st.just(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")))
            interims = draw(_INTERIMS[False])
            exchanges.append((False, interims + [Message(_SWITCH + tail, ("SWITCH", tail), True)]))
            stream += b"".join(m.data for m in interims) + _SWITCH + tail
            ends.append(len(stream))
    return stream, exchanges, ends


_SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")




# --- malformed streams ---------------------------------------------------------------------------

#: fields that framing, routing or policy depend on, in forms a parser may take differently
RISKY_FIELDS = (
    [b"Content-Length: " + v for v in (
        b"5", b"0", b"3", b"-1", b"+5", b"05", b" 5 ", b"5\t", b"9223372036854775807",
        b"9223372036854775808", b"18446744073709551615", b"18446744073709551616",
        b"99999999999999999999999", b"1 2", b"1,1", b"0x5", b"", b"5a", b"\x0b5")]
    + [b"Transfer-Encoding: " + v for v in (
        b"chunked", b"chunked, gzip", b" chunked", b"Chunked", b"gzip, chunked", b"identity",
        b"", b"chunked, chunked", b"xchunked", b"chunked;q=1", b"chunked ,", b"\tchunked",
        b"CHUNKED", b"gzip")]
    + [b"Host: b.example", b"Host:", b"Connection: close", b"Connection: keep-alive",
       b"Connection: upgrade", b"Upgrade: h2c", b"Expect: 100-continue", b"X-Stage: other",
       b"Transfer_Encoding: chunked", b"Content_Length: 5", b"X_Forwarded_For: 1.1.1.1",
       b"Proxy-Connection: close", b"Date: x", b"Trailer: Content-Length"]
    + [b"Bad Name: x", b"Bad\tName: x", b"Name : x", b"Name\x00: x", b": novalue", b"NoColon",
       b"X: a\x00b", b"X: a\rb", b"X: a\x7fb", b"X: \xff\xfe", b"X: a\nb", b"\xe9: x",
       b"X: a\r\n b", b"X: a\r\n\tb", b" X: leading space", b"\tX: leading tab", b"X:\r\n folded"]
)
START_LINES = (
    b"GET  / HTTP/1.1", b"GET\t/ HTTP/1.1", b"GET / http/1.1", b"GET /", b"GET / HTTP/1.1 ",
    b" GET / HTTP/1.1", b"GET / HTTP/1", b"GET / HTTP/1.10", b"GET / HTTP/11.1",
    b"GET /a b HTTP/1.1", b"PRI * HTTP/2.0", b"GET / HTTP/2.0", b"GET / HTTP/0.9",
    b"get / HTTP/1.1", b"GET /\x7f HTTP/1.1", b"GET /\xe9 HTTP/1.1", b"GET ./x HTTP/1.1",
    b"GET http://a.example HTTP/1.1", b"GET //x HTTP/1.1", b"GET /#x HTTP/1.1", b"CONNECT / HTTP/1.1",
    b"OPTIONS * HTTP/1.1", b"FOO /x HTTP/1.1", b"M-SEARCH * HTTP/1.1", b"DESCRIBE / RTSP/1.0",
    b"GET / ICE/1.0", b"GET / HTTP/1.1\x00", b"POST / HTTP/1.0",
)
STATUS_LINES = (
    b"HTTP/1.1 99 X", b"HTTP/1.1 1000 X", b"HTTP/1.1 20 OK", b"HTTP/2.0 200 OK", b"HTTP/1.1 200",
    b"HTTP/1.1 abc OK", b"http/1.1 200 OK", b"HTTP/1.1  200 OK", b"HTTP/1.1 101 Switching",
    b"HTTP/1.1 200 OK\x00", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 NM",
    b"HTTP/1.1 100 Continue", b"HTTP/1.1 103 Early", b"ICE/1.0 200 OK", b"RTSP/1.0 200 OK",
    b"HTTP/1.1 000 Zero", b"HTTP/1.1 599 Max", b"HTTP/1.1 200 \xe9\x7f", b"HTTP/1.1 -200 OK",
)
CHUNK_SIZES = (
    b"g", b"-1", b"0x5", b"ffffffffffffffffff", b"FFFFFFFFFFFFFFFF", b"1 2", b"", b" 5", b"5 ",
    b"5\t", b"5;", b"5;a=\"open", b"5;=v", b"5 ;a", b"5;a b", b"00000000000000000005", b"5\x00",
    b"5;a=\"q\\\"x\"", b"1", b"a", b"0",
)
GARBAGE = (
    b"\r\n", b"\r\n\r\n", b"\n", b" ", b"x", b"\x00", b"GET / HTTP/1.1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"0\r\n\r\n", b"\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
)
INSERTS = (b"\r", b"\n", b"\x00", b" ", b"\t", b"\r\n", b":", b"\x7f", b"\xff", b"0", b";", b",",
           b"\r\n\r\n", b"\r\n ", b"a")

_FAULTS = st.lists(st.sampled_from(["field", "field", "field", "duplicate", "fold", "start",
                                    "chunk", "bare-lf", "bare-lf-one", "huge", "many"]),
                   max_size=3)
_MUTATIONS = st.lists(st.sampled_from(["flip", "insert", "insert", "delete", "truncate",
                                       "append", "duplicate-range"]), max_size=3)
_RISKY = st.sampled_from(RISKY_FIELDS)
_START_LINES = st.sampled_from(START_LINES)
_STATUS_LINES = st.sampled_from(STATUS_LINES)
_CHUNK_SIZES = st.sampled_from(CHUNK_SIZES)
_GARBAGE = st.one_of(st.sampled_from(GARBAGE), st.binary(min_size=1, max_size=8))
_INSERTS = st.sampled_from(INSERTS)
_UNIT = st.floats(0, 1, exclude_max=True)
_SIZES = st.sampled_from([8, 30, 60, 100, 200, 500, 1500, 5000])


def _at(draw, n):
    """A position in a sequence of ``n``: drawn as a fraction, so that it shrinks to 0."""
    return int(draw(_UNIT) * n)


def apply_fault(draw, message: bytes, fault: str, request: bool) -> bytes:
    """``message`` with one fault of kind ``fault`` in its head or body."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message
    lines = message[:end].split(b"\r\n")
    rest = message[end + 4:]
    if fault == "field":
        lines.insert(1 + _at(draw, len(lines)), draw(_RISKY))
    elif fault == "duplicate" and len(lines) > 1:
        i = 1 + _at(draw, len(lines) - 1)
        lines.insert(i, lines[i])
    elif fault == "fold" and len(lines) > 1:
        i = 1 + _at(draw, len(lines) - 1)
        lines.insert(i + 1, draw(st.sampled_from([b" folded", b"\tfolded", b" ", b"  x: y"])))
    elif fault == "start":
        lines[0] = draw(_START_LINES if request else _STATUS_LINES)
    elif fault == "chunk":
        # a bad size line for the body's first chunk (or in place of the body)
        line_end = rest.find(b"\r\n")
        rest = draw(_CHUNK_SIZES) + (rest[line_end:] if line_end >= 0 else b"\r\n" + rest)
    elif fault == "bare-lf":
        return b"\n".join(lines) + b"\n\n" + rest
    elif fault == "bare-lf-one" and len(lines) > 1:
        i = 1 + _at(draw, len(lines) - 1)
        lines[i - 1] += b"\n" + lines.pop(i)
    elif fault == "huge":
        size = draw(_SIZES)
        where = draw(st.sampled_from(["value", "name", "target", "trailer"]))
        if where == "value":
            lines.insert(1, b"X-Big: " + b"v" * size)
        elif where == "name":
            lines.insert(1, b"X-" + b"n" * size + b": v")
        elif where == "target" and request:
            parts = lines[0].split(b" ")
            if len(parts) == 3:
                lines[0] = b" ".join((parts[0], parts[1] + b"a" * size, parts[2]))
        else:
            rest = rest.replace(b"0\r\n\r\n", b"0\r\nX-T: " + b"t" * size + b"\r\n\r\n", 1)
    elif fault == "many":
        lines[1:1] = [b"X-%d: v" % i for i in range(draw(_SIZES) // 10 + 1)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + rest


def mutate(draw, stream: bytes, mutation: str) -> bytes:
    """``stream`` with one byte-level mutation."""
    at = _at(draw, len(stream) + 1)
    if mutation == "flip" and stream:
        at = min(at, len(stream) - 1)
        return stream[:at] + bytes([draw(st.integers(0, 255))]) + stream[at + 1:]
    if mutation == "insert":
        return stream[:at] + draw(_INSERTS) + stream[at:]
    if mutation == "delete":
        return stream[:at] + stream[at + draw(st.integers(1, 4)):]
    if mutation == "truncate":
        return stream[:at]
    if mutation == "append":
        return stream + draw(_GARBAGE)
    if mutation == "duplicate-range":
        return stream[:at] + stream[at:at + draw(st.integers(1, 40))] + stream[at:]
    return stream


_LIMITS = st.one_of(
    st.just(None), st.just(None),
    st.tuples(st.sampled_from([8, 16, 40, 100, 32768]), st.sampled_from([16, 40, 100, 400, 32768]),
              st.sampled_from([32, 100, 300, 1200, 131072]), st.sampled_from([1, 2, 5, 12, 256]),
              st.sampled_from([64, 200, 600, 2000, 167936]), st.booleans()))


@st.composite
def malformed_request_streams(draw):
    """(stream, limits): generated requests with faults, then byte mutations, under limits that
    are sometimes small."""
    limits = draw(_LIMITS)
    stream, messages, starts = draw(request_streams(bool(limits and limits[5])))
    parts = [stream[a:b] for a, b in zip(starts, starts[1:] + [len(stream)])]
    for fault in draw(_FAULTS):
        i = _at(draw, len(parts))
        parts[i] = apply_fault(draw, parts[i], fault, True)
    stream = b"".join(parts)
    for mutation in draw(_MUTATIONS):
        stream = mutate(draw, stream, mutation)
    return stream, (DEFAULT_LIMITS + (False,)) if limits is None else limits


@st.composite
def malformed_response_streams(draw):
    """(stream, skips, limits, exchange ends): generated responses with faults, then byte
    mutations."""
    limits = draw(_LIMITS)
    stream, exchanges, ends = draw(response_streams())
    starts = [0] + ends[:-1]
    parts = [stream[a:b] for a, b in zip(starts, ends)]
    for fault in draw(_FAULTS):
        i = _at(draw, len(parts))
        parts[i] = apply_fault(draw, parts[i], fault, False)
    ends = [sum(len(p) for p in parts[:i + 1]) for i in range(len(parts))]
    stream = b"".join(parts)
    for mutation in draw(_MUTATIONS):
        stream = mutate(draw, stream, mutation)
    skips = {i for i, (skip, _) in enumerate(exchanges) if skip}
    if draw(_ROLL) < 4:
        skips = set(range(5)) - skips       # HEAD where it was not: a body where none is awaited
    limits = (DEFAULT_LIMITS + (True,)) if limits is None else limits[:5] + (True,)
    return stream, skips, limits, ends


# --- what the parsers must give ------------------------------------------------------------------

def expected_request_events(messages):
    """The events of drive_requests for ``messages``, as semantic() projects them."""
    events, dropped = [], (0, 0)
    for message in messages:
        if message.expect[0] == "ERROR":
            events.append(("ERROR", message.expect[1]))
            return events
        if message.expect[0] == "TUNNEL":
            events += [("HEAD", {"method": "GET", "target": b"/ws", "upgrade": True,
                                 "websocket": True}), ("END", b""),
                       ("TUNNEL", message.expect[1], NEED_DATA)]
            return events
        _, head, body = message.expect
        dropped = (dropped[0] + head["dropped"][0], dropped[1] + head["dropped"][1])
        events.append(("HEAD", {k: v for k, v in head.items() if k != "dropped"}))
        events.append(("END", body))
        if not head["keep_alive"]:
            events.append(("CLOSE",))
            return events
    events.append(("EOF", b"", False, dropped))
    return events


def expected_response_events(exchanges):
    """The events of drive_responses for ``exchanges``, as semantic() projects them."""
    events = []
    for skip, messages in exchanges:
        for message in messages:
            if message.expect[0] == "ERROR":
                events.append(message.expect)
                return events
            if message.expect[0] == "SWITCH":
                events += [("HEAD", {"status": 101}, False),
                           ("SWITCH", message.expect[1], NEED_DATA)]
                return events
            _, head, body, kind = message.expect
            events.append(("HEAD", head, skip))
            if kind == "INTERIM":
                events.append(("INTERIM", b""))
            elif kind == "END":
                events.append(("END", body, False))
                if not head["keep_alive"]:
                    events.append(("CLOSE",))
                    return events
            else:
                events.append(("EOF", body, True))
                return events
    events.append(("EOF", b"", False))
    return events


def semantic(events, expected):
    """``events`` (a Trace's) in the terms of ``expected``: only what the generator knows."""
    out = []
    for event, want in zip(events, expected):
        tag = event[0]
        if tag == "HEAD" and want[0] == "HEAD":
            out.append(("HEAD", {key: event[1][key] for key in want[1]}) + tuple(event[2:]))
        elif tag == "END" and want[0] == "END":
            out.append(event[:len(want)])
        elif tag == "ERROR" and want[0] == "ERROR":
            # an answer among the allowed ones stands for them
            answer = (event[1], event[2])
            out.append(("ERROR", want[1] if answer in want[1] else answer))
        elif tag == "EOF" and want[0] == "EOF":
            # requests: (body, in_message, drop counters); responses: (body, in_message)
            out.append(event[:3] + ((event[4],) if len(want) == 4 else ()))
        else:
            out.append(event)
    out.extend(events[len(expected):])
    return out


@st.composite
def chunkings(draw, length, required=()):
    """Where a stream is cut into reads: not at all, every byte, or at random."""
    mode = draw(st.sampled_from(["whole", "bytes", "random", "random", "random", "steps"]))
    if mode == "whole" or length < 2:
        cuts = set()
    elif mode == "bytes":
        cuts = set(range(1, length))
    elif mode == "steps":
        step = draw(st.integers(2, 9))
        cuts = set(range(step, length, step))
    else:
        cuts = set(draw(st.lists(st.integers(1, length - 1), max_size=12)))
    return sorted(cuts | {c for c in required if 0 < c < length})


# --- comparing the forms -------------------------------------------------------------------------
#
# What the forms may give differently by design.  Each rule folds exactly one such difference,
# and a test_known_difference_* test pins it.
#
# The interpreted form parses a read at once (httptools cannot pause llhttp) and queues the events;
# the compiled form stops at the end of each message and leaves the rest of the read unparsed.
# And the interpreted form collects a head that arrives in several reads, unparsed, until its
# blank line has come (or 4 KiB more); the compiled form parses every read as it comes.  So:
#
# 1. at a request's END (comparable()):
#    - in_message: the interpreted form may have begun the next request; to the compiled form it
#      is still unparsed bytes, which has_pending() reports in both forms alike;
#    - has_pending(): empty lines (CR, LF) after the request are unparsed bytes to the compiled
#      form, nothing to the interpreted one (llhttp has skipped them).  The compiled form's
#      leftover() says "the read goes on with something other than empty lines"; the interpreted
#      form's is has_pending(): "has_pending() and leftover()" means the same in both forms.
#      (The gateway then lingers instead of closing after a "Connection: close" request followed
#      by empty lines, with the compiled form only: harmless.)
#    - the drop counters (dropped_underscore, dropped_alias) may count the next request's fields
#      already, or not yet those of a head being collected: they are compared only at the end of
#      a stream that is not inside a head (the gateway sums them into a metric: only the request
#      they are attributed to differs);
# 2. an error inside a head that never ends is seen by the compiled form at once, by the
#    interpreted one never (the gateway answers 408 after its head timeout instead);
# 3. a head that breaks several rules, one of them a size bound (414, 494), may be refused for a
#    different one of them: the compiled form bounds each span as llhttp parses it (the head as a
#    whole included), the interpreted one each field when it is complete, and the collected
#    bytes of a head before they are parsed.  And the head as a whole (head_guard) is counted to
#    the end of its last span by the compiled form (its last line ending, or a response's reason
#    phrase when no field follows, uncounted), to its blank line by the interpreted one: a head
#    that arrives in pieces and ends within those few bytes of the bound is refused by the
#    interpreted form only (the reverse, a head read at once, is a bug: test_bug_head_guard_*);
# 4. a method token llhttp does not know is answered 501 when the bytes seen with llhttp's
#    refusal hold the whole request line (http1_rules.request_error), else 400: when the line is
#    split across reads, the compiled form (deciding on the reads so far) may say 400 where the
#    interpreted one (deciding on the collected head) says 501;
# 5. reads of a chunked body that carry no body byte (chunk lines and extensions, trailer
#    fields) are bounded by the interpreted form as raw bytes, 2 * max_header + 4 KiB of them
#    (httptools hands over only complete trailer fields), by the compiled form as trailer field
#    bytes: the interpreted form may refuse ("trailer fields too large") where the compiled one
#    goes on (complete trailer fields are bounded alike: max_header bytes);
# 6. error_detail strings (logged, never sent) are not compared: status and message are.

_INVALID_METHOD_DETAILS = ("parser: Invalid method encountered", "parser: Expected space after method")
_TRAILER_BOUND = {(494, "Request trailer fields too large"),
                  (502, "Backend returned an invalid response")}
_SIZE_STATUSES = (414, 494)


def comparable(trace: Trace, request: bool):
    """A trace's events with difference 1 folded (see above)."""
    events = []
    for event in trace.events:
        if request and event[0] == "END":
            body, pending, _in_message, leftover = event[1:]
            events.append(("END", body, pending and leftover))
        elif request and event[0] == "EOF":
            body, in_message, pending, dropped = event[1:]
            events.append(("EOF", body, in_message, pending, None if in_message else dropped))
        else:
            events.append(event)
    return events


def _in_head(events, i):
    """events[i] happens inside a head: no message is under way before it."""
    return i == 0 or events[i - 1][0] in ("END", "INTERIM")


def _last_head(events, i):
    return next((e for e in reversed(events[:i]) if e[0] == "HEAD"), None)


def _detail(trace: Trace):
    return trace.details[-1] if trace.details else None


def known_difference(c, p, i, compiled: Trace, pure: Trace, pieces, request):
    """The rule (2-5 above) that explains the first difference, c[i] against p[i], or None."""
    if i >= len(c) or i >= len(p):
        return None
    ce, pe = c[i], p[i]
    head = _last_head(c, i)
    if (pe[0] == "ERROR" and (pe[1], pe[2]) in _TRAILER_BOUND and i == len(p) - 1
            and ce[0] != "ERROR" and head is not None and head[1]["chunked"]
            and (request or _detail(pure) == "response trailer fields too large")
            and ce[1].startswith(pe[3])):
        return "5: the bound of a chunked body's metadata"
    if i != len(c) - 1 or i != len(p) - 1 or not _in_head(c, i):
        return None
    if ce[0] == pe[0] == "ERROR":
        answers = {(ce[1], ce[2]), (pe[1], pe[2])}
        if (answers == BAD_METHOD | {MALFORMED} and _detail(compiled) == _detail(pure)
                and _detail(compiled) in _INVALID_METHOD_DETAILS and len(pieces) > 1):
            return "4: an unknown method in a request line split across reads"
        if request and (ce[1] in _SIZE_STATUSES or pe[1] in _SIZE_STATUSES):
            return "3: another rule of the head first"
    if ce[0] == "ERROR" and pe[0] == "EOF" and pe[2] and not pe[1] and len(pieces) > 1:
        return "2: an error in an unfinished head"
    return None


def head_bound_counted_differently(c, p, i, pure: Trace, pieces, request, limits):
    """Rule 3 (its second part): a head in pieces, within the bounds of its fields, accepted by
    the compiled form and refused as too large by the interpreted one."""
    if i >= len(c) or i >= len(p) or len(pieces) < 2 or not _in_head(c, i):
        return None
    ce, pe = c[i], p[i]
    if (ce[0] == "HEAD" and pe[0] == "ERROR" and i == len(p) - 1
            and _within_field_limits(ce[1], limits)
            and (_detail(pure) or "").startswith("head: " if request else "response head too large")):
        return "3: the head bound counted to another byte"
    return None


#: the random tests step around the bugs the test_bug_* tests pin; False shows them
_KNOWN_BUGS = True


def _within_field_limits(head, limits) -> bool:
    sizes = [len(n) + len(v) for n, v in head["items"]]
    return (all(size <= limits[1] for size in sizes) and sum(sizes) <= limits[2]
            and len(sizes) <= limits[3])


def known_bug(c, p, i, compiled: Trace, pure: Trace, request, limits):
    """The test_bug_* test whose bug explains the first difference, c[i] against p[i], or None."""
    if not _KNOWN_BUGS or i >= len(c) or i >= len(p):
        return None
    ce, pe = c[i], p[i]
    if (ce[0] == "ERROR" and pe[0] == "HEAD" and _in_head(c, i)
            and ((request and (_detail(compiled) or "").startswith("head: "))
                 or (not request and _detail(compiled) == "response head too large"
                     and _within_field_limits(pe[1], limits)))):
        return "test_bug_head_guard_is_not_applied_to_a_head_read_at_once"
    if (request and ce[0] == "ERROR" and pe[0] == "EOF" and pe[2] and _in_head(c, i)
            and i == len(c) - 1 == len(p) - 1 and (_detail(compiled) or "").startswith("head: ")):
        # the same bug with the head still unfinished at the end: the interpreted form holds it
        return "test_bug_head_guard_is_not_applied_to_a_head_read_at_once"
    if (request and ce[0] == pe[0] == "ERROR" and i == len(c) - 1 == len(p) - 1
            and {(ce[1], ce[2]), (pe[1], pe[2])} == BAD_METHOD | {MALFORMED}
            and _detail(compiled) == _detail(pure) in _INVALID_METHOD_DETAILS
            and any(e[0] == "END" for e in c[:i])):
        return "test_bug_unknown_method_judged_by_the_first_request_of_the_read"
    return None


def first_difference(c, p):
    return next((i for i, (a, b) in enumerate(zip(c, p)) if a != b),
                None if len(c) == len(p) else min(len(c), len(p)))


def assert_forms_agree(traces, pieces, request: bool, limits):
    """Both forms gave the same events (but for the rules above); neither raised."""
    for trace in traces:
        assert not any(e[0] == "RAISED" for e in trace.events), trace.events
    if len(traces) < 2:
        return
    pure, compiled = traces
    c, p = comparable(compiled, request), comparable(pure, request)
    i = first_difference(c, p)
    if i is not None:
        why = (known_difference(c, p, i, compiled, pure, pieces, request)
               or head_bound_counted_differently(c, p, i, pure, pieces, request, limits)
               or known_bug(c, p, i, compiled, pure, request, limits))
        assert why is not None, (
            f"compiled: {c}, detail {compiled.details}\ninterpreted: {p}, detail {pure.details}")
        c, p = c[:i], p[:i]
    # the spans of BODY events: the same reads give the same spans (they have never differed;
    # were they to, only their concatenation, the body, would have to be equal)
    done = sum(1 for e in c if e[0] in ("END", "INTERIM"))
    assert compiled.spans[:done] == pure.spans[:done]


# --- the random tests ----------------------------------------------------------------------------

@seed(SEED)
@SETTINGS
@given(data=st.data())
def test_valid_requests_give_what_was_sent(http1_forms, data):
    underscores = data.draw(st.booleans())
    stream, messages, starts = data.draw(request_streams(underscores))
    cuts = data.draw(chunkings(len(stream)))
    pieces = reads(stream, cuts)
    expected = expected_request_events(messages)
    if expected[-1][0] == "ERROR" and expected[-1][1] is BAD_METHOD:
        # an unknown method: 501, or 400 when its line is split (known difference 4)
        failed = len(expected) // 2
        line = (starts[failed], starts[failed] + messages[failed].line_end)
        read_start = max([0] + [cut for cut in cuts if cut <= line[0]])
        if (any(line[0] < cut < line[1] for cut in cuts)
                # the interpreted form judges the line at the start of its read (a pinned bug,
                # test_bug_unknown_method_judged_by_the_first_request_of_the_read)
                or stream[read_start:line[0]].strip(b"\r\n")):
            expected[-1] = ("ERROR", BAD_METHOD | {MALFORMED})
    limits = DEFAULT_LIMITS + (underscores,)
    traces = [drive_requests(mod, pieces, limits) for mod in http1_forms]
    for trace in traces:
        assert semantic(trace.events, expected) == expected
    assert_forms_agree(traces, pieces, True, limits)


@seed(SEED)
@SETTINGS
@given(data=st.data())
def test_valid_responses_give_what_was_sent(http1_forms, data):
    stream, exchanges, ends = data.draw(response_streams())
    pieces = reads(stream, data.draw(chunkings(len(stream), ends)))
    skips = {i for i, (skip, _) in enumerate(exchanges) if skip}
    switches = {i for i, (_, messages) in enumerate(exchanges)
                if messages[-1].expect[0] == "SWITCH"}
    expected = expected_response_events(exchanges)
    limits = DEFAULT_LIMITS + (True,)
    traces = [drive_responses(mod, pieces, skips, limits, switches) for mod in http1_forms]
    for trace in traces:
        assert semantic(trace.events, expected) == expected
    assert_forms_agree(traces, pieces, False, limits)


@seed(SEED)
@MALFORMED_SETTINGS
@given(data=st.data())
def test_malformed_requests_are_read_alike(http1_forms, data):
    stream, limits = data.draw(malformed_request_streams())
    pieces = reads(stream, data.draw(chunkings(len(stream))))
    traces = [drive_requests(mod, pieces, limits) for mod in http1_forms]
    assert_forms_agree(traces, pieces, True, limits)


@seed(SEED)
@MALFORMED_SETTINGS
@given(data=st.data())
def test_malformed_responses_are_read_alike(http1_forms, data):
    stream, skips, limits, ends = data.draw(malformed_response_streams())
    pieces = reads(stream, data.draw(chunkings(len(stream), ends)))
    traces = [drive_responses(mod, pieces, skips, limits) for mod in http1_forms]
    assert_forms_agree(traces, pieces, False, limits)


# --- the known differences, pinned ---------------------------------------------------------------

def each_form():
    """{name: module} of the forms under test (the compiled one left out only when not built on
    purpose, TOLLGATE_NO_EXTENSIONS=1)."""
    forms = {"pure": load_form("http1", "pure")}
    if not NO_EXTENSIONS:
        forms["compiled"] = load_form("http1", "compiled")
    return forms


def events_of(parser):
    """The events the parser has for what it was fed: [(event, parser state it reports)]."""
    out = []
    while True:
        event = parser.next()
        if event == NEED_DATA:
            return out
        if event == ERROR:
            out.append(("ERROR", parser.error_status, parser.error_message))
            return out
        out.append(event)


def test_known_difference_1_a_request_end_seen_from_a_parser_that_reads_ahead():
    """(1) what the interpreted form has parsed ahead of an END, the compiled form has pending."""
    for name, mod in each_form().items():
        compiled = name == "compiled"
        # empty lines after a request: unparsed to the compiled form only
        parser = mod.RequestParser()
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n\r\n")
        assert parser.next() == HEAD and parser.next() == END
        assert (parser.has_pending(), parser.leftover(), parser.in_message) == (compiled, False, False)
        assert parser.next() == NEED_DATA and not parser.has_pending()
        # the start of the next request: begun by the interpreted form only
        parser = mod.RequestParser()
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGE")
        assert parser.next() == HEAD and parser.next() == END
        assert (parser.has_pending(), parser.leftover(), parser.in_message) == (True, True, not compiled)
        assert parser.next() == NEED_DATA and parser.in_message
        # the drop counters count the next request's fields already in the interpreted form
        parser = mod.RequestParser()
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nX_A: 1\r\n\r\n")
        assert parser.next() == HEAD
        assert parser.dropped_underscore == (0 if compiled else 1)
        assert events_of(parser) == [END, HEAD, END] and parser.dropped_underscore == 1


def test_known_difference_2_an_error_in_an_unfinished_head():
    """(2) the compiled form refuses a head at its bad byte; the interpreted one once the head
    is complete (or 4 KiB more came)."""
    for name, mod in each_form().items():
        parser = mod.RequestParser()
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
        assert parser.next() == NEED_DATA
        parser.feed(b"Bad Name: x\r\n")
        if name == "compiled":
            assert events_of(parser) == [("ERROR", 400, "Malformed HTTP request")]
            continue
        assert events_of(parser) == [] and parser.in_message and not parser.error_status
        parser.feed(b"\r\n")
        assert events_of(parser) == [("ERROR", 400, "Malformed HTTP request")]


def test_known_difference_3_another_rule_of_the_head_first():
    """(3) a field over max_header (16) that ends past head_guard (40): the compiled form meets
    the head's bound first, the interpreted one the field's."""
    for name, mod in each_form().items():
        parser = mod.RequestParser(32768, 16, 131072, 256, 40)
        parser.feed(b"GET / HTTP/1.1\r\nX-Long-Name: 0123456789abcdef\r\n\r\n")
        message = "Request headers too large" if name == "compiled" else "Request header too large"
        assert events_of(parser) == [("ERROR", 494, message)]


@pytest.mark.parametrize("pieces", [[b"F", b"O", b"O / HTTP/1.1\r\nHost: a\r\n\r\n"],
                                    [b"GET", b"X ", b"/ HTTP/1.1\r\nHost: a\r\n\r\n"]])
def test_known_difference_4_an_unknown_method_split_across_reads(pieces):
    """(4) 501 for an unknown method, but 400 from the compiled form when llhttp refuses the
    method before the request line is complete."""
    for name, mod in each_form().items():
        whole, split = mod.RequestParser(), mod.RequestParser()
        whole.feed(b"".join(pieces))
        assert events_of(whole) == [("ERROR", 501, "Method not implemented")]
        for piece in pieces:
            split.feed(piece)
            got = events_of(split)
        if name == "compiled":
            assert got == [("ERROR", 400, "Malformed HTTP request")]
        else:
            assert got == [("ERROR", 501, "Method not implemented")]


@pytest.mark.parametrize("request_", [True, False])
def test_known_difference_5_the_bound_of_chunk_lines(request_):
    """(5) 10 KB of chunk extension in reads without body bytes, max_header 32: over the
    interpreted form's raw bound (2 * 32 + 4096), nothing to the compiled form's."""
    head = (b"POST / HTTP/1.1\r\nHost: a\r\n" if request_ else b"HTTP/1.1 200 OK\r\n")
    stream = head + b"Transfer-Encoding: chunked\r\n\r\n5;" + b"a" * 10000 + b"\r\nhello\r\n0\r\n\r\n"
    refused = (494, "Request trailer fields too large") if request_ else (
        502, "Backend returned an invalid response")
    for name, mod in each_form().items():
        parser = (mod.RequestParser if request_ else mod.ResponseParser)(32768, 32, 131072, 256, 167936)
        got = []
        for piece in reads(stream, range(1000, len(stream), 1000)):
            parser.feed(piece)
            got += events_of(parser)
            if parser.error_status:
                break
        if name == "compiled":
            assert got == [HEAD, BODY, END] and parser.body == b"hello"
        else:
            assert got == [HEAD, ("ERROR",) + refused]
        # complete trailer fields are bounded alike (max_header bytes of name and value)
        parser = (mod.RequestParser if request_ else mod.ResponseParser)(32768, 32, 131072, 256, 167936)
        parser.feed(head + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: " + b"t" * 30 + b"\r\n\r\n")
        assert events_of(parser) == [HEAD, ("ERROR",) + refused]


def test_known_difference_3_the_head_bound_counted_to_another_byte():
    """(3) 56 bytes of head in two reads against head_guard 52: the compiled form counts to the
    end of the last field (52), the interpreted one the collected bytes (55: all but the first
    read's, see test_bug_head_guard_is_not_applied_to_a_head_read_at_once)."""
    stream = b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Field: 0123456789\r\n\r\n"
    for name, mod in each_form().items():
        parser = mod.RequestParser(32768, 32768, 131072, 256, 52)
        parser.feed(stream[:1])
        parser.feed(stream[1:])
        if name == "compiled":
            assert events_of(parser) == [HEAD, END]
        else:
            assert events_of(parser) == [("ERROR", 494, "Request headers too large")]
            assert parser.error_detail == "head: 55 bytes"


def test_known_differences_are_folded_and_nothing_else():
    """The folds of the random tests, on the pinned examples: each is recognised as its rule."""
    if NO_EXTENSIONS:
        pytest.skip("TOLLGATE_NO_EXTENSIONS=1: the compiled form is not tested")
    forms = [each_form()["pure"], each_form()["compiled"]]
    limits = DEFAULT_LIMITS + (False,)
    cases = [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nX_A: 1\r\n\r\nGE", [], limits),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n", [16], limits),
        (b"GET / HTTP/1.1\r\nX-Long-Name: 0123456789abcdef\r\n\r\n", [], (32768, 16, 131072, 256, 40, False)),
        (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", [1, 2], limits),
        (b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Field: 0123456789\r\n\r\n", [1],
         (32768, 32768, 131072, 256, 52, False)),
    ]
    for stream, cuts, lim in cases:
        pieces = reads(stream, cuts)
        assert_forms_agree([drive_requests(mod, pieces, lim) for mod in forms], pieces, True, lim)
    # ... and a difference no rule explains is not folded
    pure, compiled = (drive_requests(mod, [b"GET / HTTP/1.1\r\n\r\n"], limits) for mod in forms)
    pure.events[0][1]["items"] = [(b"X", b"y")]
    with pytest.raises(AssertionError):
        assert_forms_agree([pure, compiled], [b"GET / HTTP/1.1\r\n\r\n"], True, limits)


# --- bugs fixed, pinned --------------------------------------------------------------------------

def test_an_interim_response_to_head_keeps_the_final_response():
    for name, mod in each_form().items():
        for pieces in ([b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"
                        b"Content-Length: 10\r\n\r\n"],
                       [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"]):
            trace = drive_responses(mod, pieces, skips={0})
            assert [e[0] for e in trace.events] == ["HEAD", "INTERIM", "HEAD", "END", "EOF"], name
            assert trace.events[3] == ("END", b"", False)


def test_a_response_to_head_without_framing_keeps_the_connection():
    for name, mod in each_form().items():
        parser = mod.ResponseParser()
        parser.expect_no_body(True)
        parser.feed(b"HTTP/1.1 200 OK\r\n\r\n")
        assert (parser.next(), parser.next()) == (HEAD, END) and parser.head.keep_alive, name
        assert not parser.leftover()


@pytest.mark.parametrize("value", [b"chunked\t", b"chunked \t", b"chunked\t "])
def test_chunked_with_a_trailing_tab_is_refused(value):
    """llhttp does not take "chunked<HTAB>" as chunked (it reads such a body to the close): the
    gateway refuses it as a coding other than chunked, in both forms, before any HEAD."""
    for name, mod in each_form().items():
        parser = mod.RequestParser()
        parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + value +
                    b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert events_of(parser) == [
            ("ERROR", 400, "Transfer-Encoding other than chunked is not supported")], name
        parser = mod.ResponseParser()
        parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + value + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert events_of(parser) == [("ERROR", 502, "Backend returned an invalid response")], name


def test_a_chunked_request_with_a_long_head_in_pieces_is_not_refused_as_trailers():
    """A 40 KB head (over max_header, under max_headers) in two reads, its body in a third (as
    after 100 Continue): the interpreted form once counted the head as chunk lines."""
    head = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-A: " + b"a" * 20000 +
            b"\r\nX-B: " + b"b" * 20000 + b"\r\n\r\n")
    pieces = [head[:100], head[100:], b"5\r\nhello\r\n0\r\n\r\n"]
    for name, mod in each_form().items():
        trace = drive_requests(mod, pieces)
        assert [e[0] for e in trace.events] == ["HEAD", "END", "EOF"], name
        assert trace.events[1][1] == b"hello"


def test_an_upgrade_request_is_a_plain_request_with_its_body():
    """The gateway switches no protocol: the body of an upgrade request is read by its framing,
    and what follows it is the next request (not "the other protocol")."""
    stream = (b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
              b"Content-Length: 18\r\n\r\nGET /admin HTTP/1.\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    for name, mod in each_form().items():
        for cuts in ([], range(1, len(stream))):
            trace = drive_requests(mod, reads(stream, cuts))
            assert [e[0] for e in trace.events] == ["HEAD", "END", "HEAD", "END", "EOF"], name
            assert trace.events[0][1]["upgrade"] and trace.events[1][1] == b"GET /admin HTTP/1."
            assert trace.events[2][1]["target"] == b"/x"


# --- known bugs: the right behaviour, xfail on the form that has the bug -------------------------

@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("value", [b"9223372036854775808", b"18446744073709551615"])
def test_content_length_of_2_63_or_more_is_refused_not_wrapped(form, value):
    """A length that does not fit a signed 64-bit number must never read as "no length" (the
    body would go on as the next request: smuggling).  Refused by both forms."""
    mod = load_form("http1", form)
    parser = mod.RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + value +
                b"\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n")
    assert events_of(parser) == [("ERROR", 413, "Request body too large")]
    parser = mod.ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nabc")
    assert events_of(parser) == [("ERROR", 502, "Backend returned an invalid response")]


@pytest.mark.parametrize("form", FORMS)
def test_empty_line_after_a_response_to_head_is_no_leftover(form):
    parser = load_form("http1", form).ResponseParser()
    parser.expect_no_body(True)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n\r\n")
    assert (parser.next(), parser.next()) == (HEAD, END)
    assert not parser.leftover()        # (asked at END, as gateway/http/upstream.py does)


@pytest.mark.parametrize("form", FORMS)
def test_chunk_line_after_a_response_to_head_is_a_leftover(form):
    parser = load_form("http1", form).ResponseParser()
    parser.expect_no_body(True)
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5")
    assert (parser.next(), parser.next()) == (HEAD, END)
    assert parser.leftover()


@with_bug_in(("pure",), "interpreted: head_guard bounds only the reads of a head after its first: a head "
                     "read at once (or mostly in its first read) is not bounded")
@pytest.mark.parametrize("cuts", [[], [100000]])
def test_bug_head_guard_is_not_applied_to_a_head_read_at_once(form, cuts):
    """200 KB of head (the fields themselves small: the bulk is whitespace no other limit counts)
    against the default head_guard (164 KiB)."""
    mod = load_form("http1", form)
    head = b"X-Pad: " + b" " * 200000 + b"v\r\n\r\n"
    parser = mod.RequestParser()
    for piece in reads(b"GET / HTTP/1.1\r\nHost: a\r\n" + head, cuts):
        parser.feed(piece)
    assert events_of(parser) == [("ERROR", 494, "Request headers too large")]
    parser = mod.ResponseParser()
    for piece in reads(b"HTTP/1.1 200 OK\r\n" + head, cuts):
        parser.feed(piece)
    assert events_of(parser) == [("ERROR", 502, "Backend returned an invalid response")]


@with_bug_in(("pure",), "interpreted: whether an unknown method's request line is whole (501, else "
                        "400) is judged on the read's first request, not on the refused one")
@pytest.mark.parametrize("stream, answer", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x8b\r\n\r\n", MALFORMED),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\nFOO / HTTP/1.1\r\nHost: a\r\n\r\n",
     (501, "Method not implemented")),
], ids=["garbage-after-a-request", "unknown-method-after-an-odd-request-line"])
def test_bug_unknown_method_judged_by_the_first_request_of_the_read(form, stream, answer):
    parser = load_form("http1", form).RequestParser()
    parser.feed(stream)
    assert events_of(parser) == [HEAD, END, ("ERROR",) + answer]


@pytest.mark.parametrize("form", FORMS)
def test_http_1_0_close_with_keep_alive_is_not_kept_alive(form):
    """llhttp keeps such a message alive; RFC 9112 §9.3: 'close' ends it (both forms correct it)."""
    mod = load_form("http1", form)
    parser = mod.RequestParser()
    parser.feed(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n")
    assert parser.next() == HEAD and not parser.head.keep_alive
    parser = mod.ResponseParser()
    parser.feed(b"HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\n"
                b"Content-Length: 0\r\n\r\n")
    assert parser.next() == HEAD and not parser.head.keep_alive


_UPGRADE = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
_WEBSOCKET = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("stream, events", [
    (_UPGRADE + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
     [HEAD, END, ("ERROR", 400, "Repeated Host header")]),
    (_UPGRADE + b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
     [HEAD, END, ("ERROR", 505, "HTTP version not supported")]),
    (_UPGRADE * 2000, [HEAD, END] * 2000),
], ids=["repeated-host", "http-2.0", "2000-upgrades"])
def test_refusal_after_an_upgrade_request_in_the_same_read(form, stream, events):
    parser = load_form("http1", form).RequestParser()
    parser.feed(stream)
    assert events_of(parser) == events


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("rest", [b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                                  _WEBSOCKET * 1999, b"\x88\x80\x00\x00\x00\x00"],
                         ids=["refusable", "upgrades", "frame"])
def test_nothing_after_a_websocket_upgrade_is_parsed(form, rest):
    parser = load_form("http1", form).RequestParser()
    parser.feed(_WEBSOCKET + rest)
    assert events_of(parser) == [HEAD, END]
    assert parser.detach() == rest
