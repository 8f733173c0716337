"""A misbehaving backend: a real TCP listener that answers with exactly the bytes a test scripts.

Each accepted connection runs ``script(conn)`` on its own thread, where ``conn`` is a
:class:`RawConnection`: read a request head (and its body, by Content-Length), send raw bytes,
end with a FIN (``close``) or a reset (``reset``).  What the backend saw is recorded: how many
connections it accepted, the heads it read on each, and whether the gateway closed each one.
"""
from __future__ import annotations

import socket
import struct
import threading
import time


class RawConnection:
    def __init__(self, sock: socket.socket, index: int):
        self.sock = sock
        self.index = index          # 0 for the first connection the backend accepted
        self.heads: list[bytes] = []
        self.peer_closed = False    # the gateway closed this connection (EOF or reset seen)
        self._buf = b""

    def read_request(self, timeout: float = 10.0) -> bytes | None:
        """The next request head (with its Content-Length body), or None when the peer closed."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self._buf:
            try:
                data = self.sock.recv(65536)
            except (ConnectionError, socket.timeout):
                data = b""
            if not data:
                self.peer_closed = True
                return None
            self._buf += data
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            data = self.sock.recv(65536)
            if not data:
                self.peer_closed = True
                return None
            rest += data
        self._buf = rest[length:]
        self.heads.append(head)
        return head

    def wait_closed(self, timeout: float = 10.0) -> bool:
        """Wait until the gateway closes this connection; True if it did within ``timeout``."""
        if self.peer_closed:
            return True
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except socket.timeout:
            return False
        except ConnectionError:
            pass
        self.peer_closed = True
        return True

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.peer_closed = True
            raise

    def close(self) -> None:
        """End with a FIN."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def reset(self) -> None:
        """End with a reset (RST), not a FIN: SO_LINGER with a zero timeout, then close."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class RawBackend:
    """Start with ``RawBackend(script).start()``; ``.stop()`` closes everything."""

    def __init__(self, script):
        self.script = script
        self.connections: list[RawConnection] = []
        self.errors: list[BaseException] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "RawBackend":
        self._listener.listen(64)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self):
        while not self._stopped:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            conn = RawConnection(sock, len(self.connections))
            self.connections.append(conn)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, conn: RawConnection):
        try:
            self.script(conn)
        except (OSError, ValueError):
            pass       # the gateway closed the connection under the script: that is allowed
        except BaseException as exc:   # an assertion in the script: reported by the test
            self.errors.append(exc)
        finally:
            if conn.sock.fileno() >= 0:
                time.sleep(0.05)
                try:
                    conn.sock.close()
                except OSError:
                    pass

    def stop(self):
        self._stopped = True
        try:
            self._listener.close()
        except OSError:
            pass
        for conn in self.connections:
            try:
                conn.sock.close()
            except OSError:
                pass


def _wait_read_by_the_gateway(conn: RawConnection, timeout: float = 10.0) -> None:
    """Wait (bounded) until the gateway's end of this backend connection has nothing left to
    read (/proc/net/tcp: its receive queue is empty)."""
    from tests.support.client import tcp_row
    backend_port = conn.sock.getsockname()[1]
    gateway_port = conn.sock.getpeername()[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = tcp_row(gateway_port, backend_port)
        if fields is None or int(fields[4].split(":")[1], 16) == 0:
            return              # read (or the connection is gone: nothing left to read)
        time.sleep(0.005)
    raise AssertionError("the gateway stopped reading this backend")


def fill_send_queue(conn: RawConnection, gw_port: int, client_port: int, limit: int = 4000,
                    chunked: bool = False) -> None:
    """Send through the gateway to a client that reads nothing until the gateway's kernel send
    queue toward that client takes no more: the bytes of the last drip then wait in the
    gateway's own buffer.  Drips are small, so that buffer stays far under the gateway's
    flow-control mark (it goes on reading this backend).  ``chunked``: each drip is a chunk.
    A drip that seems to add nothing counts only once the gateway has read it (nothing left in
    its receive queue from this backend): on a busy machine it may not have yet."""
    from tests.support.client import gateway_side
    for _ in range(limit):
        before = gateway_side(gw_port, client_port)[1]
        conn.send(b"2000\r\n" + b"x" * 8192 + b"\r\n" if chunked else b"x" * 8192)
        time.sleep(0.02)
        if before > 0 and gateway_side(gw_port, client_port)[1] == before:
            _wait_read_by_the_gateway(conn)
            time.sleep(0.02)
            if gateway_side(gw_port, client_port)[1] == before:
                return          # it read this drip and sent none of it: the kernel's side is full
    raise AssertionError("the gateway's send queue never filled")
