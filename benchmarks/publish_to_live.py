"""Publish-to-live, and a gateway's throughput while publishes stream in (real processes: the
control plane on a SQLite store, one gateway following it; mock-backend APIs).

    python -m benchmarks.publish_to_live [--sizes 10,10000] [--rounds 5]
    python -m benchmarks.publish_to_live --stream [--sizes 10,1000] [--seconds 5] [--cycles 3]

**Publish-to-live** (default): from the publish call sent to the first request the gateway
answers with the new version, for two kinds of publish:

* ``one``: API 0 edited (``PATCH``), then ``POST /v1/apis/api0/publish`` -- one API of N changes;
* ``all``: every API edited (``PUT /v1/config``), then ``POST /v1/publish {"apis": "all"}`` --
  every API of N changes.

Each round's time is split by the gateway's log lines (millisecond timestamps): the publish
call (read, document build, check, store: the answer to the call), the long-poll wake-up and
the transfer to the gateway, the follower's write and the master's check, the workers' reload
(from the master's signal to the last worker's "is live"), and the first answer seen (the
client asks every 5 ms).

**Stream** (``--stream``): wrk drives ``GET /a/0`` (the API the publishes change) for
``--seconds`` with nothing published (steady), then again for as long while API 0 is published
every second, alternating two versions (``POST /v1/apis/api0/rollback``), ``--cycles`` times in
turn; the req/s of both, their ratio and the errors (non-2xx answers, socket errors) are
reported side by side, with the CPU seconds of each process and the requests served per CPU
second of the gateway's workers (what the machine's other load does not move).

The sections ``publish-to-live`` / ``publish-stream`` of benchmarks/RESULTS.md are written
unless ``--no-write``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks import run as harness
from benchmarks.results import command_line, write_section
from tests.support.control_plane import ControlPlaneProcess
from tests.support.gateway import GatewayProcess

ADMIN = "benchmark-admin-token-0123456789"
PHASES = ("publish call", "wake-up + transfer", "write + master check", "worker reload",
          "first answer")


def api(i: int, body: str) -> dict:
    return {"name": f"api{i}", "group": "main", "method": "GET", "path": f"/a/{i}",
            "backend": {"type": "mock", "mock": {"status": 200, "body": body}},
            "environments": {"RELEASE": {}}}


def document(n: int, body: str) -> dict:
    return {"version": 1, "groups": [{"name": "main"}], "apis": [api(i, body) for i in range(n)]}


class Setup:
    """A control plane holding ``n`` APIs published once, and a gateway following it."""

    def __init__(self, n: int, workdir: Path, workers: int = 1):
        self.n, self.workdir, self.workers = n, workdir, workers
        self.cp = self.gw = None

    def __enter__(self) -> "Setup":
        self.cp = ControlPlaneProcess(self.workdir, admin_token=ADMIN).start()
        try:
            self.admin = self.cp.client(ADMIN)
            self.admin.timeout = httpx.Timeout(300.0)
            _ok(self.admin.put("/v1/config", json=document(self.n, "v0")), 200)
            token = _ok(self.admin.post("/v1/tokens", json={"name": "gw", "role": "gateway"}),
                        201).json()["token"]
            _ok(self.admin.post("/v1/publish", json={"env": "RELEASE", "apis": "all"}), 201)
            self.gw = GatewayProcess(None, self.workdir, workers=self.workers, extra_args=[
                "--control-plane", self.cp.url, f"--token={token}",
                "--state-dir", str(self.workdir / "state")]).start(timeout=300)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.gw is not None:
            self.gw.stop()
        self.admin.close() if hasattr(self, "admin") else None
        self.cp.stop()


def _ok(r: httpx.Response, status: int) -> httpx.Response:
    if r.status_code != status:
        raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:500]}")
    return r


# --------------------------------------------------------------------------------------------------
# Publish-to-live

_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "


def _when(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def phases(log: str, revision: int, sent: float, answered: float, live: float,
           workers: int) -> dict[str, float]:
    """The round's time split by the gateway's log lines (see the module's doc), in seconds."""
    m = re.search(rf"serving revision {revision} from the control plane \(\d+ bytes, written "
                  rf"and checked in (\d+) ms\)", log)
    reload = re.search(_STAMP + rf"master\[\d+\] INFO reload \(control plane revision "
                                rf"{revision}\)", log, re.M)
    if m is None or reload is None:
        raise RuntimeError(f"no line of revision {revision} in the gateway's log")
    checked_at, check = _when(reload.group(1)), int(m.group(1)) / 1000
    after = log[reload.end():]
    stamps = [_when(s) for s in re.findall(_STAMP + r"worker\[\d+\] INFO worker \d+: "
                                                    r"configuration \S+ is live", after, re.M)]
    if len(stamps) < workers:
        raise RuntimeError(f"revision {revision}: {len(stamps)} worker reload(s) logged")
    reloaded = max(stamps[:workers])
    return {"publish call": answered - sent,
            "wake-up + transfer": max(0.0, checked_at - check - answered),
            "write + master check": check,
            "worker reload": max(0.0, reloaded - checked_at),
            "first answer": max(0.0, live - reloaded)}


def _wait_body(client: httpx.Client, url: str, body: str, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(url).text == body:
            return time.time()
        time.sleep(0.005)
    raise RuntimeError(f"{url} did not answer {body!r} within {timeout:.0f} s")


def measure(n: int, rounds: int = 5, kinds=("one", "all"), workdir: Path | None = None
            ) -> dict[str, list[dict[str, float]]]:
    """``{kind: [{"total": s, <phase>: s...} per round]}``."""
    with tempfile.TemporaryDirectory(prefix="publish-bench-") as tmp, \
            Setup(n, Path(workdir or tmp)) as s, httpx.Client(timeout=10.0) as client:
        out: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for r in range(1, rounds + 1):
            for kind in kinds:
                body = f"{kind}{r}"
                if kind == "one":
                    _ok(s.admin.patch("/v1/apis/api0", json={"backend": {"mock": {
                        "body": body}}}), 200)
                    call = ("/v1/apis/api0/publish", {"env": "RELEASE"})
                else:
                    _ok(s.admin.put("/v1/config", json=document(n, body)), 200)
                    call = ("/v1/publish", {"env": "RELEASE", "apis": "all"})
                sent = time.time()
                revision = _ok(s.admin.post(call[0], json=call[1]), 201).json()["revision"]
                answered = time.time()
                live = _wait_body(client, s.gw.url + "/a/0", body)
                if kind == "all":           # (the last API too)
                    _wait_body(client, s.gw.url + f"/a/{n - 1}", body)
                time.sleep(0.3)             # (the log lines of the other workers)
                split = phases(s.gw.log(), revision, sent, answered, live, s.workers)
                out[kind].append({"total": live - sent, **split})
                print(f"{n} APIs, {kind}: {live - sent:.3f} s "
                      + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in split.items()),
                      file=sys.stderr)
        return out


def report_live(results: dict[int, dict[str, list[dict[str, float]]]], rounds: int) -> str:
    lines = ["## Publish-to-live (control plane -> following gateway)", "",
             f"Command: `{command_line()}`", ""]
    lines += [harness.machine_info()[0], harness.machine_info()[2],
              "- SQLite store, one gateway worker, mock-backend APIs (one environment); "
              f"{rounds} rounds of each kind, median (and max) of each column; the phases are "
              "read from the gateway's log lines (ms stamps)", "",
              "| APIs | publish | total (s) | max | " + " | ".join(PHASES) + " |",
              "|---:|---|---:|---:|" + "---:|" * len(PHASES)]
    for n, kinds in results.items():
        for kind, rows in kinds.items():
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            label = "one API changed" if kind == "one" else "all changed (`apis: all`)"
            lines.append(f"| {n:,} | {label} | {med['total']:.3f} | "
                         f"{max(r['total'] for r in rows):.3f} | "
                         + " | ".join(f"{med[p] * 1000:.0f} ms" for p in PHASES) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Stream

class _Sum:
    """wrk results of several runs added up (req/s over their whole time)."""

    def __init__(self) -> None:
        self.requests, self.seconds, self.non2xx = 0, 0.0, 0
        self.socket_errors: dict[str, int] = {}

    def add(self, w) -> None:
        self.requests += w.requests
        self.seconds += w.seconds
        self.non2xx += w.non2xx
        for k, v in w.socket_errors.items():
            self.socket_errors[k] = self.socket_errors.get(k, 0) + v

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.non2xx + sum(self.socket_errors.values())


def stream(n: int, seconds: int, connections: int = 8, workdir: Path | None = None,
           cycles: int = 3) -> dict:
    """wrk steady, then wrk while API 0 is published every second, ``cycles`` times in turn
    (so that a change of the machine's other load falls on both); see the module's doc."""
    with tempfile.TemporaryDirectory(prefix="publish-stream-") as tmp, \
            Setup(n, Path(workdir or tmp)) as s:
        for body in ("a", "b"):         # versions 2 and 3 of api0 (1: the setup's publish)
            _ok(s.admin.patch("/v1/apis/api0", json={"backend": {"mock": {"body": body}}}), 200)
            _ok(s.admin.post("/v1/apis/api0/publish", json={"env": "RELEASE"}), 201)
        url = s.gw.url + "/a/0"
        cpu = _Cpu(s)
        steady, during = _Sum(), _Sum()
        cpu_steady: dict[str, float] = {}
        cpu_during: dict[str, float] = {}
        calls: list[float] = []
        failures: list[str] = []
        version = 2

        def publisher(stop: threading.Event) -> None:
            nonlocal version
            next_at = time.monotonic()
            while not stop.is_set():
                start = time.monotonic()
                try:
                    _ok(s.admin.post("/v1/apis/api0/rollback",
                                     json={"env": "RELEASE", "version": version}), 201)
                    calls.append(time.monotonic() - start)
                except Exception as exc:  # noqa: BLE001 - reported
                    failures.append(str(exc))
                version = 5 - version       # 2, 3, 2, 3...
                next_at += 1.0
                stop.wait(max(0.0, next_at - time.monotonic()))

        for _cycle in range(cycles):
            steady.add(harness.run_wrk(url, seconds, 1, connections))
            _add(cpu_steady, cpu.lap())
            stop = threading.Event()
            thread = threading.Thread(target=publisher, args=(stop,), daemon=True)
            thread.start()
            try:
                during.add(harness.run_wrk(url, seconds, 1, connections))
            finally:
                stop.set()
                _add(cpu_during, cpu.lap())
                thread.join(30)
            cpu.lap()                   # (the publish still applying is in neither)
        applied = len(re.findall(r"serving revision \d+ from the control plane", s.gw.log()))
        return {"steady": steady, "during": during, "publishes": len(calls),
                "publish_failures": failures, "applied": applied,
                "call_median": statistics.median(calls) if calls else 0.0,
                "cpu_steady": cpu_steady, "cpu_during": cpu_during}


def _add(total: dict[str, float], lap: dict[str, float]) -> None:
    for k, v in lap.items():
        total[k] = total.get(k, 0.0) + v


class _Cpu:
    """CPU seconds used by the control plane, the gateway's master and its workers, and the
    machine's other processes, since the last lap (from /proc)."""

    def __init__(self, s: Setup):
        self.cp, self.master = s.cp.proc.pid, s.gw.proc.pid
        self.last = self._sample()

    def _sample(self) -> dict[str, float]:
        hz = os.sysconf("SC_CLK_TCK")
        tree = harness.process_tree(self.master)
        def ticks(st):
            return (st.utime + st.stime) / hz if st is not None else 0.0
        busy, _steal, _total = harness.system_cpu()
        out = {"control plane": ticks(harness._read_stat(self.cp)),
               "master": ticks(tree.get(self.master)),
               "workers": sum(ticks(p) for pid, p in tree.items() if pid != self.master),
               "machine": busy / hz}
        return out

    def lap(self) -> dict[str, float]:
        now = self._sample()
        out = {k: now[k] - self.last[k] for k in now}
        self.last = now
        return out


def report_stream(results: dict[int, dict], seconds: int, connections: int,
                  cycles: int = 3) -> str:
    lines = ["## Throughput while publishes stream in (one publish per second)", "",
             f"Command: `{command_line()}`", ""]
    lines += [harness.machine_info()[0], harness.machine_info()[2],
              f"- SQLite store, one gateway worker following the control plane; wrk -t1 "
              f"-c{connections} on the API the publishes change (`GET /a/0`, a mock backend), "
              f"{seconds} s steady then {seconds} s with a publish every second (rollbacks "
              f"alternating two versions), {cycles} times in turn in one run (figures: the "
              "sums)", "",
              "| APIs | steady req/s | during publishes req/s | ratio | errors steady | "
              "errors during | publishes (median call) | revisions applied | CPU s steady "
              "(cp / master / workers / machine) | CPU s during | requests per worker CPU s: "
              "during / steady |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for n, r in results.items():
        st, du = r["steady"], r["during"]
        lines.append(f"| {n:,} | {st.rps:,.0f} | {du.rps:,.0f} | {du.rps / st.rps:.2f} | "
                     f"{_errors(st)} | {_errors(du)} | {r['publishes']} "
                     f"({r['call_median'] * 1000:.0f} ms) | {r['applied']} | "
                     f"{_cpu(r['cpu_steady'])} | {_cpu(r['cpu_during'])} | "
                     f"{_per_cpu(du, r['cpu_during']) / _per_cpu(st, r['cpu_steady']):.2f} |")
    return "\n".join(lines) + "\n"


def _per_cpu(w, lap: dict[str, float]) -> float:
    """Requests served per CPU second of the gateway's workers (what the machine's other load
    does not move)."""
    return w.requests / max(lap["workers"], 1e-9)


def _cpu(lap: dict[str, float]) -> str:
    return " / ".join(f"{lap[k]:.1f}" for k in ("control plane", "master", "workers", "machine"))


def _errors(w) -> str:
    parts = [f"non-2xx {w.non2xx}"] + [f"{k} {v}" for k, v in w.socket_errors.items()]
    return ", ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None, help="APIs, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kinds", default="one,all")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in (args.sizes or ("10,1000" if args.stream else "10,10000")
                              ).split(",")]
    if args.stream:
        results = {n: stream(n, args.seconds, args.connections, cycles=args.cycles)
                   for n in sizes}
        text = report_stream(results, args.seconds, args.connections, args.cycles)
        name = "publish-stream"
    else:
        kinds = tuple(args.kinds.split(","))
        results = {n: measure(n, args.rounds, kinds) for n in sizes}
        text = report_live(results, args.rounds)
        name = "publish-to-live"
    print(text)
    if not args.no_write:
        write_section(name, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
