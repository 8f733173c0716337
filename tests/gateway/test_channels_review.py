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
    # the master holds the node's health table once; checking a document must not open more
    assert after == before == 1, (before, after)


# --------------------------------------------------------------------------------------------------
# A full health table

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
