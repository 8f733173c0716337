"""The active health checker: probes every enabled member of every channel with a health check,
once per node, in the master's event loop, and writes the verdicts to the node's
:class:`~gateway.channels.table.HealthTable` (workers see them within a few tenths of a second).

* One task per (channel, member).  A member's first probe runs at once (after a small random
  jitter, so a large document does not probe everything in the same millisecond), then one every
  ``interval_s``.  A probe is bounded in every way: ``timeout_s`` for all of it (connect, TLS,
  request, answer head), at most :data:`MAX_HEAD` bytes of answer head; a peer that refuses,
  never answers, resets, closes early or sends something that is not HTTP is a failure.
* ``healthy_threshold`` consecutive successes make a member healthy, ``unhealthy_threshold``
  consecutive failures unhealthy; it starts unknown (which serves).  Only transitions are
  logged, never single probes.
* A worker that ejected a member after failed calls (state UNHEALTHY in the table while the
  checker thought it healthy or unknown) wins: the checker adopts it, and the member is healthy
  again only after ``healthy_threshold`` successful probes.
* :meth:`HealthChecker.apply` takes the document at start and after every accepted reload:
  members whose (channel, host, port) stay keep their task, state and counts (with the new
  settings); removed ones stop and their slots are freed; new ones start.
"""
from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time

import httptools
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .table import HEALTHY, STATE_NAMES, UNHEALTHY, UNKNOWN, HealthTable, member_key

log = logging.getLogger("tollgate.gateway")

MAX_HEAD = 8 * 1024
USER_AGENT = b"tollgate-health-check"


def parse_codes(text: str) -> tuple[tuple[int, int], ...]:
    """``"200,300-399"`` -> ((200, 200), (300, 399)) (the document is validated already)."""
    ranges = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        ranges.append((int(lo), int(hi or lo)))
    return tuple(ranges)


_CONTEXT: ssl.SSLContext | None = None


def _client_context() -> ssl.SSLContext:
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    # A health check does not verify the member's certificate: members are often addressed by
    # IP, and whether the member answers is what is checked (the proxy's calls verify).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _CONTEXT = ctx
    return ctx


class ProbeFailed(Exception):
    """Why a probe failed, in words for the log."""


class _Head:
    """httptools callbacks: the answer's status once its head is complete."""

    def __init__(self):
        self.done = False

    def on_headers_complete(self):
        self.done = True


def _host_header(host: str, port: int) -> bytes:
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()


class MemberCheck:
    """One member's probing task and the checker's view of it."""

    def __init__(self, checker, channel, member, address, slot):
        self.checker = checker
        self.slot = slot
        self.host, self.port = address
        # a member checked before (enabled again, or its channel got its check back) starts
        # from the node's view of it
        self.view = checker.table.state(slot) if slot >= 0 else UNKNOWN
        self.successes = 0
        self.failures = 0
        self.task = None
        self.configure(channel, member)

    def configure(self, channel, member):
        self.channel = channel.name
        self.member = member
        self.hc = channel.health_check
        self.probe_port = self.hc.port or self.port
        self.codes = parse_codes(self.hc.http_codes)

    @property
    def label(self):
        return f"{self.host}:{self.port}"

    def start(self, loop):
        self.task = loop.create_task(self.run())

    def stop(self):
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def run(self):
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.uniform(0.0, min(0.2, self.hc.interval_s / 10)))
        while True:
            started = loop.time()
            try:
                async with asyncio.timeout(self.hc.timeout_s):
                    await self.probe()
                ok, reason = True, ""
            except ProbeFailed as exc:
                ok, reason = False, str(exc)
            except TimeoutError:
                ok, reason = False, f"no answer in {self.hc.timeout_s} s"
            except ssl.SSLError as exc:
                ok, reason = False, f"TLS failure ({exc.reason or exc})"
            except ConnectionRefusedError:
                ok, reason = False, "connect refused"
            except ConnectionResetError:
                ok, reason = False, "connection reset"
            except OSError as exc:
                ok, reason = False, exc.strerror or str(exc) or type(exc).__name__
            except Exception as exc:       # (a probe must never end the member's checks)
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            self.record(ok, reason)
            await asyncio.sleep(max(0.0, self.hc.interval_s - (loop.time() - started)))

    async def probe(self):
        hc = self.hc
        tls = hc.protocol == "https"
        reader, writer = await asyncio.open_connection(
            self.host, self.probe_port, ssl=_client_context() if tls else None,
            server_hostname=self.host if tls else None, limit=MAX_HEAD)
        try:
            if hc.protocol == "tcp":
                return
            writer.write(b"%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                         b"User-Agent: %s\r\nAccept: */*\r\n\r\n"
                         % (hc.method.encode(), hc.path.encode(),
                            _host_header(self.host, self.probe_port), USER_AGENT))
            head = _Head()
            parser = httptools.HttpResponseParser(head)
            received = 0
            while not head.done:
                data = await reader.read(MAX_HEAD - received)
                if not data:
                    raise ProbeFailed("closed without an answer" if not received
                                      else "closed in the answer head")
                received += len(data)
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    pass                        # a 101: its head is complete
                except httptools.HttpParserError:
                    raise ProbeFailed("not an HTTP answer") from None
                if not head.done and received >= MAX_HEAD:
                    raise ProbeFailed(f"answer head over {MAX_HEAD} bytes")
            status = parser.get_status_code()
            if not any(lo <= status <= hi for lo, hi in self.codes):
                raise ProbeFailed(f"status {status}")
        finally:
            writer.transport.abort()        # no lingering close handshake: the probe is over

    def record(self, ok: bool, reason: str):
        table = self.checker.table
        self.checker.count(self.channel, ok)
        slot = self.slot
        if slot >= 0 and table.state(slot) == UNHEALTHY and self.view != UNHEALTHY:
            # a worker ejected it after failed calls: back only after healthy_threshold probes
            self.transition(UNHEALTHY, "ejected after failed calls")
            self.successes = self.failures = 0
        if ok:
            self.successes += 1
            self.failures = 0
            if self.view != HEALTHY and self.successes >= self.hc.healthy_threshold:
                self.transition(HEALTHY, f"{self.successes} successful checks")
                if slot >= 0:
                    table.reset_ejections(slot)
        else:
            self.failures += 1
            self.successes = 0
            if self.view != UNHEALTHY and self.failures >= self.hc.unhealthy_threshold:
                self.transition(UNHEALTHY, reason)
        if slot >= 0 and table.state(slot) != self.view:
            table.set_state(slot, self.view)

    def transition(self, state: int, reason: str):
        if state == self.view:
            return
        log.log(logging.INFO if state == HEALTHY else logging.WARNING,
                "channel %s member %s: %s -> %s (%s)", self.channel, self.label,
                STATE_NAMES[self.view], STATE_NAMES[state], reason)
        self.view = state


class HealthChecker:
    """The node's checker (the master makes one; ``apply`` a document to start or update it)."""

    def __init__(self, table: HealthTable, loop=None):
        self.table = table
        self.loop = loop
        self.checks: dict[tuple[str, str, int], MemberCheck] = {}
        self.totals: dict[tuple[str, str], int] = {}      # (channel, result) -> probes
        self.document = None
        self._full_warned = False

    def count(self, channel: str, ok: bool):
        key = (channel, "success" if ok else "failure")
        self.totals[key] = self.totals.get(key, 0) + 1

    def apply(self, doc) -> None:
        """Check what ``doc`` asks for: keep unchanged members' tasks, stop removed ones, free
        their slots, start new ones."""
        loop = self.loop or asyncio.get_running_loop()
        self.document = doc
        live = []
        wanted: dict[tuple[str, str, int], tuple] = {}
        for channel in doc.channels:
            for member in channel.members:
                address = (member.host, member.port or channel.port)
                key = member_key(channel.name, *address)
                live.append(key)
                slot = self.table.slot(key)
                if slot < 0 and not self._full_warned:
                    self._full_warned = True
                    log.warning("the health table is full (%d members): channel %s member "
                                "%s:%d and later ones are not tracked", self.table.slots,
                                channel.name, *address)
                if channel.health_check is not None and member.enabled:
                    wanted[(channel.name, *address)] = (channel, member, address, slot)
                elif channel.health_check is None and slot >= 0:
                    self._unchecked(slot)
        for ident in [i for i in self.checks if i not in wanted]:
            self.checks.pop(ident).stop()
        for ident, (channel, member, address, slot) in wanted.items():
            check = self.checks.get(ident)
            if check is None:
                check = self.checks[ident] = MemberCheck(self, channel, member, address, slot)
                check.start(loop)
            else:
                check.slot = slot
                check.configure(channel, member)
        self.table.free(live)

    def _unchecked(self, slot: int):
        """A member of a channel without a health check: no active verdict holds any more;
        a passive ejection in force stays (the workers readmit it when it is over)."""
        state = self.table.state(slot)
        if state == HEALTHY or (state == UNHEALTHY
                                and self.table.passive_until(slot) <= time.monotonic_ns()):
            self.table.set_state(slot, UNKNOWN)

    def stop(self) -> None:
        for check in self.checks.values():
            check.stop()
        self.checks.clear()

    # -- status and metrics (master) ------------------------------------------------------------
    def member_state(self, channel: str, host: str, port: int) -> tuple[int, int]:
        slot = self.table.slot(member_key(channel, host, port), create=False)
        if slot < 0:
            return UNKNOWN, 0
        return self.table.state(slot), self.table.ejections(slot)

    def status(self) -> dict:
        """``/status/channels``: every channel of the document with its members' health."""
        out = []
        for channel in (self.document.channels if self.document is not None else ()):
            members = []
            for m in channel.members:
                port = m.port or channel.port
                state, ejections = self.member_state(channel.name, m.host, port)
                members.append({"host": m.host, "port": port, "weight": m.weight,
                                "backup": m.backup, "enabled": m.enabled,
                                "state": STATE_NAMES[state], "ejections": ejections})
            out.append({"name": channel.name, "balance": channel.balance,
                        "health_check": channel.health_check is not None, "members": members})
        return {"channels": out}

    def metric_families(self):
        health = GaugeMetricFamily("tollgate_channel_member_health", "Health of each channel "
                                   "member: 1 for its current state (unknown, healthy, "
                                   "unhealthy), 0 for the others",
                                   labels=["channel", "member", "state"])
        for channel in (self.document.channels if self.document is not None else ()):
            for m in channel.members:
                port = m.port or channel.port
                state, _ = self.member_state(channel.name, m.host, port)
                for i, name in enumerate(STATE_NAMES):
                    health.add_metric([channel.name, f"{m.host}:{port}", name],
                                      1 if i == state else 0)
        yield health
        checks = CounterMetricFamily("tollgate_health_checks", "Active health checks of channel "
                                     "members, by channel and result (success, failure)",
                                     labels=["channel", "result"])
        for (channel, result), n in sorted(self.totals.items()):
            checks.add_metric([channel, result], n)
        yield checks
