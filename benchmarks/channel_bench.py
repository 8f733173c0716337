"""What a load balance channel costs on the hot path, and what its members' failures cost clients.

Throughput (the default): one upstream nginx (benchmarks.run's ``upstream.conf``) listening on
two ports, which answers with the port that took the call (``X-Port``), and one Tollgate
(``--workers``, default 1) serving two APIs of the same shape (``GET``, prefix, ``auth: none``):

* ``plain`` (``GET /p/json``): ``url: http://UPSTREAM:PORT1/``, the gateway's own plain proxy;
* ``channel`` (``GET /c/json``): ``channel: pool, path: /``, the channel ``pool`` having the two
  ports as members (``balance: wrr``, equal weights; two members, two keep-alive pools) and an
  active health check (``protocol: http`` on ``/json``, ``interval_s`` 2, ``timeout_s`` 1).

One upstream process serves both members so that the upstream's CPU per call is the same for
both targets: what differs is the gateway's work.  (With ``--separate-upstreams`` the members are
two nginx processes: on a machine with two CPUs, two upstreams each serving half the calls cost
more in all than one serving them all, and the ratio then measures the upstreams too.)

Before measuring, the channel must spread calls (answers from both ports, or with separate
upstreams both upstreams' ``stub_status`` request counters move; the plain API's reach port or
upstream 1 only) and
``/status/channels`` on the status listener must show both members ``healthy``.  wrk (``-t1
-c50``) drives the targets interleaved over ``--reps`` runs of ``--duration`` s, order rotating,
after a warm-up of each.  Goal: channel >= 0.95x plain (req/s, ratio of medians).

Chaos (``--chaos``): the same gateway and channel, its members two upstream nginx on ports fixed
for the run; wrk (``-c50``) drives ``GET /c/json`` for ``--chaos-seconds`` (20) s; at
``--kill-at`` (5) s member 2 is killed (SIGKILL to its whole process group: it vanishes, its
connections are reset), at ``--restart-at`` (12) s it is started again on the same port.
Recorded: wrk's socket errors and non-2xx answers, req/s, the gateway's
``tollgate_channel_member_ejections_total`` and ``tollgate_channel_retries_total`` (deltas, from
the status listener's ``/metrics``), ``/status/channels`` after the kill and at the end, and
whether calls reached the restarted member (its request counter, less the health checks).  Goal:
0 errors and 0 non-2xx.  ``--chaos-reps`` (1) runs, each with fresh processes.

Both write their part of the ``channel`` section of RESULTS.md (``channel-throughput`` and
``channel-chaos`` inside it) unless ``--no-write``.

    python -m benchmarks.channel_bench [--duration 10] [--reps 3] [--connections 50] [--threads 1]
                                       [--workers 1] [--warmup 2] [--no-write] [--keep-work]
    python -m benchmarks.channel_bench --chaos [--chaos-seconds 20] [--kill-at 5]
                                       [--restart-at 12] [--chaos-reps 1]

Exit status as benchmarks.run: 0 clean, 1 when a run had errors or a goal was missed, 2 when the
benchmark could not run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import auth_bench
from benchmarks import run as harness
from benchmarks.results import RESULTS, command_line, write_section

GROUP = "bench"
CHANNEL = "pool"
HEALTH = {"protocol": "http", "path": harness.PATH, "interval_s": 2, "timeout_s": 1}
#: name -> (label in the report, path wrk drives)
TARGETS = {"plain": ("Tollgate, plain url backend", "/p/json"),
           "channel": ("Tollgate, channel of 2 members (wrr)", "/c/json")}
GOAL = 0.95               # channel / plain req/s
SPREAD_CALLS = 40         # channel calls of the spread check
HEALTHY_TIMEOUT = 20.0    # s for both members to be healthy (checks every 2 s, 2 successes)
METRICS = ("tollgate_channel_member_ejections_total", "tollgate_channel_retries_total")


# --------------------------------------------------------------------------------------------
# Configuration


def api(name: str, prefix: str, backend: dict) -> dict:
    return {"name": name, "group": GROUP, "method": "GET", "path": prefix,
            "match_mode": "prefix", "auth": "none", "backend": backend,
            "environments": {"RELEASE": {}}}


def gateway_config(upstream1: str, upstream2: str) -> dict:
    """``plain`` (``/p``: url to upstream 1) and ``channel`` (``/c``: channel ``pool`` of
    upstreams 1 and 2, wrr, equal weights, active http health check)."""
    (h1, p1), (h2, p2) = (u.rsplit(":", 1) for u in (upstream1, upstream2))
    return {"version": 1,
            "groups": [{"name": GROUP, "variables": {"RELEASE": {"upstream": upstream1}}}],
            "channels": [{"name": CHANNEL, "port": int(p1), "balance": "wrr",
                          "members": [{"host": h1, "port": int(p1), "weight": 1},
                                      {"host": h2, "port": int(p2), "weight": 1}],
                          "health_check": dict(HEALTH)}],
            "apis": [api("plain", "/p", {"type": "http", "url": "http://#upstream#/",
                                         "timeout_ms": 5000}),
                     api("channel", "/c", {"type": "http", "channel": CHANNEL, "path": "/",
                                           "timeout_ms": 5000})]}


# --------------------------------------------------------------------------------------------
# Upstreams on fixed ports (the chaos run starts one again on the same port)


@dataclass
class Upstream:
    name: str
    workdir: Path
    port: int
    status_port: int
    service: harness.Service | None = None
    #: a second port the same nginx listens on (0: none): two channel members served by one
    #: process, whose answers say which port took them (``X-Port``)
    port2: int = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def addr2(self) -> str:
        return f"127.0.0.1:{self.port2}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}/status"

    def requests(self) -> int:
        return harness.upstream_counters(self.status_url)[1]

    def start(self) -> None:
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        conf = harness.render(harness.HERE / "nginx" / "upstream.conf",
                              self.workdir / "upstream.conf", WORKERS=1, WORKDIR=self.workdir,
                              PORT=self.port, STATUS_PORT=self.status_port, BODY=harness.BODY)
        if self.port2:
            first = f"listen 127.0.0.1:{self.port} backlog=4096;"
            text = conf.read_text()
            assert first in text, "upstream.conf changed: no listen line to add a port after"
            conf.write_text(text.replace(first, f"{first}\n        listen 127.0.0.1:{self.port2} "
                                         f"backlog=4096;\n        add_header X-Port "
                                         f"$server_port always;", 1))
        svc = harness.Service(self.name, [harness.NGINX, "-p", str(self.workdir), "-c",
                                          str(conf), "-g", "daemon off;"],
                              self.workdir, f"http://{self.addr}")
        svc.start()
        self.service = svc
        svc.wait_ready(lambda: harness.http_get(svc.url + harness.PATH)
                       == (200, harness.BODY.encode()))

    def kill(self) -> int:
        """SIGKILL to its whole process group (master and worker at once); processes killed."""
        svc = self.service
        n = len(harness.process_tree(svc.pid))
        os.killpg(svc.pid, signal.SIGKILL)
        svc.proc.wait(timeout=harness.STOP_TIMEOUT)
        if svc in harness._SERVICES:
            harness._SERVICES.remove(svc)
        svc.proc = None
        return n


def start_shared_upstream(workdir: Path) -> Upstream:
    """One upstream nginx listening on two ports: the channel's two members."""
    up = Upstream("upstream", workdir / "upstream", harness.free_port(), harness.free_port(),
                  port2=harness.free_port())
    up.start()
    return up


def port_of_answer(url: str) -> tuple[int, str | None]:
    """(status, X-Port) of GET url."""
    import http.client
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("X-Port")
    finally:
        conn.close()


def check_shared_spread(gw: harness.Service, up: Upstream) -> list[str]:
    """Channel calls reach both ports of the shared upstream, plain calls the first only."""
    seen = []
    for path, want in (("/c/json", {str(up.port), str(up.port2)}), ("/p/json", {str(up.port)})):
        ports: dict[str, int] = {}
        for _ in range(SPREAD_CALLS):
            status, port = port_of_answer(gw.url + path)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}; log tail:\n{gw.log_tail()}")
            ports[str(port)] = ports.get(str(port), 0) + 1
        seen.append(f"{SPREAD_CALLS} x GET {path}: answered on ports "
                    + ", ".join(f"{p} {n}" for p, n in sorted(ports.items())))
        if set(ports) != want or (len(want) == 2 and min(ports.values()) < SPREAD_CALLS // 4):
            raise RuntimeError(f"unexpected spread: {seen[-1]}")
    return seen


def start_upstreams(workdir: Path) -> list[Upstream]:
    ups = []
    for i in (1, 2):
        up = Upstream(f"upstream-{i}", workdir / f"upstream-{i}", harness.free_port(),
                      harness.free_port())
        up.start()
        ups.append(up)
    return ups


# --------------------------------------------------------------------------------------------
# The gateway's channel state


def channel_status(gw: harness.Service) -> dict:
    code, body = harness.http_get(f"http://127.0.0.1:{gw.status_port}/status/channels")
    if code != 200:
        raise RuntimeError(f"/status/channels answered {code}: {body[:200]!r}")
    for ch in json.loads(body)["channels"]:
        if ch["name"] == CHANNEL:
            return ch
    raise RuntimeError(f"/status/channels has no channel {CHANNEL!r}: {body[:300]!r}")


def member_states(gw: harness.Service) -> dict[str, str]:
    """``host:port`` -> state (``unknown``, ``healthy``, ``unhealthy``) of the channel's members."""
    return {f"{m['host']}:{m['port']}": m["state"] for m in channel_status(gw)["members"]}


def states_text(states: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in states.items())


def wait_healthy(gw: harness.Service, timeout: float = HEALTHY_TIMEOUT) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = member_states(gw)
        if set(states.values()) == {"healthy"}:
            return states
        if time.monotonic() > deadline:
            raise RuntimeError(f"the channel's members are not all healthy after {timeout:.0f}s "
                               f"(/status/channels: {states_text(states)}); gateway log tail:\n"
                               f"{gw.log_tail()}")
        time.sleep(0.2)


def channel_counters(gw: harness.Service) -> dict[str, float]:
    """The channel's ejection and retry counters from the status listener's /metrics."""
    code, body = harness.http_get(f"http://127.0.0.1:{gw.status_port}/metrics")
    if code != 200:
        raise RuntimeError(f"/metrics answered {code}")
    return parse_counters(body.decode(), CHANNEL)


def parse_counters(text: str, channel: str) -> dict[str, float]:
    out = {name: 0.0 for name in METRICS}
    for line in text.splitlines():
        m = re.match(r'^(\w+)\{([^}]*)\}\s+(\S+)', line)
        if m and m.group(1) in out and f'channel="{channel}"' in m.group(2):
            out[m.group(1)] += float(m.group(3))
    return out


def check_spread(gw: harness.Service, ups: list[Upstream]) -> list[str]:
    """Channel calls reach both members, plain calls upstream 1 only; what was seen."""
    seen = []
    for path, share in (("/c/json", None), ("/p/json", 0)):
        before = [u.requests() for u in ups]
        for _ in range(SPREAD_CALLS):
            code, body = harness.http_get(gw.url + path)
            if (code, body) != (200, harness.BODY.encode()):
                raise RuntimeError(f"GET {path} answered {code} {body[:200]!r}, expected 200 and "
                                   f"the upstream's document; log tail:\n{gw.log_tail()}")
        # less our own stub_status read (1) and at most a health check or two per member
        got = [u.requests() - b - 1 for u, b in zip(ups, before)]
        seen.append(f"{SPREAD_CALLS} x GET {path}: upstream 1 served {got[0]}, upstream 2 "
                    f"{got[1]} (health checks included)")
        if share is None and min(got) < SPREAD_CALLS // 4:
            raise RuntimeError(f"the channel does not spread its calls: {seen[-1]}")
        if share == 0 and (got[0] < SPREAD_CALLS or got[1] > 3):
            raise RuntimeError(f"the plain API does not go to upstream 1 only: {seen[-1]}")
    return seen


def start_gateway(workdir: Path, ups: list[Upstream], args, name: str = "tollgate"
                  ) -> harness.Service:
    second = ups[1].addr if len(ups) > 1 else ups[0].addr2
    conf = auth_bench.write_config(gateway_config(ups[0].addr, second),
                                   workdir / f"{name}.yaml")
    ok, out = auth_bench.validate(args.tollgate_cmd, conf)
    if not ok:
        raise RuntimeError(f"the gateway refuses the benchmark's configuration {conf}:\n{out}")
    return auth_bench.start_gateway(workdir, conf, args, name)


def gateway_errors(gw: harness.Service, lines: int = 40) -> str | None:
    tail = gw.log_tail(400)
    if re.search(r"Traceback|\bERROR\b|\bCRITICAL\b", tail):
        return gw.log_tail(lines)
    return None


# --------------------------------------------------------------------------------------------
# Throughput


def throughput(args, workdir: Path) -> int:
    info = harness.machine_info()
    ups = start_upstreams(workdir) if args.separate_upstreams else [
        start_shared_upstream(workdir)]
    gw = start_gateway(workdir, ups, args)
    states = wait_healthy(gw)
    seen = [f"/status/channels: {states_text(states)}"] + (
        check_spread(gw, ups) if len(ups) > 1 else check_shared_spread(gw, ups[0]))
    targets = {n: harness.Target(n, gw, gw.url + TARGETS[n][1]) for n in TARGETS}
    names = list(TARGETS)

    notes: list[str] = []
    for n in names:
        harness.log(f"warm-up {n}: {args.warmup}s")
        warm = harness.run_wrk(targets[n].url, args.warmup, args.threads, args.connections)
        if warm.errors or not gw.alive():
            notes.append(f"{n} warm-up: {warm.errors} errors (socket {warm.socket_errors}, "
                         f"non-2xx {warm.non2xx}); gateway {gw.died_why()}")
            harness.loud(notes[-1])

    runs: list[harness.Run] = []
    busy0, steal0, total0 = harness.system_cpu()
    for rep in range(1, args.reps + 1):
        k = (rep - 1) % len(names)
        for n in names[k:] + names[:k]:
            harness.log(f"rep {rep}/{args.reps}: {n} for {args.duration}s")
            r = measure(targets[n], ups, rep, args)
            runs.append(r)
            harness.log(f"  {r.wrk.rps:,.0f} req/s, p99 {_ms(r.wrk.p99_ms)} ms, CPU "
                        f"{r.cpu_us:.1f} us/req, upstreams {r.upstream_requests:,} / "
                        f"{r.up2_requests:,}")
    busy1, steal1, total1 = harness.system_cpu()
    span = max(total1 - total0, 1)
    load = (f"machine busy {100 * (busy1 - busy0) / span:.0f}% of all CPUs, steal "
            f"{100 * (steal1 - steal0) / span:.1f}%; load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    end_states = member_states(gw)
    if set(end_states.values()) != {"healthy"}:
        notes.append(f"after the runs, /status/channels: {states_text(end_states)}")
    errors = gateway_errors(gw)
    if errors:
        notes.append("the gateway logged errors; tail of its log:\n\n```\n" + errors + "\n```")

    md, ok = throughput_report(args, names, runs, info, load, notes, seen)
    print(md)
    if not args.no_write:
        write_part("throughput", md)
    clean = not any(r.problems for r in runs) and not notes
    if not clean:
        harness.loud("some runs were not clean: see the WARNING above")
    if not ok:
        harness.loud(f"goal missed: channel / plain req/s < {GOAL:.2f}")
    return 0 if clean and ok else 1


def measure(target: harness.Target, ups: list[Upstream], rep: int, args) -> harness.Run:
    """auth_bench.measure_target (upstream 1 as the harness's upstream), plus upstream 2: its
    requests (``up2_requests``) and CPU per request (``up2_cpu_us``), which ``other_load`` (the
    machine's other processes, in % of all CPUs) does not count."""
    if len(ups) == 1:
        r = auth_bench.measure_target(target, ups[0].service, ups[0].status_url, rep, args)
        r.up2_requests, r.up2_cpu_us = 0, 0.0
        return r
    up2 = ups[1]
    n2, cpu2 = up2.requests(), up2.service.cpu()
    _b, _s, total0 = harness.system_cpu()
    r = auth_bench.measure_target(target, ups[0].service, ups[0].status_url, rep, args)
    _b, _s, total1 = harness.system_cpu()
    cpu2_after = up2.service.cpu()
    ticks2 = (cpu2_after.user + cpu2_after.system) - (cpu2.user + cpu2.system)
    r.up2_requests = up2.requests() - n2 - 1
    r.up2_cpu_us = ticks2 * 1e6 / harness.CLK_TCK / max(r.wrk.requests, 1)
    r.other_load = max(0.0, r.other_load - 100 * ticks2 / max(total1 - total0, 1))
    return r


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def throughput_report(args, names, runs, info, load, notes, seen) -> tuple[str, bool]:
    by, med, per_rep, ratio = auth_bench.summarize(names, runs)
    md = ["### Throughput: channel of two members beside a plain url backend", "",
          f"Command: `{command_line()}`", "",
          f"Setup: one Tollgate ({args.workers} worker(s)) serving `GET /p/json` (`plain`: "
          f"prefix `/p`, `url` to upstream 1) and `GET /c/json` (`channel`: the same API shape, "
          f"backend `channel: {CHANNEL}, path: /`; members upstreams 1 and 2, `wrr`, equal "
          f"weights, health check `http` on `{HEALTH['path']}` every {HEALTH['interval_s']} s, "
          f"timeout {HEALTH['timeout_s']} s); "
          + ("two upstream nginx (1 worker each)" if args.separate_upstreams else
             "one upstream nginx (1 worker) listening on two ports, the members (so the "
             "upstream's CPU per call is the same for both targets)")
          + f" answering a "
          f"{len(harness.BODY)}-byte JSON document. wrk `-t{args.threads} -c{args.connections} "
          f"-d{args.duration}s --latency`, {args.reps} reps, targets interleaved (order rotates "
          f"each rep), after a {args.warmup}s warm-up of each; medians. 127.0.0.1 only. CPU "
          f"us/req: user+system CPU of the gateway's processes (master and workers) / requests.",
          ""]
    md += info + [f"- during the measured runs: {load}",
                  f"- run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]
    md += ["Checked before measuring (else the figures would be a single backend's):", ""]
    md += [f"- {s}" for s in seen] + [""]
    problems = [r for r in runs if r.problems]
    if problems or notes:
        md += ["**WARNING: some runs were not clean:**", ""]
        md += [f"- {r.target} rep {r.rep}: {'; '.join(r.problems)}" for r in problems]
        md += [f"- {n}" for n in notes] + [""]
    md += ["| target | req/s | p50 ms | p99 ms | CPU us/req | user |",
           "|---|---:|---:|---:|---:|---:|"]
    for n in names:
        m = med[n]
        md.append(f"| {TARGETS[n][0]} (`{n}`) | {m['rps']:,.0f} | {_ms(m['p50'])} "
                  f"| {_ms(m['p99'])} | {m['cpu']:.1f} | {m['user']:.1f} |")
    r, pr = ratio("channel", "plain"), per_rep("channel", "plain")
    ok = r >= GOAL
    md += ["", "| | ratio of medians | per-rep ratios | CPU us/req added | goal | verdict |",
           "|---|---:|---|---:|---|---|",
           f"| `channel` / `plain` req/s | {r:.2f}x | {', '.join(f'{x:.2f}' for x in pr)} "
           f"| {med['channel']['cpu'] - med['plain']['cpu']:+.1f} | >= {GOAL:.2f}x "
           f"| {'PASS' if ok else 'FAIL'} |", ""]
    md += ["Per rep:", "", "| rep | target | req/s | p99 ms | CPU us/req (user/sys) "
           "| upstream 1 / 2 reqs | upstreams CPU us/req (1 + 2) | other load | errors |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for x in runs:
        md.append(f"| {x.rep} | `{x.target}` | {x.wrk.rps:,.0f} | {_ms(x.wrk.p99_ms)} "
                  f"| {x.cpu_us:.1f} ({x.cpu_user_us:.1f}/{x.cpu_sys_us:.1f}) "
                  f"| {x.upstream_requests:,} / {x.up2_requests:,} "
                  f"| {x.upstream_cpu_us + x.up2_cpu_us:.1f} ({x.upstream_cpu_us:.1f} + "
                  f"{x.up2_cpu_us:.1f}) | {x.other_load:.0f}% "
                  f"| {'; '.join(x.problems) if x.problems else 'none'} |")
    md += ["", ("\"upstream 1 / 2 reqs\": requests each upstream served during the run (health "
            "checks included, one every 2 s per member). \"upstreams CPU us/req\": CPU time of "
            "the two upstream nginx per request wrk completed: two upstreams each serving half "
            "the calls cost more in all than one serving them all, and on a machine with few "
            "CPUs they compete with the gateway and wrk (compare the gateway's CPU us/req). "
            if args.separate_upstreams else
            "\"upstream 1 / 2 reqs\": requests the one upstream served during the run, on both "
            "of its ports (health checks included, one every 2 s per member); \"upstreams CPU "
            "us/req\": its CPU time per request wrk completed. ") +
           "\"other load\": CPU time of the machine's other processes during the run, in % of "
           "all CPUs (see `benchmarks.auth_bench`)."]
    return "\n".join(md) + "\n", ok


# --------------------------------------------------------------------------------------------
# Chaos


@dataclass
class ChaosRun:
    rep: int
    wrk: harness.WrkResult
    killed_procs: int
    t_kill: float               # s from wrk's start
    t_restart: float            # s from wrk's start: the restarted member answers
    counters: dict[str, float]  # deltas over the run
    after_kill: dict[str, str]  # member states ~1 s after the kill
    at_end: dict[str, str]
    back_calls: int             # calls the restarted member served after it answered again
    back_checks: int            # of which (at most) health checks
    other_calls: int            # the surviving member over the same span
    gateway_alive: bool
    log_lines: list[str] = field(default_factory=list)   # what the gateway logged meanwhile
    problems: list[str] = field(default_factory=list)

    @property
    def returned(self) -> bool:
        return self.back_calls - self.back_checks > 0

    @property
    def errors(self) -> int:
        return self.wrk.errors


def chaos_once(args, workdir: Path, rep: int) -> ChaosRun:
    ups = start_upstreams(workdir)
    gw = start_gateway(workdir, ups, args)
    wait_healthy(gw)
    check_spread(gw, ups)
    harness.log(f"chaos rep {rep}: warm-up {args.warmup}s")
    harness.run_wrk(gw.url + "/c/json", args.warmup, args.threads, args.connections)
    wait_healthy(gw)
    log_mark = len(gw.log_path.read_bytes())
    c0 = channel_counters(gw)
    victim, survivor = ups[1], ups[0]
    argv = [harness.WRK, f"-t{args.threads}", f"-c{args.connections}",
            f"-d{args.chaos_seconds}s", "--latency", "--timeout", "5s", gw.url + "/c/json"]
    harness.log(f"chaos rep {rep}: wrk for {args.chaos_seconds}s; kill {victim.name} at "
                f"{args.kill_at}s, start it again at {args.restart_at}s")
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, preexec_fn=harness._pdeathsig)
    try:
        time.sleep(max(0.0, start + args.kill_at - time.monotonic()))
        t_kill = time.monotonic() - start
        killed = victim.kill()
        harness.log(f"  killed {victim.name} ({killed} processes) at {t_kill:.2f}s")
        time.sleep(max(0.0, min(1.0, args.restart_at - args.kill_at - 0.2)))
        after_kill = member_states(gw)
        time.sleep(max(0.0, start + args.restart_at - time.monotonic()))
        victim.start()
        t_restart = time.monotonic() - start
        back0, other0 = victim.requests(), survivor.requests()
        harness.log(f"  {victim.name} answers again at {t_restart:.2f}s")
        out, err = proc.communicate(timeout=args.chaos_seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t_end = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {out}{err}")
    back = victim.requests() - back0 - 1
    other = survivor.requests() - other0 - 1
    # the health checks it may have served since it answered: one per interval, plus one
    checks = int((t_end - t_restart) / HEALTH["interval_s"]) + 1
    c1 = channel_counters(gw)
    run = ChaosRun(rep=rep, wrk=harness.parse_wrk(out), killed_procs=killed, t_kill=t_kill,
                   t_restart=t_restart, counters={k: c1[k] - c0[k] for k in METRICS},
                   after_kill=after_kill, at_end=member_states(gw), back_calls=back,
                   back_checks=checks, other_calls=other, gateway_alive=gw.alive())
    text = gw.log_path.read_bytes()[log_mark:].decode("utf-8", "replace")
    run.log_lines = [ln for ln in text.splitlines() if ln.strip()][-30:]
    w = run.wrk
    if w.socket_errors:
        run.problems.append("socket errors " + ", ".join(f"{k} {v}"
                                                         for k, v in w.socket_errors.items()))
    if w.non2xx:
        run.problems.append(f"{w.non2xx} non-2xx/3xx answers")
    if not run.gateway_alive:
        run.problems.append(f"the gateway {gw.died_why()}")
    if not run.returned:
        run.problems.append(f"no call reached the restarted member in the "
                            f"{t_end - t_restart:.1f}s after it answered again")
    if re.search(r"Traceback|\bCRITICAL\b", text):
        run.problems.append("the gateway logged a traceback")
    for p in run.problems:
        harness.loud(f"chaos rep {rep}: {p}")
    harness.log(f"  {w.rps:,.0f} req/s, errors {w.socket_errors or 0}, non-2xx {w.non2xx}; "
                f"ejections {run.counters[METRICS[0]]:.0f}, retries {run.counters[METRICS[1]]:.0f}; "
                f"restarted member served {back} calls")
    return run


def chaos(args, workdir: Path) -> int:
    info = harness.machine_info()
    runs = []
    for rep in range(1, args.chaos_reps + 1):
        runs.append(chaos_once(args, workdir / f"rep-{rep}", rep))
        harness.stop_all()
    md = chaos_report(args, info, runs)
    print(md)
    if not args.no_write:
        write_part("chaos", md)
    ok = not any(r.problems for r in runs)
    if not ok:
        harness.loud("chaos goal missed (errors, non-2xx, or the member got no traffic back): "
                     "see the report")
    return 0 if ok else 1


def chaos_report(args, info, runs: list[ChaosRun]) -> str:
    md = ["### Chaos: a member killed and started again under load", "",
          f"Command: `{command_line()}`", "",
          f"Setup: the throughput run's gateway ({args.workers} worker(s)) and channel (members "
          f"two upstream nginx on ports fixed for the run; `wrr`, health check `http` every "
          f"{HEALTH['interval_s']} s, `healthy_threshold` 2 by default; backend `retries` "
          f"default: one retry for GET). wrk `-t{args.threads} -c{args.connections} "
          f"-d{args.chaos_seconds}s --timeout 5s` on `GET /c/json`, after a {args.warmup}s "
          f"warm-up; at {args.kill_at:g} s member 2 is killed (SIGKILL to its process group: "
          f"master and worker vanish, their connections are reset), at {args.restart_at:g} s it "
          f"is started again on the same port. Goal: no socket error and no non-2xx answer, "
          f"and calls reach the restarted member again. {args.chaos_reps} run(s), each with "
          f"fresh processes.", ""]
    md += info + [f"- run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]
    md += ["| run | req/s | requests | socket errors | non-2xx | ejections | retries "
           "| states ~1 s after the kill | restarted member: calls / of which checks (at most) "
           "| survivor, same span | verdict |",
           "|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---|"]
    for r in runs:
        se = ", ".join(f"{k} {v}" for k, v in r.wrk.socket_errors.items()) or "0"
        md.append(f"| {r.rep} | {r.wrk.rps:,.0f} | {r.wrk.requests:,} | {se} | {r.wrk.non2xx:,} "
                  f"| {r.counters[METRICS[0]]:.0f} | {r.counters[METRICS[1]]:.0f} "
                  f"| {states_text(r.after_kill)} | {r.back_calls:,} / {r.back_checks} "
                  f"| {r.other_calls:,} | {'PASS' if not r.problems else 'FAIL'} |")
    md.append("")
    for r in runs:
        md += [f"Run {r.rep}: kill at {r.t_kill:.2f} s ({r.killed_procs} processes), member "
               f"answering again at {r.t_restart:.2f} s; states at the end: "
               f"{states_text(r.at_end)}."
               + (f" **Problems:** {'; '.join(r.problems)}." if r.problems else ""), ""]
        if r.log_lines:
            md += ["What the gateway logged during the run:", "", "```"] + r.log_lines + ["```", ""]
    md += ["\"ejections\" / \"retries\": increase of `tollgate_channel_member_ejections_total` and "
           "`tollgate_channel_retries_total` for the channel over the run (status listener "
           "`/metrics`). \"restarted member: calls\": requests it served from when it answered "
           "again to the end, health checks included (at most one per interval, plus one); "
           "traffic came back when calls exceed the checks."]
    return "\n".join(md) + "\n"


# --------------------------------------------------------------------------------------------
# RESULTS.md: the ``channel`` section holds a part per mode


def write_part(part: str, md: str, path: Path = RESULTS) -> None:
    """Rewrite the ``channel-PART`` block inside the ``channel`` section (made when missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    parts = ("throughput", "chaos")
    if "<!-- begin:channel -->" not in text or f"<!-- begin:channel-{part} -->" not in text:
        keep = {}
        for p in parts:
            m = re.search(rf"<!-- begin:channel-{p} -->\n(.*?)\n<!-- end:channel-{p} -->", text,
                          re.S)
            keep[p] = m.group(1) if m else "(not run yet)"
        body = ["## Load balance channels", ""]
        for p in parts:
            body += [f"<!-- begin:channel-{p} -->", keep[p], f"<!-- end:channel-{p} -->", ""]
        write_section("channel", "\n".join(body), path)
    write_section(f"channel-{part}", md, path)
    harness.log(f"wrote the '{part}' part of the 'channel' section of {path}")


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.channel_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    p.add_argument("--warmup", type=int, default=harness.WARMUP_SECONDS,
                   help=f"seconds of wrk warm-up of each target (default {harness.WARMUP_SECONDS})")
    p.add_argument("--separate-upstreams", action="store_true",
                   help="throughput: the two members are two nginx processes (default: one nginx "
                        "listening on two ports, so the upstream's cost per call is the plain "
                        "API's)")
    p.add_argument("--chaos", action="store_true",
                   help="kill a member under load and start it again, instead of throughput")
    p.add_argument("--chaos-seconds", type=int, default=20, help="chaos: wrk's span (default 20)")
    p.add_argument("--kill-at", type=float, default=5.0,
                   help="chaos: s into the span when member 2 is killed (default 5)")
    p.add_argument("--restart-at", type=float, default=12.0,
                   help="chaos: s into the span when it is started again (default 12)")
    p.add_argument("--chaos-reps", type=int, default=1, help="chaos: runs (default 1)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    p.add_argument("--keep-work", action="store_true",
                   help="keep benchmarks/.work/channel-*/ (configs, logs) after a clean run")
    args = p.parse_args(argv)
    if min(args.duration, args.reps, args.connections, args.threads, args.workers,
           args.warmup, args.chaos_seconds, args.chaos_reps) < 1:
        p.error("--duration, --reps, --connections, --threads, --workers, --warmup, "
                "--chaos-seconds and --chaos-reps must be >= 1")
    if args.connections < args.threads:
        p.error("--connections must be >= --threads (wrk needs a connection per thread)")
    if args.duration > 120 or args.chaos_seconds > 300 or args.warmup > 60:
        p.error("--duration is capped at 120 s, --chaos-seconds at 300, --warmup at 60")
    if not 0 < args.kill_at < args.restart_at < args.chaos_seconds:
        p.error("need 0 < --kill-at < --restart-at < --chaos-seconds")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    kind = "chaos" if args.chaos else "throughput"
    return harness.run_bench(f"channel-{kind}", chaos if args.chaos else throughput, args)


if __name__ == "__main__":
    sys.exit(main())
