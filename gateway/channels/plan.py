"""A load balance channel as a worker serves it: its members, the balancer that picks among
them, and what real traffic says about their health (passive checks).

One :class:`ChannelPlan` is compiled per (channel, TLS settings of the APIs using it) in each
snapshot; every API naming the channel shares it, so the balancer sees all of the channel's
traffic in this worker.  Each member is a :class:`Target` with its own keep-alive pool slot.

Health comes from two places, met in the node's :class:`~gateway.channels.table.HealthTable`:

* the **active checker** (one per node, in the master) writes each member's state there; a
  worker applies it to its balancer within a tick of it changing (:meth:`ChannelPlan.sync`);
* **passive checks**: a connection refused, or a connect that times out, ejects the member at
  once; resets, connections lost before an answer and answer timeouts eject it after
  ``SOFT_FAILURES`` in a row (one slow answer is not a dead server).  The worker stops using it
  at once and writes the ejection to the table, so the node's other workers follow within a
  tick.  With an active check, the member comes back only when the checker has seen
  ``healthy_threshold`` good probes; without one, after a back-off of ``BACKOFF_S`` seconds,
  doubled for each ejection in a row up to ``BACKOFF_MAX_S``: then it gets traffic again, and
  one more failure ejects it again (a success ends the series).

Member weights: a member's share is its weight among its group's members, times its group's
weight among the groups (members without a group form one group of weight 1).  So
``member_groups: [{name: stable, weight: 9}, {name: canary, weight: 1}]`` sends a tenth of the
calls to the canary group however many members each group has.
"""
from __future__ import annotations

import logging
import time
from math import gcd

from fastpath import balancer as _balancer

from .table import UNHEALTHY, member_key

log = logging.getLogger("tollgate.gateway")

SOFT_FAILURES = 3           # resets / lost / timed-out answers in a row that eject a member
BACKOFF_S = 5               # first passive back-off without an active check
BACKOFF_MAX_S = 60
_MAX_EXACT_WEIGHT = 1 << 40


class Target:
    """One backend server: where its requests go, and what this worker knows of it."""

    def __init__(self, index, host, port, key, idle, slot):
        self.index = index
        self.host = host
        self.port = port
        self.key = key                  # the upstream pool's key
        self.idle = idle                # its idle keep-alive connections (the pool's slot)
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.slot = slot                # its row in the node's health table (-1: none)
        self.failures = 0               # soft failures in a row (passive)
        self.probation = False          # readmitted after a back-off: a success ends the series
        # without a row (no table, or a full one): this worker's own passive state
        self.local_ejections = 0
        self.local_until = 0            # monotonic ns; 0: not ejected here


def effective_weights(channel) -> list[int]:
    """The members' weights with their groups' shares applied, as integers (exact when the
    numbers allow; rounded to a millionth of the channel's traffic otherwise).  Disabled
    members weigh 0."""
    groups = {g.name: g.weight for g in channel.member_groups}
    grouped = any(m.group is not None for m in channel.members)
    if not grouped:
        return [m.weight if m.enabled else 0 for m in channel.members]
    sums: dict = {}
    for m in channel.members:
        if m.enabled:
            sums[m.group] = sums.get(m.group, 0) + m.weight
    # share = group weight x member weight / (sum of the group's member weights): put every
    # group over a common denominator
    common = 1
    for total in sums.values():
        if total:
            common = common * total // gcd(common, total)
    weights = []
    for m in channel.members:
        total = sums.get(m.group, 0) if m.enabled else 0
        gw = groups.get(m.group, 1) if m.group is not None else 1
        weights.append(gw * m.weight * (common // total) if total else 0)
    if max(weights, default=0) > _MAX_EXACT_WEIGHT:
        whole = sum(weights)
        weights = [max(1, round(w * 1_000_000 / whole)) if w else 0 for w in weights]
    divisor = 0
    for w in weights:
        divisor = gcd(divisor, w)
    return [w // divisor for w in weights] if divisor > 1 else weights


class ChannelPlan:
    """A channel's members and balancer in one worker (see the module's docstring)."""

    def __init__(self, channel, pool=None, tls_context=None, server_name=None, table=None,
                 metrics=None):
        self.name = channel.name
        self.by_client = channel.balance == "source_hash"
        self.by_path = channel.balance == "uri_hash"
        self.active = channel.health_check is not None
        # (None when only checking a document: nothing is served, nothing is ejected)
        self.table = table
        self.metrics = metrics
        self.labels = (channel.name,)
        self.targets = []
        for i, m in enumerate(channel.members):
            port = m.port or channel.port
            key = (m.host, port, tls_context,
                   (server_name or m.host) if tls_context is not None else None)
            idle = pool.slot(key) if pool is not None else None
            slot = table.slot(member_key(channel.name, m.host, port)) if table is not None else -1
            self.targets.append(Target(i, m.host, port, key, idle, slot))
        weights = effective_weights(channel)
        self.balancer = _balancer.Balancer(
            _balancer.KINDS[channel.balance], weights, [m.backup for m in channel.members],
            [t.authority.encode() for t in self.targets])
        self.sync(time.monotonic_ns())

    # -- per request ------------------------------------------------------------------------
    def pick(self, ex, tried):
        """The member for this call (None: none can serve); ``tried``: members to avoid."""
        key = 0
        if self.by_client:
            key = _balancer.hash_bytes(ex.client_ip.encode())
        elif self.by_path:
            key = _balancer.hash_bytes(ex.path.encode("latin-1", "replace"))
        i = self.balancer.pick(key, tried)
        if tried is not None and self.metrics is not None:
            self.metrics.count("channel_retries", self.labels)
        if i < 0:
            if self.metrics is not None:
                self.metrics.count("channel_unavailable", self.labels)
            return None
        return self.targets[i]

    def release(self, target):
        self.balancer.release(target.index)

    def succeeded(self, target):
        if target.failures:
            target.failures = 0
        if target.probation:
            target.probation = False
            target.local_ejections = 0
            if target.slot >= 0:
                self.table.reset_ejections(target.slot)

    def failed(self, target, hard, why):
        """Real traffic to ``target`` failed: ``hard`` (refused, connect timeout) ejects at
        once, otherwise after SOFT_FAILURES in a row."""
        target.failures += 1
        if not hard and target.failures < SOFT_FAILURES and not target.probation:
            return
        target.failures = 0
        target.probation = False
        self.balancer.set_up(target.index, False)
        now = time.monotonic_ns()
        if target.slot < 0:
            # no row to share it through (or for the checker to readmit it): this worker
            # backs off alone
            target.local_ejections += 1
            backoff = min(BACKOFF_MAX_S, BACKOFF_S << min(target.local_ejections - 1, 8))
            target.local_until = now + backoff * 1_000_000_000
        else:
            ejections = self.table.eject_once(
                target.slot, now, 0 if self.active else BACKOFF_S * 1_000_000_000,
                BACKOFF_MAX_S * 1_000_000_000)
            if not ejections:
                return                  # (another worker, or the checker, said it already)
            backoff = 0 if self.active else min(BACKOFF_MAX_S,
                                                BACKOFF_S << min(ejections - 1, 16))
        if self.metrics is not None:
            self.metrics.count("member_ejections", self.labels)
        if self.active and target.slot >= 0:
            log.warning("channel %s member %s: ejected by traffic (%s); back when its health "
                        "check passes", self.name, target.authority, why)
        else:
            log.warning("channel %s member %s: ejected by traffic (%s) for %d s", self.name,
                        target.authority, why, backoff)

    # -- health from the node's table -------------------------------------------------------
    def sync(self, now_ns):
        """Apply the table's states to the balancer (and, without an active check, end the
        back-offs that are over)."""
        table = self.table
        balancer = self.balancer
        for t in self.targets:
            if t.slot < 0:
                if t.local_until and now_ns >= t.local_until:
                    t.local_until = 0
                    t.probation = True
                    balancer.set_up(t.index, True)
                continue
            up = table.state(t.slot) != UNHEALTHY
            if not up and not self.active:
                until = table.passive_until(t.slot)
                if until and now_ns >= until:
                    table.readmit(t.slot)
                    t.probation = True
                    up = True
            if up != balancer.is_up(t.index):
                balancer.set_up(t.index, up)
                if up:
                    t.failures = 0
                    # (back after a back-off another worker ended: on probation here too)
                    t.probation = not self.active
