"""Clients that half-close (FIN): a request that can no longer complete is an abort.

A client that sends FIN in the middle of a request body or head cannot finish that request, so
the gateway closes the backend connection carrying the half-sent request (it is never pooled)
and the client connection at once, instead of holding both until the body timeout.  A client
that half-closes after complete requests still gets every answer, then the connection closes.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.conftest import proxy_config
from tests.support.client import exchange, gateway_side_state, wait_event_flag, wait_gateway_side
from tests.support.gateway import GatewayProcess
from tests.support.raw_backend import RawBackend, fill_send_queue


def wait_peer_close(sock, timeout=10.0) -> bytes:
    """Read until the gateway closes; return what arrived.  Fails if it stays open."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            part = sock.recv(65536)
            if not part:
                return data
            data += part
    except ConnectionResetError:
        return data
    except socket.timeout:
        pytest.fail(f"the gateway kept the connection open {timeout} s after the client's FIN")


@pytest.fixture
def head_only_backend():
    """Reads a request head, then waits to see the gateway close the connection."""
    def script(conn):
        buf = b""
        conn.sock.settimeout(10)
        while b"\r\n\r\n" not in buf:
            part = conn.sock.recv(65536)
            if not part:
                return
            buf += part
        conn.heads.append(buf.split(b"\r\n\r\n")[0])
        conn.wait_closed(10)
    b = RawBackend(script).start()
    yield b
    b.stop()


@pytest.mark.parametrize("framing", [b"Content-Length: 1000\r\n\r\n" + b"a" * 100,
                                     b"Transfer-Encoding: chunked\r\n\r\n64\r\n" + b"a" * 100 + b"\r\n"],
                         ids=["content-length", "chunked"])
def test_fin_in_the_middle_of_a_body_aborts_both_connections(make_gateway, head_only_backend, framing):
    gw = make_gateway(proxy_config(head_only_backend.address))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: gw.test\r\n" + framing)
        # the request reached the backend (its head is forwarded at once) ...
        for _ in range(100):
            if head_only_backend.connections and head_only_backend.connections[0].heads:
                break
            sock.settimeout(0.05)
            try:
                sock.recv(1)
            except socket.timeout:
                pass
        assert head_only_backend.connections[0].heads, "the request never reached the backend"
        sock.shutdown(socket.SHUT_WR)
        data = wait_peer_close(sock, timeout=5)
    assert data == b"", "an aborted request gets no answer"
    upstream = head_only_backend.connections[0]
    assert upstream.wait_closed(5), "the half-sent request's backend connection was kept"
    # and it was not handed to another request: a new one gets a new backend connection
    assert len(head_only_backend.connections) == 1


def test_fin_in_the_middle_of_a_head_closes_at_once(make_gateway, backend):
    gw = make_gateway(proxy_config(backend.address))
    before = len(backend.requests)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"GET /echo?t=halfhead HTTP/1.1\r\nHost: gw.te")
        sock.shutdown(socket.SHUT_WR)
        assert wait_peer_close(sock, timeout=5) == b""
    assert len(backend.requests) == before


def test_fin_after_complete_requests_gets_every_answer_then_closes(make_gateway, backend):
    gw = make_gateway(proxy_config(backend.address))
    data = (b"GET /echo?t=fin-a HTTP/1.1\r\nHost: gw.test\r\n\r\n"
            b"POST /echo?t=fin-b HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /mock HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        raw = wait_peer_close(sock, timeout=5)
    responses, _ = exchange_parse(raw)
    assert [r.status for r in responses] == [200, 200, 200], responses
    assert [r.complete for r in responses] == [True, True, True]
    assert responses[1].json()["body_length"] == 3


def exchange_parse(raw: bytes):
    from tests.support.client import _Collector
    c = _Collector()
    c.parser.feed_data(raw)
    return c.responses, True


# -- header names with '_' when the operator keeps them -----------------------------------------

def test_underscores_kept_on_request_but_never_framing_aliases(make_gateway, backend):
    gw = make_gateway(proxy_config(backend.address), extra_args=["--underscores-in-headers"])
    responses, _ = exchange(gw.port, b"GET /echo?t=keep HTTP/1.1\r\nHost: gw.test\r\nX_Custom: a\r\n"
                                     b"Transfer_Encoding: chunked\r\nconnection_: x\r\nX_Request_Id: f\r\n\r\n")
    assert responses[0].status == 200, responses
    names = [k for k, _ in responses[0].json()["headers"]]
    assert "X_Custom" in names
    assert not {"Transfer_Encoding", "X_Request_Id"} & set(names), names
    gw.wait_metric("tollgate_request_headers_dropped_total", 2, reason="alias")
    gw.wait_metric("tollgate_request_headers_dropped_total", 0, reason="underscore")


# -- heads and trailers that arrive in pieces ------------------------------------------------------

def test_pipelined_requests_split_across_reads_are_each_bounded_alone(make_gateway, backend):
    """Each read ends inside the next request's head: what bounds a head is that head's size,
    not what the connection received since."""
    gw = make_gateway(proxy_config(backend.address))
    requests = [b"GET /echo?t=split%d HTTP/1.1\r\nHost: gw.test\r\nX-Pad: %s\r\n\r\n" % (i, b"p" * 900)
                for i in range(250)]
    from tests.support.client import _Collector
    collector = _Collector()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(requests[0][:500])
        for i in range(len(requests)):
            nxt = requests[i + 1][:500] if i + 1 < len(requests) else b""
            sock.sendall(requests[i][500:] + nxt)
            while sum(r.complete for r in collector.responses) <= i:
                part = sock.recv(65536)
                assert part, f"closed after {i} requests"
                collector.parser.feed_data(part)
    assert [r.status for r in collector.responses] == [200] * len(requests)


def test_a_body_in_the_read_that_ends_a_trickled_head_is_not_head(make_gateway, backend):
    gw = make_gateway(proxy_config(backend.address))
    headers = b"".join(b"X-H%02d: %s\r\n" % (i, b"v" * 3990) for i in range(32))   # ~128 KB, allowed
    body = b"B" * 40000
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /echo?t=trickled HTTP/1.1\r\n")
        import time
        time.sleep(0.05)
        sock.sendall(b"Host: gw.test\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        raw = wait_peer_close_or_response(sock)
    responses, _ = exchange_parse(raw)
    assert responses and responses[0].status == 200, raw[:300]
    assert responses[0].json()["body_length"] == len(body)


def wait_peer_close_or_response(sock, timeout=10.0) -> bytes:
    from tests.support.client import _Collector
    c = _Collector()
    sock.settimeout(timeout)
    data = b""
    while not any(r.complete for r in c.responses):
        part = sock.recv(65536)
        if not part:
            break
        data += part
        c.parser.feed_data(part)
    return data


def test_an_endless_request_trailer_is_refused(make_gateway, backend):
    gw = make_gateway(proxy_config(backend.address))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /echo?t=trailer HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"2\r\nok\r\n0\r\nX-Trailer: ")
        sent = 0
        try:
            while sent < 8 * 1024 * 1024:
                sock.sendall(b"a" * 512)
                sent += 512
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 8 * 1024 * 1024, "the gateway took 8 MB of one trailer field"
        data = wait_peer_close(sock, timeout=10)
    assert b" 494 " in data.split(b"\r\n", 1)[0] or data == b"", data[:200]


def test_trailer_fields_never_become_headers_of_a_queued_request(make_gateway, backend):
    gw = make_gateway(proxy_config(backend.address))
    data = (b"GET /slow?ms=300 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
            b"POST /echo?t=queued HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Injected-From-Trailer: yes\r\nAuthorization: Bearer trailer\r\n\r\n")
    responses, _ = exchange(gw.port, data, expect=2, timeout=10)
    assert [r.status for r in responses] == [200, 200], responses
    names = {k.lower() for k, _ in responses[1].json()["headers"]}
    assert "x-injected-from-trailer" not in names and "authorization" not in names


def test_dropped_underscore_headers_count_towards_the_header_limits(make_gateway, backend):
    gw = make_gateway(proxy_config(backend.address))
    many = b"".join(b"a_%d: x\r\n" % i for i in range(300))
    responses, closed = exchange(gw.port, b"GET /echo?t=manyunder HTTP/1.1\r\nHost: gw.test\r\n" + many + b"\r\n")
    assert responses and responses[0].status == 494, responses
    assert closed


@pytest.mark.parametrize("chunks", [
    [b"GET /echo?t=ok HTTP/1.1\r\nHost: gw.test\r\n\r\nFOO /echo HTTP/1.1\r\nHost: gw.test\r\n\r\n"],
    [b"PA", b"TCHY /echo HTTP/1.1\r\nHost: gw.test\r\n\r\n"],
    [b"DESCRIBE /echo HTTP/1.1\r\nHost: gw.test\r\n\r\n"],
], ids=["pipelined", "split", "rtsp-method"])
def test_unknown_methods_are_501_wherever_the_request_line_falls(make_gateway, backend, chunks):
    gw = make_gateway(proxy_config(backend.address))
    import time
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(0.05)
        raw = wait_peer_close(sock)
    responses, _ = exchange_parse(raw)
    assert responses[-1].status == 501, responses


# -- a pipelined request whose body is still coming --------------------------------------------

_SLOW_THEN_POST = (b"GET /slow?ms=300 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
                   b"POST /echo?t=late-body HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nhello")


def test_a_pipelined_request_gets_the_rest_of_its_body_read(make_gateway, backend):
    """Reading pauses while the first request is answered (the second waits, unparsed); once
    the second starts, reading must resume for the rest of its body."""
    gw = make_gateway(proxy_config(backend.address))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(_SLOW_THEN_POST)
        time.sleep(0.1)                     # while the first is being answered
        sock.sendall(b"world")
        responses, raw = read_responses(sock, 2, timeout=5)
    assert [r.status for r in responses] == [200, 200], raw
    assert responses[1].json()["body_length"] == 10


def test_a_fin_inside_the_body_of_a_pipelined_request_aborts_it(make_gateway, backend):
    gw = make_gateway(proxy_config(backend.address))
    before = len(backend.requests)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(_SLOW_THEN_POST)
        time.sleep(0.1)
        sock.shutdown(socket.SHUT_WR)       # the POST's body can never complete
        started = time.monotonic()
        raw = wait_peer_close(sock, timeout=5)
        waited = time.monotonic() - started
    responses, _ = exchange_parse(raw)
    assert [r.status for r in responses] == [200], raw      # the first, answered; then closed
    assert waited < 4, "the half-sent request was held instead of aborted"
    assert [r["target"] for r in backend.requests[before:]] == ["/slow?ms=300"]


def read_responses(sock, count, timeout):
    from tests.support.client import _Collector
    c = _Collector()
    raw = b""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while sum(r.complete for r in c.responses) < count and time.monotonic() < deadline:
        try:
            part = sock.recv(65536)
        except socket.timeout:
            break
        if not part:
            break
        raw += part
        c.parser.feed_data(part)
    return c.responses, raw


def test_connection_close_in_a_clients_trailer_closes_after_the_answer(make_gateway, backend):
    gw = make_gateway(proxy_config(backend.address))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /echo?t=trailer-close HTTP/1.1\r\nHost: gw.test\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nConnection: close\r\n\r\n")
        raw = wait_peer_close(sock, timeout=5)
    responses, _ = exchange_parse(raw)
    assert [r.status for r in responses] == [200], raw
    assert responses[0].json()["body_length"] == 3


@pytest.mark.timer
def test_a_closing_connection_a_client_never_reads_from_is_cut_after_the_send_timeout(tmp_path):
    # the answer (Connection: close) is complete, but its end still waits in the gateway's
    # buffer (under the flow-control mark: no send deadline armed by it) for a client that
    # reads nothing: the gateway closes once it is sent, and not later than the send timeout
    # (before, such a connection was held as long as the client kept it open)
    where = {}
    ready = threading.Event()

    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert ready.wait(10)
        fill_send_queue(conn, *where["ports"], chunked=True)
        conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (40 * 1024, b"y" * 40 * 1024))
        where["done"] = True
        conn.wait_closed()
    backend = RawBackend(script).start()
    gw = GatewayProcess(proxy_config(backend.address), tmp_path,
                        extra_args=["--send-timeout", "4"]).start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        client_port = sock.getsockname()[1]
        where["ports"] = (gw.port, client_port)
        ready.set()
        wait_event_flag(where, "done", 60, "the send queue never filled")
        gw.wait_metric("tollgate_requests_total", 1, api="all", env="RELEASE", status="2xx")
        # still sending (the send timeout of 4 s leaves room for a busy machine to get here)
        assert gateway_side_state(gw.port, client_port) == "ESTABLISHED"
        wait_gateway_side(gw.port, client_port, lambda s: s != "ESTABLISHED", 10,
                          "a client that reads nothing kept its connection")
        sock.close()
        gw.wait_metric("tollgate_client_connections", 0)
    finally:
        gw.stop()
        backend.stop()
