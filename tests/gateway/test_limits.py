"""Size limits, the head timeout, keep-alive and pipelining, against one gateway per module.

Limits (ROMA APIC defaults): URI 32 KB (414), one header 32 KB and all headers 128 KB (494),
body 12 MB (413), all with error_code APIC.0201 and a closed connection.
"""
from __future__ import annotations

import hashlib
import select
import socket
import time

import httptools
import pytest

from tests.conftest import proxy_config
from tests.support.backend import Backend
from tests.support.client import exchange
from tests.support.gateway import GatewayProcess

KB = 1024
MB = 1024 * 1024
MAX_BODY = 12 * MB


@pytest.fixture(scope="module")
def backend():
    b = Backend().start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def gw(backend, tmp_path_factory):
    config = proxy_config(backend.address)
    # the backend API serves /echo only, so that any other path is a 404 of the gateway
    config["apis"][0]["path"] = "/echo"
    config["apis"][0]["backend"]["url"] = "http://#backend#/echo"
    g = GatewayProcess(config, tmp_path_factory.mktemp("limits")).start()
    yield g
    g.stop()


def wait_backend(backend, marker, timeout=5.0):
    """The backend's records whose target holds ``marker``, after they had time to land."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in backend.requests if marker in r["target"]]
        if found:
            return found
        time.sleep(0.01)
    return []


def assert_limit_error(response, status):
    assert response.complete, response
    assert response.status == status, response
    body = response.json()
    assert body["error_code"] == "APIC.0201", body
    assert body["request_id"] == response.header("X-Request-Id"), response
    assert response.header("Connection") == "close", response


class _Collector:
    def __init__(self):
        self.responses = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self):
        from tests.support.client import Response
        self.current = Response()
        self.responses.append(self.current)

    def on_header(self, name, value):
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self):
        self.current.status = self.parser.get_status_code()

    def on_body(self, body):
        self.current.body += body

    def on_message_complete(self):
        self.current.complete = True


def stream_exchange(port, parts, *, timeout=10.0):
    """Send the byte strings of iterator ``parts`` while reading what comes back.

    Stops sending when the gateway closes (or resets) the connection or when a response is
    complete.  Returns (responses, closed, bytes_sent, all_sent, seconds).
    """
    collector = _Collector()
    closed = False
    sent = 0
    all_sent = False
    start = time.monotonic()
    deadline = start + timeout
    parts = iter(parts)
    pending = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setblocking(False)
        while time.monotonic() < deadline:
            if not pending and not all_sent:
                pending = next(parts, b"")
                if not pending:
                    all_sent = True
            want_write = [sock] if pending else []
            r, w, _ = select.select([sock], want_write, [], max(0.0, deadline - time.monotonic()))
            if r:
                try:
                    buf = sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
                if not buf:
                    closed = True
                    break
                try:
                    collector.parser.feed_data(buf)
                except httptools.HttpParserError:
                    break
                if any(x.complete for x in collector.responses):
                    # read on a little: the gateway should close right after
                    sock.settimeout(1.0)
                    try:
                        closed = sock.recv(1) == b""
                    except (ConnectionResetError, BrokenPipeError):
                        closed = True
                    except socket.timeout:
                        closed = False
                    break
            if w and pending:
                try:
                    n = sock.send(pending)
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
                except BlockingIOError:
                    continue
                sent += n
                pending = pending[n:]
    return collector.responses, closed, sent, all_sent, time.monotonic() - start


def head(target="/echo", headers=b"", method=b"GET"):
    return b"%s %s HTTP/1.1\r\nHost: gw.test\r\n%s\r\n" % (method, target.encode(), headers)


# -- URI ------------------------------------------------------------------------------------

def test_uri_over_32kb_is_414(gw, backend):
    target = "/echo?t=uri-over&x=" + "a" * (32 * KB)
    responses, closed = exchange(gw.port, head(target), timeout=5)
    assert len(responses) == 1, responses
    assert_limit_error(responses[0], 414)
    assert closed
    assert wait_backend(backend, "t=uri-over", timeout=0.3) == []


def test_uri_over_32kb_is_refused_and_closed(gw, backend):
    """Whatever the status, an over-long URI is refused with APIC.0201 and never forwarded."""
    target = "/echo?t=uri-over2&x=" + "a" * (32 * KB)
    responses, closed = exchange(gw.port, head(target), timeout=5)
    assert len(responses) == 1 and 400 <= responses[0].status < 500, responses
    assert responses[0].json()["error_code"] == "APIC.0201"
    assert closed
    assert wait_backend(backend, "t=uri-over2", timeout=0.3) == []


def test_uri_just_under_32kb_is_accepted(gw, backend):
    target = "/echo?t=uri-under&x=" + "a" * (30 * KB)
    responses, _ = exchange(gw.port, head(target), timeout=5)
    assert len(responses) == 1 and responses[0].status == 200, responses
    assert responses[0].json()["target"] == target
    assert [r["target"] for r in wait_backend(backend, "t=uri-under")] == [target]


# -- headers ----------------------------------------------------------------------------

def test_one_header_over_32kb_is_494(gw, backend):
    data = head("/echo?t=hdr-over", b"X-Big: " + b"b" * (32 * KB) + b"\r\n")
    responses, closed = exchange(gw.port, data, timeout=5)
    assert len(responses) == 1, responses
    assert_limit_error(responses[0], 494)
    assert closed
    assert wait_backend(backend, "t=hdr-over", timeout=0.3) == []


def test_headers_totalling_over_128kb_are_494(gw, backend):
    # 140 headers of 1 KB: each under the one-header limit, together over 128 KB, count < 256;
    # the last one crosses the limit, so the head is read whole before the answer
    lines = b"".join(b"X-H%03d: %s\r\n" % (i, b"h" * 1000) for i in range(140))
    data = head("/echo?t=hdrs-over", lines)
    responses, closed = exchange(gw.port, data, timeout=5)
    assert len(responses) == 1, responses
    assert_limit_error(responses[0], 494)
    assert closed
    assert wait_backend(backend, "t=hdrs-over", timeout=0.3) == []


def test_header_limits_refuse_and_close(gw, backend):
    """Whatever the status, an over-long header or header block is refused and never forwarded."""
    for marker, lines in (
            ("hdr-over2", b"X-Big: " + b"b" * (32 * KB) + b"\r\n"),
            ("hdrs-over2", b"".join(b"X-H%03d: %s\r\n" % (i, b"h" * 1000) for i in range(140)))):
        responses, closed = exchange(gw.port, head(f"/echo?t={marker}", lines), timeout=5)
        assert len(responses) == 1 and 400 <= responses[0].status < 500, responses
        assert responses[0].json()["error_code"] == "APIC.0201"
        assert closed
        assert wait_backend(backend, f"t={marker}", timeout=0.3) == []


def test_one_header_just_under_32kb_is_accepted(gw, backend):
    value = b"b" * (31 * KB)
    responses, _ = exchange(gw.port, head("/echo?t=hdr-under", b"X-Big: " + value + b"\r\n"), timeout=5)
    assert len(responses) == 1 and responses[0].status == 200, responses
    echo = responses[0].json()
    assert dict(echo["headers"])["X-Big"] == value.decode()


def test_headers_totalling_just_under_128kb_are_accepted(gw, backend):
    lines = b"".join(b"X-H%03d: %s\r\n" % (i, b"h" * 1000) for i in range(120))   # ~120 KB
    responses, _ = exchange(gw.port, head("/echo?t=hdrs-under", lines), timeout=5)
    assert len(responses) == 1 and responses[0].status == 200, responses
    names = [k for k, _ in responses[0].json()["headers"] if k.startswith("X-H")]
    assert len(names) == 120


def test_endless_header_block_is_cut_without_waiting_for_its_end(gw, backend):
    """Several MB of one header line that never ends: answered (494) or closed long before."""
    total = 8 * MB
    piece = b"c" * (64 * KB)

    def parts():
        yield b"GET /echo?t=endless HTTP/1.1\r\nHost: gw.test\r\nX-Endless: "
        for _ in range(total // len(piece)):
            yield piece

    responses, closed, sent, all_sent, seconds = stream_exchange(gw.port, parts(), timeout=5)
    assert closed or responses, f"no answer and not closed after {seconds:.1f}s ({sent} bytes sent)"
    assert not all_sent and sent < total, f"the gateway read all {sent} bytes of the endless head"
    if responses:
        assert_limit_error(responses[0], 494)
    assert wait_backend(backend, "t=endless", timeout=0.3) == []


def test_many_small_headers_without_end_are_cut(gw, backend):
    """An endless stream of small complete headers hits the count / total limits."""
    def parts():
        yield b"GET /echo?t=endless-many HTTP/1.1\r\nHost: gw.test\r\n"
        for i in range(100_000):
            yield b"X-N%06d: v\r\n" % i

    responses, closed, sent, all_sent, seconds = stream_exchange(gw.port, parts(), timeout=5)
    assert closed or responses, f"no answer and not closed after {seconds:.1f}s"
    assert not all_sent
    if responses:
        assert responses[0].status in (400, 494), responses
        assert responses[0].json()["error_code"] == "APIC.0201"
    assert wait_backend(backend, "t=endless-many", timeout=0.3) == []


# -- body -----------------------------------------------------------------------------------

def test_content_length_over_12mb_is_413_without_reading_the_body(gw, backend):
    data = head("/echo?t=cl-over", b"Content-Length: %d\r\n" % (MAX_BODY + 1), method=b"POST")
    t0 = time.monotonic()
    responses, closed = exchange(gw.port, data, timeout=3)   # the body is never sent
    assert time.monotonic() - t0 < 2.5
    assert len(responses) == 1, responses
    assert_limit_error(responses[0], 413)
    assert closed
    assert wait_backend(backend, "t=cl-over", timeout=0.3) == []


def test_content_length_over_12mb_is_refused_without_reading_the_body(gw, backend):
    data = head("/echo?t=cl-over2", b"Content-Length: %d\r\n" % (MAX_BODY + 1), method=b"POST")
    t0 = time.monotonic()
    responses, closed = exchange(gw.port, data, timeout=3)   # the body is never sent
    assert time.monotonic() - t0 < 2.5
    assert len(responses) == 1 and 400 <= responses[0].status < 500, responses
    assert responses[0].json()["error_code"] == "APIC.0201"
    assert closed
    assert wait_backend(backend, "t=cl-over2", timeout=0.3) == []


def _chunked_parts(total, marker):
    yield head(f"/echo?t={marker}", b"Transfer-Encoding: chunked\r\n", method=b"POST")
    block = bytes(range(256)) * 256     # 64 KB
    sent = 0
    while sent < total:
        part = block[: min(len(block), total - sent)]
        yield b"%x\r\n%b\r\n" % (len(part), part)
        sent += len(part)
    yield b"0\r\n\r\n"


def test_chunked_body_over_12mb_is_413(gw, backend):
    total = 13 * MB
    responses, closed, sent, all_sent, _ = stream_exchange(gw.port, _chunked_parts(total, "chunk-over"),
                                                           timeout=10)
    assert responses, f"no answer (closed={closed}, {sent} bytes sent)"
    assert_limit_error(responses[0], 413)
    assert wait_backend(backend, "t=chunk-over", timeout=0.3) == []


def test_chunked_body_over_12mb_is_cut(gw, backend):
    """The gateway stops reading past 12 MB: it answers with an APIC.0201 error or closes,
    and the backend never receives a complete request."""
    total = 13 * MB
    responses, closed, sent, all_sent, seconds = stream_exchange(
        gw.port, _chunked_parts(total, "chunk-over2"), timeout=10)
    assert responses or closed, f"neither answered nor closed after {seconds:.1f}s"
    if responses:
        assert 400 <= responses[0].status < 500, responses
        assert responses[0].json()["error_code"] == "APIC.0201"
        assert responses[0].header("Connection") == "close"
    else:
        assert not all_sent, "the whole 13 MB body was accepted and nothing came back"
    assert wait_backend(backend, "t=chunk-over2", timeout=0.3) == []


def test_content_length_body_of_exactly_12mb_reaches_the_backend_intact(gw, backend):
    body = (bytes(range(256)) * 4096) * 12       # 12 MiB
    assert len(body) == MAX_BODY
    data = head("/echo?t=cl-12mb", b"Content-Length: %d\r\n" % len(body), method=b"POST") + body
    responses, _ = exchange(gw.port, data, timeout=20)
    assert len(responses) == 1 and responses[0].status == 200, responses
    echo = responses[0].json()
    assert echo["body_length"] == MAX_BODY
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_body_of_exactly_12mb_reaches_the_backend_intact(gw, backend):
    total = MAX_BODY
    digest = hashlib.sha256()
    block = bytes(range(256)) * 256
    for i in range(total // len(block)):
        digest.update(block)
    responses, closed, sent, all_sent, _ = stream_exchange(gw.port, _chunked_parts(total, "chunk-12mb"),
                                                           timeout=20)
    assert all_sent
    assert len(responses) == 1 and responses[0].status == 200, responses
    echo = responses[0].json()
    assert echo["body_length"] == total
    assert echo["body_sha256"] == digest.hexdigest()


# -- head timeout -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timer
def test_stalled_request_head_is_closed_after_the_head_timeout(gw, backend):
    """Default head timeout 10 s (not configurable from the command line): ~10 s test."""
    t0 = time.monotonic()
    responses, closed = exchange(gw.port, b"GET /echo?t=stall HTTP/1.1\r\nHost: gw.test\r\nX-A: ",
                                 timeout=11.5)
    elapsed = time.monotonic() - t0
    assert closed, f"still open after {elapsed:.1f}s"
    assert 9.0 <= elapsed <= 11.5, elapsed
    if responses:
        assert responses[0].status == 408, responses
        assert responses[0].json()["request_id"] == responses[0].header("X-Request-Id")
    assert wait_backend(backend, "t=stall", timeout=0.1) == []


# -- keep-alive --------------------------------------------------------------------------

def test_keep_alive_two_requests_on_one_connection(gw, backend):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        c = _Collector()
        for req in (head("/echo?t=ka1"), head("/mock")):
            n = len(c.responses)
            sock.sendall(req)
            while not (len(c.responses) > n and c.responses[-1].complete):
                buf = sock.recv(65536)
                assert buf, "the connection was closed between keep-alive requests"
                c.parser.feed_data(buf)
        # still open afterwards
        sock.settimeout(0.3)
        try:
            still_open = sock.recv(1) != b""
        except socket.timeout:
            still_open = True
    assert [r.status for r in c.responses] == [200, 200]
    assert c.responses[0].json()["target"] == "/echo?t=ka1"
    assert c.responses[1].body == b'{"mock":true}'
    assert still_open


def test_connection_close_closes_after_the_response(gw, backend):
    responses, closed = exchange(gw.port, head("/echo?t=cc", b"Connection: close\r\n"), timeout=3)
    assert len(responses) == 1 and responses[0].status == 200, responses
    assert responses[0].header("Connection") == "close"
    assert closed


def test_http10_without_keep_alive_closes(gw, backend):
    responses, closed = exchange(gw.port, b"GET /mock HTTP/1.0\r\nHost: gw.test\r\n\r\n", timeout=3)
    assert len(responses) == 1 and responses[0].status == 200, responses
    assert closed


def test_http10_with_keep_alive_stays_open(gw, backend):
    responses, closed = exchange(
        gw.port, b"GET /mock HTTP/1.0\r\nHost: gw.test\r\nConnection: keep-alive\r\n\r\n", timeout=3)
    assert len(responses) == 1 and responses[0].status == 200, responses
    assert responses[0].header("Connection", "").lower() == "keep-alive"
    assert not closed


# -- pipelining --------------------------------------------------------------------------

def test_pipelined_requests_are_answered_in_order(gw, backend):
    data = (head("/mock") + head("/echo?i=1&t=pipe") + head("/nowhere") +
            head("/echo?i=3&t=pipe") + head("/mock"))
    responses, closed = exchange(gw.port, data, expect=5, timeout=5)
    assert len(responses) == 5 and all(r.complete for r in responses), responses
    assert [r.status for r in responses] == [200, 200, 404, 200, 200]
    assert responses[0].body == b'{"mock":true}'
    assert responses[1].json()["target"] == "/echo?i=1&t=pipe"
    assert responses[2].json()["error_code"] == "APIC.0101"
    assert responses[3].json()["target"] == "/echo?i=3&t=pipe"
    assert responses[4].body == b'{"mock":true}'
    ids = [r.header("X-Request-Id") for r in responses]
    assert len(set(ids)) == 5 and all(ids)
    assert not closed


def _send_then_read(port, data, timeout=10.0):
    """Send all of ``data`` before reading anything, then read until the gateway closes.

    Returns (bytes read, how the connection ended: "eof" or "reset")."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            pass      # the gateway may have stopped reading; what it answered is still checked
        received = b""
        while True:
            try:
                buf = sock.recv(65536)
            except ConnectionResetError:
                return received, "reset"
            if not buf:
                return received, "eof"
            received += buf


def test_error_answer_survives_a_client_still_sending(gw, backend):
    """The gateway refuses a 13 MB Content-Length at the head, while 1 MB of the body is still
    arriving.  It must not close with those bytes unread (the kernel would reset the connection
    and the client could lose the 413): it half-closes, discards what comes, then closes."""
    for attempt in range(5):
        data = head("/echo?t=linger", b"Content-Length: %d\r\n" % (13 * MB), method=b"POST") + b"x" * MB
        received, ended = _send_then_read(gw.port, data)
        assert received.startswith(b"HTTP/1.1 413 "), (attempt, ended, received[:200])
        assert b"APIC.0201" in received and b"Connection: close\r\n" in received, received[:400]
        assert ended == "eof", (attempt, ended)
    assert wait_backend(backend, "t=linger", timeout=0.3) == []


def test_lingering_is_bounded(gw):
    """A client that keeps sending after the error answer is cut off once the discard bound
    (4 MB) is passed, and an idle one once the linger timeout (2 s) is over."""
    data = head("/echo?t=linger-bound", b"Content-Length: %d\r\n" % (13 * MB), method=b"POST")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(data)
        sent = 0
        cut = False
        start = time.monotonic()
        try:
            while sent < 64 * MB and time.monotonic() - start < 8:
                sock.sendall(b"y" * (256 * KB))
                sent += 256 * KB
        except (ConnectionResetError, BrokenPipeError):
            cut = True
        assert cut, f"the gateway kept discarding {sent} bytes"
        assert sent < 16 * MB, sent
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while True:
            buf = sock.recv(65536)
            if not buf:
                break           # the gateway's FIN: it still reads, to discard
            received += buf
        assert received.startswith(b"HTTP/1.1 413 "), received[:200]
        sock.sendall(b"z")      # discarded: the gateway is lingering, not closed
        time.sleep(3.0)         # past the 2 s linger timeout: now it has closed
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(20):
                sock.sendall(b"z")
                time.sleep(0.05)


def test_nothing_after_the_answer_that_ends_a_connection_is_forwarded(gw, backend):
    """A POST refused at its head (404: no API) ends the connection, its body unread; a request
    pipelined behind it in the same packet is neither parsed nor forwarded nor answered."""
    data = (b"POST /nowhere HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1\r\n\r\nx"
            b"GET /echo?t=after-linger HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    for _ in range(10):     # whether both arrive in one read is up to the kernel: try often
        received, ended = _send_then_read(gw.port, data)
        assert received.startswith(b"HTTP/1.1 404 "), received[:200]
        assert received.count(b"HTTP/1.1 ") == 1, received
    assert ended == "eof"
    assert wait_backend(backend, "t=after-linger", timeout=0.5) == []
    # and the worker still serves
    ok, _ = _send_then_read(gw.port, b"GET /echo?t=still-serving HTTP/1.1\r\nHost: gw.test\r\n"
                                     b"Connection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 "), ok[:200]
