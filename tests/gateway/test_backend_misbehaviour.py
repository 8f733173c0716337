"""Backends that break the rules: the gateway must never pass their mistakes on to a client.

Each test starts a raw-socket backend (tests.support.raw_backend) that answers with exactly the
bytes the test scripts -- responses with bytes after their end, bodies cut by a reset,
unbounded heads, transfer codings the gateway cannot forward, unasked-for protocol switches --
and checks what clients of the real gateway process receive, and what the backend saw.
"""
from __future__ import annotations

import socket
import threading
import time

import httptools
import pytest

from tests.conftest import proxy_config
from tests.support.client import exchange
from tests.support.gateway import GatewayProcess

OK_FIRST = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
OK_SECOND = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"


def get(port, target, version=b"1.1", timeout=10.0):
    """One request on a new client connection: (responses, closed)."""
    return exchange(port, b"GET %s HTTP/%s\r\nHost: gw.test\r\n\r\n" % (target.encode(), version),
                    timeout=timeout)


def serve(answers):
    """A backend script: for each request, send ``answers(target)``; keep the connection."""
    def script(conn):
        while True:
            head = conn.read_request()
            if head is None:
                return
            target = head.split(b" ", 2)[1].decode()
            action = answers(target)
            if callable(action):
                action(conn)
                return
            conn.send(action)
    return script


@pytest.fixture
def gateway(tmp_path):
    started = []

    def start(backend, **backend_options):
        gw = GatewayProcess(proxy_config(backend.address, **backend_options), tmp_path).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def assert_502(responses, closed=None):
    assert len(responses) == 1, responses
    r = responses[0]
    assert r.complete and r.status == 502, r
    assert r.json()["error_code"] == "APIC.0202", r


# -- 1. bytes after a complete response ---------------------------------------------------------

@pytest.mark.parametrize("extra", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial",     # the start of a second response
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad",          # a whole second response
    b"garbage",                                                  # not even a response
])
def test_bytes_after_a_response_never_reach_another_client(raw, gateway, extra):
    backend = raw(serve(lambda target: OK_FIRST + extra if target == "/first" else OK_SECOND))
    gw = gateway(backend)
    responses, _ = get(gw.port, "/first")
    assert [(r.status, r.body) for r in responses] == [(200, b"first")], responses
    # a different client, later: it must get its own answer, on a connection without leftovers
    responses, _ = get(gw.port, "/second")
    assert [(r.status, r.body, r.complete) for r in responses] == [(200, b"second", True)], responses
    assert backend.connections[0].wait_closed(), "the connection with leftovers was kept"
    assert [c.heads[0].split(b" ")[1] for c in backend.connections] == [b"/first", b"/second"]


def test_bytes_arriving_after_a_response_close_the_idle_connection(raw, gateway):
    def first(conn):
        conn.send(OK_FIRST)
        time.sleep(0.3)
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nlate")
        conn.wait_closed()
    backend = raw(serve(lambda target: first if target == "/first" else OK_SECOND))
    gw = gateway(backend)
    assert get(gw.port, "/first")[0][0].body == b"first"
    assert backend.connections[0].wait_closed(), "a connection that sent unasked bytes was kept"
    responses, _ = get(gw.port, "/second")
    assert [(r.status, r.body) for r in responses] == [(200, b"second")]


def test_an_interim_response_before_the_final_one_is_not_a_leftover(raw, gateway):
    backend = raw(serve(lambda target: b"HTTP/1.1 100 Continue\r\n\r\n" + OK_FIRST
                        if target == "/first" else OK_SECOND))
    gw = gateway(backend)
    assert get(gw.port, "/first")[0][0].body == b"first"
    assert get(gw.port, "/second")[0][0].body == b"second"
    # both answered on one pooled connection
    assert len(backend.connections) == 1


@pytest.mark.parametrize("framing", [b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                                     b"Content-Length: 2\r\n\r\nxx"], ids=["chunked", "length"])
def test_an_interim_response_with_a_body_is_502(raw, gateway, framing):
    """A 1xx ends at its head (RFC 9110 §15.2): one that announces a body is refused, not
    read one way or another."""
    backend = raw(serve(lambda target: b"HTTP/1.1 150 Odd\r\n" + framing + OK_FIRST))
    gw = gateway(backend)
    assert_502(get(gw.port, "/interim-body")[0])
    assert backend.connections[0].wait_closed()


@pytest.mark.parametrize("line", [b"HTTP/2.0 200 OK", b"HTTP/1.1 600 Odd", b"HTTP/1.1 999 Odd"])
def test_a_status_line_outside_http_1_or_100_599_is_502(raw, gateway, line):
    backend = raw(serve(lambda target: line + b"\r\nContent-Length: 5\r\n\r\nfirst"))
    gw = gateway(backend)
    assert_502(get(gw.port, "/status-line")[0])


def test_connection_close_in_a_backends_trailer_keeps_its_connection_out_of_the_pool(raw, gateway):
    """Keep-alive is decided again at the end of a response: a trailer saying close ends
    the connection, so the next request (a POST, run once) goes on a new one."""
    backend = raw(serve(lambda target: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"2\r\nhi\r\n0\r\nConnection: close\r\n\r\n" if target == "/first"
                        else b"HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated"))
    gw = gateway(backend)
    first = get(gw.port, "/first")[0]
    assert [(r.status, r.body) for r in first] == [(200, b"hi")]
    assert backend.connections[0].wait_closed()
    responses, _ = exchange(gw.port, b"POST /order HTTP/1.1\r\nHost: gw.test\r\n"
                                     b"Content-Length: 3\r\n\r\nbuy")
    assert [(r.status, r.body) for r in responses] == [(201, b"created")]
    assert len(backend.connections) == 2


def test_a_body_sent_with_a_response_to_head_closes_the_connection(raw, gateway):
    backend = raw(serve(lambda target: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                        if target == "/head" else OK_SECOND))
    gw = gateway(backend)
    responses, _ = exchange(gw.port, b"HEAD /head HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert len(responses) == 1 and responses[0].status == 200 and responses[0].body == b""
    assert responses[0].header("Content-Length") == "5"
    assert backend.connections[0].wait_closed()
    assert get(gw.port, "/second")[0][0].body == b"second"


def test_a_clean_response_to_head_keeps_the_connection(raw, gateway):
    backend = raw(serve(lambda target: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                        if target == "/head" else OK_SECOND))
    gw = gateway(backend)
    responses, _ = exchange(gw.port, b"HEAD /head HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert responses[0].status == 200
    assert get(gw.port, "/second")[0][0].body == b"second"
    assert len(backend.connections) == 1


# -- 2. a close-delimited body cut by a reset -----------------------------------------------------

def _eof_body_then(end):
    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 1000)
        time.sleep(0.3)
        end(conn)
    return script


def _read_to_close(port, request, timeout=10.0):
    """Raw bytes of the answer, and how the connection ended: 'fin', 'reset' or 'open'."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        try:
            while True:
                part = sock.recv(65536)
                if not part:
                    return data, "fin"
                data += part
        except ConnectionResetError:
            return data, "reset"
        except socket.timeout:
            return data, "open"


class _Parsed:
    def __init__(self, data):
        self.body = b""
        self.complete = False
        self.headers = {}
        self._name = None
        parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            pass

    def on_header(self, name, value):
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body):
        self.body += body

    def on_message_complete(self):
        self.complete = True


def test_a_reset_in_a_close_delimited_body_truncates_the_response(raw, gateway):
    backend = raw(_eof_body_then(lambda conn: conn.reset()))
    gw = gateway(backend)
    data, end = _read_to_close(gw.port, b"GET /eof HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    r = _Parsed(data)
    assert r.headers.get("transfer-encoding") == "chunked", data[:300]
    assert r.body == b"x" * 1000
    assert not r.complete, "a body cut by a reset was forwarded as complete"
    assert not data.endswith(b"0\r\n\r\n")
    assert end in ("fin", "reset")
    gw.wait_metric("tollgate_responses_truncated_total", 1)
    assert "reset" in gw.log().lower() or "104" in gw.log()


def test_a_reset_in_a_close_delimited_body_resets_an_http10_client(raw, gateway):
    # an HTTP/1.0 client reads the body to the close: only a reset tells it the body is cut
    backend = raw(_eof_body_then(lambda conn: conn.reset()))
    gw = gateway(backend)
    data, end = _read_to_close(gw.port, b"GET /eof HTTP/1.0\r\nHost: gw.test\r\n\r\n")
    assert end == "reset", (end, data[:200])


def test_a_fin_ends_a_close_delimited_body_normally(raw, gateway):
    backend = raw(_eof_body_then(lambda conn: conn.close()))
    gw = gateway(backend)
    data, _ = _read_to_close(gw.port, b"GET /eof HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
    r = _Parsed(data)
    assert r.complete and r.body == b"x" * 1000


# -- 3. response heads are bounded -----------------------------------------------------------------

def _endless_head(piece):
    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\n")
        sent = 0
        while sent < 100 * 1024 * 1024:      # stops when the gateway closes (send fails)
            conn.send(piece)
            sent += len(piece)
    return script


@pytest.mark.parametrize("piece", [
    b"X-Filler: " + b"a" * 990 + b"\r\n",        # many header lines
    b"a" * 4096,                                 # one endless header line
], ids=["many-lines", "one-line"])
def test_an_endless_response_head_is_502_and_closed(raw, gateway, piece):
    backend = raw(_endless_head(piece))
    gw = gateway(backend, timeout_ms=60000)      # the bound is the head size, not the timeout
    responses, _ = get(gw.port, "/big", timeout=30)
    assert_502(responses)
    assert backend.connections[0].wait_closed()


def test_a_large_response_head_in_small_pieces_is_forwarded(raw, gateway):
    headers = b"".join(b"X-Part-%d: %s\r\n" % (i, b"v" * 500) for i in range(100))   # ~52 KB

    def script(conn):
        conn.read_request()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 2\r\n\r\nok"
        for i in range(0, len(data), 97):
            conn.send(data[i:i + 97])
        conn.wait_closed(2)
    backend = raw(script)
    gw = gateway(backend)
    responses, _ = get(gw.port, "/pieces", timeout=30)
    assert len(responses) == 1 and responses[0].status == 200 and responses[0].body == b"ok"
    assert responses[0].header("X-Part-99") == "v" * 500


# -- 4. transfer codings other than chunked ----------------------------------------------------------

@pytest.mark.parametrize("te", [b"gzip", b"chunked, gzip", b"gzip, chunked", b"identity"])
def test_a_transfer_coding_other_than_chunked_is_502_before_the_head(raw, gateway, te):
    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n5\r\nhello\r\n0\r\n\r\n" % te)
        conn.close()
    backend = raw(script)
    gw = gateway(backend)
    responses, _ = get(gw.port, "/te")
    assert_502(responses)


@pytest.mark.parametrize("length", [b"9223372036854775808", b"18446744073709551615"])
def test_a_content_length_too_large_for_64_bits_is_502(raw, gateway, length):
    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nhello")
    gw = gateway(raw(script))
    assert_502(get(gw.port, "/cl-huge")[0])


def test_a_repeated_chunked_transfer_encoding_is_502(raw, gateway):
    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n")
    gw = gateway(raw(script))
    assert_502(get(gw.port, "/te2")[0])


# -- 5. a protocol switch nobody asked for ----------------------------------------------------------

def test_an_unasked_101_is_a_clean_502_with_one_log_line(raw, gateway):
    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                  b"\x81\x05hello")
        conn.wait_closed()
    backend = raw(script)
    gw = gateway(backend)
    responses, _ = get(gw.port, "/switch")
    assert_502(responses)
    assert backend.connections[0].wait_closed()
    time.sleep(0.2)
    log = gw.log()
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if "101" in line]
    assert len(lines) == 1, log


# -- the gateway survives all of the above ----------------------------------------------------------

def test_the_gateway_keeps_serving_other_clients_meanwhile(raw, gateway):
    """While one backend trickles an endless head, other requests on the worker are answered."""
    stop = threading.Event()

    def script(conn):
        head = conn.read_request()
        if head is not None and b"/slowhead" in head:
            conn.send(b"HTTP/1.1 200 OK\r\n")
            while not stop.is_set():
                conn.send(b"X-Drip: 1\r\n")
                time.sleep(0.01)
        else:
            conn.send(OK_SECOND)
    backend = raw(script)
    gw = gateway(backend, timeout_ms=60000)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("slow", get(gw.port, "/slowhead", timeout=60)))
    t.start()
    try:
        for _ in range(5):
            responses, _ = get(gw.port, "/fast")
            assert responses[0].body == b"second"
    finally:
        stop.set()
        t.join(30)


def test_a_chunked_body_sent_to_head_closes_the_connection(raw, gateway):
    backend = raw(serve(lambda target: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                        if target == "/head" else OK_SECOND))
    gw = gateway(backend)
    responses, _ = exchange(gw.port, b"HEAD /head HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert responses[0].status == 200 and responses[0].body == b""
    assert backend.connections[0].wait_closed()
    assert get(gw.port, "/second")[0][0].body == b"second"


@pytest.mark.timer
def test_leftovers_in_a_later_segment_stop_the_reuse_of_that_backend(raw, gateway):
    """Bytes a backend sends after a response in a separate segment can arrive after its
    connection went back to the pool, and be read as the answer to the next request on it (an
    HTTP/1.1 race no proxy can close).  Once seen, the backend's connections are not reused:
    from then on its leftovers reach no other client."""
    def script(conn):
        while True:
            head = conn.read_request()
            if head is None:
                return
            target = head.split(b" ", 2)[1]
            body = b"ok:" + target
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            if target.startswith(b"/evil"):
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
    backend = raw(script)
    gw = gateway(backend)

    def load(phase):
        wrong = []

        def client(n):
            for i in range(24):
                target = f"/{'evil' if n == 0 else 'c'}{n}-{phase}-{i}"
                responses, _ = get(gw.port, target)
                if not responses or responses[0].body != b"ok:" + target.encode():
                    wrong.append((target, responses[0].body if responses else None))
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return wrong

    first = load(1)
    time.sleep(0.6)                         # metrics are pushed every 0.5 s
    assert gw.metric("tollgate_upstream_desyncs_total") >= 1, "the leftovers were never noticed"
    assert "are not reused for 60 s" in gw.log()
    assert len(first) <= 10, first          # the race before the first leftover is noticed
    assert load(2) == [], "a distrusted backend's leftovers reached other clients"


def test_a_status_below_100_is_502_at_once(raw, gateway):
    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok")
        conn.wait_closed()
    gw = gateway(raw(script), timeout_ms=60000)
    assert_502(get(gw.port, "/odd", timeout=20)[0])


def test_an_endless_response_trailer_is_cut_and_closed(raw, gateway):
    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: ")
        while True:
            conn.send(b"a" * 1024)
            time.sleep(0.001)
    backend = raw(script)
    gw = gateway(backend, timeout_ms=60000)
    data, end = _read_to_close(gw.port, b"GET /trailer HTTP/1.1\r\nHost: gw.test\r\n\r\n", timeout=30)
    r = _Parsed(data)
    assert r.body == b"hello" and not r.complete, data[:300]
    assert end in ("fin", "reset")
    assert backend.connections[0].wait_closed()


def test_response_trailers_are_not_forwarded_and_the_connection_is_reused(raw, gateway):
    backend = raw(serve(lambda target: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n0\r\nX-Secret-Trailer: s\r\n\r\n" if target == "/t" else OK_SECOND))
    gw = gateway(backend)
    data, _ = _read_to_close(gw.port, b"GET /t HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
    r = _Parsed(data)
    assert r.complete and r.body == b"hello" and b"X-Secret-Trailer" not in data
    assert get(gw.port, "/second")[0][0].body == b"second"
    assert len(backend.connections) == 1


def test_a_response_head_trickled_in_pieces_then_a_large_body_is_forwarded(raw, gateway):
    """Body bytes that arrive in the same read as the end of a trickled head are not head."""
    headers = b"".join(b"X-H%02d: %s\r\n" % (i, b"v" * 3990) for i in range(32))   # ~128 KB

    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\n")
        time.sleep(0.05)
        conn.send(headers[:-20000])
        time.sleep(0.05)
        conn.send(headers[-20000:] + b"Content-Length: 1000000\r\n\r\n" + b"b" * 1000000)
        conn.wait_closed(5)
    gw = gateway(raw(script))
    responses, _ = get(gw.port, "/trickle", timeout=30)
    assert len(responses) == 1 and responses[0].status == 200, responses
    assert len(responses[0].body) == 1000000
