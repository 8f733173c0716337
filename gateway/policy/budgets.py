"""Throttles and app quotas counted across a cluster: the stages' Redis mode.

With a ``redis`` section, :class:`ThrottleStage` and :class:`QuotaStage` hand their exchanges
to :class:`Budgets`, which counts on budgets leased from Redis (gateway/policy/cluster.py) with
the same semantics as the node's own counters.  A call whose key this worker already holds a
lease for is decided at once, without I/O; the first call of a key in a window waits for one
lease round trip (a :class:`~gateway.pipeline.Wait`, bounded by the Redis timeout).

When Redis is away (down, slow, restarting), ``fail_mode`` decides: ``open`` counts on the
node's own counters (each gateway then grants the whole limit by itself: N gateways, up to N
times the limit), ``closed`` refuses calls to throttled APIs and of apps with quotas with 503
``APIC.0601`` and ``Retry-After: 1``.  Either way the outage is logged once and the budgets come
back by themselves when Redis answers again.
"""
from __future__ import annotations

import asyncio
import time

from gateway.errors import LimitsUnavailable
from gateway.pipeline import Wait

from .cluster import ALLOWED, DENIED, NO_LEASE, ClusterBudgets
from .throttle import debug_line, quota_exhausted, throttled



def _unavailable():
    return LimitsUnavailable("Request throttling is unavailable, retry later",
                             "Redis is unreachable and fail_mode is closed",
                             lines=b"Retry-After: 1\r\n")


class Budgets:
    """One per worker, made in its event loop for the document's ``redis`` section."""

    def __init__(self, config, metrics=None):
        self.config = config
        self.cluster = ClusterBudgets(config, metrics)
        self.metrics = metrics
        self.fail_open = config.fail_mode == "open"
        # the backstop of a wait (every Redis call is bounded by timeout_ms already)
        self.wait_s = 4 * config.timeout_ms / 1000.0 + 1.0

    async def close(self):
        await self.cluster.close()

    # -- throttles --------------------------------------------------------------------------------
    def throttle(self, stage, ex):
        if not self.cluster.up:
            return self._fallback(stage, ex)
        dims = stage.dimensions(ex)
        if self._take(stage, ex, dims, time.time_ns()) is None:
            return None
        if not self.cluster.up:
            return self._fallback(stage, ex)
        return Wait(self._leased(stage, ex, dims), self.wait_s, _unavailable())

    def _take(self, stage, ex, dims, now):
        """Take one call in every dimension: None when all passed; the dimension with no
        lease yet (nothing kept taken); raises Throttled when one refuses."""
        cluster = self.cluster
        rule = stage.rule
        debug = stage.debug(ex)
        lines = b""
        taken = []
        for dimension, key, limit in dims:
            verdict, remaining, reset = cluster.take(key, limit, rule.period, 1, now, True, 0,
                                                     debug)
            if verdict == ALLOWED:
                taken.append(key)
                if debug:
                    lines += debug_line(dimension, remaining, limit, rule.time_text)
                continue
            for k in taken:
                cluster.refund(k, 1)
            if verdict == DENIED:
                if debug:
                    ex.resp_lines += lines + debug_line(dimension, 0, limit, rule.time_text)
                raise throttled(rule, dimension, limit, reset, self.metrics)
            return (dimension, key, limit)
        if lines:
            ex.resp_lines += lines
        return None

    async def _leased(self, stage, ex, dims):
        rule = stage.rule
        cluster = self.cluster
        # rounds until every dimension holds a lease or one is refused: each round either
        # grants something (to this call or to one that came with it) or finds the budget
        # exhausted (a 429 in _take), so it ends; bounded, before the wait's own backstop
        deadline = time.monotonic() + self.wait_s / 2
        while True:
            now = time.time_ns()
            await asyncio.gather(*(cluster.lease(key, limit, rule.period, 1, now)
                                   for _dimension, key, limit in dims))
            if not cluster.up:
                self._fallback(stage, ex)       # (raises when the call is refused)
                return
            missing = self._take(stage, ex, dims, time.time_ns())
            if missing is None:
                return
            if time.monotonic() >= deadline:
                # so many callers share what is left that this one never got a share in
                # time: the budget is as good as spent (counting it elsewhere would let more
                # than the limit through)
                dimension, _key, limit = missing
                raise throttled(rule, dimension, limit, 1_000_000_000, self.metrics)

    def _fallback(self, stage, ex):
        if self.metrics is not None:
            self.metrics.count("throttle_fallback", ("open" if self.fail_open else "closed",))
        if not self.fail_open:
            raise _unavailable()
        return stage.local(ex)

    # -- app quotas --------------------------------------------------------------------------------
    def quota(self, stage, rule, app, key):
        cluster = self.cluster
        if cluster.up:
            verdict, _remaining, reset = cluster.take(key, rule.limit, rule.period, 1,
                                                      time.time_ns(), False, rule.offset, False)
            if verdict == ALLOWED:
                return None
            if verdict == DENIED:
                raise quota_exhausted(rule, app, reset, self.metrics)
            if cluster.up:
                return Wait(self._quota_leased(stage, rule, app, key), self.wait_s,
                            _unavailable())
        return self._quota_fallback(stage, rule, app, key)

    async def _quota_leased(self, stage, rule, app, key):
        verdict, _remaining, reset = await self.cluster.acquire(
            key, rule.limit, rule.period, 1, time.time_ns(), False, rule.offset)
        if verdict == ALLOWED:
            return
        if verdict == DENIED:
            raise quota_exhausted(rule, app, reset, self.metrics)
        self._quota_fallback(stage, rule, app, key)

    def _quota_fallback(self, stage, rule, app, key):
        if self.metrics is not None:
            self.metrics.count("throttle_fallback", ("open" if self.fail_open else "closed",))
        if not self.fail_open:
            raise _unavailable()
        return stage.local(rule, app)
