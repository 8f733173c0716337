"""What the workers' metric pushes cost the master and the workers, at N APIs.

``python -m benchmarks.metrics_push_bench [--apis 10000] [--workers 2] [--seconds 10]
[--busy-apis 5] [--before DIR] [--no-write]``

A real gateway (``tollgate gateway``, ``--workers`` workers) serves the document of
``benchmarks.many_apis`` (N url-backend APIs, two environments each).  Once ``/readyz`` answers
200 and a few seconds have passed, the CPU time of the master and of each worker is read from
/proc over ``--seconds``:

* **idle**: no request at all (what is left is the gateway's own clock: ticks, metric pushes);
* **busy**: one keep-alive client sends requests round-robin to ``--busy-apis`` APIs (its count
  is reported; the workers' CPU then is mostly the requests themselves).

Then the median time of 5 ``/metrics`` scrapes and of 20 ``/readyz`` answers (idle).
``--before DIR`` measures the checkout in DIR the same way first (e.g. the code before a change)
and puts both in the table; the results go to the ``metrics-push`` section of
benchmarks/RESULTS.md (``--no-write``: printed only).
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import many_apis
from benchmarks import run as harness
from benchmarks.reload_bench import write_atomic
from benchmarks.results import command_line, write_section

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(root: int) -> dict[int, int]:
    """utime+stime ticks of the master (key 0) and of each worker (key: pid)."""
    tree = harness.process_tree(root)
    out = {}
    for pid, st in tree.items():
        out[0 if pid == root else pid] = st.utime + st.stime
    return out


def cpu_over(root: int, seconds: float) -> tuple[float, float]:
    """(master, mean worker) CPU use over ``seconds``, in % of one CPU."""
    a = cpu_of(root)
    start = time.monotonic()
    time.sleep(seconds)
    b = cpu_of(root)
    wall = time.monotonic() - start
    master = (b[0] - a[0]) / TICKS / wall * 100
    workers = [(b[p] - a[p]) / TICKS / wall * 100 for p in b if p and p in a]
    return master, statistics.mean(workers) if workers else 0.0


class Traffic(threading.Thread):
    """One keep-alive client: GET /svc<i>/items/7 for i in 0..k-1, round-robin, until stopped."""

    def __init__(self, port: int, k: int):
        super().__init__(daemon=True)
        self.port, self.k, self.count, self.failed = port, k, 0, 0
        self.stop = threading.Event()

    def run(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        i = 0
        while not self.stop.is_set():
            try:
                c.request("GET", f"/svc{i % self.k}/items/7")
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    self.count += 1
                else:
                    self.failed += 1
            except (OSError, http.client.HTTPException):
                self.failed += 1
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            i += 1
        c.close()


class _Backend:
    """A backend answering 200 "ok" in one write (no Nagle / delayed-ACK stall per request)."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def timed(url: str, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        code, _body = harness.http_get(url, timeout=30.0)
        times.append(time.perf_counter() - start)
        if code != 200:
            raise RuntimeError(f"{url} answered {code}")
    return statistics.median(times)


def measure(root: str | None, args, workdir: Path, backend_port: int) -> dict:
    doc = many_apis.document(args.apis)
    for group in doc["groups"]:
        for env in group["variables"].values():
            env["backend"] = f"127.0.0.1:{backend_port}"
    path = workdir / "doc.json"
    write_atomic(path, doc)
    port, status_port = harness.free_port(), harness.free_port()
    argv = args.tollgate_cmd + [
        "gateway", "--config", str(path), "--listen", f"127.0.0.1:{port}",
        "--status-listen", f"127.0.0.1:{status_port}", "--workers", str(args.workers),
        "--watch-interval", "3600"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if root:
        env["PYTHONPATH"] = root
    harness.REPO = Path(root) if root else Path(__file__).resolve().parent.parent
    svc = harness.Service("gateway-" + ("before" if root else "after"), argv, workdir,
                          f"http://127.0.0.1:{port}", env=env)
    svc.start()
    status = f"http://127.0.0.1:{status_port}"
    try:
        svc.wait_ready(lambda: harness.http_get(status + "/readyz")[0] == 200, timeout=300.0)
        time.sleep(args.settle)
        out = {}
        out["idle"] = cpu_over(svc.pid, args.seconds)
        out["readyz"] = timed(status + "/readyz", 20)
        traffic = Traffic(port, args.busy_apis)
        traffic.start()
        time.sleep(1.0)
        before = traffic.count
        t0 = time.monotonic()
        out["busy"] = cpu_over(svc.pid, args.seconds)
        out["rate"] = (traffic.count - before) / (time.monotonic() - t0)
        traffic.stop.set()
        traffic.join()
        if traffic.failed:
            raise RuntimeError(f"{traffic.failed} requests failed")
        time.sleep(1.0)
        out["scrape"] = timed(status + "/metrics", 5)
        return out
    finally:
        svc.proc.send_signal(signal.SIGTERM)
        try:
            svc.proc.wait(60)
        except Exception:
            svc.stop()


def report(results: dict, args) -> str:
    lines = ["## Metric pushes: what they cost at many APIs", "",
             f"Command: `{command_line()}`", ""]
    lines += harness.machine_info()[:1] + harness.machine_info()[2:]
    lines += [f"- gateway: {args.workers} worker(s); the document of `benchmarks.many_apis` with "
              f"{args.apis:,} APIs ({2 * args.apis:,} compiled (API, environment)); CPU read "
              f"from /proc over {args.seconds:g} s, in % of one CPU (worker: mean of the "
              "workers); busy: one keep-alive client, round-robin over "
              f"{args.busy_apis} APIs; scrape and /readyz: median wall time", "",
              "| code | idle master | idle worker | busy master | busy worker | busy req/s "
              "| /readyz (ms) | /metrics (ms) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['idle'][0]:.1f} % | {r['idle'][1]:.1f} % | "
                     f"{r['busy'][0]:.1f} % | {r['busy'][1]:.1f} % | {r['rate']:.0f} | "
                     f"{r['readyz'] * 1000:.1f} | {r['scrape'] * 1000:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apis", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--busy-apis", type=int, default=5)
    parser.add_argument("--before", default=None, help="measure this checkout first")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.tollgate_cmd = harness.tollgate_command()
    backend = _Backend()
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="push-bench-") as tmp:
            runs = ([("before", args.before)] if args.before else []) + [("this checkout", None)]
            for name, root in runs:
                results[name] = measure(root, args, Path(tmp), backend.port)
                print(name, results[name], file=sys.stderr)
    finally:
        backend.close()
    text = report(results, args)
    print(text)
    if not args.no_write:
        write_section("metrics-push", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
