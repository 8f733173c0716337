"""Active health checks of channel members, run by the real gateway's master against real
backends: tcp and http checks, thresholds, status ranges, members that refuse, hang, reset or
send garbage, members coming back, a worker's passive ejection, reloads, one check per node
whatever the number of workers, ``/status/channels`` and the metrics."""
from __future__ import annotations

import gc
import json
import os
import socket
import ssl
import time

import pytest

from gateway.channels.table import HealthTable, member_key
from tests.support.backend import Backend
from tests.support.certs import TestCA
from tests.support.gateway import free_port

# (the checker runs in the master, in Python whatever the fastpath form: once is enough)
pytestmark = [pytest.mark.slow, pytest.mark.once]


def document(channels):
    return {
        "version": 1,
        "environments": [{"name": "TEST"}],
        "groups": [{"name": "main"}],
        "channels": channels,
        "apis": [{"name": "mock", "group": "main", "method": "GET", "path": "/mock",
                  "backend": {"type": "mock", "mock": {"status": 200, "body": "ok"}},
                  "environments": {"RELEASE": {}}}],
    }


def channel(name, port, check=None, members=None):
    c = {"name": name, "port": port, "members": members or [{"host": "127.0.0.1"}]}
    if check is not None:
        c["health_check"] = check
    return c


def http_check(path, codes="200", **more):
    return {"protocol": "http", "path": path, "http_codes": codes, "healthy_threshold": 1,
            "unhealthy_threshold": 2, "interval_s": 2, "timeout_s": 1, **more}


def tcp_check(**more):
    return {"protocol": "tcp", "healthy_threshold": 2, "unhealthy_threshold": 2,
            "interval_s": 2, "timeout_s": 1, **more}


def channels_status(gw) -> dict:
    status, body = gw.status("/status/channels")
    assert status == 200, body
    return {c["name"]: c for c in json.loads(body)["channels"]}


def states(gw) -> dict:
    return {(c["name"], m["port"]): m["state"]
            for c in channels_status(gw).values() for m in c["members"]}


def wait_states(gw, expected: dict, timeout=20.0):
    """Wait (bounded) until every (channel, port) in ``expected`` has its state."""
    deadline = time.monotonic() + timeout
    current = None
    while time.monotonic() < deadline:
        current = states(gw)
        if all(current.get(k) == v for k, v in expected.items()):
            return current
        time.sleep(0.1)
    raise AssertionError(f"states {current}, expected {expected}\n{gw.log()[-3000:]}")


def transitions(gw, channel_name, port, change) -> int:
    return gw.log().count(f"channel {channel_name} member 127.0.0.1:{port}: {change}")


def health_table_of(gw) -> HealthTable:
    """The master's health table, opened through /proc (the test runs as the same user)."""
    fd_dir = f"/proc/{gw.proc.pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("/memfd:tollgate-health"):
            return HealthTable(os.open(f"{fd_dir}/{name}", os.O_RDWR))
    raise AssertionError("the master holds no health table")


def test_checks_decide_each_members_state(make_gateway, backend, raw):
    closed = free_port()

    def huge_head(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        conn.wait_closed(5)

    big = raw(huge_head)
    gw = make_gateway(document([
        channel("live", backend.port, tcp_check()),
        channel("closed", closed, tcp_check()),
        channel("ok", backend.port, http_check("/health")),
        channel("wrong", backend.port, http_check("/status?code=500")),
        channel("ranges", backend.port, http_check("/status?code=302", "200,300-399",
                                                   method="HEAD")),
        channel("outside", backend.port, http_check("/status?code=404", "200-299,300-399")),
        channel("hang", backend.port, http_check("/hang")),
        channel("garbage", backend.port, http_check("/garbage")),
        channel("reset", backend.port, http_check("/reset")),
        channel("big", big.port, http_check("/")),
        channel("plain", backend.port),
        channel("disabled", closed, tcp_check(),
                members=[{"host": "127.0.0.1", "enabled": False, "weight": 3, "backup": True}]),
    ]))
    wait_states(gw, {("live", backend.port): "healthy", ("closed", closed): "unhealthy",
                     ("ok", backend.port): "healthy", ("wrong", backend.port): "unhealthy",
                     ("ranges", backend.port): "healthy", ("outside", backend.port): "unhealthy",
                     ("hang", backend.port): "unhealthy", ("garbage", backend.port): "unhealthy",
                     ("reset", backend.port): "unhealthy", ("big", big.port): "unhealthy"})
    report = channels_status(gw)
    assert report["plain"]["health_check"] is False
    assert report["plain"]["members"][0]["state"] == "unknown"          # never checked
    assert report["disabled"]["members"] == [{"host": "127.0.0.1", "port": closed, "weight": 3,
                                              "backup": True, "enabled": False,
                                              "state": "unknown", "ejections": 0}]
    assert report["live"] == {"name": "live", "balance": "wrr", "health_check": True,
                              "members": [{"host": "127.0.0.1", "port": backend.port,
                                           "weight": 1, "backup": False, "enabled": True,
                                           "state": "healthy", "ejections": 0}]}
    # what the http checks sent
    probe = next(r for r in backend.requests if r["target"] == "/health")
    headers = {k.lower(): v for k, v in probe["headers"]}
    assert probe["method"] == "GET"
    assert headers["host"] == f"127.0.0.1:{backend.port}"
    assert headers["user-agent"] == "tollgate-health-check"
    assert headers["connection"] == "close"
    assert any(r["target"] == "/status?code=302" and r["method"] == "HEAD"
               for r in backend.requests)
    # the reasons, logged once per transition (not per probe)
    assert transitions(gw, "closed", closed, "unknown -> unhealthy (connect refused)") == 1
    assert transitions(gw, "wrong", backend.port, "unknown -> unhealthy (status 500)") == 1
    assert transitions(gw, "outside", backend.port, "unknown -> unhealthy (status 404)") == 1
    assert transitions(gw, "hang", backend.port, "unknown -> unhealthy (no answer in 1 s)") == 1
    assert transitions(gw, "garbage", backend.port,
                       "unknown -> unhealthy (not an HTTP answer)") == 1
    assert transitions(gw, "big", big.port,
                       "unknown -> unhealthy (answer head over 8192 bytes)") == 1
    assert transitions(gw, "live", backend.port, "unknown -> healthy") == 1
    # metrics: one state per member, probes by result
    assert gw.metric("tollgate_channel_member_health", channel="closed",
                     member=f"127.0.0.1:{closed}", state="unhealthy") == 1
    assert gw.metric("tollgate_channel_member_health", channel="closed",
                     member=f"127.0.0.1:{closed}", state="healthy") == 0
    assert gw.metric("tollgate_channel_member_health", channel="live",
                     member=f"127.0.0.1:{backend.port}", state="healthy") == 1
    assert gw.metric("tollgate_channel_member_health", channel="plain",
                     member=f"127.0.0.1:{backend.port}", state="unknown") == 1
    assert gw.metric("tollgate_health_checks_total", channel="live", result="success") >= 2
    assert gw.metric("tollgate_health_checks_total", channel="live", result="failure") == 0
    assert gw.metric("tollgate_health_checks_total", channel="closed", result="failure") >= 2
    assert gw.metric("tollgate_health_checks_total", channel="plain") == 0
    assert gw.metric("tollgate_health_checks_total", channel="disabled") == 0


def test_a_member_that_goes_away_and_comes_back(make_gateway):
    port = free_port()
    gw = make_gateway(document([channel("lots", port, tcp_check(healthy_threshold=1,
                                                                unhealthy_threshold=1))]))
    wait_states(gw, {("lots", port): "unhealthy"})
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)                       # connects complete in the backlog: a live port
    try:
        wait_states(gw, {("lots", port): "healthy"})
    finally:
        listener.close()
    wait_states(gw, {("lots", port): "unhealthy"})
    assert transitions(gw, "lots", port, "unknown -> unhealthy") == 1
    assert transitions(gw, "lots", port, "unhealthy -> healthy") == 1
    assert transitions(gw, "lots", port, "healthy -> unhealthy (connect refused)") == 1


def test_a_passive_ejection_is_adopted_until_probes_succeed_again(make_gateway, backend):
    gw = make_gateway(document([channel("lots", backend.port,
                                        http_check("/health", healthy_threshold=2))]))
    wait_states(gw, {("lots", backend.port): "healthy"})
    table = health_table_of(gw)
    try:
        slot = table.slot(member_key("lots", "127.0.0.1", backend.port), create=False)
        assert slot >= 0
        table.eject(slot, time.monotonic_ns() + 60_000_000_000)    # as a worker does
        report = channels_status(gw)["lots"]["members"][0]
        assert (report["state"], report["ejections"]) == ("unhealthy", 1)
        # the checker adopts it, then readmits it after healthy_threshold successful probes
        wait_states(gw, {("lots", backend.port): "healthy"})
        assert channels_status(gw)["lots"]["members"][0]["ejections"] == 0
        assert transitions(gw, "lots", backend.port,
                           "healthy -> unhealthy (ejected after failed calls)") == 1
        assert transitions(gw, "lots", backend.port, "unhealthy -> healthy") == 1
    finally:
        os.close(table.fd)
        table.close()


def test_a_reload_keeps_the_state_of_members_that_stay(make_gateway, backend):
    closed = free_port()
    other = free_port()
    check = http_check("/health", healthy_threshold=3, unhealthy_threshold=1)
    gw = make_gateway(document([
        channel("lots", backend.port, check, members=[
            {"host": "127.0.0.1"}, {"host": "127.0.0.1", "port": closed}]),
        channel("unchecked", closed, check),
        channel("paused", closed, check)]))
    wait_states(gw, {("lots", backend.port): "healthy", ("lots", closed): "unhealthy",
                     ("unchecked", closed): "unhealthy", ("paused", closed): "unhealthy"})
    before = json.loads(gw.status("/readyz")[1])["config_version"]
    gw.write_config(document([
        # (two failures to be unhealthy: the new member's first probe, at once, cannot decide
        # it before the states below are read)
        channel("lots", backend.port, {**check, "path": "/health2", "unhealthy_threshold": 2},
                members=[{"host": "127.0.0.1", "weight": 5}, {"host": "127.0.0.1", "port": other}]),
        channel("unchecked", closed),                                       # check removed
        channel("paused", closed, check, members=[{"host": "127.0.0.1", "enabled": False}])]))
    deadline = time.monotonic() + 10
    while json.loads(gw.status("/readyz")[1])["config_version"] == before:
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)
    # at once: the kept member is still healthy (3 probes would take 2 s to earn it again),
    # the removed one is gone, the new one starts unknown
    # (a channel without its check any more: its members' checked states are cleared; a
    # disabled member is not checked and keeps its state)
    now = states(gw)
    assert now == {("lots", backend.port): "healthy", ("lots", other): "unknown",
                   ("unchecked", closed): "unknown", ("paused", closed): "unhealthy"}, now
    assert channels_status(gw)["lots"]["members"][0]["weight"] == 5
    wait_states(gw, {("lots", other): "unhealthy"})
    # the kept member's checks go on with the new settings
    deadline = time.monotonic() + 10
    while not any(r["target"] == "/health2" for r in backend.requests):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert transitions(gw, "lots", backend.port, "unknown -> healthy") == 1
    assert states(gw)[("paused", closed)] == "unhealthy"
    assert states(gw)[("unchecked", closed)] == "unknown"
    assert gw.metric("tollgate_channel_member_health", channel="lots",
                     member=f"127.0.0.1:{closed}") == 0          # no series for a removed member


def test_two_workers_one_check_per_node(make_gateway, backend):
    gw = make_gateway(document([channel("lots", backend.port, http_check("/health"))]),
                      workers=2)
    assert json.loads(gw.status("/readyz")[1])["ready"] is True
    deadline = time.monotonic() + 20
    while gw.metric("tollgate_health_checks_total", channel="lots", result="success") < 3:
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.2)
    # every probe the backend saw was counted by the one checker of the node (the master):
    # probes arrive before they are counted, and at most one can be between the two
    seen_before = sum(r["target"] == "/health" for r in backend.requests)
    counted = gw.metric("tollgate_health_checks_total", channel="lots", result="success")
    seen_after = sum(r["target"] == "/health" for r in backend.requests)
    assert counted >= 3
    assert seen_before <= counted + 1, (seen_before, counted)
    assert counted <= seen_after, (counted, seen_after)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_https_checks_do_not_verify_the_members_certificate(make_gateway, backend, tmp_path):
    cert, key = TestCA(tmp_path / "pki").issue("member", ["member.test"])   # untrusted, other name
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tls = Backend(ssl_context=ctx).start()
    try:
        gw = make_gateway(document([
            channel("tls", tls.port, http_check("/health", protocol="https")),
            channel("plain", backend.port, http_check("/health", protocol="https"))]))
        wait_states(gw, {("tls", tls.port): "healthy", ("plain", backend.port): "unhealthy"})
        probe = next(r for r in tls.requests if r["target"] == "/health")
        assert dict((k.lower(), v) for k, v in probe["headers"])["host"] == \
            f"127.0.0.1:{tls.port}"
        assert transitions(gw, "plain", backend.port, "unknown -> unhealthy (TLS failure") == 1
    finally:
        tls.stop()
        gc.collect()
