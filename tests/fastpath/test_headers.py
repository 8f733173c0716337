"""filter_request_headers / filter_response_headers, on both forms of fastpath.headers.

The compiled form classifies names with a case-folding byte compare instead of lower() and a
lookup; the random test checks it against a plain reference on any token-character name.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from .conftest import SEED

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
REQUEST_DROP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                "upgrade", "proxy-authorization", "host", "content-length", "expect",
                "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"}
RESPONSE_DROP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                 "upgrade", "proxy-authenticate", "content-length", "x-request-id"}


def lines(*pairs):
    return b"".join(b"%s: %s\r\n" % pair for pair in pairs)


def test_request_keeps_end_to_end_headers_in_order(headers_mod):
    headers = [(b"Accept", b"*/*"), (b"User-Agent", b"t"), (b"X-Custom", b"a"), (b"X-Custom", b"b")]
    assert headers_mod.filter_request_headers(headers) == (None, lines(*headers))


@pytest.mark.parametrize("name", sorted(REQUEST_DROP - {"x-forwarded-for"}))
def test_request_drops_hop_by_hop_and_gateway_headers(headers_mod, name):
    for spelling in (name, name.upper(), name.title()):
        headers = [(b"A", b"1"), (spelling.encode(), b"close"), (b"B", b"2")]
        assert headers_mod.filter_request_headers(headers) == (None, lines((b"A", b"1"), (b"B", b"2")))


def test_request_x_forwarded_for_chain_is_returned_joined(headers_mod):
    headers = [(b"X-Forwarded-For", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3")]
    assert headers_mod.filter_request_headers(headers) == (b"1.1.1.1, 2.2.2.2, 3.3.3.3", b"")


def test_request_drops_what_connection_names(headers_mod):
    headers = [(b"X-Secret", b"s"), (b"Connection", b"close, X-Secret"), (b"Keep", b"k"),
               (b"x-secret", b"t")]
    assert headers_mod.filter_request_headers(headers) == (None, lines((b"Keep", b"k")))


@pytest.mark.parametrize("value", [b"keep-alive", b"Keep-Alive", b"  close ", b"CLOSE", b"\tkeep-alive"])
def test_plain_connection_values_drop_nothing_else(headers_mod, value):
    headers = [(b"Keep-Alive", b"timeout=5"), (b"Connection", value), (b"Close", b"x"), (b"Keep", b"y")]
    assert headers_mod.filter_request_headers(headers)[1] == lines((b"Close", b"x"), (b"Keep", b"y"))


def test_response_framing(headers_mod):
    f = headers_mod.filter_response_headers
    assert f([(b"Content-Length", b"102"), (b"Server", b"n")]) == (lines((b"Server", b"n")), 102, True, False)
    assert f([(b"content-length", b" 7 ")]) == (b"", 7, True, False)
    assert f([(b"CONTENT-LENGTH", b"0")]) == (b"", 0, True, False)
    assert f([(b"Content-Length", b"9223372036854775807")]) == (b"", 2 ** 63 - 1, True, False)
    assert f([(b"Transfer-Encoding", b"chunked")]) == (b"", -1, True, False)
    assert f([(b"Server", b"s")]) == (lines((b"Server", b"s")), -1, False, False)


@pytest.mark.parametrize("name", [b"Date", b"date", b"DATE", b"dAtE"])
def test_response_date_is_kept_and_reported(headers_mod, name):
    headers = [(b"Server", b"s"), (name, b"Tue, 01 Jan 2019 00:00:00 GMT"), (b"Etag", b"e")]
    assert headers_mod.filter_response_headers(headers) == (lines(*headers), -1, False, True)
    # a Date a Connection header names is dropped like any other named header
    headers.append((b"Connection", b"date"))
    filtered, _, _, dated = headers_mod.filter_response_headers(headers)
    assert filtered == lines((b"Server", b"s"), (b"Etag", b"e"))
    assert dated is False       # so the gateway adds its own


def test_request_date_is_an_ordinary_header(headers_mod):
    assert headers_mod.filter_request_headers([(b"Date", b"d")]) == (None, lines((b"Date", b"d")))


def test_response_bad_content_length_raises(headers_mod):
    # llhttp refuses these first; the filter still never reads one as a number
    with pytest.raises(ValueError):
        headers_mod.filter_response_headers([(b"Content-Length", b"12x")])
    with pytest.raises(ValueError):
        headers_mod.filter_response_headers([(b"Content-Length", b"")])
    with pytest.raises(ValueError):
        headers_mod.filter_response_headers([(b"Content-Length", b"1 2")])
    with pytest.raises(ValueError, match="out of range"):
        headers_mod.filter_response_headers([(b"Content-Length", b"9223372036854775808")])


@pytest.mark.parametrize("name", sorted(RESPONSE_DROP - {"content-length", "transfer-encoding"}))
def test_response_drops_hop_by_hop_headers(headers_mod, name):
    headers = [(name.upper().encode(), b"v"), (b"Server", b"n"), (b"Set-Cookie", b"a=1")]
    assert headers_mod.filter_response_headers(headers)[0] == lines((b"Server", b"n"), (b"Set-Cookie", b"a=1"))


def test_response_drops_what_connection_names(headers_mod):
    headers = [(b"Connection", b"Keep-Alive, X-Internal"), (b"X-Internal", b"1"), (b"Server", b"n")]
    assert headers_mod.filter_response_headers(headers)[0] == lines((b"Server", b"n"))


def test_names_one_character_off_are_kept(headers_mod):
    # near misses of dropped names: the case folding must not make them equal
    near = [b"Content-Lengtg", b"Content_Length", b"Content-Lengt^", b"Hos~", b"H0st", b"T^", b"TE_",
            b"Connectio", b"Connection_", b"X-Request-Ie", b"Upgrad`", b"Expec|"]
    headers = [(n, b"v") for n in near]
    assert headers_mod.filter_request_headers(headers) == (None, lines(*headers))
    assert headers_mod.filter_response_headers(headers)[0] == lines(*headers)


def reference_request(headers):
    drop = set(REQUEST_DROP)
    forwarded = None
    for name, value in headers:
        if name.lower() == b"connection":
            drop |= {t.strip().lower().decode() for t in value.split(b",")} - {"keep-alive", "close", ""}
        if name.lower() == b"x-forwarded-for":
            forwarded = value if forwarded is None else forwarded + b", " + value
    kept = [(n, v) for n, v in headers if n.lower().decode() not in drop]
    return forwarded, lines(*kept)


names = st.one_of(
    st.sampled_from(sorted(REQUEST_DROP | RESPONSE_DROP)).map(
        lambda n: "".join(c.upper() if i % 2 else c for i, c in enumerate(n))),
    st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=20),
).map(str.encode)
values = st.text(alphabet="abc ,-XY", max_size=12).map(str.encode)


@seed(SEED)
@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(names, values), max_size=8))
def test_request_filter_matches_reference(headers_mod, headers):
    assert headers_mod.filter_request_headers(headers) == reference_request(headers)
