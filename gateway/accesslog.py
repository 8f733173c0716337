"""The JSON access log: one line per request, buffered and written on the worker's tick.

Lines are encoded with msgspec into one growing buffer and written when it passes 64 KB or on
the next tick, so logging costs no system call per request.  What is logged never carries
secrets: no query string (tokens travel there), no header values, no bodies.
"""
from __future__ import annotations

import os
import sys
import time

import msgspec


class AccessRecord(msgspec.Struct, array_like=False, omit_defaults=True):
    time: float
    request_id: str
    client: str
    method: str
    host: str
    path: str
    status: int
    bytes: int
    duration_ms: float
    env: str = ""
    api: str = ""
    app: str = ""           # the authenticated app (never its key, secret or signature)
    user: str = ""          # the authenticated IAM user, and its account (never a token)
    account: str = ""
    upstream: str = ""
    upstream_ms: float = -1.0
    error: str = ""
    aborted: bool = False
    #: the socket peer, when it is not the client (a trusted proxy that forwarded the request)
    peer: str = ""


class AccessLog:
    FLUSH_BYTES = 64 * 1024

    def __init__(self, target: str):
        """``target`` is a file path (appended to) or ``-`` for standard output."""
        self.fd = sys.stdout.fileno() if target == "-" else os.open(
            target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.own_fd = target != "-"
        self.encoder = msgspec.json.Encoder()
        self.buffer = bytearray()

    def log(self, ex, duration, aborted):
        api = ex.api
        caller = ex.caller
        record = AccessRecord(
            time=round(time.time(), 3), request_id=ex.request_id, client=ex.client_ip,
            method=ex.method, host=ex.host, path=ex.path or "", status=ex.status,
            bytes=ex.bytes_sent, duration_ms=round(duration * 1000.0, 3),
            env=ex.env if api is not None else "", api=api.name if api is not None else "",
            app=caller.app if caller is not None else "",
            user=caller.user if caller is not None else "",
            account=caller.account if caller is not None else "",
            upstream=ex.upstream_addr,
            upstream_ms=round(ex.upstream_elapsed * 1000.0, 3) if ex.upstream_elapsed >= 0 else -1.0,
            error=ex.error_code, aborted=aborted,
            peer=peer if (peer := ex.conn.client_ip) != ex.client_ip else "")
        self.encoder.encode_into(record, self.buffer, -1)
        self.buffer += b"\n"
        if len(self.buffer) >= self.FLUSH_BYTES:
            self.flush()

    def flush(self):
        buf = self.buffer
        while buf:
            try:
                written = os.write(self.fd, buf)
            except BlockingIOError:
                return  # try again on the next tick
            except OSError:
                buf.clear()  # the log target is gone; never let it stop the data path
                return
            del buf[:written]

    def close(self):
        self.flush()
        if self.own_fd:
            os.close(self.fd)
