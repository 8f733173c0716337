"""Request throttling (``throttles``, bound per API per environment) and app quotas.

A throttle limits calls per ``interval`` x ``unit`` in up to four dimensions, checked from the
narrowest to the widest so that a call refused for its IP or app does not spend the API's
budget: ``ip_limit`` (per client address), ``app_limit`` (per app caller), ``user_limit`` (per
IAM user), ``api_limit`` (all calls).  ``specials`` replace the app or user limit for one caller.
An exclusive policy (``shared: false``) counts each API in each environment apart; a shared one
counts every call of every API bound to it, in every environment, together.

Counting is the sliding window counter of fastpath/limiter.py on the node's shared table
(gateway/policy/counters.py), or, with ``redis`` configured, on budgets leased from Redis
(gateway/policy/cluster.py).  A refused call is answered 429 ``APIC.0308`` with
``Retry-After``; a call that passed one dimension and was refused by another gives the first
back, so refused calls count nowhere.  With ``X-Apig-Mode: debug`` the answer carries
``X-Apig-RateLimit-<dimension>: remain:N,limit:L,time:I unit`` for each dimension checked.
"""
from __future__ import annotations

import time

from fastpath import limiter

from gateway.errors import QuotaExhausted, Throttled

UNIT_NS = {"second": 1_000_000_000, "minute": 60_000_000_000, "hour": 3_600_000_000_000,
           "day": 86_400_000_000_000}

_hash_key = limiter.hash_key
_DENIED = limiter.DENIED
_UNTRACKED = limiter.UNTRACKED
_monotonic_ns = time.monotonic_ns
_time_ns = time.time_ns


def retry_after_line(wait_ns: int) -> bytes:
    seconds = max(1, -(-wait_ns // 1_000_000_000))
    return b"Retry-After: %d\r\n" % seconds


def _seed(*parts: str) -> int:
    """The hash of a key's fixed part: every call continues it with the caller's part."""
    return _hash_key("\0".join(parts).encode() + b"\0")


class ThrottleRule:
    """One throttle policy as bound to one API in one environment, resolved at load."""


    def __init__(self, policy, api_name: str, env: str):
        self.name = policy.name
        self.period = policy.interval * UNIT_NS[policy.unit]
        self.time_text = f"{policy.interval} {policy.unit}"
        self.api_limit = policy.api_limit
        self.ip_limit = policy.ip_limit or 0
        self.app_limit = policy.app_limit or 0
        self.user_limit = policy.user_limit or 0
        self.app_specials = {s.app: s.limit for s in policy.specials if s.app is not None}
        self.user_specials = {s.user: s.limit for s in policy.specials if s.user is not None}
        # shared: one budget for every API bound to the policy; exclusive: one per API and
        # environment.  The period is part of the key: a reload changing it starts afresh.
        scope = (("throttle", policy.name, str(self.period)) if policy.shared else
                 ("throttle", policy.name, str(self.period), api_name, env))
        self.scope = scope
        self.api_key = _seed(*scope, "api")
        self.ip_seed = _seed(*scope, "ip")
        self.app_seed = _seed(*scope, "app")
        self.user_seed = _seed(*scope, "user")
        self.api_dimension = ("api", self.api_key, self.api_limit)   # (cluster mode)


class ThrottleStage:
    """The stage of one (API, environment) bound to a throttle."""


    def __init__(self, rule: ThrottleRule, counters, metrics, budgets=None):
        self.rule = rule
        # callers' keys and the API's own key in separate tables: a flood of new callers can
        # fill the first, never the second (None: compiled for checking only)
        self.table = counters.throttles if counters is not None else None
        self.api_table = counters.api_throttles if counters is not None else None
        self.metrics = metrics
        self.budgets = budgets          # gateway.policy.budgets.Budgets (Redis), or None
        self.cluster = budgets.cluster if budgets is not None else None
        # the worker's leases by key (its ClusterBudgets' own dict, for the common case)
        self.leases = budgets.cluster._keys if budgets is not None else None

    def __call__(self, ex):
        if self.budgets is None:
            return self.local(ex)
        # cluster mode: the common case spends from this worker's leases (Lease.spend, in C
        # when compiled); anything else (no lease, a refill due, a refusal, debug headers,
        # Redis away) goes the whole way, through Budgets
        if self.cluster._up and ex.head.get(b"x-apig-mode") is None:
            rule = self.rule
            now = _time_ns()
            period = rule.period
            caller = ex.caller
            ip_key = app_key = user_key = 0
            if rule.ip_limit:
                ip_key = _hash_key(ex.client_ip.encode(), rule.ip_seed)
            if caller is not None:
                if rule.app_limit and caller.app:
                    app_key = _hash_key(caller.app.encode(), rule.app_seed)
                if rule.user_limit and caller.user:
                    user_key = _hash_key(caller.user.encode(), rule.user_seed)
            spent = 0
            if ip_key == 0 or self._spend(ip_key, period, now):
                spent = 1
                if app_key == 0 or self._spend(app_key, period, now):
                    spent = 2
                    if user_key == 0 or self._spend(user_key, period, now):
                        spent = 3
                        if self._spend(rule.api_key, period, now):
                            return None
            cluster = self.cluster          # (given back: decided anew below)
            if spent >= 1 and ip_key:
                cluster.refund(ip_key, 1)
            if spent >= 2 and app_key:
                cluster.refund(app_key, 1)
            if spent >= 3 and user_key:
                cluster.refund(user_key, 1)
        return self.budgets.throttle(self, ex)

    def _spend(self, key, period, now):
        lease = self.leases.get(key)
        return lease is not None and lease.spend(period, 1, now)

    def debug(self, ex):
        """Does the request ask for the X-Apig-RateLimit-* headers?"""
        value = ex.head.get(b"x-apig-mode")
        return value is not None and value.lower() == b"debug"

    def dimensions(self, ex):
        """[(dimension, key, limit)] of this call, narrowest first (cluster mode; a key is
        the 64-bit hash the node's table uses too)."""
        rule = self.rule
        caller = ex.caller
        out = []
        if rule.ip_limit:
            out.append(("ip", _hash_key(ex.client_ip.encode(), rule.ip_seed), rule.ip_limit))
        if caller is not None:
            if rule.app_limit and caller.app:
                out.append(("app", _hash_key(caller.app.encode(), rule.app_seed),
                            rule.app_specials.get(caller.app, rule.app_limit)))
            if rule.user_limit and caller.user:
                out.append(("user", _hash_key(caller.user.encode(), rule.user_seed),
                            rule.user_specials.get(caller.user, rule.user_limit)))
        out.append(rule.api_dimension)
        return out

    def local(self, ex):
        """Count the call on the node's own table."""
        rule = self.rule
        table = self.table
        now = _monotonic_ns()
        period = rule.period
        mode = ex.head.get(b"x-apig-mode")
        debug = mode is not None and mode.lower() == b"debug"
        ip_key = app_key = user_key = 0
        caller = ex.caller
        # narrowest first: a call refused for its address or caller leaves the API's budget
        if rule.ip_limit:
            ip_key = _hash_key(ex.client_ip.encode(), rule.ip_seed)
            left = table.take(ip_key, rule.ip_limit, period, 1, now, True)
            if debug:
                self._debug(ex, "ip", left, rule.ip_limit)
            if left < 0:
                self._settle(left, ip_key, "ip", rule.ip_limit, now, 0, 0, 0)
        if caller is not None:
            if rule.app_limit and caller.app:
                limit = rule.app_specials.get(caller.app, rule.app_limit)
                app_key = _hash_key(caller.app.encode(), rule.app_seed)
                left = table.take(app_key, limit, period, 1, now, True)
                if debug:
                    self._debug(ex, "app", left, limit)
                if left < 0:
                    self._settle(left, app_key, "app", limit, now, ip_key, 0, 0)
            if rule.user_limit and caller.user:
                limit = rule.user_specials.get(caller.user, rule.user_limit)
                user_key = _hash_key(caller.user.encode(), rule.user_seed)
                left = table.take(user_key, limit, period, 1, now, True)
                if debug:
                    self._debug(ex, "user", left, limit)
                if left < 0:
                    self._settle(left, user_key, "user", limit, now, ip_key, app_key, 0)
        left = self.api_table.take(rule.api_key, rule.api_limit, period, 1, now, True)
        if debug:
            self._debug(ex, "api", left, rule.api_limit)
        if left < 0:
            self._settle(left, rule.api_key, "api", rule.api_limit, now, ip_key, app_key,
                         user_key)
        return None

    def _settle(self, left, key, dimension, limit, now, *taken):
        """A dimension did not count the call: UNTRACKED lets it pass (and is counted);
        DENIED gives back what the narrower dimensions took and refuses it."""
        rule = self.rule
        if left == _UNTRACKED:
            if self.metrics is not None:
                self.metrics.count("throttle_untracked", (rule.name,))
            return
        for taken_key in taken:
            if taken_key:
                self.table.refund(taken_key, rule.period, 1, now)
        table = self.api_table if dimension == "api" else self.table
        wait = table.wait_ns(key, limit, rule.period, 1, now, True)
        raise throttled(rule, dimension, limit, wait, self.metrics)

    def _debug(self, ex, dimension, left, limit):
        ex.resp_lines += debug_line(dimension, left, limit, self.rule.time_text)


def debug_line(dimension, left, limit, time_text) -> bytes:
    return (f"X-Apig-RateLimit-{dimension}: remain:{max(left, 0)},limit:{limit},"
            f"time:{time_text}\r\n").encode()


def throttled(rule, dimension, limit, wait_ns, metrics) -> Throttled:
    if metrics is not None:
        metrics.count("throttled", (rule.name, dimension))
    return Throttled(
        f"The throttling threshold has been reached: policy {dimension} over ratelimit, "
        f"limit:{limit},time:{rule.time_text}",
        f"throttle {rule.name}: {dimension} limit {limit} per {rule.time_text} reached",
        lines=retry_after_line(wait_ns))


# -- app quotas -----------------------------------------------------------------------------------

class QuotaRule:
    """An app quota policy: ``limit`` calls per ``interval`` x ``unit`` per app, in fixed windows
    aligned at ``reset_time`` (UTC) -- a daily quota resetting at 00:00 UTC counts calendar days."""


    def __init__(self, quota):
        self.name = quota.name
        self.limit = quota.limit
        self.period = quota.interval * UNIT_NS[quota.unit]
        hours, minutes = (int(x) for x in quota.reset_time.split(":"))
        # windows start at reset_time on day 0 of the epoch, then every period; the shift is
        # taken modulo the period, so the table's expiry stays within the window's life
        self.offset = ((hours * 60 + minutes) * 60_000_000_000) % self.period
        self.time_text = f"{quota.interval} {quota.unit}"
        self.seed = _seed("quota", quota.name, str(self.period), str(self.offset))


class QuotaStage:
    """Counts an app caller's call against its app's quota (after authentication: the app is
    known; APIs whose callers are not apps are not counted).  ``quotas``: app name -> QuotaRule."""


    def __init__(self, quotas: dict, counters, metrics, budgets=None):
        self.quotas = quotas
        self.table = counters.quotas if counters is not None else None
        self.metrics = metrics
        self.budgets = budgets

    def __call__(self, ex):
        caller = ex.caller
        if caller is None or not caller.app:
            return None
        rule = self.quotas.get(caller.app)
        if rule is None:
            return None
        budgets = self.budgets
        if budgets is not None:
            key = _hash_key(caller.app.encode(), rule.seed)
            return budgets.quota(self, rule, caller.app, key)
        return self.local(rule, caller.app)

    def local(self, rule, app):
        """Count the call on the node's own table."""
        key = _hash_key(app.encode(), rule.seed)
        now = time.time_ns() - rule.offset
        left = self.table.take(key, rule.limit, rule.period, 1, now, False)
        if left == _DENIED:
            raise quota_exhausted(rule, app, rule.period - now % rule.period, self.metrics)
        return None


def quota_exhausted(rule, app, wait_ns, metrics) -> QuotaExhausted:
    if metrics is not None:
        metrics.count("quota_exhausted", (rule.name,))
    return QuotaExhausted(
        f"The app's quota is used up: limit:{rule.limit},time:{rule.time_text}",
        f"app {app}: quota {rule.name} ({rule.limit} per {rule.time_text}) used up",
        lines=retry_after_line(wait_ns))
