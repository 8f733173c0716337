"""Cluster throttling budgets (gateway.policy.cluster) against a real redis-server: several
ClusterBudgets in one event loop stand for the workers of several gateways sharing one Redis.

Tests that do not need real time pass synthetic ``now_ns`` values (the budgets take the clock
from the caller), so windows change when the test says; Redis outages use the real clock, and
the waits they measure are only bounded with generous margins (correctness, not speed)."""
from __future__ import annotations

import asyncio
import base64
import logging
import time

import pytest

# ClusterBudgets is Python in both forms: the interpreted pass need not run these again
pytestmark = pytest.mark.once

from gateway.config.model import Redis
from gateway.metrics import RedisStats, WorkerMetrics, _redis_metrics
from gateway.policy.cluster import (ALLOWED, DENIED, NO_LEASE, ClusterBudgets, error_kind,
                                    redacted_url)
from tests.support.budget_load import drive
from tests.support.redis_server import RedisServer

S = 1_000_000_000
DAY = 86_400 * S
T0 = 1_700_000_000 * S            # a synthetic clock, at a window start for the periods used


def budgets(server_or_url, timeout_ms=200, **kw):
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.url
    return ClusterBudgets(Redis(url=url, timeout_ms=timeout_ms), **kw)


def redis_key(key: bytes, window: int, prefix="tollgate") -> str:
    return f"{prefix}:rl:{{{base64.urlsafe_b64encode(key).rstrip(b'=').decode()}}}:{window}"


async def until(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "tollgate.redis" and r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------------------------------
# Accuracy under overload (real time)

def test_sliding_budget_holds_across_workers_at_3x_overload(redis_server):
    limit, period = 200, S // 2
    result = asyncio.run(drive(redis_server.url, workers=4, limit=limit, period_ns=period,
                               seconds=3.0, overload=3.0))
    # the cluster-wide sliding estimate of allowed calls never exceeds the limit ...
    assert result["worst_estimate"] <= limit, result
    # ... and the budget is used: close to the limit in every full window
    assert result["full_window_mean"] >= 0.8 * limit, result
    assert result["allowed"] <= result["expected"] + limit, result
    assert result["denied"] > 0 and result["no_lease"] == 0, result


def test_fixed_windows_hold_across_workers_at_3x_overload(redis_server):
    limit, period = 150, S // 2
    result = asyncio.run(drive(redis_server.url, workers=3, limit=limit, period_ns=period,
                               seconds=2.5, overload=3.0, sliding=False))
    assert max(result["per_window"]) <= limit, result
    assert result["full_window_mean"] >= 0.9 * limit, result


# ------------------------------------------------------------------------------------------------
# Semantics (synthetic clock)

def test_quota_fixed_window_aligned_at_offset_is_shared_and_resets(redis_server):
    """A daily quota resetting at an offset (e.g. 00:00 in some zone): two gateways share it
    exactly; the next day it is full again; a call in the next window never sees the old one."""
    offset = 3 * 3600 * S
    start = (T0 // DAY) * DAY + offset     # a window start

    async def main():
        a, b = budgets(redis_server), budgets(redis_server)
        try:
            allowed = 0
            for i in range(60):
                for g in (a, b):
                    now = start + i * S
                    verdict, remaining, reset = await g.acquire(b"quota", 50, DAY, 1, now,
                                                                sliding=False, offset_ns=offset)
                    if verdict == ALLOWED:
                        allowed += 1
                    else:
                        assert verdict == DENIED
                        assert reset == DAY - i * S     # the quota resets at the next offset
            assert allowed == 50
            window = (start - offset) // DAY
            assert redis_server.get_int(redis_key(b"quota", window)) <= 50
            # the next day: full again
            nxt = start + DAY + 5 * S
            got = [(await g.acquire(b"quota", 50, DAY, 1, nxt, sliding=False,
                                    offset_ns=offset))[0] for g in (a, b) for _ in range(10)]
            assert got == [ALLOWED] * 20
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_sliding_estimate_carries_the_previous_window(redis_server):
    """Full previous window: at 25 % of the next one only 25 % of the limit is free."""
    async def main():
        a, b = budgets(redis_server), budgets(redis_server)
        try:
            for i in range(100):
                v, _, _ = await (a if i % 2 else b).acquire(b"k", 100, 10 * S, 1, T0 + i * 1000)
                assert v == ALLOWED
            assert (await a.acquire(b"k", 100, 10 * S, 1, T0 + S))[0] == DENIED
            later = T0 + 10 * S + 10 * S // 4        # window 2 at e = P/4: estimate 75 + cur
            allowed = 0
            for i in range(100):
                if (await (a if i % 2 else b).acquire(b"k", 100, 10 * S, 1, later + i))[0] \
                        == ALLOWED:
                    allowed += 1
            await asyncio.sleep(0.2)                 # let the returns of window 1 land
            assert allowed == 25
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_unused_tokens_are_returned_at_window_change(redis_server):
    async def main():
        b = budgets(redis_server)
        try:
            period, spent = 10 * S, 0
            # a brisk rate (1 call per 0.1 ms) makes the batches grow past single tokens
            for i in range(300):
                v, _, _ = await b.acquire(b"ret", 10_000, period, 1, T0 + i * 100_000)
                assert v == ALLOWED
                spent += 1
                await asyncio.sleep(0)
            assert await until(lambda: b.held(b"ret") is not None and not b._tasks)
            window, held, _ = b.held(b"ret")
            assert held > 0, "the lease holds more than was spent"
            granted = redis_server.get_int(redis_key(b"ret", window))
            assert granted == spent + held
            # the next window: the leftovers of the old one go back
            v, _, _ = await b.acquire(b"ret", 10_000, period, 1, T0 + period + S)
            assert v == ALLOWED
            assert await until(lambda: redis_server.get_int(redis_key(b"ret", window)) == spent)
            assert b.stats.returned == held
        finally:
            await b.close()

    asyncio.run(main())


def test_steady_traffic_never_waits_refills_and_next_window_prefetched(redis_server):
    """After the first lease, take() alone serves steady traffic: refills run in the background
    before the lease is empty, and the next window is leased before it starts."""
    async def main():
        b = budgets(redis_server)
        try:
            period = S                                  # horizon: 20 ms before the end
            assert (await b.acquire(b"steady", 100_000, period, 1, T0))[0] == ALLOWED
            no_lease = 0
            for i in range(1, 2000):                    # one call per ms over two windows
                now = T0 + i * 1_000_000
                v, _, _ = b.take(b"steady", 100_000, period, 1, now)
                if v == NO_LEASE:
                    no_lease += 1
                    await b.lease(b"steady", 100_000, period, 1, now)
                    v, _, _ = b.take(b"steady", 100_000, period, 1, now)
                assert v == ALLOWED
                if i == 999:                            # the last ms of window 0
                    assert await until(lambda: b.held(b"steady")[2] > 0), "next window leased"
                if b._tasks:                            # background fetches run (the
                    # simulated clock waits for Redis: how fast it answers is not the subject)
                    await asyncio.wait(set(b._tasks), timeout=5)
            assert no_lease == 0, no_lease
            assert b.stats.leases < 400, b.stats.leases
        finally:
            await b.close()

    asyncio.run(main())


def test_keys_held_are_bounded_and_the_evicted_give_their_tokens_back(redis_server):
    async def main():
        b = budgets(redis_server, max_keys=3)
        try:
            for i in range(6):
                key = b"caller-%d" % i
                for j in range(40):           # a brisk rate: batches above one call
                    assert (await b.acquire(key, 10_000, 10 * S, 1,
                                            T0 + j * 100_000))[0] == ALLOWED
                    await asyncio.sleep(0)
            assert await until(lambda: not b._tasks)
            assert len(b._keys) == 3
            assert [b.held(b"caller-%d" % i) is None for i in range(6)] == [True] * 3 + [False] * 3
            # the evicted callers' counts are what they spent: their leftovers went back
            window = T0 // (10 * S)
            assert await until(lambda: all(
                redis_server.get_int(redis_key(b"caller-%d" % i, window)) == 40
                for i in range(3)))
            assert b.stats.returned > 0
        finally:
            await b.close()

    asyncio.run(main())


def test_first_calls_of_a_window_share_one_round_trip(redis_server):
    async def main():
        b = budgets(redis_server)
        try:
            results = await asyncio.gather(*(b.acquire(b"burst", 1000, S, 1, T0 + 5)
                                             for _ in range(50)))
            assert [v for v, _, _ in results] == [ALLOWED] * 50
            assert b.stats.leases <= 3, b.stats.leases
        finally:
            await b.close()

    asyncio.run(main())


def test_refund_cost_above_limit_and_clock_stepping_back(redis_server):
    async def main():
        b = budgets(redis_server)
        try:
            # a call costing more than the limit never passes, and asks nothing of Redis
            v, remaining, reset = b.take(b"big", 10, S, 11, T0)
            assert (v, remaining) == (DENIED, 0) and 0 < reset <= S
            await b.lease(b"big", 10, S, 11, T0)
            assert b.stats.leases == 0 and b.held(b"big") is None
            # an unknown key: no lease yet; refunding it is harmless
            assert b.take(b"new", 10, S, 1, T0)[0] == NO_LEASE
            b.refund(b"new", 1)
            # all of a limit of 3, then refund one: it can be spent again, without Redis
            for _ in range(3):
                assert (await b.acquire(b"r", 3, 10 * S, 1, T0))[0] == ALLOWED
            assert (await b.acquire(b"r", 3, 10 * S, 1, T0 + 1))[0] == DENIED
            b.refund(b"r", 1)
            leases = b.stats.leases
            assert b.take(b"r", 3, 10 * S, 1, T0 + 2)[0] == ALLOWED
            assert b.stats.leases == leases
            # the clock steps back a window: the later window is kept
            window = b.held(b"r")[0]
            assert b.take(b"r", 3, 10 * S, 1, T0 - 10 * S)[0] == DENIED
            assert b.held(b"r")[0] == window
        finally:
            await b.close()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------
# Redis trouble (real clock)

def test_redis_paused_bounds_every_wait_then_recovers_by_itself(redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="tollgate.redis")

    async def main():
        b = budgets(redis_server, timeout_ms=100, probe_interval=0.2)
        try:
            now = time.time_ns()
            assert (await b.acquire(b"held", 100_000, 60 * S, 1, now))[0] == ALLOWED
            tokens_before = b.held(b"held")[1]
            redis_server.pause()
            waits = []
            for i in range(5):
                key = b"new-%d" % i
                assert b.take(key, 1000, 60 * S, 1, time.time_ns())[0] == NO_LEASE
                t = time.monotonic()
                await b.lease(key, 1000, 60 * S, 1, time.time_ns())
                waits.append(time.monotonic() - t)
                assert b.take(key, 1000, 60 * S, 1, time.time_ns())[0] == NO_LEASE
            assert max(waits) < 0.1 + 1.0, waits
            assert b.up is False and b.stats.up == 0
            assert b.stats.errors["timeout"] >= 1
            # tokens leased before the outage are still spent, without Redis
            if tokens_before:
                assert b.take(b"held", 100_000, 60 * S, 1, time.time_ns())[0] == ALLOWED
            await asyncio.sleep(0.6)    # probes fail meanwhile: still one warning
            assert b.up is False
            logged = warnings_of(caplog)
            assert len(logged) == 1 and "failed" in logged[0] and "timeout" in logged[0], logged
            redis_server.resume()
            assert await until(lambda: b.up, 5.0)
            assert (await b.acquire(b"new-0", 1000, 60 * S, 1, time.time_ns()))[0] == ALLOWED
            logged = warnings_of(caplog)
            assert len(logged) == 2 and "answers again" in logged[1], logged
        finally:
            await b.close()

    asyncio.run(main())


def test_redis_killed_and_restarted_on_the_same_port(redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="tollgate.redis")

    async def main():
        b = budgets(redis_server, timeout_ms=200, probe_interval=0.2)
        try:
            now = time.time_ns()
            assert (await b.acquire(b"a", 1000, 60 * S, 1, now))[0] == ALLOWED
            redis_server.kill()
            t = time.monotonic()
            await b.lease(b"b", 1000, 60 * S, 1, time.time_ns())
            assert time.monotonic() - t < 0.2 + 1.0
            assert b.up is False
            assert b.stats.errors["connection"] >= 1
            redis_server.start()           # same port, empty: scripts and counts gone
            assert await until(lambda: b.up, 5.0)
            v, _, _ = await b.acquire(b"b", 1000, 60 * S, 1, time.time_ns())
            assert v == ALLOWED
            window = time.time_ns() // (60 * S)
            assert redis_server.get_int(redis_key(b"b", window)) >= 1   # counted from zero
            assert len(warnings_of(caplog)) == 2
        finally:
            await b.close()

    asyncio.run(main())


def test_redis_down_at_start_then_up_and_password_never_logged(caplog):
    caplog.set_level(logging.WARNING, logger="tollgate.redis")
    server = RedisServer(password="s3cret-pw")   # not started yet

    async def main():
        b = budgets(server.url, timeout_ms=200, probe_interval=0.2)
        try:
            t = time.monotonic()
            v = await b.acquire(b"k", 10, S, 1, time.time_ns())
            assert v[0] == NO_LEASE and b.up is False     # the caller's fail mode decides
            assert time.monotonic() - t < 0.2 + 1.0
            server.start()
            assert await until(lambda: b.up, 5.0)
            assert (await b.acquire(b"k", 10, S, 1, time.time_ns()))[0] == ALLOWED
        finally:
            await b.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()
    logged = warnings_of(caplog)
    assert len(logged) == 2, logged
    assert all("s3cret-pw" not in line for line in logged)
    assert "redis://:***@127.0.0.1" in logged[0]


def test_scripts_flushed_are_loaded_again_without_an_outage(redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="tollgate.redis")

    async def main():
        b = budgets(redis_server)
        try:
            assert (await b.acquire(b"x", 10, S, 1, T0))[0] == ALLOWED
            assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
            assert (await b.acquire(b"y", 10, S, 1, T0))[0] == ALLOWED
            assert b.up and not any(b.stats.errors.values())
        finally:
            await b.close()

    asyncio.run(main())
    assert warnings_of(caplog) == []


def test_redis_that_refuses_writes_is_down(redis_server, caplog):
    """A full Redis (OOM) refuses the grant: down, one warning, and the probe (a write) keeps
    it down until it accepts writes again."""
    caplog.set_level(logging.WARNING, logger="tollgate.redis")

    async def main():
        b = budgets(redis_server, probe_interval=0.2)
        try:
            redis_server.command("SET", "filler", "x" * 100_000)
            redis_server.command("CONFIG", "SET", "maxmemory", "1")
            await b.lease(b"k", 10, S, 1, T0)
            assert b.up is False and b.stats.errors["oom"] == 1
            await asyncio.sleep(0.5)
            assert b.up is False
            redis_server.command("CONFIG", "SET", "maxmemory", "0")
            assert await until(lambda: b.up, 5.0)
            assert (await b.acquire(b"k", 10, S, 1, T0))[0] == ALLOWED
        finally:
            await b.close()

    asyncio.run(main())
    assert len(warnings_of(caplog)) == 2


# ------------------------------------------------------------------------------------------------
# Small parts

@pytest.mark.parametrize("url, shown", [
    ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://user:pw@h:6380/1", "rediss://user:***@h:6380/1"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
])
def test_redacted_url(url, shown):
    assert redacted_url(url) == shown


def test_error_kinds():
    from redis import exceptions as rexc
    assert error_kind(asyncio.TimeoutError()) == "timeout"
    assert error_kind(rexc.ReadOnlyError("READONLY")) == "readonly"
    assert error_kind(rexc.ResponseError("OOM command not allowed")) == "oom"
    assert error_kind(rexc.ConnectionError("refused")) == "connection"
    assert error_kind(ValueError()) == "other"


def test_redis_metrics_exported_and_merged():
    stats = RedisStats()
    metrics = WorkerMetrics("pure")
    assert metrics.redis is None
    metrics.redis = stats
    stats.observe("acquire", 0.0007)
    stats.leases, stats.granted, stats.returned = 2, 30, 4
    stats.error("timeout")
    stats.up = 0
    export = stats.export()
    from gateway.metrics import _fold_redis, _no_redis
    acc = _no_redis()
    _fold_redis(acc, export)
    _fold_redis(acc, export)
    families = {f.name: f for f in _redis_metrics(acc, [1, export["up"]])}
    assert families["tollgate_redis_up"].samples[0].value == 0
    tokens = {s.labels["direction"]: s.value for s in families["tollgate_redis_tokens"].samples}
    assert tokens == {"granted": 60, "returned": 8}
    errors = {s.labels["kind"]: s.value for s in families["tollgate_redis_errors"].samples}
    assert errors["timeout"] == 2 and errors["oom"] == 0
    assert list(_redis_metrics(_no_redis(), [])) == []     # Redis not configured: no families


def test_spend_is_take_for_the_common_case_only(redis_server):
    """spend() spends from a lease in its window and stops where take() must decide: a refill
    or prefetch due, another window, no lease; it never spends what was not granted."""
    async def main():
        b = budgets(redis_server)
        try:
            key = 0x1234_5678
            assert not b.spend(key, S, 1, T0)                       # no lease yet
            assert (await b.acquire(key, 1000, S, 1, T0))[0] == ALLOWED
            tokens = b.held(key)[0]
            spent = 0
            while b.spend(key, S, 1, T0 + 1_000):
                spent += 1
            assert spent <= tokens and b.held(key)[0] == tokens - spent
            assert not b.spend(key, S, 1, T0 + S)                   # the next window: take()
            assert not b.spend(key, 2 * S, 1, T0 + 2_000)           # another period: take()
        finally:
            await b.close()

    asyncio.run(main())
