"""Adversarial review of load balance channels and conditional backends: each test here shows
a defect found by trying to break them from outside (real gateway process, real backends, raw
sockets).  See the review report for the cause and a suggested fix of each."""
from __future__ import annotations

import gc
import os
import signal
import ssl
import time
from collections import Counter

import pytest

from tests.support.backend import Backend
from tests.support.certs import TestCA
from tests.support.client import request

from .test_channels import (LOCAL, backends, channel_doc, closed_port, member,  # noqa: F401
                            proxied, served_by, wait_until)


# --------------------------------------------------------------------------------------------------
# https channels: a member that does not speak TLS

@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_https_member_that_fails_tls_is_retried_elsewhere_and_ejected(make_gateway, backends,
                                                                         tmp_path):
    ca = TestCA(tmp_path / "pki")
    cert, key = ca.issue("member", ["member.test"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    good = Backend(ssl_context=ctx).start()
    (plain,) = backends(1)          # a member left on plain HTTP (misconfigured, or restarted)
    try:
        gw = make_gateway(channel_doc([member(plain), member(good)],
                                      tls={"ca_file": str(ca.path), "server_name": "member.test"}))
        # GETs (retries -1: idempotent calls retry once, on another member): the member that
        # fails its handshake never saw a request, so the call goes to the good one; and a
        # member whose every connect fails is ejected like one that refuses connections
        assert served_by(gw, 6) == {good.port: 6}
        assert proxied(plain) == []
    finally:
        good.stop()
        gc.collect()


# --------------------------------------------------------------------------------------------------
# The master's reloads

def _health_fds(pid):
    found = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "tollgate-health" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                found += 1
        except OSError:
            pass
    return found


def test_reloads_do_not_leak_descriptors_in_the_master(make_gateway, backends):
    (a,) = backends(1)
    gw = make_gateway(channel_doc([member(a)]))
    before = _health_fds(gw.proc.pid)
    for i in range(1, 6):
        gw.signal(signal.SIGHUP)        # (the same file: checked again, found unchanged)
        wait_until("the reload is done",
                   lambda: gw.log_path.read_text().count("is unchanged") >= i)
    after = _health_fds(gw.proc.pid)
    # the master holds the node's health table (its descriptor, and the map's own duplicate
    # of it); checking a document must not open more
    assert after == before <= 2, (before, after)


# --------------------------------------------------------------------------------------------------
# A full health table

@pytest.mark.timer      # (waits out the 5 s back-off)
def test_a_member_untracked_by_a_full_health_table_comes_back_after_its_back_off(make_gateway,
                                                                                 backends):
    a, b = backends(2)
    # 4096 members elsewhere fill the node's table (4096 slots): the pool's members get none
    filler = {"name": "filler", "port": 9, "members": [
        {"host": f"10.{i >> 8}.{i & 255}.1"} for i in range(4096)]}
    doc = channel_doc([member(a), member(b)])
    doc["channels"].insert(0, filler)
    gw = make_gateway(doc)
    assert "the health table is full" in gw.log_path.read_text()
    a.stop()
    assert served_by(gw, 4) == {b.port: 4}          # a refused: ejected, the call retried on b
    a.start()
    time.sleep(6.5)                                 # the first back-off (5 s) is over
    # a is back in the balancer: it serves its share again
    wait_until("a serves again", lambda: a.port in served_by(gw, 4), within=5)


# --------------------------------------------------------------------------------------------------
# IPv6 members

class _V6Backend:
    """A minimal HTTP backend on [::1]: answers every request 200 with its port."""

    def __init__(self):
        import socket
        import threading
        self.sock = socket.socket(socket.AF_INET6)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.heads = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        import threading
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.heads.append(head)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend: %d\r\n\r\nok"
                             % self.port)

    def stop(self):
        self.sock.close()


def test_a_bracketed_ipv6_member_is_refused_at_load_and_a_bare_one_served(make_gateway,
                                                                          tmp_path):
    v6 = _V6Backend()
    try:
        # "[::1]" (as in a url) is refused, naming the member; "::1" is served
        done = _validate(tmp_path, channel_doc([{"host": "[::1]", "port": v6.port}]))
        assert done.returncode == 1
        assert "channels[0].members[0].host: write an IPv6 address without brackets" \
            in done.stdout, done.stdout
        gw = make_gateway(channel_doc([{"host": "::1", "port": v6.port}]))
        assert served_by(gw, 3) == {v6.port: 3}
    finally:
        v6.stop()


# --------------------------------------------------------------------------------------------------
# Validation: member counts the balancer refuses

def _validate(tmp_path, doc):
    import subprocess
    import sys

    import yaml

    from tests.support.gateway import ROOT
    path = tmp_path / "doc.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return subprocess.run([sys.executable, "-m", "tollgate", "validate", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("count", "error"), [
    (0, "apis[0].backend.channel: channel 'pool' has no members"),
    (4097, "channels[0].members: at most 4096 members, not 4097")])
def test_a_channel_with_a_member_count_the_balancer_refuses_is_named_by_path(tmp_path, count,
                                                                            error):
    doc = channel_doc([{"host": LOCAL, "port": 1000 + i} for i in range(count)])
    done = _validate(tmp_path, doc)
    assert done.returncode == 1
    # the error names the field, as every configuration error does (not the balancer's words)
    assert error in done.stdout, done.stdout + done.stderr


# --------------------------------------------------------------------------------------------------
# A black hole member: its connects never complete

@pytest.fixture
def black_hole():
    """A port whose connects hang: a listener with a full accept queue that never accepts."""
    import socket
    listener = socket.socket()
    listener.bind((LOCAL, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection((LOCAL, port), timeout=2)   # the queue's one place
    yield port
    filler.close()
    listener.close()


def test_a_connect_that_outlasts_the_call_timeout_ejects_the_member_at_once(make_gateway, backends,
                                                                            black_hole):
    (b,) = backends(1)
    gw = make_gateway(channel_doc([member(black_hole), member(b)], timeout_ms=1000))
    # the first call goes to the black hole (wrr: the first member first): its connect is still
    # pending when the call's time is up -- a connect that timed out, which ejects at once
    first = request(gw.port, "GET", "/x")
    assert first.status == 504
    # from now on the live member serves everything (not one more call waits on the black hole)
    assert served_by(gw, 4) == {b.port: 4}
