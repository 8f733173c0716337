"""What request throttling costs on the hot path, and how exact cluster limits are.

Throughput (the default): one run starts the upstream nginx and the reference proxy nginx of
benchmarks.run (the same confs) and a Tollgate (``--workers``, default 1) serving, to the same
upstream:

* ``plain`` (``GET /p``, prefix, ``auth: none``): no throttle;
* ``throttled`` (``GET /t``, prefix, the same shape): bound to a throttle whose limits are never
  reached (``api_limit`` 2,000,000,000 per second, ``ip_limit`` 1,000,000,000: the per-address
  dimension is the dear one, a key hashed per call), counted on the node's shared table;
* ``tiny`` (``GET /x``): bound to a throttle of ``TINY_LIMIT`` calls per hour, only to check that
  throttles are applied (it must answer 429 ``APIC.0308`` after its limit).

and, when the gateway accepts a ``redis`` section (``tollgate validate``), a second Tollgate with
the same APIs whose document adds ``redis`` pointing at a redis-server this script starts on a
free port: ``plain-redis`` and ``throttled-redis`` (cluster mode).  If the section is refused,
those targets are skipped and the report says why.  Before measuring, the throttled APIs must
answer with ``X-Apig-RateLimit-api`` and ``-ip`` headers under ``X-Apig-Mode: debug``, the tiny
API must refuse its ``TINY_LIMIT + 1``-th call, and the Redis gateway must have talked to Redis
(else the figures would be an unthrottled API's).  Targets (``--targets``) are driven by wrk
(``-t1 -c50``), interleaved over ``--reps`` runs of ``--duration`` s, order rotating, after a
warm-up of each.  Goals (req/s, ratio of medians, same run): throttled >= 0.9x plain, and
throttled-redis >= 0.85x plain-redis.  Writes the ``throttle`` section of RESULTS.md.

Accuracy (``--accuracy``): redis-server, two gateways (``--accuracy-workers``, default 2, each)
sharing it, a throttle of ``--limit`` (L, default 500) calls per second on one API; a
rate-controlled client (this file's ``RateDriver``: a fixed number of keep-alive connections
sending at fixed times, so the offered rate does not depend on how fast answers come) drives each
gateway at 1.5x L (3x L in all) for ``--warmup`` s (default 2: the limiter reaches its steady
state, and calls of this phase are not counted) then ``--seconds`` s (default 20).  The calls
*sent* in the measured span [t0, t1) are counted by status; the 200s must be within
[-5%, +2%] of L x (t1 - t0) (t0, t1: the exact monotonic times the measured span started and
stopped).  Then the same with one of the two gateways (its master and workers) killed with
SIGKILL halfway: the other must go on letting L per second through (checked on the whole span
and on its second half).  Without Redis (the section refused) the first variant runs on one
gateway (its workers sharing the node's table) and the kill variant is skipped; the report says
why.  Writes the ``throttle-accuracy`` section.

    python -m benchmarks.throttle_bench [--duration 10] [--reps 3] [--connections 50] [--threads 1]
                                        [--workers 1] [--targets ...] [--warmup 2]
                                        [--no-write] [--keep-work]
    python -m benchmarks.throttle_bench --accuracy [--limit 500] [--seconds 20] [--warmup 2]
                                        [--accuracy-workers 2] [--client-connections 16]

Exit status as benchmarks.run: 0 clean, 1 when a run had errors (or an accuracy goal was missed),
2 when the benchmark could not run.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from benchmarks import auth_bench
from benchmarks import run as harness
from benchmarks.results import command_line, write_section

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

NEVER_API_LIMIT = 2_000_000_000        # per second: never reached (the largest limit accepted)
NEVER_IP_LIMIT = 1_000_000_000
TINY_LIMIT = 5                         # per hour: the check that throttles are applied
GROUP = "bench"

#: name -> (label in the report, gateway ("local", "redis" or "nginx"), path wrk drives)
TARGETS = {
    "nginx": ("nginx (plain proxy)", "nginx", "/json"),
    "plain": ("Tollgate, no throttle", "local", "/p/json"),
    "throttled": ("Tollgate, throttled (node table)", "local", "/t/json"),
    "plain-redis": ("Tollgate + redis, no throttle", "redis", "/p/json"),
    "throttled-redis": ("Tollgate + redis, throttled (cluster)", "redis", "/t/json"),
}
#: target -> (what it is compared with, the least req/s ratio)
GOALS = {"throttled": ("plain", 0.9), "throttled-redis": ("plain-redis", 0.85)}
#: the accuracy bounds: allowed calls / (L x seconds)
ACCURACY_LOW, ACCURACY_HIGH = 0.95, 1.02


# --------------------------------------------------------------------------------------------
# Configuration


def api(name: str, prefix: str, throttle: str | None = None) -> dict:
    """An ``auth: none`` GET API, prefix ``prefix``, to the upstream's ``/json`` (``PREFIX/json``
    -> ``/json``), bound to ``throttle`` in RELEASE."""
    return {"name": name, "group": GROUP, "method": "GET", "path": prefix, "match_mode": "prefix",
            "auth": "none",
            "backend": {"type": "http", "url": "http://#upstream#/", "timeout_ms": 5000},
            "environments": {"RELEASE": {"throttle": throttle} if throttle else {}}}


def gateway_config(upstream: str, redis_url: str | None = None) -> dict:
    """The throughput benchmark's document: ``plain``, ``throttled`` and ``tiny``; with
    ``redis_url``, a ``redis`` section too (cluster mode)."""
    doc = {"version": 1,
           "groups": [{"name": GROUP, "variables": {"RELEASE": {"upstream": upstream}}}],
           "throttles": [
               {"name": "never-reached", "interval": 1, "unit": "second",
                "api_limit": NEVER_API_LIMIT, "ip_limit": NEVER_IP_LIMIT},
               {"name": "tiny", "interval": 1, "unit": "hour", "api_limit": TINY_LIMIT}],
           "apis": [api("plain", "/p"), api("throttled", "/t", "never-reached"),
                    api("tiny", "/x", "tiny")]}
    if redis_url is not None:
        doc["redis"] = {"url": redis_url, "timeout_ms": 50, "fail_mode": "open"}
    return doc


def accuracy_config(upstream: str, limit: int, redis_url: str | None) -> dict:
    """One API ``/a`` bound to a throttle of ``limit`` calls per second (api dimension only)."""
    doc = {"version": 1,
           "groups": [{"name": GROUP, "variables": {"RELEASE": {"upstream": upstream}}}],
           "throttles": [{"name": "accuracy", "interval": 1, "unit": "second",
                          "api_limit": limit}],
           "apis": [api("limited", "/a", "accuracy")]}
    if redis_url is not None:
        doc["redis"] = {"url": redis_url, "timeout_ms": 50, "fail_mode": "open"}
    return doc


def configure(workdir: Path, name: str, doc: dict, tollgate_cmd: list[str]
              ) -> tuple[Path, str | None]:
    """Write ``doc`` to ``WORKDIR/NAME.yaml`` and validate it: (path, None), or (path, why the
    gateway refuses it: its errors on one line)."""
    path = auth_bench.write_config(doc, workdir / f"{name}.yaml")
    ok, out = auth_bench.validate(tollgate_cmd, path)
    if ok:
        return path, None
    errors = [line.strip() for line in out.splitlines()[1:] if line.strip()]
    return path, "; ".join(errors) or out


def redis_refusal(why: str) -> str:
    return f"the gateway refuses the `redis` section at load (`tollgate validate`: {why})"


# --------------------------------------------------------------------------------------------
# redis-server


def resp_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """One command to Redis on 127.0.0.1:``port`` in RESP; the raw reply."""
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(out))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"$"):           # bulk string: $LEN\r\n...\r\n
                head, _, rest = data.partition(b"\r\n")
                if int(head[1:]) < 0 or len(rest) >= int(head[1:]) + 2:
                    break
            elif data.endswith(b"\r\n"):
                break
        return data


def redis_commands(port: int) -> int:
    """Commands Redis has processed since it started (``INFO stats``): this INFO call is not
    counted yet, the next call counts it."""
    m = re.search(rb"total_commands_processed:(\d+)", resp_command(port, "INFO", "stats"))
    if not m:
        raise RuntimeError("redis INFO stats has no total_commands_processed")
    return int(m.group(1))


def start_redis(workdir: Path, port: int) -> harness.Service:
    argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no",
            "--protected-mode", "no", "--loglevel", "warning"]
    svc = harness.Service("redis", argv, workdir, f"redis://127.0.0.1:{port}/0")
    svc.start()
    svc.wait_ready(lambda: resp_command(port, "PING").startswith(b"+PONG"))
    svc.port = port
    return svc


def redis_version() -> str:
    out = harness.run_text([REDIS_SERVER, "--version"])
    m = re.search(r"v=(\S+)", out)
    return m.group(1) if m else out


# --------------------------------------------------------------------------------------------
# Checks: the throttles are applied


def get(port: int, path: str, headers: dict[str, str] | None = None,
        timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def rate_limit_header(value: str | None) -> tuple[int, int] | None:
    """``remain:N,limit:L,time:1 second`` -> (N, L)."""
    m = re.fullmatch(r"\s*remain:(-?\d+),limit:(\d+),time:.+", value or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_gateway(svc: harness.Service, redis: harness.Service | None = None,
                  expect: bytes | None = harness.BODY.encode()) -> list[str]:
    """The APIs answer as they must: plain and throttled 200 with ``expect`` (the upstream's
    document; None: any body), throttled with rate-limit headers in debug mode, tiny refusing its
    ``TINY_LIMIT + 1``-th call; with ``redis``, the gateway's counting reached Redis.  Returns
    what was seen (for the report); raises RuntimeError otherwise."""
    before = redis_commands(redis.port) if redis is not None else 0
    seen = []
    for path in ("/p/json", "/t/json"):
        code, _h, got = get(svc.port, path)
        if code != 200 or (expect is not None and got != expect):
            raise RuntimeError(f"{svc.name}: GET {path} answered {code} {got[:300]!r}, expected "
                               f"200 and the upstream's document; log tail:\n{svc.log_tail()}")
    code, headers, _ = get(svc.port, "/t/json", {"X-Apig-Mode": "debug"})
    for dim, limit in (("api", NEVER_API_LIMIT), ("ip", NEVER_IP_LIMIT)):
        got = rate_limit_header(headers.get(f"x-apig-ratelimit-{dim}"))
        if code != 200 or got is None or got[1] != limit:
            raise RuntimeError(f"{svc.name}: GET /t/json with X-Apig-Mode: debug answered {code} "
                               f"with X-Apig-RateLimit-{dim}: {headers.get(f'x-apig-ratelimit-{dim}')!r}"
                               f", expected limit:{limit}: the throttle is not applied")
        seen.append(f"X-Apig-RateLimit-{dim}: {headers[f'x-apig-ratelimit-{dim}']}")
    code, headers, _ = get(svc.port, "/p/json", {"X-Apig-Mode": "debug"})
    if any(k.startswith("x-apig-ratelimit-") for k in headers):
        raise RuntimeError(f"{svc.name}: the plain API answers with rate-limit headers: {headers}")
    codes = [get(svc.port, "/x/json")[0] for _ in range(TINY_LIMIT + 1)]
    code, headers, got = get(svc.port, "/x/json")
    codes.append(code)
    if codes[:TINY_LIMIT] != [200] * TINY_LIMIT or codes[TINY_LIMIT:] != [429, 429] \
            or b"APIC.0308" not in got:
        raise RuntimeError(f"{svc.name}: the API bound to a throttle of {TINY_LIMIT} calls/hour "
                           f"answered {codes} ({got[:200]!r}), expected {TINY_LIMIT} x 200 then "
                           f"429 APIC.0308: throttles are not applied")
    seen.append(f"tiny API: {TINY_LIMIT} x 200 then 429 (Retry-After: "
                f"{headers.get('retry-after')})")
    if redis is not None:
        # (budgets may be leased off the request's path: give the gateway a moment)
        deadline, used, polls = time.monotonic() + 2.0, 0, 0
        while used < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
            used = redis_commands(redis.port) - before - 1 - polls   # less our INFO calls
            polls += 1
        if used < 1:
            raise RuntimeError(f"{svc.name}: Redis processed no command while the throttled "
                               f"APIs were called: the gateway does not count through Redis")
        seen.append(f"Redis processed {used} commands during these checks")
    return seen


# --------------------------------------------------------------------------------------------
# The rate-controlled client (the accuracy part)


@dataclass
class Call:
    due: float          # monotonic time it was scheduled for
    sent: float         # monotonic time it was sent (or tried)
    status: int         # HTTP status; 0 when there was no answer (see error)
    error: str = ""
    lane: int = 0       # which driver (gateway) it went to


class _Conn(asyncio.Protocol):
    """A keep-alive client connection: one request in flight, its answer's status."""

    def __init__(self):
        import httptools
        self.parser = httptools.HttpResponseParser(self)
        self.transport = None
        self.waiter: asyncio.Future | None = None
        self.keep_alive = True      # the last answer let the connection be used again

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None
        self._done(ConnectionResetError("connection closed by the server"))

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except Exception as exc:            # httptools.HttpParserError and its kinds
            self._done(exc)
            if self.transport is not None:
                self.transport.abort()

    def on_message_complete(self):
        self.keep_alive = self.parser.should_keep_alive()
        self._done(self.parser.get_status_code())

    def _done(self, result):
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def close(self):
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class RateDriver:
    """Sends ``GET path`` to 127.0.0.1:``port`` at ``rate`` calls per second from ``start`` to
    ``stop`` (monotonic times): call i is due at ``start + i / rate``; ``connections`` keep-alive
    connections take the next due call as soon as they are free (one in flight each), so a slow
    answer delays nothing while a connection is free.  A call that finds no connection (refused),
    no answer within ``timeout`` or its connection closed is recorded as an error, and the next
    call opens a new connection."""

    def __init__(self, port: int, path: str, rate: float, connections: int = 8,
                 timeout: float = 5.0, lane: int = 0, host: str = "127.0.0.1"):
        if rate <= 0 or connections < 1:
            raise ValueError("rate must be > 0 and connections >= 1")
        self.port, self.path, self.rate, self.connections = port, path, rate, connections
        self.timeout, self.lane, self.host = timeout, lane, host
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"User-Agent: tollgate-throttle-bench\r\n\r\n").encode()
        self.calls: list[Call] = []
        self._next = 0

    async def run(self, start: float, stop: float) -> list[Call]:
        self._next = 0
        self.calls = []
        await asyncio.gather(*(self._lane(start, stop) for _ in range(self.connections)))
        self.calls.sort(key=lambda c: c.due)
        return self.calls

    async def _lane(self, start: float, stop: float) -> None:
        loop = asyncio.get_running_loop()
        conn: _Conn | None = None
        try:
            while True:
                i = self._next
                due = start + i / self.rate
                if due >= stop:
                    return
                self._next += 1
                wait = due - time.monotonic()
                while wait > 0:         # (the loop's timers may wake a little early)
                    await asyncio.sleep(wait)
                    wait = due - time.monotonic()
                sent = time.monotonic()
                status, error = 0, ""
                try:
                    if conn is None or conn.transport is None:
                        _t, conn = await asyncio.wait_for(
                            loop.create_connection(_Conn, self.host, self.port), self.timeout)
                    conn.waiter = loop.create_future()
                    conn.transport.write(self.request)
                    result = await asyncio.wait_for(conn.waiter, self.timeout)
                    if isinstance(result, Exception):
                        raise result
                    status = result
                    if not conn.keep_alive:     # (Connection: close: the next call opens a
                        conn.close()            # new one rather than racing the close)
                        conn = None
                except asyncio.TimeoutError:
                    error = "timeout"
                except OSError as exc:
                    error = (os.strerror(exc.errno) if exc.errno else str(exc)) or type(exc).__name__
                except Exception as exc:           # a malformed answer
                    error = f"{type(exc).__name__}: {exc}"
                if error and conn is not None:
                    conn.close()
                    conn = None
                self.calls.append(Call(due, sent, status, error, self.lane))
        finally:
            if conn is not None:
                conn.close()


def drive(drivers: list[RateDriver], seconds: float, at: list[tuple[float, object]] = ()
          ) -> tuple[float, list[Call], dict[float, object]]:
    """Run ``drivers`` together from now + 0.2 s for ``seconds``; ``at``: (offset s, function)
    called at that offset from the start.  Returns (start, every call sorted by due time,
    {offset: (the exact monotonic time it ran, what it returned)})."""
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:     # pragma: no cover
        runner = asyncio.run
    done: dict[float, object] = {}

    async def main():
        start = time.monotonic() + 0.2

        async def event(offset, fn):
            await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
            done[offset] = (time.monotonic(), fn())

        tasks = [d.run(start, start + seconds) for d in drivers]
        tasks += [event(o, fn) for o, fn in at]
        results = await asyncio.gather(*tasks)
        calls = [c for r in results[:len(drivers)] for c in r]
        return start, sorted(calls, key=lambda c: c.due)

    start, calls = runner(main())
    return start, calls, done


# --------------------------------------------------------------------------------------------
# Accuracy arithmetic


@dataclass
class Tally:
    t0: float
    t1: float
    limit: int
    period: float
    sent: int = 0
    allowed: int = 0
    refused: int = 0
    other: Counter = field(default_factory=Counter)     # status or error -> count
    per_second: list[int] = field(default_factory=list)  # 200s in [t0 + k, t0 + k + 1)
    max_lag: float = 0.0        # s between due and sent at worst (the client's own delay)

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0

    @property
    def expected(self) -> float:
        return self.limit * self.seconds / self.period

    @property
    def ratio(self) -> float:
        return self.allowed / self.expected if self.expected else 0.0

    def within(self, low: float = ACCURACY_LOW, high: float = ACCURACY_HIGH) -> bool:
        return low <= self.ratio <= high

    def bounds(self, low: float = ACCURACY_LOW, high: float = ACCURACY_HIGH) -> tuple[int, int]:
        """The least and the most 200s within the bounds (whole calls)."""
        import math
        return math.ceil(self.expected * low - 1e-9), math.floor(self.expected * high + 1e-9)


def tally(calls: list[Call], t0: float, t1: float, limit: int, period: float = 1.0,
          lanes: set[int] | None = None) -> Tally:
    """Count the calls *sent* in [t0, t1) (of ``lanes``, default all): 200s against
    ``limit x (t1 - t0) / period``, 429s, and every other status or error apart."""
    t = Tally(t0, t1, limit, period)
    import math
    t.per_second = [0] * max(1, math.ceil(t.seconds - 1e-9))
    for c in calls:
        if not t0 <= c.sent < t1 or (lanes is not None and c.lane not in lanes):
            continue
        t.sent += 1
        t.max_lag = max(t.max_lag, c.sent - c.due)
        if c.status == 200:
            t.allowed += 1
            t.per_second[min(int(c.sent - t0), len(t.per_second) - 1)] += 1
        elif c.status == 429:
            t.refused += 1
        else:
            t.other[c.error or f"HTTP {c.status}"] += 1
    return t


# --------------------------------------------------------------------------------------------
# Throughput


def prepare_throughput(args, workdir: Path, upstream_addr: str
                       ) -> tuple[dict[str, harness.Service], dict[str, str], list[str],
                                  harness.Service | None]:
    """Start the gateways the targets need and check them: (service per target, skipped
    target -> why, what the checks saw, redis or None)."""
    services: dict[str, harness.Service] = {}
    skipped: dict[str, str] = {}
    seen: list[str] = []
    redis = None
    kinds = {TARGETS[n][1] for n in args.target_list}
    if "local" in kinds:
        conf, why = configure(workdir, "tollgate-throttle",
                              gateway_config(upstream_addr), args.tollgate_cmd)
        if why is not None:
            raise RuntimeError(f"the gateway refuses the benchmark's configuration {conf}: {why}")
        gw = auth_bench.start_gateway(workdir, conf, args, "tollgate")
        seen += [f"Tollgate (node table): {s}" for s in check_gateway(gw)]
        services.update({n: gw for n in args.target_list if TARGETS[n][1] == "local"})
    if "redis" in kinds:
        port = harness.free_port()
        conf, why = configure(workdir, "tollgate-redis",
                              gateway_config(upstream_addr, f"redis://127.0.0.1:{port}/0"),
                              args.tollgate_cmd)
        if why is not None:
            for n in args.target_list:
                if TARGETS[n][1] == "redis":
                    skipped[n] = redis_refusal(why)
            harness.loud(f"Redis targets skipped: {redis_refusal(why)}")
        elif not os.access(REDIS_SERVER, os.X_OK):
            for n in args.target_list:
                if TARGETS[n][1] == "redis":
                    skipped[n] = f"{REDIS_SERVER} is missing (Debian package redis-server)"
        else:
            redis = start_redis(workdir, port)
            gw = auth_bench.start_gateway(workdir, conf, args, "tollgate-redis")
            seen += [f"Tollgate + redis (cluster): {s}"
                     for s in check_gateway(gw, redis)]
            services.update({n: gw for n in args.target_list if TARGETS[n][1] == "redis"})
    return services, skipped, seen, redis


def throughput(args, workdir: Path) -> int:
    info = harness.machine_info() + [f"- redis-server: {redis_version()}"]
    upstream, upstream_addr, upstream_status = harness.start_upstream(workdir)
    services, skipped, seen, redis = {}, {}, [], None
    if "nginx" in args.target_list:
        services["nginx"] = harness.start_nginx_proxy(workdir, upstream_addr, args).service
    if any(TARGETS[n][1] != "nginx" for n in args.target_list):
        more, skipped, seen, redis = prepare_throughput(args, workdir, upstream_addr)
        services.update(more)
    names = [n for n in args.target_list if n not in skipped]
    if not names:
        raise RuntimeError("no target left to measure: " + "; ".join(skipped.values()))
    targets = {n: harness.Target(n, services[n], f"{services[n].url}{TARGETS[n][2]}")
               for n in names}

    notes: list[str] = []
    for n in names:
        harness.log(f"warm-up {n}: {args.warmup}s")
        warm = harness.run_wrk(targets[n].url, args.warmup, args.threads, args.connections)
        if warm.errors or not services[n].alive():
            problem = (f"{n} warm-up: {warm.errors} errors (socket {warm.socket_errors}, non-2xx "
                       f"{warm.non2xx}); process {services[n].died_why()}")
            harness.loud(problem)
            notes.append(problem)

    runs: list[harness.Run] = []
    busy0, steal0, total0 = harness.system_cpu()
    for rep in range(1, args.reps + 1):
        k = (rep - 1) % len(names)
        for n in names[k:] + names[:k]:
            harness.log(f"rep {rep}/{args.reps}: {n} for {args.duration}s")
            before = redis_commands(redis.port) if redis is not None else 0
            r = auth_bench.measure_target(targets[n], upstream, upstream_status, rep, args)
            r.redis_commands = (redis_commands(redis.port) - before - 1
                                if redis is not None else None)
            runs.append(r)
            harness.log(f"  {r.wrk.rps:,.0f} req/s, p99 {_ms(r.wrk.p99_ms)} ms, CPU "
                        f"{r.cpu_us:.1f} us/req, other processes {r.other_load:.0f}%")
    busy1, steal1, total1 = harness.system_cpu()
    span = max(total1 - total0, 1)
    load = (f"machine busy {100 * (busy1 - busy0) / span:.0f}% of all CPUs, steal "
            f"{100 * (steal1 - steal0) / span:.1f}%; load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for svc in {id(s): s for n, s in services.items() if n != "nginx"}.values():
        tail = svc.log_tail(300)
        if re.search(r"Traceback|\bERROR\b|\bCRITICAL\b", tail):
            notes.append(f"{svc.name} logged errors; tail of its log:\n\n```\n"
                         + svc.log_tail(40) + "\n```")

    md = throughput_report(args, names, runs, info, load, notes, skipped, seen)
    print(md)
    if not args.no_write:
        write_section("throttle", md)
        harness.log("wrote the 'throttle' section of benchmarks/RESULTS.md")
    clean = not any(r.problems for r in runs) and not notes
    if not clean:
        harness.loud("some runs were not clean: see the WARNING above")
    return 0 if clean else 1


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def throughput_report(args, names: list[str], runs: list[harness.Run], info: list[str],
                      load: str, notes: list[str], skipped: dict[str, str],
                      seen: list[str]) -> str:
    by, med, per_rep, ratio = auth_bench.summarize(names, runs)

    md = ["## Throttling: what a throttle that is never reached costs (node table, Redis)", "",
          f"Command: `{command_line()}`", "",
          f"Setup: wrk `-t{args.threads} -c{args.connections} -d{args.duration}s --latency`, "
          f"`GET /json` through nginx (benchmarks.run's reference proxy conf) and, through "
          f"Tollgate ({args.workers} worker(s)), `GET /p/json` (`plain`: `auth: none`, prefix "
          f"`/p`, no throttle) and `GET /t/json` (`throttled`: the same API shape bound to a "
          f"throttle of api_limit {NEVER_API_LIMIT:,} and ip_limit {NEVER_IP_LIMIT:,} per "
          f"second, never reached), all to the same upstream nginx answering a "
          f"{len(harness.BODY)}-byte JSON document. `plain-redis` / `throttled-redis`: a second "
          f"Tollgate with the same APIs and a `redis` section (a redis-server started on a free "
          f"port: cluster mode). {args.reps} reps, targets interleaved (order rotates each rep), "
          f"after a {args.warmup}s warm-up of each; medians. 127.0.0.1 only. CPU us/req: "
          f"user+system CPU of the proxy's processes / requests.", ""]
    md += info + [f"- during the measured runs: {load}",
                  f"- run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]
    for n, why in skipped.items():
        md += [f"**{TARGETS[n][0]} (`{n}`) skipped:** {why}", ""]
    if seen:
        md += ["Checked before measuring (else the figures would be an unthrottled API's):", ""]
        md += [f"- {s}" for s in seen] + [""]
    disturbed = [r for r in runs if r.other_load > auth_bench.OTHER_LOAD_WARN]
    if disturbed:
        md += [f"**Other processes competed for the CPUs** during {len(disturbed)} of the "
               f"{len(runs)} runs (over {auth_bench.OTHER_LOAD_WARN:.0f}% of the machine; up to "
               f"{max(r.other_load for r in disturbed):.0f}%: \"other load\" in the per-rep "
               f"table); CPU us/req is the steadier figure.", ""]
    problems = [r for r in runs if r.problems]
    if problems or notes:
        md += ["**WARNING: some runs were not clean:**", ""]
        md += [f"- {r.target} rep {r.rep}: {'; '.join(r.problems)}" for r in problems]
        md += [f"- {n}" for n in notes] + [""]

    has_nginx = "nginx" in med
    md += ["| target | req/s | / nginx | p50 ms | p99 ms | CPU us/req | user |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        m = med[n]
        vs = f"{ratio(n, 'nginx'):.2f}x" if has_nginx else ""
        md.append(f"| {TARGETS[n][0]} (`{n}`) | {m['rps']:,.0f} | {vs} | {_ms(m['p50'])} "
                  f"| {_ms(m['p99'])} | {m['cpu']:.1f} | {m['user']:.1f} |")
    md.append("")

    rows = []
    for n, (base, goal) in GOALS.items():
        if n in med and base in med:
            r = ratio(n, base)
            pr = per_rep(n, base)
            rows.append(f"| `{n}` / `{base}` | {r:.2f}x | {min(pr):.2f}-{max(pr):.2f} "
                        f"| {med[n]['cpu'] - med[base]['cpu']:+.1f} | >= {goal:.2f}x "
                        f"| {'PASS' if r >= goal else 'FAIL'} |")
        elif n in skipped or base in skipped:
            rows.append(f"| `{n}` / `{base}` | | | | >= {goal:.2f}x | skipped |")
    if rows:
        md += ["### Targets (req/s, ratio of medians, same gateway, same run)", "",
               "| | ratio | per-rep range | CPU us/req added | goal | verdict |",
               "|---|---:|---:|---:|---|---|"] + rows + [""]

    md += ["### Per rep", "", "| rep | target | req/s | p99 ms | CPU us/req (user/sys) | upstream reqs "
           "/ new conns | redis cmds | other load | errors |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        rc = getattr(r, "redis_commands", None)
        md.append(f"| {r.rep} | `{r.target}` | {r.wrk.rps:,.0f} | {_ms(r.wrk.p99_ms)} "
                  f"| {r.cpu_us:.1f} ({r.cpu_user_us:.1f}/{r.cpu_sys_us:.1f}) "
                  f"| {r.upstream_requests:,} / {r.upstream_new_conns:,} "
                  f"| {'' if rc is None else f'{rc:,}'} | {r.other_load:.0f}% "
                  f"| {'; '.join(r.problems) if r.problems else 'none'} |")
    md += ["", "\"redis cmds\": commands Redis processed during the run (any gateway's; the "
           "Redis targets only). \"other load\": CPU time of the machine's other processes "
           "during the run, in % of all CPUs (see `benchmarks.auth_bench`)."]
    return "\n".join(md) + "\n"


# --------------------------------------------------------------------------------------------
# Accuracy


def kill_tree(svc: harness.Service) -> int:
    """SIGKILL the gateway's master and workers at once (its session); how many processes."""
    procs = harness.process_tree(svc.pid)
    os.killpg(svc.pid, signal.SIGKILL)
    return len(procs)


def accuracy(args, workdir: Path) -> int:
    info = harness.machine_info() + [f"- redis-server: {redis_version()}"]
    _upstream, upstream_addr, _status = harness.start_upstream(workdir)
    gw_args = SimpleNamespace(tollgate_cmd=args.tollgate_cmd, workers=args.accuracy_workers)
    L = args.limit
    port = harness.free_port()
    conf, why = configure(workdir, "tollgate-accuracy",
                          accuracy_config(upstream_addr, L, f"redis://127.0.0.1:{port}/0"),
                          args.tollgate_cmd)
    skipped = None
    if why is None and not os.access(REDIS_SERVER, os.X_OK):
        why = f"{REDIS_SERVER} is missing (Debian package redis-server)"
        skipped = why
    elif why is not None:
        skipped = redis_refusal(why)
    if skipped is not None:
        harness.loud(f"cluster accuracy skipped: {skipped}; measuring one gateway (node table)")
        conf, why = configure(workdir, "tollgate-accuracy", accuracy_config(upstream_addr, L, None),
                              args.tollgate_cmd)
        if why is not None:
            raise RuntimeError(f"the gateway refuses the benchmark's configuration {conf}: {why}")
        gateways = [auth_bench.start_gateway(workdir, conf, gw_args, "tollgate-1")]
    else:
        start_redis(workdir, port)
        gateways = [auth_bench.start_gateway(workdir, conf, gw_args, f"tollgate-{i}")
                    for i in (1, 2)]
    for gw in gateways:
        code, headers, body = get(gw.port, "/a/json", {"X-Apig-Mode": "debug"})
        got = rate_limit_header(headers.get("x-apig-ratelimit-api"))
        if code != 200 or body != harness.BODY.encode() or got is None or got[1] != L:
            raise RuntimeError(f"{gw.name}: GET /a/json answered {code} with "
                               f"X-Apig-RateLimit-api {headers.get('x-apig-ratelimit-api')!r}, "
                               f"expected 200, the upstream's document and limit:{L}")

    variants = [("both gateways" if len(gateways) == 2 else "one gateway", False)]
    if len(gateways) == 2:
        variants.append(("one gateway killed (SIGKILL) halfway", True))
    results = []
    offered_each = 3 * L / len(gateways)
    for title, kill in variants:
        drivers = [RateDriver(gw.port, "/a/json", offered_each, args.client_connections, lane=i)
                   for i, gw in enumerate(gateways)]
        warm, seconds = args.warmup, args.seconds
        events = []
        victim = gateways[-1]
        if kill:
            events.append((warm + seconds / 2, lambda: kill_tree(victim)))
        harness.log(f"accuracy, {title}: {len(gateways)} x {offered_each:,.0f} calls/s for "
                    f"{warm}+{seconds}s")
        start, calls, done = drive(drivers, warm + seconds, events)
        t0, t1 = start + warm, start + warm + seconds
        whole = tally(calls, t0, t1, L)
        parts = {"whole span": whole}
        if kill:
            t_kill, nprocs = done[warm + seconds / 2]
            parts["before the kill"] = tally(calls, t0, t_kill, L)
            parts["after the kill"] = tally(calls, t_kill, t1, L)
            parts["after the kill, to the survivor"] = tally(calls, t_kill, t1, L, lanes={0})
            title += f" ({nprocs} processes killed at t0 + {t_kill - t0:.3f}s)"
        harness.log(f"  {whole.allowed} x 200 in {whole.seconds:.3f}s: {whole.ratio:.3f} of "
                    f"L x seconds; 429: {whole.refused}; other: {dict(whole.other)}")
        results.append((title, kill, parts))
    alive_ok = all(gw.alive() for gw in gateways[:1])
    md = accuracy_report(args, info, gateways, results, skipped, alive_ok)
    print(md)
    if not args.no_write:
        write_section("throttle-accuracy", md)
        harness.log("wrote the 'throttle-accuracy' section of benchmarks/RESULTS.md")
    ok = alive_ok and all(p.within() for _t, _k, parts in results for name, p in parts.items()
                          if name in ("whole span", "after the kill"))
    clean_errors = all(not p.other for _t, kill, parts in results if not kill
                       for p in parts.values())
    if not (ok and clean_errors):
        harness.loud("an accuracy goal was missed or calls failed: see the report")
    return 0 if ok and clean_errors else 1


def accuracy_report(args, info, gateways, results, skipped, alive_ok) -> str:
    L = args.limit
    n = len(gateways)
    md = ["## Throttling accuracy: calls let through at 3x the limit", "",
          f"Command: `{command_line()}`", "",
          f"Setup: a throttle of api_limit L = {L} calls per second (sliding window) bound to "
          f"one API; {n} Tollgate gateway(s), {args.accuracy_workers} workers each"
          + (", sharing one redis-server (cluster mode)" if n == 2 else ", node table") +
          f"; a rate-controlled client (`RateDriver`: {args.client_connections} keep-alive "
          f"connections per gateway, call i due at start + i / rate) offering "
          f"{3 * L / n:,.0f} calls/s to each gateway ({3 * L:,} in all, 3x L) for {args.warmup} s "
          f"(not counted: the limiter reaches its steady state) then {args.seconds} s. The calls "
          f"sent in the measured span [t0, t1) are counted; goal: 200s within "
          f"[{ACCURACY_LOW:.2f}, {ACCURACY_HIGH:.2f}] x L x (t1 - t0), t0 and t1 the exact "
          f"monotonic times of the span.", ""]
    md += info + [f"- run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]
    if skipped:
        md += [f"**Cluster accuracy (two gateways behind one Redis) and the kill variant "
               f"skipped:** {skipped}. Measured instead: one gateway, its workers counting on "
               f"the node's shared table.", ""]
    if not alive_ok:
        md += ["**WARNING: the surviving gateway exited.**", ""]
    md += ["| variant | span | seconds | sent | 200 | L x s | 200 / (L x s) | allowed range "
           "| 429 | other | client lag max | verdict |",
           "|---|---|---:|---:|---:|---:|---:|---|---:|---|---:|---|"]
    for title, kill, parts in results:
        for name, p in parts.items():
            low, high = p.bounds()
            goal = name in ("whole span", "after the kill")
            verdict = ("PASS" if p.within() else "FAIL") if goal else "reported"
            other = ", ".join(f"{k}: {v}" for k, v in p.other.most_common()) or "none"
            md.append(f"| {title} | {name} | {p.seconds:.3f} | {p.sent:,} | {p.allowed:,} "
                      f"| {p.expected:,.1f} | {p.ratio:.3f} | {low:,}-{high:,} | {p.refused:,} "
                      f"| {other} | {p.max_lag * 1000:.1f} ms | {verdict} |")
    md.append("")
    md += ["200s per second of the measured span (from t0):", ""]
    for title, _kill, parts in results:
        md.append(f"- {title}: " + " ".join(str(x) for x in parts["whole span"].per_second))
    md += ["", "\"other\": answers other than 200 and 429, and calls without an answer "
           "(after a kill: calls to the killed gateway, refused connections, expected). "
           "\"client lag max\": the most a call was sent after its due time (the client's own "
           "delay; the offered rate holds while it stays well under a second)."]
    return "\n".join(md) + "\n"


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throttle_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes of each proxy (throughput; default 1)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated, among {','.join(TARGETS)} (default all)")
    p.add_argument("--warmup", type=int, default=harness.WARMUP_SECONDS,
                   help=f"seconds of warm-up: wrk on each target, or the accuracy client's "
                        f"uncounted start (default {harness.WARMUP_SECONDS})")
    p.add_argument("--accuracy", action="store_true",
                   help="measure the calls let through at 3x the limit instead of throughput")
    p.add_argument("--limit", type=int, default=500, help="accuracy: L, calls per second (default 500)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="accuracy: seconds counted (default 20)")
    p.add_argument("--accuracy-workers", type=int, default=2,
                   help="accuracy: workers of each gateway (default 2)")
    p.add_argument("--client-connections", type=int, default=16,
                   help="accuracy: keep-alive connections of the client to each gateway (default 16)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    p.add_argument("--keep-work", action="store_true",
                   help="keep benchmarks/.work/throttle-*/ (configs, logs) after a clean run")
    args = p.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_list) - set(TARGETS)
    if unknown or not args.target_list:
        p.error(f"--targets: unknown {sorted(unknown)}; choose among {','.join(TARGETS)}")
    args.target_list = [t for t in TARGETS if t in args.target_list]
    if min(args.duration, args.reps, args.connections, args.threads, args.workers,
           args.limit, args.accuracy_workers, args.client_connections) < 1 or args.warmup < 0:
        p.error("--duration, --reps, --connections, --threads, --workers, --limit, "
                "--accuracy-workers and --client-connections must be >= 1, --warmup >= 0")
    if args.connections < args.threads:
        p.error("--connections must be >= --threads (wrk needs a connection per thread)")
    if args.duration > 120 or args.seconds > 300 or args.warmup > 60:
        p.error("--duration is capped at 120 s, --seconds at 300, --warmup at 60")
    if not 1 <= args.seconds:
        p.error("--seconds must be >= 1")
    if args.limit > 100_000:
        p.error("--limit is capped at 100000 (the client offers 3x that)")
    if not args.accuracy and args.warmup < 1:
        p.error("--warmup must be >= 1 for the throughput runs")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    kind = "accuracy" if args.accuracy else "throughput"
    return harness.run_bench(
        f"throttle-{kind}", accuracy if args.accuracy else throughput, args,
        tools=(harness.NGINX,) + (() if args.accuracy else (harness.WRK,)),
        needs_tollgate=args.accuracy or any(TARGETS[n][1] != "nginx" for n in args.target_list))


if __name__ == "__main__":
    sys.exit(main())
