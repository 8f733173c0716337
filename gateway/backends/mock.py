"""The ``mock`` backend: a fixed response, answered by the gateway itself."""
from __future__ import annotations

from gateway.errors import REASONS
from gateway.exchange import Handler


class MockBackend(Handler):
    __slots__ = ("status", "header_lines", "body")

    def __init__(self, status: int, headers: dict, body: str):
        if status not in REASONS and not 100 <= status <= 599:
            raise ValueError(f"mock status {status} is not an HTTP status")
        lines = []
        for name, value in headers.items():
            if name.lower() in ("content-length", "transfer-encoding", "connection", "date"):
                continue  # the gateway frames the response and dates it itself
            if any(c in name + value for c in "\r\n\0") or not name:
                raise ValueError(f"mock header {name!r}: invalid characters")
            lines.append(f"{name}: {value}\r\n")
        self.status = status
        self.header_lines = "".join(lines).encode("latin-1")
        self.body = body.encode("utf-8")
        self.timeout_s = 0.0

    # on_body: the request body is read and dropped (bounded by the body limit), as the base does

    def on_request_end(self, ex):
        ex.respond_full(self.status, self.header_lines, self.body)
