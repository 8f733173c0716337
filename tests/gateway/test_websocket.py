"""WebSocket proxying through the real gateway process.

The ``websockets`` library is the client and the backend (tests.support.ws_backend) where a
well-behaved peer is wanted; raw sockets play the peers that misbehave (a backend switching to
another protocol, one that never reads, a client that never reads, bytes sent right behind a
handshake).
"""
from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import struct
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import proxy_config
from tests.support.client import exchange, request, wait_event_flag, wait_gateway_side
from tests.support.gateway import GatewayProcess, free_port
from tests.support.certs import TestCA
from tests.support.raw_backend import fill_send_queue
from tests.support.ws_backend import WebSocketBackend

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = base64.b64encode(hashlib.sha1(KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
HANDSHAKE = (b"GET %s HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n\r\n")


# -- helpers -------------------------------------------------------------------------------------

def frame(payload: bytes, opcode: int = 2, masked: bool = True) -> bytes:
    """One final WebSocket frame (masked, as a client sends them)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_head(sock, timeout=5.0) -> tuple[bytes, bytes]:
    """(response head, bytes read after it)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a response head: {data!r}")
        data += chunk
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def read_exactly(sock, n, have=b"", timeout=5.0) -> bytes:
    sock.settimeout(timeout)
    while len(have) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed after {len(have)} of {n} bytes")
        have += chunk
    return have


def closed_within(sock, timeout) -> bool:
    """Whether the peer ends the connection (FIN or reset) within ``timeout``, reading on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
    return False


def ws_url(gw, path):
    return f"ws://127.0.0.1:{gw.port}{path}"


def tunnel_metric(gw, name, **labels):
    return gw.metric(f"tollgate_websocket_{name}", **labels)


def wait_tunnel_metric_above(gw, name, floor, timeout=5.0, **labels):
    """Wait until a metric (pushed by workers every half second) exceeds ``floor``."""
    deadline = time.monotonic() + timeout
    while tunnel_metric(gw, name, **labels) <= floor:
        assert time.monotonic() < deadline, (name, labels, tunnel_metric(gw, name, **labels))
        time.sleep(0.05)


@pytest.fixture
def ws_backend():
    b = WebSocketBackend().start()
    yield b
    b.stop()


def start_tls_gateway(tmp_path, ca, config):
    """A gateway serving ``config`` on a TLS listener too, with a certificate for gw.test made
    by ``ca``: (gateway, TLS port)."""
    cert, key = ca.issue("front", ["gw.test"])
    config["certificates"] = [{"name": "front", "cert": str(cert), "key": str(key),
                               "domains": ["gw.test"], "default": True}]
    tls_port = free_port()
    gw = GatewayProcess(config, tmp_path, extra_args=["--tls-listen", f"127.0.0.1:{tls_port}"])
    return gw.start(), tls_port


def ws_config(address, **backend_options):
    return proxy_config(address, **backend_options)


# -- a tunnel ---------------------------------------------------------------------------------------

def test_text_and_binary_messages_of_several_megabytes_are_echoed(make_gateway, ws_backend):
    gw = make_gateway(ws_config(ws_backend.address))
    text = "é-" * 1_500_000                  # 4.5 MB of UTF-8
    binary = os.urandom(6_000_000)
    with connect(ws_url(gw, "/echo"), max_size=None, open_timeout=5) as ws:
        for message in ("hi", b"\x00\x01", text, binary, "", b""):
            ws.send(message)
            got = ws.recv(timeout=20)
            assert type(got) is type(message) and got == message
    gw.wait_metric("tollgate_websocket_tunnels_total", 1)
    for direction in ("to_backend", "to_client"):
        wait_tunnel_metric_above(gw, "bytes_total", len(binary) + 4_500_000, direction=direction)


def test_the_upgrade_is_forwarded_with_its_fields_and_the_gateways_own(make_gateway, ws_backend):
    gw = make_gateway(ws_config(ws_backend.address))
    with connect(ws_url(gw, "/echo?room=1"), open_timeout=5,
                 additional_headers={"X-Custom": "kept", "Sec-WebSocket-Protocol": "chat"}) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
    path, headers = ws_backend.requests[-1]
    assert path == "/echo?room=1"
    assert headers["upgrade"] == "websocket" and headers["connection"] == "Upgrade"
    assert headers["sec-websocket-key"] and headers["sec-websocket-version"] == "13"
    assert headers["x-custom"] == "kept" and headers["sec-websocket-protocol"] == "chat"
    assert headers["x-forwarded-for"] == "127.0.0.1" and headers["x-forwarded-proto"] == "http"
    assert len(headers["x-request-id"]) == 32


def test_the_101_is_forwarded_with_the_backends_fields_and_bytes_behind_it(make_gateway, ws_backend):
    # /hello sends a message at once: it can reach the gateway in the same read as the 101
    gw = make_gateway(ws_config(ws_backend.address))
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(HANDSHAKE % b"/hello")
        head, rest = read_head(sock)
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
        fields = {line.split(b":", 1)[0].lower(): line.split(b":", 1)[1].strip()
                  for line in lines[1:] if line}
        assert fields[b"sec-websocket-accept"] == ACCEPT
        assert fields[b"upgrade"].lower() == b"websocket"
        assert b"upgrade" in fields[b"connection"].lower()
        assert b"content-length" not in fields and b"transfer-encoding" not in fields
        assert read_exactly(sock, 7, rest) == frame(b"hello", opcode=1, masked=False)


def test_bytes_a_client_sends_right_behind_its_handshake_reach_the_backend(make_gateway, ws_backend):
    gw = make_gateway(ws_config(ws_backend.address))
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        # handshake and first message in one write (the gateway reads them in one read)
        sock.sendall(HANDSHAKE % b"/echo" + frame(b"early", opcode=1))
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert read_exactly(sock, 7, rest) == frame(b"early", opcode=1, masked=False)


def test_the_close_handshake_passes_both_ways(make_gateway, ws_backend):
    gw = make_gateway(ws_config(ws_backend.address))
    with connect(ws_url(gw, "/echo"), open_timeout=5) as ws:
        ws.send("x")
        ws.recv(timeout=5)
        ws.close(4001, "done")
    deadline = time.monotonic() + 5
    while 4001 not in ws_backend.close_codes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert 4001 in ws_backend.close_codes
    with connect(ws_url(gw, "/close"), open_timeout=5) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd.code == 4002 and closed.value.rcvd.reason == "bye"
    gw.wait_metric("tollgate_websocket_tunnels_closed_total", 2, reason="client")
    gw.wait_metric("tollgate_websocket_tunnels_open", 0)


# -- refusals ----------------------------------------------------------------------------------------

def test_a_backend_that_refuses_the_upgrade_has_its_answer_forwarded(make_gateway, ws_backend):
    gw = make_gateway(ws_config(ws_backend.address))
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(gw, "/refuse"), open_timeout=5)
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b"no tunnel for you\n"
    # on the wire: the answer, then the connection ends (nothing after an upgrade request
    # is read as HTTP)
    responses, closed = exchange(gw.port, HANDSHAKE % b"/refuse" + b"GET /mock HTTP/1.1\r\n"
                                 b"Host: gw.test\r\n\r\n", expect=2, timeout=3)
    assert [r.status for r in responses] == [403] and closed
    assert responses[0].header("connection") == "close"
    time.sleep(0.6)                     # (one metrics push)
    assert tunnel_metric(gw, "tunnels_total") == 0


@pytest.mark.parametrize("request_, status", [
    (b"POST /echo HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Content-Length: 2\r\n\r\nab", 400),
    (b"GET /echo HTTP/1.0\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
     400),
    (b"GET /echo HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
], ids=["post", "http-1.0", "with-a-body"])
def test_an_upgrade_that_cannot_open_a_tunnel_is_refused(make_gateway, ws_backend, request_, status):
    gw = make_gateway(ws_config(ws_backend.address))
    responses, closed = exchange(gw.port, request_, timeout=3)
    assert [r.status for r in responses] == [status] and closed
    assert b"WebSocket" in responses[0].body
    assert ws_backend.requests == []


def test_a_101_switching_to_another_protocol_is_502(make_gateway, raw):
    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
        conn.wait_closed()
    backend = raw(script)
    gw = make_gateway(proxy_config(backend.address))
    responses, closed = exchange(gw.port, HANDSHAKE % b"/ws", timeout=5)
    assert [r.status for r in responses] == [502] and closed
    assert backend.connections[0].wait_closed()


def test_a_client_gone_before_the_101_leaves_no_tunnel(make_gateway, raw):
    answered = threading.Event()

    def script(conn):
        conn.read_request()
        time.sleep(0.5)                 # the client leaves meanwhile
        conn.send(SWITCH)
        answered.set()
        conn.wait_closed()
    backend = raw(script)
    gw = make_gateway(proxy_config(backend.address))
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(HANDSHAKE % b"/ws")
    assert answered.wait(5)
    assert backend.connections[0].wait_closed(5), "the backend's side was kept open"
    time.sleep(0.6)
    assert tunnel_metric(gw, "tunnels_open") == 0


# -- bounds ---------------------------------------------------------------------------------------------

def test_an_idle_tunnel_is_closed_after_the_apis_idle_timeout(make_gateway, ws_backend):
    gw = make_gateway(ws_config(ws_backend.address, websocket_idle_timeout_ms=1000))
    with connect(ws_url(gw, "/echo"), open_timeout=5) as ws:
        for _ in range(5):              # traffic every 0.4 s keeps it open past 1 s
            ws.send("ping")
            assert ws.recv(timeout=5) == "ping"
            time.sleep(0.4)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)         # then silence: closed by the gateway
    gw.wait_metric("tollgate_websocket_tunnels_closed_total", 1, reason="idle")
    assert "idle" in gw.log()


def test_a_client_that_does_not_read_holds_the_backend_back(make_gateway, ws_backend):
    gw = make_gateway(ws_config(ws_backend.address))
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(HANDSHAKE % b"/flood?mb=300")
        read_head(sock)
        time.sleep(2.0)                 # reads nothing: what can the backend push meanwhile?
        first = ws_backend.flood_sent
        time.sleep(1.0)
        stalled = ws_backend.flood_sent
        # socket buffers on the way (a few MB each) and the gateway's bounded buffers: far
        # less than the 300 MB the backend would send to a gateway that buffered without bound
        assert stalled < 40 * 1024 * 1024, stalled
        assert stalled == first, "the backend was still sending to a client that reads nothing"
        # the worker is not blocked meanwhile
        assert request(gw.port, "GET", "/mock").status == 200
        # and the tunnel resumes when the client reads
        sock.settimeout(5)
        got = 0
        while got < stalled + 8 * 1024 * 1024:
            chunk = sock.recv(1 << 20)
            assert chunk, "closed while reading the flood"
            got += len(chunk)
    assert ws_backend.flood_sent > stalled


def test_a_backend_that_does_not_read_holds_the_client_back(make_gateway, raw):
    done = threading.Event()

    def script(conn):
        conn.read_request()
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        conn.send(SWITCH)
        done.wait(30)                   # never reads
    backend = raw(script)
    gw = make_gateway(proxy_config(backend.address))
    try:
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(HANDSHAKE % b"/ws")
            head, _ = read_head(sock)
            assert head.startswith(b"HTTP/1.1 101 ")
            sock.setblocking(False)
            block = frame(b"m" * 65536)
            sent = 0
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < 1.5 and sent < 400 * 1024 * 1024:
                try:
                    sent += sock.send(block)
                    quiet_since = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.01)
            assert sent < 40 * 1024 * 1024, sent
            assert request(gw.port, "GET", "/mock").status == 200
    finally:
        done.set()


# -- ends of a tunnel ---------------------------------------------------------------------------------

def test_a_backend_reset_reaches_the_client_as_a_reset(make_gateway, raw):
    # (an orderly FIN would tell the client the backend ended the stream on purpose)
    def script(conn):
        conn.read_request()
        conn.send(SWITCH + frame(b"bye soon", opcode=1, masked=False))
        time.sleep(0.3)
        conn.reset()
    backend = raw(script)
    gw = make_gateway(proxy_config(backend.address))
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(HANDSHAKE % b"/ws")
        _, rest = read_head(sock)
        assert read_exactly(sock, 10, rest) == frame(b"bye soon", opcode=1, masked=False)
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
    gw.wait_metric("tollgate_websocket_tunnels_closed_total", 1, reason="backend")


@pytest.mark.timer
def test_a_closed_tunnel_holding_bytes_for_a_client_that_never_reads_is_cut(tmp_path, raw):
    # the backend sends more than the kernel's buffers toward the client hold, then ends; the
    # client, which reads nothing, half-closes: the tunnel is over, but the gateway still holds
    # bytes for the client.  Within the send timeout (not the tunnel's idle timeout, nor never)
    # the gateway lets the socket go.
    where = {}
    ready = threading.Event()

    def script(conn):
        conn.read_request()
        conn.send(SWITCH)
        assert ready.wait(10)
        fill_send_queue(conn, *where["ports"])
        where["full"] = True
        conn.send(b"y" * 40 * 1024)     # (with the drips held: under the gateway's 64 KB mark)
        conn.close()
    backend = raw(script)
    gw = GatewayProcess(proxy_config(backend.address, websocket_idle_timeout_ms=600000),
                        tmp_path, extra_args=["--send-timeout", "2"]).start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(HANDSHAKE % b"/ws")
        client_port = sock.getsockname()[1]
        where["ports"] = (gw.port, client_port)
        ready.set()
        wait_event_flag(where, "full", 60, "the send queue never filled")
        time.sleep(0.5)
        sock.shutdown(socket.SHUT_WR)   # both sides have ended: the tunnel closes
        # the client's end is seen, the bytes still unsent; then the socket is let go
        wait_gateway_side(gw.port, client_port, lambda s: s == "CLOSE_WAIT", 5,
                          "the client's end was not seen")
        gw.wait_metric("tollgate_websocket_tunnels_closed_total", 1, reason="client")
        wait_gateway_side(gw.port, client_port, lambda s: s != "CLOSE_WAIT", 8,
                          "the gateway kept a socket it could not flush")
        sock.close()
        gw.wait_metric("tollgate_client_connections", 0)
    finally:
        gw.stop()


def test_a_tls_client_ending_its_tunnel_logs_no_warning(tmp_path, ws_backend):
    import ssl

    ca = TestCA(tmp_path / "pki")
    gw, tls_port = start_tls_gateway(tmp_path, ca, ws_config(ws_backend.address))
    try:
        ctx = ssl.create_default_context(cafile=str(ca.path))
        raw_sock = socket.create_connection(("127.0.0.1", tls_port))
        with ctx.wrap_socket(raw_sock, server_hostname="gw.test") as sock:
            sock.sendall(HANDSHAKE % b"/echo")
            head, _ = read_head(sock)
            assert head.startswith(b"HTTP/1.1 101 ")
            sock.settimeout(5)
            try:
                sock.unwrap()           # close_notify: TLS's end of the stream
            except (OSError, ssl.SSLError):
                pass
        gw.wait_metric("tollgate_websocket_tunnels_closed_total", 1, reason="client")
        assert "WARNING" not in gw.log()
    finally:
        gw.stop()


def test_tunnel_bytes_are_counted_without_the_handshake(make_gateway, raw):
    def script(conn):
        conn.read_request()
        conn.send(SWITCH + b"12345")
        conn.wait_closed()
    backend = raw(script)
    gw = make_gateway(proxy_config(backend.address))
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(HANDSHAKE % b"/ws")
        _, rest = read_head(sock)
        assert read_exactly(sock, 5, rest) == b"12345"
        sock.sendall(b"abcdefg")
    gw.wait_metric("tollgate_websocket_tunnels_open", 0)
    gw.wait_metric("tollgate_websocket_tunnels_total", 1)
    gw.wait_metric("tollgate_websocket_bytes_total", 5, direction="to_client")
    gw.wait_metric("tollgate_websocket_bytes_total", 7, direction="to_backend")


def test_no_100_continue_comes_before_the_101(make_gateway, ws_backend):
    # (Expect: 100-continue on a request without a body waits for nothing)
    gw = make_gateway(ws_config(ws_backend.address))
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall((HANDSHAKE % b"/echo").replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
        head, _ = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 "), head


def test_tunnels_of_a_worker_that_died_are_counted_closed(make_gateway, ws_backend):
    gw = make_gateway(ws_config(ws_backend.address))
    with connect(ws_url(gw, "/echo"), open_timeout=5) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        gw.wait_metric("tollgate_websocket_tunnels_open", 1)
        workers = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()
                   and _ppid(int(e.name)) == gw.proc.pid]
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    gw.wait_metric("tollgate_websocket_tunnels_closed_total", 1, timeout=10, reason="error")
    gw.wait_metric("tollgate_websocket_tunnels_open", 0, timeout=10)


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[1])


# -- reload, drain -----------------------------------------------------------------------------------

def test_a_tunnel_survives_a_reload(make_gateway, ws_backend):
    config = ws_config(ws_backend.address)
    gw = make_gateway(config)
    with connect(ws_url(gw, "/echo"), open_timeout=5) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        changed = ws_config(ws_backend.address)
        changed["apis"][1]["backend"]["mock"]["body"] = '{"mock":"reloaded"}'
        gw.write_config(changed)
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while request(gw.port, "GET", "/mock").body != b'{"mock":"reloaded"}':
            assert time.monotonic() < deadline, "the reload did not take effect"
            time.sleep(0.1)
        ws.send("after")
        assert ws.recv(timeout=5) == "after"
    assert "Traceback" not in gw.log()


@pytest.mark.parametrize("change", ["changed", "removed"])
def test_a_reload_that_changes_a_tunnels_api_gives_it_a_grace_then_closes_it(tmp_path, ws_backend,
                                                                             change):
    # (a tunnel must not go on for ever under an API its operator changed or withdrew)
    gw = GatewayProcess(ws_config(ws_backend.address), tmp_path,
                        extra_args=["--websocket-drain-grace", "1"]).start()
    try:
        with connect(ws_url(gw, "/echo"), open_timeout=5) as ws:
            ws.send("before")
            assert ws.recv(timeout=5) == "before"
            changed = ws_config(ws_backend.address)
            if change == "changed":
                changed["apis"][0]["backend"]["timeout_ms"] = 12345
            else:       # only the mock API is left
                changed["apis"][0]["path"] = "/elsewhere"
                changed["apis"][0]["name"] = "other"
            gw.write_config(changed)
            gw.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "tunnel(s) of changed or removed APIs" not in gw.log():
                assert time.monotonic() < deadline, gw.log()
                time.sleep(0.05)
            ws.send("in the grace")
            assert ws.recv(timeout=5) == "in the grace"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
        gw.wait_metric("tollgate_websocket_tunnels_closed_total", 1, reason="reload")
    finally:
        gw.stop()


def test_sigterm_gives_open_tunnels_a_grace_then_closes_them(tmp_path, ws_backend):
    gw = GatewayProcess(ws_config(ws_backend.address), tmp_path,
                        extra_args=["--websocket-drain-grace", "1.5"]).start()
    try:
        with connect(ws_url(gw, "/echo"), open_timeout=5) as ws:
            ws.send("x")
            assert ws.recv(timeout=5) == "x"
            started = time.monotonic()
            gw.signal(signal.SIGTERM)
            time.sleep(0.3)
            ws.send("still")             # within the grace, the tunnel still carries
            assert ws.recv(timeout=5) == "still"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=20)
            ended = time.monotonic() - started
        assert gw.proc.wait(20) == 0
        # closed by the grace (1.5 s), not by the drain timeout (30 s)
        assert ended < 15, ended
    finally:
        gw.stop()


# -- TLS ---------------------------------------------------------------------------------------------

def test_wss_through_the_tls_listener_to_a_wss_backend(tmp_path):
    import ssl

    ca = TestCA(tmp_path / "pki")
    cert, key = ca.issue("backend", ["backend.test"])
    backend_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    backend_ctx.load_cert_chain(cert, key)
    backend = WebSocketBackend(ssl_context=backend_ctx).start()
    config = proxy_config(backend.address)
    config["apis"][0]["backend"]["url"] = "https://#backend#/"
    config["apis"][0]["backend"]["tls"] = {"ca_file": str(ca.path), "server_name": "backend.test"}
    gw, tls_port = start_tls_gateway(tmp_path, ca, config)
    try:
        client_ctx = ssl.create_default_context(cafile=str(ca.path))
        payload = os.urandom(3_000_000)
        with connect(f"wss://gw.test:{tls_port}/echo", ssl=client_ctx, max_size=None,
                     open_timeout=5,
                     sock=socket.create_connection(("127.0.0.1", tls_port))) as ws:
            ws.send(payload)
            assert ws.recv(timeout=20) == payload
            ws.send("text")
            assert ws.recv(timeout=5) == "text"
        _, headers = backend.requests[-1]
        assert headers["x-forwarded-proto"] == "https"
    finally:
        gw.stop()
        backend.stop()
