"""A raw HTTP/1.1 client over a real socket, for what ordinary clients refuse to send."""
from __future__ import annotations

import socket
import time

import httptools


class Response:
    def __init__(self):
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.complete = False
        self.version = ""

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def json(self):
        import json
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


class _Collector:
    def __init__(self, head_request=False):
        self.head_request = head_request    # answers to HEAD have no body, whatever they say
        self.responses: list[Response] = []
        self.parser = httptools.HttpResponseParser(self)
        self.current = None

    def on_message_begin(self):
        self.current = Response()
        self.responses.append(self.current)

    def on_header(self, name, value):
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self):
        self.current.status = self.parser.get_status_code()
        self.current.version = self.parser.get_http_version()
        if self.head_request:
            # (httptools cannot be told the request was HEAD: it would wait for the body a
            # Content-Length announces; the answer is complete here)
            self.current.complete = True

    def on_body(self, body):
        self.current.body += body

    def on_message_complete(self):
        self.current.complete = True


def exchange(port: int, data: bytes, *, expect: int = 1, timeout: float = 5.0,
             read_until_close: bool = False, chunks=None,
             source: str | None = None, host: str = "127.0.0.1",
             check_close: bool = True) -> tuple[list[Response], bool]:
    """Send ``data`` (or each of ``chunks`` in turn) to ``host`` (an IPv4 or IPv6 address) and
    read ``expect`` complete responses; ``source``: the local address to connect from (any of
    127.0.0.0/8 is this machine).  ``check_close`` False: the caller does not ask whether the
    gateway closed after the last response (saves waiting 0.2 s for a close that may come).

    Returns (responses, closed): ``closed`` is True when the gateway closed the connection.
    """
    first = chunks[0] if chunks else data
    collector = _Collector(head_request=first.startswith(b"HEAD "))
    closed = False
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as sock:
        for part in (chunks if chunks is not None else [data]):
            sock.sendall(part)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = sum(r.complete for r in collector.responses)
            if done >= expect and not read_until_close:
                break
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                buf = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not buf:
                closed = True
                break
            try:
                collector.parser.feed_data(buf)
            except httptools.HttpParserError:
                break
        if not closed and not read_until_close and check_close:
            # did the server close right after the last response?
            sock.settimeout(0.2)
            try:
                closed = sock.recv(1) == b""
            except socket.timeout:
                closed = False
            except ConnectionResetError:
                closed = True
    return collector.responses, closed


def request(port: int, method="GET", target="/", headers=None, body=b"", host="gw.test",
            timeout=5.0, source: str | None = None) -> Response:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in (headers or {})):
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    responses, _ = exchange(port, data, timeout=timeout, source=source, check_close=False)
    assert responses and responses[0].complete, f"no complete response to {method} {target}"
    return responses[0]


def assert_http_date(value):
    """``value`` is an IMF-fixdate (RFC 9110 §5.6.7) naming the present moment (within a
    minute: the check is of the clock the gateway reads, not of its speed)."""
    import re
    from email.utils import parsedate_to_datetime

    assert value and re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", value), value
    assert abs(parsedate_to_datetime(value).timestamp() - time.time()) < 60, value


_TCP_STATES = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT",
               "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0B": "CLOSING"}


def gateway_side(gw_port, client_port):
    """(TCP state, bytes in the send queue) of the gateway's end of the connection from
    ``client_port`` (Linux /proc/net/tcp), or (None, 0) when the kernel has forgotten it.
    CLOSE_WAIT: the client closed its side and the gateway still holds the socket open."""
    fields = tcp_row(gw_port, client_port)
    if fields is None:
        return None, 0
    return _TCP_STATES.get(fields[3], fields[3]), int(fields[4].split(":")[0], 16)


def tcp_row(local_port: int, remote_port: int) -> list[str] | None:
    """The fields of the /proc/net/tcp row of the connection from ``local_port`` to
    ``remote_port`` on this machine, or None.  A quick text search first: a busy machine has
    thousands of rows."""
    local, remote = f":{local_port:04X} ", f":{remote_port:04X} "
    with open("/proc/net/tcp") as f:
        text = f.read()
    start = 0
    while (at := text.find(local, start)) >= 0:
        line_start = text.rfind("\n", 0, at) + 1
        line_end = text.find("\n", at)
        fields = text[line_start:line_end if line_end >= 0 else len(text)].split()
        start = at + 1
        if (len(fields) > 4 and fields[1].endswith(local.rstrip())
                and fields[2].endswith(remote.rstrip())):
            return fields
    return None


def gateway_side_state(gw_port, client_port):
    return gateway_side(gw_port, client_port)[0]


def wait_gateway_side(gw_port, client_port, until, timeout, what):
    """Wait (bounded) until ``until(state)`` holds for the gateway's end of the connection
    from ``client_port`` (see gateway_side); fail with ``what`` and the state otherwise."""
    deadline = time.monotonic() + timeout
    while not until(gateway_side_state(gw_port, client_port)):
        assert time.monotonic() < deadline, f"{what} (state {gateway_side_state(gw_port, client_port)})"
        time.sleep(0.05)


def wait_event_flag(flags, key, timeout, what):
    """Wait (bounded) until a test's backend script sets ``flags[key]``."""
    deadline = time.monotonic() + timeout
    while key not in flags:
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
