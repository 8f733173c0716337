"""Load balance channels through the real gateway: balancing, passive and active health,
backups, retries to other members, reloads (real backends, real sockets).

The balancers' own distributions are tested exactly in tests/fastpath/test_balancer.py; here
the gateway's use of them: which member real calls reach (each test backend answers with its
port in ``X-Backend``).
"""
from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter

import pytest

from tests.support.backend import Backend
from tests.support.client import request

LOCAL = "127.0.0.1"


@pytest.fixture
def backends():
    """Start test backends with ``backends(n)``; all are stopped at the end."""
    started = []

    def start(n):
        new = [Backend().start() for _ in range(n)]
        started.extend(new)
        return new

    yield start
    for b in started:
        b.stop()


def member(b, **fields):
    return {"host": LOCAL, "port": b if isinstance(b, int) else b.port, **fields}


def channel_doc(members, balance="wrr", health_check=None, retries=-1, groups=(), **api):
    channel = {"name": "pool", "port": 80, "balance": balance, "members": members,
               "member_groups": list(groups)}
    if health_check is not None:
        channel["health_check"] = health_check
    return {"version": 1, "groups": [{"name": "g"}], "channels": [channel],
            "apis": [{"name": "a", "group": "g", "method": "ANY", "path": "/", "match_mode": "prefix",
                      "backend": {"channel": "pool", "path": "/", "retries": retries, **api},
                      "environments": {"RELEASE": {}}}]}


def served_by(gw, n, path="/x", method="GET", **kwargs):
    """Counter of X-Backend (the member's port; None for a gateway error) over n calls."""
    seen = Counter()
    for _ in range(n):
        r = request(gw.port, method, path, **kwargs)
        seen[int(r.header("x-backend")) if r.status == 200 else r.status] += 1
    return seen


def wait_until(what, check, within=15.0):
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def proxied(b):
    """Requests a backend got from traffic (not from health checks)."""
    return [r for r in b.requests if not _is_check(r)]


def _is_check(record):
    return ("User-Agent", "tollgate-health-check") in record["headers"]


def member_states(gw) -> dict:
    status, body = gw.status("/status/channels")
    assert status == 200, body
    (channel,) = json.loads(body)["channels"]
    return {m["port"]: m["state"] for m in channel["members"]}


def closed_port():
    import socket
    s = socket.socket()
    s.bind((LOCAL, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------------------------------
# Balancing

def test_wrr_follows_the_weights_exactly(make_gateway, backends):
    a, b, c = backends(3)
    gw = make_gateway(channel_doc([member(a, weight=5), member(b, weight=2), member(c, weight=1),
                                   member(closed_port(), weight=0)]))
    assert served_by(gw, 80) == {a.port: 50, b.port: 20, c.port: 10}


def test_member_groups_split_the_traffic_by_group_then_member(make_gateway, backends):
    a, b, c = backends(3)
    gw = make_gateway(channel_doc(
        [member(a, weight=1, group="stable"), member(b, weight=1, group="stable"),
         member(c, weight=5, group="canary")],
        groups=[{"name": "stable", "weight": 3}, {"name": "canary", "weight": 1}]))
    # stable: 3/4 shared by two members, canary: 1/4 whatever its member's weight
    assert served_by(gw, 80) == {a.port: 30, b.port: 30, c.port: 20}


def test_disabled_members_get_no_traffic(make_gateway, backends):
    a, b = backends(2)
    gw = make_gateway(channel_doc([member(a), member(b, enabled=False)]))
    assert served_by(gw, 10) == {a.port: 10}


def test_source_hash_keeps_a_client_on_one_member(make_gateway, backends):
    members = backends(4)
    gw = make_gateway(channel_doc([member(b) for b in members], balance="source_hash"))
    where = {}
    for i in range(2, 42):
        source = f"127.0.{i}.{i}"
        got = served_by(gw, 3, source=source)
        assert len(got) == 1, f"{source} went to several members: {got}"
        where[source] = next(iter(got))
    assert len(set(where.values())) >= 3, "the clients were not spread over the members"


def test_uri_hash_keeps_a_path_on_one_member(make_gateway, backends):
    members = backends(4)
    gw = make_gateway(channel_doc([member(b) for b in members], balance="uri_hash"))
    where = {}
    for i in range(40):
        got = served_by(gw, 3, path=f"/item/{i}?page={i % 3}")
        got_without_query = served_by(gw, 1, path=f"/item/{i}")
        assert len(got) == 1 and got.keys() == got_without_query.keys(), got
        where[i] = next(iter(got))
    assert len(set(where.values())) >= 3


@pytest.mark.once
def test_wlc_sends_new_calls_to_the_member_with_fewer_in_flight(make_gateway, backends):
    a, b = backends(2)
    gw = make_gateway(channel_doc([member(a), member(b)], balance="wlc", timeout_ms=20000))
    slow = []
    for _ in range(3):      # three slow calls: wlc spreads them 2 / 1 (or 1 / 2)
        t = threading.Thread(target=request, args=(gw.port, "GET", "/slow?ms=3000"),
                             kwargs={"timeout": 10})
        t.start()
        slow.append(t)
    wait_until("the slow calls reach the backends",
               lambda: len(proxied(a)) + len(proxied(b)) == 3)
    busier = a if len(proxied(a)) == 2 else b
    idle = b if busier is a else a
    # in flight: 2 on one, 1 on the other; a new call goes to the one with 1 (the other
    # one would be at 3): then 2 / 2
    assert served_by(gw, 1, path="/slow?ms=1500", timeout=10) == {idle.port: 1}
    for t in slow:
        t.join()


# --------------------------------------------------------------------------------------------------
# Passive checks and retries

def test_a_member_killed_under_load_costs_no_get_call(make_gateway, backends):
    a, b = backends(2)
    gw = make_gateway(channel_doc([member(a), member(b)]))
    results = Counter()
    stop = threading.Event()

    def client():
        while not stop.is_set():
            results[request(gw.port, "GET", "/x").status] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until("traffic flows", lambda: sum(results.values()) > 100)
    a.stop()                                            # killed mid-traffic
    seen_at_kill = len(proxied(a))
    wait_until("traffic goes on", lambda: sum(results.values()) > 400)
    stop.set()
    for t in threads:
        t.join()
    assert results.keys() == {200}, results
    # ejected at once: the dead member got nothing more (its port refuses connections)
    assert len(proxied(a)) == seen_at_kill
    log = gw.log_path.read_text()
    assert log.count(f"channel pool member {LOCAL}:{a.port}: ejected by traffic") == 1, log
    gw.wait_metric("tollgate_channel_member_ejections_total", 1, channel="pool")
    assert member_states(gw) == {a.port: "unhealthy", b.port: "unknown"}


def test_a_post_is_not_sent_twice_but_the_next_call_avoids_the_dead_member(make_gateway, backends):
    (a,) = backends(1)
    dead = closed_port()
    gw = make_gateway(channel_doc([member(dead), member(a)]))
    # wrr picks the first member first: refused at connect -> nothing reached a backend, yet a
    # POST is not retried with retries -1 (only idempotent methods are)
    first = request(gw.port, "POST", "/x", body=b"pay")
    assert first.status == 502 and first.json()["error_code"] == "APIC.0202"
    # the dead member was ejected: every call now goes to the live one
    assert served_by(gw, 5, method="POST") == {a.port: 5}
    assert all(r["method"] == "POST" for r in proxied(a)) and len(proxied(a)) == 5


def test_retries_go_to_another_member(make_gateway, backends):
    (a,) = backends(1)
    dead = [closed_port() for _ in range(3)]
    gw = make_gateway(channel_doc([member(d) for d in dead] + [member(a)], retries=3))
    # a POST with retries 3: three refused members, then the live one (a refused connect
    # never reached a backend, so any method may be retried)
    assert served_by(gw, 1, method="POST") == {a.port: 1}
    assert len(proxied(a)) == 1


def test_retries_stop_when_no_other_member_is_left(make_gateway):
    gw = make_gateway(channel_doc([member(closed_port()), member(closed_port())], retries=5))
    r = request(gw.port, "GET", "/x")
    assert r.status == 502 and r.json()["error_code"] == "APIC.0202"
    # and at once from now on: every member is ejected
    assert served_by(gw, 3) == {502: 3}
    assert "no healthy member" in gw.log_path.read_text()


def test_a_backend_that_resets_is_ejected_after_repeated_failures(make_gateway, backends):
    a, b = backends(2)
    gw = make_gateway(channel_doc([member(a), member(b)], retries=0))
    # /reset: the backend closes without answering.  With retries 0 each such call is a 502,
    # and three in a row on a member eject it
    results = served_by(gw, 8, path="/reset")
    assert results == {502: 8}
    log = gw.log_path.read_text()
    assert log.count("ejected by traffic") == 2, log
    assert served_by(gw, 2) == {502: 2}         # (both ejected; back after the back-off)


# --------------------------------------------------------------------------------------------------
# Active checks, backups, all down, reloads

def check(**fields):
    """A quick active check: a TCP connect every 2 s, one result decides."""
    return {"protocol": "tcp", "interval_s": 2, "timeout_s": 1, "healthy_threshold": 1,
            "unhealthy_threshold": 1, **fields}


@pytest.mark.once
def test_backups_take_over_and_hand_back(make_gateway, backends):
    primary, backup = backends(2)
    gw = make_gateway(channel_doc([member(primary), member(backup, backup=True)],
                                  health_check=check()))
    assert served_by(gw, 5) == {primary.port: 5}
    primary.stop()
    assert served_by(gw, 5) == {backup.port: 5}     # (the first call: retried on the backup)
    primary.start()                                 # back: readmitted by the active check
    wait_until("the primary is readmitted", lambda: served_by(gw, 1) == {primary.port: 1})
    assert served_by(gw, 5) == {primary.port: 5}


@pytest.mark.once
def test_an_http_check_with_a_wrong_status_keeps_traffic_away(make_gateway, backends):
    a, b = backends(2)
    # the backends answer 200 where 201 is expected
    gw = make_gateway(channel_doc([member(a), member(b)], health_check=check(
        protocol="http", path="/health", http_codes="201,202")))
    wait_until("both members are unhealthy", lambda: served_by(gw, 1) == {502: 1})
    calls = len(proxied(a)) + len(proxied(b))
    # every member unhealthy: 502 at once, and no connection is even tried
    r = request(gw.port, "GET", "/x")
    assert r.status == 502 and r.json()["error_code"] == "APIC.0202"
    assert len(proxied(a)) + len(proxied(b)) == calls
    checks = [r for r in a.requests if _is_check(r)]
    assert checks and checks[0]["target"] == "/health" and checks[0]["method"] == "GET"


@pytest.mark.once
def test_a_reload_keeps_the_health_of_unchanged_members(make_gateway, backends):
    a, b, c = backends(3)
    document = channel_doc([member(a), member(b)],
                           health_check=check(healthy_threshold=10))
    gw = make_gateway(document)
    a.stop()
    wait_until("a is ejected", lambda: served_by(gw, 2) == {b.port: 2})
    a.start()       # up again, but 10 good checks away from being readmitted
    before = len(proxied(a))
    document["channels"][0]["members"].append(member(c))
    gw.write_config(document)
    gw.signal(signal.SIGHUP)
    wait_until("the reload is live", lambda: c.port in served_by(gw, 2))
    # a kept its state across the reload: still no traffic
    assert a.port not in served_by(gw, 20)
    assert len(proxied(a)) == before
