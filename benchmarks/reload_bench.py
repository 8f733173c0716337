"""Reload speed: from SIGHUP to live, for documents of N url-backend APIs.

``python -m benchmarks.reload_bench [--sizes 10,1000,10000] [--reps 3] [--workers 2]``

For each N a real gateway (``tollgate gateway``, ``--workers`` workers) serves the document of
``benchmarks.many_apis`` (N APIs, two environments each).  Two kinds of reload, ``--reps`` times
each, the file replaced (atomic rename) and the master sent SIGHUP:

* **full**: every API's backend url changes (the whole snapshot is new);
* **one API**: one API's backend url changes (the rest may be reused).

The time measured runs from the SIGHUP to the moment the master's ``/readyz`` reports the new
``config_version`` for the master and for every worker (each worker reports after its swap), by
polling every 10 ms; the median of the reps is reported, with the range.  After each reload a
request to the changed API checks that the new backend url is served.  The file watcher is
slowed down (``--watch-interval 3600``) so that only the SIGHUP reloads.

``--root DIR`` runs the gateway from another checkout (e.g. the code before a change) for a
comparison; the results go to the ``reload`` section of benchmarks/RESULTS.md (``--no-write``:
printed only).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import many_apis
from benchmarks import run as harness
from benchmarks.results import command_line, write_section


def documents(n: int) -> tuple[dict, dict, dict]:
    """(base, every API changed, API 0 changed)."""
    base = many_apis.document(n)
    full = json.loads(json.dumps(base))
    for api in full["apis"]:
        api["backend"]["url"] = "http://#backend#/v2/items/{id}"
    one = json.loads(json.dumps(base))
    one["apis"][0]["backend"]["url"] = "http://#backend#/v2/items/{id}"
    return base, full, one


def write_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def readyz(status: str) -> dict:
    code, body = harness.http_get(status + "/readyz", timeout=5.0)
    return json.loads(body) if body else {}


def wait_live(status: str, old: str, timeout: float = 60.0) -> str:
    """Poll /readyz until the master and every worker report a version other than ``old``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = readyz(status)
        except (OSError, ValueError):
            state = {}
        version = state.get("config_version", old)
        workers = state.get("workers") or []
        if version != old and workers and all(w["config_version"] == version for w in workers):
            return version
        time.sleep(0.01)
    raise RuntimeError(f"the reload did not go live within {timeout:.0f} s")


def reload_once(svc, status: str, path: Path, doc: dict) -> float:
    old = readyz(status)["config_version"]
    write_atomic(path, doc)
    start = time.perf_counter()
    os.kill(svc.pid, signal.SIGHUP)
    wait_live(status, old)
    return time.perf_counter() - start


def served_path(svc_url: str, path: str, expected: str) -> None:
    """The changed API forwards to the new backend path (the backend answers with its path)."""
    code, body = harness.http_get(svc_url + path, timeout=5.0)
    if code != 200 or expected.encode() not in body:
        raise RuntimeError(f"GET {path} answered {code} {body[:200]!r}: expected {expected!r}")


def measure(n: int, args, workdir: Path, backend_port: int) -> dict:
    base, full, one = documents(n)
    for doc in (base, full, one):
        for group in doc["groups"]:
            for env in group["variables"].values():
                env["backend"] = f"127.0.0.1:{backend_port}"
    path = workdir / f"doc-{n}.json"
    write_atomic(path, base)
    port, status_port = harness.free_port(), harness.free_port()
    argv = args.tollgate_cmd + [
        "gateway", "--config", str(path), "--listen", f"127.0.0.1:{port}",
        "--status-listen", f"127.0.0.1:{status_port}", "--workers", str(args.workers),
        "--watch-interval", "3600"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.root:
        env["PYTHONPATH"] = args.root
    svc = harness.Service(f"gateway-{n}", argv, workdir, f"http://127.0.0.1:{port}", env=env)
    if args.root:
        harness.REPO = Path(args.root)
    svc.start()
    status = f"http://127.0.0.1:{status_port}"
    svc.wait_ready(lambda: harness.http_get(status + "/readyz")[0] == 200, timeout=120.0)
    times = {"full": [], "one API": []}
    try:
        for _rep in range(args.reps):
            times["full"].append(reload_once(svc, status, path, full))
            served_path(svc.url, f"/svc{n - 1}/items/7", "/v2/items/7")
            times["full"].append(reload_once(svc, status, path, base))
            times["one API"].append(reload_once(svc, status, path, one))
            served_path(svc.url, "/svc0/items/7", "/v2/items/7")
            times["one API"].append(reload_once(svc, status, path, base))
            served_path(svc.url, "/svc0/items/7", "/items/7")
    finally:
        svc.proc.send_signal(signal.SIGTERM)
        svc.proc.wait(60)
    return times


class _EchoPath:
    """A backend that answers 200 with the path it was asked for."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = self.path.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def report(results: dict, args) -> str:
    lines = ["## Reload: from SIGHUP to live (all workers on the new version)", "",
             f"Command: `{command_line()}`", ""]
    lines += harness.machine_info()[:1] + harness.machine_info()[2:]
    lines += [f"- gateway: {args.workers} worker(s); the document of `benchmarks.many_apis` "
              "(N url-backend APIs, two environments each: 2N compiled (API, environment))",
              f"- {args.reps} reloads of each kind each way (there and back: "
              f"{2 * args.reps} timings), median and range; the time runs from the SIGHUP to "
              "the master's `/readyz` showing the new version for the master and every worker", "",
              "| APIs | full reload (s) | range | one API changed (s) | range |",
              "|---:|---:|---|---:|---|"]
    for n, times in results.items():
        f, o = times["full"], times["one API"]
        lines.append(f"| {n:,} | {statistics.median(f):.3f} | {min(f):.3f}-{max(f):.3f} | "
                     f"{statistics.median(o):.3f} | {min(o):.3f}-{max(o):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", default=None, help="run the gateway from this checkout")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.tollgate_cmd = harness.tollgate_command()
    backend = _EchoPath()
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="reload-bench-") as tmp:
            for n in (int(x) for x in args.sizes.split(",")):
                results[n] = measure(n, args, Path(tmp), backend.port)
                f, o = results[n]["full"], results[n]["one API"]
                print(f"{n} APIs: full {statistics.median(f):.3f} s, one API "
                      f"{statistics.median(o):.3f} s", file=sys.stderr)
    finally:
        backend.close()
    text = report(results, args)
    print(text)
    if not args.no_write:
        write_section("reload", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
