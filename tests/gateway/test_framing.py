"""Request framing: every ambiguous or broken request is refused before it reaches a backend.

One gateway and one backend serve the whole module.  Each attack is sent as raw bytes; the
gateway must answer 400 APIC.0201 (JSON body, X-Request-Id equal to the body's request_id),
close the connection, and the backend must not have seen the request.  Every test tags its
request target with a unique marker so the backend's record can be searched for it.
"""
from __future__ import annotations

import hashlib
import json
import socket
import time

import httptools
import pytest

from tests.conftest import proxy_config
from tests.support.backend import Backend
from tests.support.client import assert_http_date, exchange
from tests.support.gateway import GatewayProcess


@pytest.fixture(scope="module")
def backend():
    b = Backend().start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def gw(backend, tmp_path_factory):
    g = GatewayProcess(proxy_config(backend.address), tmp_path_factory.mktemp("framing")).start()
    yield g
    g.stop()


_barrier_counter = [0]


def backend_seen(gw, backend, since: int) -> list[dict]:
    """The backend's records after index ``since``, once everything sent before has landed.

    A barrier request goes through the gateway and is waited for; anything the gateway had
    forwarded earlier has reached the backend by then.  The barrier itself is left out.
    """
    _barrier_counter[0] += 1
    marker = f"/echo?barrier={_barrier_counter[0]}"
    responses, _ = exchange(
        gw.port, f"GET {marker} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n".encode())
    assert responses and responses[0].status == 200, responses
    deadline = time.monotonic() + 5
    while not any(r["target"] == marker for r in backend.requests[since:]):
        assert time.monotonic() < deadline, "barrier request never reached the backend"
        time.sleep(0.01)
    time.sleep(0.02)   # a straggler on another upstream connection
    return [r for r in backend.requests[since:] if "barrier=" not in r["target"]]


def assert_framing_error(responses, closed, status=400):
    assert len(responses) == 1, responses
    r = responses[0]
    assert r.complete, r
    assert r.status == status, r
    assert r.header("Content-Type") == "application/json", r
    body = r.json()
    assert set(body) == {"error_code", "error_msg", "request_id"}, body
    assert body["error_code"] == "APIC.0201", body
    assert isinstance(body["error_msg"], str) and body["error_msg"], body
    assert body["request_id"] and r.header("X-Request-Id") == body["request_id"], r
    assert closed, "the connection must be closed after a framing error"


def assert_refused(gw, backend, data: bytes, status=400):
    """Send ``data``; expect one framing error answer, a closed connection, nothing forwarded."""
    before = len(backend.requests)
    responses, closed = exchange(gw.port, data, timeout=5)
    assert_framing_error(responses, closed, status)
    assert_http_date(responses[0].header("Date"))    # the gateway's own answer carries its Date
    assert backend_seen(gw, backend, before) == [], "the backend received a refused request"
    return responses[0]


# -- Content-Length / Transfer-Encoding -------------------------------------------------------

CASES = {
    "cl-then-te": (b"POST /echo?t=cl-te HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    "te-then-cl": (b"POST /echo?t=te-cl HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n"
                   b"Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    "two-cl-same": (b"POST /echo?t=cl2same HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n"
                    b"Content-Length: 5\r\n\r\nhello"),
    "two-cl-different": (b"POST /echo?t=cl2diff HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n"
                         b"Content-Length: 3\r\n\r\nhello"),
    "cl-list": b"POST /echo?t=cllist HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1, 1\r\n\r\nx",
    "cl-plus-sign": b"POST /echo?t=clplus HTTP/1.1\r\nHost: gw.test\r\nContent-Length: +1\r\n\r\nx",
    "cl-negative": b"POST /echo?t=clneg HTTP/1.1\r\nHost: gw.test\r\nContent-Length: -1\r\n\r\nx",
    "te-gzip-chunked": (b"POST /echo?t=tegzc HTTP/1.1\r\nHost: gw.test\r\n"
                        b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    "te-chunked-gzip": (b"POST /echo?t=tecgz HTTP/1.1\r\nHost: gw.test\r\n"
                        b"Transfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    "te-gzip": b"POST /echo?t=tegz HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    "te-repeated": (b"POST /echo?t=terep HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    "te-repeated-obfuscated": (b"POST /echo?t=terepx HTTP/1.1\r\nHost: gw.test\r\n"
                               b"Transfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n"
                               b"5\r\nhello\r\n0\r\n\r\n"),
    "te-space-before-colon": (b"POST /echo?t=tespace HTTP/1.1\r\nHost: gw.test\r\n"
                              b"Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    "te-xchunked": (b"POST /echo?t=tex HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: xchunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\n\r\n"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_ambiguous_length_is_refused(gw, backend, name):
    assert_refused(gw, backend, CASES[name])


# -- chunked body syntax ----------------------------------------------------------------------

CHUNK_CASES = {
    "invalid-size": b"zz\r\nhello\r\n0\r\n\r\n",
    "size-overflow": b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "extension-bare-lf": b"5;ext=1\nhello\r\n0\r\n\r\n",
    "size-line-bare-lf": b"5\nhello\r\n0\r\n\r\n",
    "data-not-followed-by-crlf": b"5\r\nhelloXX0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(CHUNK_CASES))
def test_bad_chunked_body_is_refused(gw, backend, name):
    head = (b"POST /echo?t=chunk-%s HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            % name.encode())
    assert_refused(gw, backend, head + CHUNK_CASES[name])


@pytest.mark.parametrize("line", [b"5 ;ext=1", b"5\t;ext=1", b"5 \t ;ext=1;b", b"5 "])
def test_whitespace_before_a_chunk_extension_is_accepted(gw, backend, line):
    # RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS ext-name ... ); the body arrives re-framed
    data = (b"POST /echo?t=bws HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + line + b"\r\nhello\r\n0 ;last\r\n\r\n")
    responses, closed = exchange(gw.port, data, timeout=5)
    assert len(responses) == 1 and responses[0].status == 200, responses
    echo = responses[0].json()
    assert echo["body_length"] == 5 and echo["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert not closed


@pytest.mark.parametrize("line", [b"5 ;ext=1\n", b"5 \n", b"5\t;ext=1\n", b"5;ext=1 \n"])
def test_bare_lf_in_a_chunk_line_with_whitespace_is_refused(gw, backend, line):
    head = b"POST /echo?t=bwslf HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert_refused(gw, backend, head + line + b"hello\r\n0\r\n\r\n")


def test_http10_with_transfer_encoding_is_refused_and_closed(gw, backend):
    # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing; a second
    # request on the same connection (keep-alive) must never be forwarded
    data = (b"POST /echo?t=h10te HTTP/1.0\r\nHost: gw.test\r\nConnection: keep-alive\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            b"GET /echo?t=h10te-second HTTP/1.0\r\nHost: gw.test\r\nConnection: keep-alive\r\n\r\n")
    before = len(backend.requests)
    responses, closed = exchange(gw.port, data, expect=2, timeout=3)
    assert_framing_error(responses, closed)
    assert backend_seen(gw, backend, before) == []


# -- request line: methods, fragments ---------------------------------------------------------

@pytest.mark.parametrize("method", [b"FOO", b"get", b"BREW", b"X-CUSTOM"])
def test_unknown_method_is_501(gw, backend, method):
    before = len(backend.requests)
    responses, closed = exchange(gw.port, method + b" /echo?t=m501 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert len(responses) == 1 and responses[0].status == 501, responses
    body = responses[0].json()
    assert body["error_code"] == "APIC.0201" and "method" in body["error_msg"].lower()
    assert closed
    assert backend_seen(gw, backend, before) == []


@pytest.mark.parametrize("line", [b"\x01\x02 /echo HTTP/1.1", b"G(T /echo HTTP/1.1", b"/echo HTTP/1.1"])
def test_request_line_without_a_method_token_is_400(gw, backend, line):
    assert_refused(gw, backend, line + b"\r\nHost: gw.test\r\n\r\n")


@pytest.mark.parametrize("target", [b"/echo#f", b"/echo?t=frag#f", b"/echo?t=frag2&a=b#", b"/echo?#"])
def test_fragment_in_the_target_is_refused(gw, backend, target):
    # (and the connection closed: the request pipelined after it is not served)
    assert_refused(gw, backend, b"GET %s HTTP/1.1\r\nHost: gw.test\r\n\r\n" % target +
                   b"GET /echo?t=after-fragment HTTP/1.1\r\nHost: gw.test\r\n\r\n")


@pytest.mark.parametrize("host", [b"evil.test/x", b"evil.test x", b"a@evil.test", b"evil.test\\x",
                                  b"evil.test?x", b"evil\x7f.test"])
def test_an_invalid_host_is_refused(gw, backend, host):
    assert_refused(gw, backend, b"GET /echo?t=bad-host HTTP/1.1\r\nHost: %s\r\n\r\n" % host)


@pytest.mark.parametrize("host", [b"gw.test", b"GW.Test:8080", b"127.0.0.1:80", b"[::1]:8080",
                                  b"my_host.test", b"xn--bcher-kva.test"])
def test_valid_hosts_are_served(gw, backend, host):
    responses, _ = exchange(gw.port, b"GET /echo?t=good-host HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
    assert [r.status for r in responses] == [200], responses


def test_a_valid_host_after_an_invalid_one_is_not_taken_from_the_cache(gw, backend):
    """The Host is checked once per connection and value: a new value is checked again."""
    responses, closed = exchange(gw.port, b"GET /echo?t=h1 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
                                          b"GET /echo?t=h2 HTTP/1.1\r\nHost: gw.test/x\r\n\r\n",
                                 expect=2)
    assert [r.status for r in responses] == [200, 400] and closed, responses


# -- header names with '_' ---------------------------------------------------------------------

def test_header_names_with_underscores_are_dropped(gw, backend):
    data = (b"GET /echo?t=under HTTP/1.1\r\nHost: gw.test\r\nX_Custom: a\r\nX-Kept: b\r\n"
            b"Transfer_Encoding: chunked\r\nContent_Length: -1E23\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n")
    before = {reason: gw.metric("tollgate_request_headers_dropped_total", reason=reason)
              for reason in ("underscore", "alias")}
    responses, closed = exchange(gw.port, data)
    assert len(responses) == 1 and responses[0].status == 200, responses
    names = [k.lower() for k, _ in responses[0].json()["headers"]]
    assert "x-kept" in names
    assert not [n for n in names if "_" in n], names
    assert not closed
    # X_Custom is dropped by default; the other three read as framing or gateway-set headers
    gw.wait_metric("tollgate_request_headers_dropped_total", before["underscore"] + 1,
                   reason="underscore")
    gw.wait_metric("tollgate_request_headers_dropped_total", before["alias"] + 3, reason="alias")


# -- header syntax --------------------------------------------------------------------------

HEADER_CASES = {
    "obs-fold": b"GET /echo?t=fold HTTP/1.1\r\nHost: gw.test\r\nX-A: one\r\n two\r\n\r\n",
    "nul-in-value": b"GET /echo?t=nul HTTP/1.1\r\nHost: gw.test\r\nX-A: a\x00b\r\n\r\n",
    "bare-cr-in-value": b"GET /echo?t=cr HTTP/1.1\r\nHost: gw.test\r\nX-A: a\rb\r\n\r\n",
    "bare-lf-line-endings": b"GET /echo?t=lf HTTP/1.1\nHost: gw.test\nX-A: b\n\n",
    "bare-lf-after-header": b"GET /echo?t=lf2 HTTP/1.1\r\nHost: gw.test\nX-A: b\r\n\r\n",
    "space-in-name": b"GET /echo?t=spname HTTP/1.1\r\nHost: gw.test\r\nX A: b\r\n\r\n",
}


@pytest.mark.parametrize("name", list(HEADER_CASES))
def test_bad_header_syntax_is_refused(gw, backend, name):
    assert_refused(gw, backend, HEADER_CASES[name])


# -- request line, Host ------------------------------------------------------------------

def test_absolute_form_with_other_authority_is_refused(gw, backend):
    assert_refused(gw, backend, b"GET http://evil.test/echo?t=absother HTTP/1.1\r\nHost: gw.test\r\n\r\n")


def test_absolute_form_with_matching_authority_is_routed_as_origin_form(gw, backend):
    before = len(backend.requests)
    responses, closed = exchange(
        gw.port, b"GET http://gw.test/echo?t=absmatch HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert len(responses) == 1 and responses[0].status == 200, responses
    assert not closed
    seen = backend_seen(gw, backend, before)
    assert [r["target"] for r in seen] == ["/echo?t=absmatch"]
    assert responses[0].json()["target"] == "/echo?t=absmatch"


def test_missing_host_on_http11_is_refused(gw, backend):
    assert_refused(gw, backend, b"GET /echo?t=nohost HTTP/1.1\r\nX-A: b\r\n\r\n")


def test_http10_without_host_is_served(gw, backend):
    before = len(backend.requests)
    responses, closed = exchange(gw.port, b"GET /echo?t=http10 HTTP/1.0\r\n\r\n")
    assert len(responses) == 1 and responses[0].status == 200, responses
    assert closed, "HTTP/1.0 without keep-alive closes after the response"
    seen = backend_seen(gw, backend, before)
    assert [r["target"] for r in seen] == ["/echo?t=http10"]


def test_repeated_host_is_refused(gw, backend):
    assert_refused(gw, backend,
                   b"GET /echo?t=host2 HTTP/1.1\r\nHost: gw.test\r\nHost: evil.test\r\n\r\n")


def test_repeated_identical_host_is_refused(gw, backend):
    assert_refused(gw, backend,
                   b"GET /echo?t=host2same HTTP/1.1\r\nHost: gw.test\r\nHost: gw.test\r\n\r\n")


@pytest.mark.parametrize("line", [
    b"GET /echo?t=h2 HTTP/2.0",
    b"GET /echo?t=h3 HTTP/3.0",
    b"GET /echo?t=h0 HTTP/0.9",
])
def test_http_major_version_other_than_1_is_505(gw, backend, line):
    # RFC 9110 §15.6.6: the server does not support the major version of the request
    assert_refused(gw, backend, line + b"\r\nHost: gw.test\r\n\r\n", status=505)


def test_http09_style_request_line_is_505(gw, backend):
    before = len(backend.requests)
    responses, closed = exchange(gw.port, b"GET /echo?t=h09\r\n\r\n", timeout=3)
    # llhttp reads a request line without a version as HTTP/0.9: not a version served here.
    # HTTP/0.9 has no status line, so the client cannot read it anyway; nothing is forwarded.
    assert_framing_error(responses, closed, status=505)
    assert backend_seen(gw, backend, before) == []


@pytest.mark.parametrize("minor", [b"2", b"9"])
def test_higher_http1_minor_version_is_served_as_1_1(gw, backend, minor):
    # RFC 9112 §2.6: a recipient treats a higher minor version as the highest it supports
    marker = f"/echo?t=h1{minor.decode()}"
    responses, closed = exchange(gw.port, b"GET %s HTTP/1.%s\r\nHost: gw.test\r\n\r\n"
                                 % (marker.encode(), minor))
    assert len(responses) == 1 and responses[0].status == 200, responses
    assert responses[0].version == "1.1"
    assert not closed, "an HTTP/1.x request keeps the connection by default, as 1.1 does"
    seen = [r for r in backend.requests if r["target"] == marker]
    assert seen and seen[-1]["version"] == "1.1"


def test_connect_is_refused(gw, backend):
    assert_refused(gw, backend, b"CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\n\r\n")


def test_connect_with_origin_form_is_refused(gw, backend):
    assert_refused(gw, backend, b"CONNECT /echo?t=connectorigin HTTP/1.1\r\nHost: gw.test\r\n\r\n")


# -- smuggling ----------------------------------------------------------------------------

SMUGGLED = b"GET /echo?t=SMUGGLED HTTP/1.1\r\nHost: gw.test\r\n\r\n"


def _no_smuggled(seen):
    assert not any("SMUGGLED" in r["target"] for r in seen), seen


def test_smuggling_cl_te(gw, backend):
    # a front end honouring Content-Length forwards it all; one honouring chunked sees SMUGGLED
    body = b"0\r\n\r\n" + SMUGGLED
    data = (b"POST /echo?t=smug-clte HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" % len(body)) + body
    before = len(backend.requests)
    responses, closed = exchange(gw.port, data, expect=2, timeout=2)
    assert_framing_error(responses, closed)
    seen = backend_seen(gw, backend, before)
    _no_smuggled(seen)
    assert seen == []


def test_smuggling_te_cl(gw, backend):
    chunk = SMUGGLED
    data = (b"POST /echo?t=smug-tecl HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(chunk), chunk))
    before = len(backend.requests)
    responses, closed = exchange(gw.port, data, expect=2, timeout=2)
    assert_framing_error(responses, closed)
    seen = backend_seen(gw, backend, before)
    _no_smuggled(seen)
    assert seen == []


def test_smuggling_te_te_obfuscated(gw, backend):
    data = (b"POST /echo?t=smug-tete HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n"
            b"5c\r\n" + SMUGGLED + b"\r\n0\r\n\r\n")
    before = len(backend.requests)
    responses, closed = exchange(gw.port, data, expect=2, timeout=2)
    assert_framing_error(responses, closed)
    seen = backend_seen(gw, backend, before)
    _no_smuggled(seen)
    assert seen == []


@pytest.mark.parametrize("length", [b"9223372036854775808", b"18446744073709551615"])
def test_content_length_too_large_for_64_bits_is_413_and_nothing_is_forwarded(gw, backend, length):
    """A length of 2**63 or more must not wrap to "no length": the body (here a request) would
    reach the backend as the next request."""
    data = (b"POST /echo?t=cl-huge HTTP/1.1\r\nHost: gw.test\r\nContent-Length: " + length +
            b"\r\n\r\n" + SMUGGLED)
    assert_refused(gw, backend, data, status=413)


def test_request_hidden_in_content_length_body_stays_body(gw, backend):
    body = SMUGGLED
    data = (b"POST /echo?t=hidden-cl HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n"
            % len(body)) + body
    before = len(backend.requests)
    responses, closed = exchange(gw.port, data, expect=2, timeout=3)
    assert len(responses) == 1 and responses[0].status == 200, responses
    seen = backend_seen(gw, backend, before)
    _no_smuggled(seen)
    assert len(seen) == 1
    assert seen[0]["target"] == "/echo?t=hidden-cl"
    assert seen[0]["body_length"] == len(body)
    assert seen[0]["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_request_hidden_in_chunked_body_stays_body(gw, backend):
    body = SMUGGLED
    data = (b"POST /echo?t=hidden-chunked HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body))
    before = len(backend.requests)
    responses, closed = exchange(gw.port, data, expect=2, timeout=3)
    assert len(responses) == 1 and responses[0].status == 200, responses
    seen = backend_seen(gw, backend, before)
    _no_smuggled(seen)
    assert len(seen) == 1
    assert seen[0]["target"] == "/echo?t=hidden-chunked"
    assert seen[0]["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_valid_request_then_cl_te_on_same_connection(gw, backend):
    """The first request is served; the ambiguous second one is refused and nothing follows."""
    body = b"0\r\n\r\n" + SMUGGLED
    data = (b"GET /echo?t=first HTTP/1.1\r\nHost: gw.test\r\n\r\n"
            b"POST /echo?t=second HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" % len(body)) + body
    before = len(backend.requests)
    responses, closed = exchange(gw.port, data, expect=3, timeout=2)
    assert [r.status for r in responses] == [200, 400], responses
    assert_framing_error(responses[1:], closed)
    seen = backend_seen(gw, backend, before)
    assert [r["target"] for r in seen] == ["/echo?t=first"]


def test_pipelined_request_after_chunked_body_is_a_separate_request(gw, backend):
    """Bytes after the terminating chunk are the next request, decided by the gateway."""
    data = (b"POST /echo?t=pipe-a HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
            b"GET /echo?t=pipe-b HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    before = len(backend.requests)
    responses, closed = exchange(gw.port, data, expect=2, timeout=3)
    assert [r.status for r in responses] == [200, 200], responses
    assert [r.json()["target"] for r in responses] == ["/echo?t=pipe-a", "/echo?t=pipe-b"]
    seen = backend_seen(gw, backend, before)
    assert sorted(r["target"] for r in seen) == ["/echo?t=pipe-a", "/echo?t=pipe-b"]
    a = next(r for r in seen if r["target"] == "/echo?t=pipe-a")
    assert a["body_length"] == 3 and a["body_sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert not closed


# -- valid bodies are re-framed intact ---------------------------------------------------------

def test_valid_chunked_body_is_reframed_intact(gw, backend):
    parts = [b"a" * 1, b"hello world\r\n", bytes(range(256)) * 40, b"\x00" * 7, b"0\r\n\r\n"]
    body = b"".join(parts)
    chunked = b"".join(b"%x;ext=%d\r\n%b\r\n" % (len(p), i, p) for i, p in enumerate(parts))
    data = (b"POST /echo?t=chunked-ok HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked + b"0\r\n\r\n")
    before = len(backend.requests)
    responses, closed = exchange(gw.port, data, timeout=5)
    assert len(responses) == 1 and responses[0].status == 200, responses
    echo = responses[0].json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    names = {k.lower() for k, _ in echo["headers"]}
    assert "transfer-encoding" in names and "content-length" not in names
    assert not closed
    seen = backend_seen(gw, backend, before)
    assert [r["target"] for r in seen] == ["/echo?t=chunked-ok"]


def test_valid_content_length_body_is_forwarded_intact(gw, backend):
    body = bytes(range(256)) * 300 + b"tail"
    data = (b"PUT /echo?t=cl-ok HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    responses, closed = exchange(gw.port, data, timeout=5)
    assert len(responses) == 1 and responses[0].status == 200, responses
    echo = responses[0].json()
    assert echo["method"] == "PUT"
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert dict((k.lower(), v) for k, v in echo["headers"])["content-length"] == str(len(body))
    assert not closed


# -- Expect: 100-continue -------------------------------------------------------------------

class _Collector:
    def __init__(self):
        self.status = 0
        self.body = b""
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self):
        self.status = self.parser.get_status_code()

    def on_body(self, b):
        self.body += b

    def on_message_complete(self):
        self.complete = True


def test_expect_100_continue(gw, backend):
    body = b"x" * 1000
    head = (b"POST /echo?t=expect HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head)
        got = b""
        while b"\r\n\r\n" not in got:
            part = sock.recv(4096)
            assert part, f"closed before 100 Continue: {got!r}"
            got += part
        interim, _, rest = got.partition(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue", got
        assert rest == b"", "nothing may follow the 100 before the body is sent"
        sock.sendall(body)
        c = _Collector()
        deadline = time.monotonic() + 5
        while not c.complete and time.monotonic() < deadline:
            part = sock.recv(65536)
            if not part:
                break
            c.parser.feed_data(part)
    assert c.complete and c.status == 200
    echo = json.loads(c.body)
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_unsupported_expectation_is_417(gw, backend):
    before = len(backend.requests)
    responses, _ = exchange(gw.port, b"POST /echo?t=expect417 HTTP/1.1\r\nHost: gw.test\r\n"
                                     b"Content-Length: 3\r\nExpect: teapot\r\n\r\nabc")
    assert len(responses) == 1 and responses[0].status == 417, responses
    assert responses[0].json()["request_id"] == responses[0].header("X-Request-Id")
    assert backend_seen(gw, backend, before) == []
