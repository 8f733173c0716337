"""Bounds on what a client may send and how long anything may wait.

Every buffer and every wait of the data plane is bounded by one of these numbers.  Defaults are
the ROMA APIC ones (body 12 MB, URI 32 KB, one header 32 KB, all headers 128 KB).
"""
from __future__ import annotations

import msgspec


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_body_bytes: int = 12 * 1024 * 1024      # 413 APIC.0201
    max_uri_bytes: int = 32 * 1024              # 414 APIC.0201
    max_header_bytes: int = 32 * 1024           # one header line, 494 APIC.0201
    max_headers_bytes: int = 128 * 1024         # all header lines, 494 APIC.0201
    max_headers_count: int = 256                # 494 APIC.0201
    head_timeout_s: float = 10.0                # first byte to end of head
    keepalive_timeout_s: float = 60.0           # idle between two requests
    body_timeout_s: float = 60.0                # idle between two body reads from the client
    send_timeout_s: float = 60.0                # a client not reading its response
    max_pipelined: int = 16                     # queued requests on one connection before 400
    replay_body_bytes: int = 64 * 1024          # request bodies kept for a safe retry
    upstream_connect_timeout_s: float = 5.0
    upstream_idle_timeout_s: float = 10.0       # pooled upstream connection idle before closed
    upstream_max_idle_per_backend: int = 1024   # sized to the client concurrency, not below
    drain_timeout_s: float = 30.0               # SIGTERM: longest wait for in-flight requests
    tunnel_drain_grace_s: float = 10.0          # SIGTERM: what an open WebSocket tunnel gets
    linger_timeout_s: float = 2.0               # after an error answer: read and discard this long
    linger_max_bytes: int = 4 * 1024 * 1024     # ... or until this much was discarded
    tick_s: float = 0.05                        # timeout sweep period (precision of all timeouts)
    # Request header names with '_' are dropped unless this is set (nginx's
    # underscores_in_headers); one that reads as a framing, hop-by-hop or gateway-set header
    # with '-' for '_' (Transfer_Encoding, X_Forwarded_For) is dropped even then.
    underscores_in_headers: bool = False

    @property
    def head_guard_bytes(self) -> int:
        """Hard bound on bytes buffered while a request head is incomplete.

        httptools hands a header over only once it is complete, so the per-header limits are
        checked after it was buffered; this guard bounds that buffer.
        """
        return self.max_uri_bytes + self.max_headers_bytes + 4096
