"""The ``mock`` backend: a fixed response, answered by the gateway itself."""
from __future__ import annotations

from ..errors import REASONS


class MockBackend:
    __slots__ = ("status", "header_lines", "body", "timeout_s")

    def __init__(self, status: int, headers: dict, body: str):
        if status not in REASONS and not 100 <= status <= 599:
            raise ValueError(f"mock status {status} is not an HTTP status")
        lines = []
        for name, value in headers.items():
            if name.lower() in ("content-length", "transfer-encoding", "connection"):
                continue  # the gateway frames the response itself
            if any(c in name + value for c in "\r\n\0") or not name:
                raise ValueError(f"mock header {name!r}: invalid characters")
            lines.append(f"{name}: {value}\r\n")
        self.status = status
        self.header_lines = "".join(lines).encode("latin-1")
        self.body = body.encode("utf-8")
        self.timeout_s = 0.0

    def on_head(self, ex):
        pass

    def on_body(self, ex, chunk):
        pass  # the request body is read and dropped (bounded by the body limit)

    def on_request_end(self, ex):
        ex.respond_full(self.status, self.header_lines, self.body)

    def on_timeout(self, ex):
        pass

    def on_abort(self, ex):
        pass

    def on_client_paused(self, ex, paused):
        pass
