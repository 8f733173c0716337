"""Throttles and quotas across gateways through a real redis-server: two gateway processes
sharing one budget, Redis killed, paused and restarted under traffic in both fail modes (no
request hangs past the Redis timeout), quotas outliving a gateway restart."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.gateway.test_app_auth import APPS, signed_request
from tests.gateway.test_throttle import api, doc
from tests.support.client import request

HOUR = {"interval": 1, "unit": "hour"}


def cluster_doc(redis, throttles, apis, fail_mode="open", **extra):
    return doc(throttles, apis, redis={"url": redis.url, "timeout_ms": 200,
                                       "fail_mode": fail_mode}, **extra)


def timed(port, path, **kwargs):
    start = time.monotonic()
    r = request(port, "GET", path, timeout=10, **kwargs)
    return r, time.monotonic() - start


@pytest.mark.once       # (Redis leases: the same code in both forms)
def test_two_gateways_share_one_budget(make_gateway, redis_server):
    """Two gateways of two workers each, one Redis: together they let the limit through, not
    more (each alone would grant it all)."""
    document = cluster_doc(redis_server, [{"name": "t", **HOUR, "api_limit": 120}],
                           [api("a", "/a", "t")])
    gateways = [make_gateway(document, workers=2), make_gateway(document, workers=2)]
    passed, others = [0], []
    lock = threading.Lock()

    def drive(gw):
        for _ in range(75):             # new connections: both workers of each get calls
            status = request(gw.port, "GET", "/a").status
            with lock:
                if status == 200:
                    passed[0] += 1
                elif status != 429:
                    others.append(status)

    threads = [threading.Thread(target=drive, args=(gw,)) for gw in gateways for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert others == []
    # never more than the limit; leases still held by a worker are the only shortfall
    assert 110 <= passed[0] <= 120, passed[0]
    # the count lives in Redis: what the workers leased is there
    assert gateways[0].metric("tollgate_redis_up") == 1


@pytest.mark.once
@pytest.mark.parametrize("fail_mode", ["open", "closed"])
def test_redis_paused_never_hangs_a_request(make_gateway, redis_server, fail_mode):
    # (an ip_limit: every new client address needs a lease, so calls do reach Redis)
    document = cluster_doc(redis_server, [{"name": "t", **HOUR, "api_limit": 1000,
                                           "ip_limit": 100}],
                           [api("a", "/a", "t"), api("free", "/free")], fail_mode=fail_mode)
    gw = make_gateway(document)
    assert request(gw.port, "GET", "/a").status == 200
    redis_server.pause()
    try:
        # new callers (no lease held): each call is answered within the Redis timeout's bound
        results = [timed(gw.port, "/a", source=f"127.0.0.{i}") for i in range(2, 6)]
        for r, took in results:
            assert took < 0.2 * 3 + 1.0 + 1.0, took        # the wait's bound, with slack
        statuses = [r.status for r, _ in results]
        if fail_mode == "open":
            assert statuses == [200] * 4
        else:
            assert statuses == [503] * 4
        assert request(gw.port, "GET", "/free").status == 200      # not throttled: untouched
        gw.wait_metric("tollgate_redis_up", 0, timeout=10)
    finally:
        redis_server.resume()
    gw.wait_metric("tollgate_redis_up", 1, timeout=10)
    assert request(gw.port, "GET", "/a").status == 200
    assert gw.log().count("Redis") >= 1
    # one warning per incident, not one per request
    assert gw.log().count("unreachable") <= 2, gw.log()


def test_fail_closed_refuses_with_503_while_redis_is_down(make_gateway, redis_server):
    document = cluster_doc(redis_server, [{"name": "t", "interval": 1, "unit": "second",
                                           "api_limit": 1000, "ip_limit": 100}],
                           [api("a", "/a", "t"), api("free", "/free")], fail_mode="closed")
    gw = make_gateway(document)
    redis_server.kill()
    statuses = set()
    deadline = time.monotonic() + 10
    while 503 not in statuses:
        assert time.monotonic() < deadline, statuses
        r, took = timed(gw.port, "/a", source="127.0.0.9")
        assert took < 3.0
        statuses.add(r.status)
    r = request(gw.port, "GET", "/a", source="127.0.0.10")
    assert r.status == 503
    assert r.json()["error_code"] == "APIC.0601"
    assert r.header("retry-after") == "1"
    assert request(gw.port, "GET", "/free").status == 200
    redis_server.restart()
    deadline = time.monotonic() + 15
    while request(gw.port, "GET", "/a", source="127.0.0.11").status != 200:
        assert time.monotonic() < deadline, "did not recover after Redis came back"
        time.sleep(0.2)
    assert gw.metric("tollgate_throttle_local_fallback_total", mode="closed") >= 1


def test_fail_open_counts_locally_then_shares_again(make_gateway, redis_server):
    document = cluster_doc(redis_server, [{"name": "t", **HOUR, "api_limit": 5}],
                           [api("a", "/a", "t")])
    gw = make_gateway(document)
    redis_server.kill()
    # local limits: the node's own budget of 5
    answers = [request(gw.port, "GET", "/a", timeout=10) for _ in range(7)]
    got = [r.status for r in answers]
    assert got.count(200) == 5 and got[-1] == 429, (got, answers[0].body, gw.log())
    gw.wait_metric("tollgate_redis_up", 0, timeout=5)     # (the outage as the metrics saw it)
    redis_server.restart()
    gw.wait_metric("tollgate_redis_up", 1, timeout=15)
    # shared again: Redis restarted empty, so the budget is whole again (a stated bound)
    got = [request(gw.port, "GET", "/a").status for _ in range(7)]
    assert got.count(200) == 5, (got, gw.log())


def test_an_app_quota_outlives_a_gateway_restart(make_gateway, redis_server):
    apps = [dict(APPS[0], quota="small"), APPS[1]]
    document = cluster_doc(redis_server, [], [api("a", "/echo/x", auth="app")], apps=apps,
                           app_quotas=[{"name": "small", "limit": 3, "unit": "day"}])
    gw = make_gateway(document)
    assert [signed_request(gw.port).status for _ in range(2)] == [200, 200]
    gw.stop()
    gw2 = make_gateway(document)
    got = [signed_request(gw2.port).status for _ in range(2)]
    assert got == [200, 405], got


def test_a_burst_of_new_callers_is_not_refused_while_redis_has_budget(make_gateway,
                                                                    redis_server):
    """Forty calls arrive at once for a key no worker holds a lease of: the first grants are
    spent by the first of them, yet none is refused (the budget is far from spent)."""
    document = cluster_doc(redis_server, [{"name": "t", "interval": 1, "unit": "second",
                                           "api_limit": 1_000_000}], [api("a", "/a", "t")])
    gw = make_gateway(document)
    assert _burst(gw.port, 40) == [200] * 40


def _burst(port, n, headers=lambda i: b""):
    """n connections opened first, then one request sent on each at once; their statuses."""
    conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    time.sleep(0.2)                             # (all accepted: the requests come together)
    for i, s in enumerate(conns):
        s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n" + headers(i) + b"\r\n")
    statuses = []
    for s in conns:
        data = b""
        while b"\r\n" not in data:
            data += s.recv(4096)
        statuses.append(int(data.split(b" ", 2)[1]))
        s.close()
    return statuses


def test_a_burst_over_a_small_limit_lets_exactly_the_limit_through(make_gateway, redis_server):
    """Forty calls at once for a limit of 10: the leases go round the callers until Redis has
    nothing left, and no call is counted anywhere else (exactly 10 pass, then none)."""
    document = cluster_doc(redis_server, [{"name": "t", **HOUR, "api_limit": 10}],
                           [api("a", "/a", "t")])
    gw = make_gateway(document)
    first = _burst(gw.port, 40)
    assert first.count(200) == 10 and first.count(429) == 30, first
    assert [request(gw.port, "GET", "/a").status for _ in range(5)] == [429] * 5


@pytest.mark.once
def test_a_burst_of_new_client_addresses_does_not_take_redis_for_down(make_gateway,
                                                                     redis_server):
    """Three hundred new client addresses at once, each needing its own lease, with the
    default 50 ms Redis timeout and fail_mode closed: they queue for Redis round trips (the
    worker's own load delays reading replies); none is refused as if Redis were away."""
    document = doc([{"name": "t", **HOUR, "api_limit": 1_000_000, "ip_limit": 100}],
                   [api("a", "/a", "t")], trusted_proxies=["127.0.0.1"],
                   redis={"url": redis_server.url, "fail_mode": "closed"})
    gw = make_gateway(document)
    statuses = _burst(gw.port, 300,
                      lambda i: b"X-Forwarded-For: 10.1.%d.%d\r\n" % (i // 200, i % 200))
    assert statuses == [200] * 300, {s: statuses.count(s) for s in set(statuses)}
    assert gw.metric("tollgate_redis_up") == 1


@pytest.mark.once
def test_a_client_that_waited_out_retry_after_gets_the_clusters_answer(make_gateway,
                                                                       redis_server):
    document = cluster_doc(redis_server, [{"name": "t", "interval": 2, "unit": "second",
                                           "api_limit": 4}], [api("a", "/a", "t")])
    gw = make_gateway(document, workers=2)
    honoured = 0
    for _ in range(6):
        r = request(gw.port, "GET", "/a")
        while r.status == 200:
            r = request(gw.port, "GET", "/a")
        assert r.status == 429
        time.sleep(int(r.header("retry-after")))
        honoured += request(gw.port, "GET", "/a").status == 200
    assert honoured == 6
