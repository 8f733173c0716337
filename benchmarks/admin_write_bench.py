"""Admin write throughput: creates, replaces and deletes of APIs per second through the control
plane's real HTTP API (``tollgate control-plane`` as a subprocess), with N concurrent clients, on
SQLite and on PostgreSQL, into a store holding only the groups and into one already holding
10,000 APIs (``benchmarks/many_apis.py``'s document, loaded with ``PUT /v1/config``).

    python -m benchmarks.admin_write_bench                       # the reference run (~5 minutes)
    python -m benchmarks.admin_write_bench --engines sqlite --preload 0 --clients 1 --seconds 2 --no-write

Each (engine, preload, clients) case starts a fresh control plane on a fresh store, then runs
three timed phases of ``--seconds`` each: creates (every client creates APIs of its own,
``GET /c<client>n<i>/items/{id}`` in RELEASE and TEST, the same shape as the preloaded ones),
replaces (PUT of the APIs it created, backend url changed), deletes (of the APIs it created,
until none is left or the time is up).  A write answered other than 201/200/204 is counted as an
error (and the run fails).  The figure is writes answered per second of wall time.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks import many_apis
from benchmarks.results import command_line, write_section
from tests.support.control_plane import ControlPlaneProcess

ADMIN = "benchmark-admin-token-0123456789"


def api_body(client: int, i: int, version: int = 0) -> dict:
    return {"name": f"bench-c{client}-{i}", "group": f"g{i % 10}", "method": "GET",
            "path": f"/c{client}n{i}/items/{{id}}",
            "backend": {"url": f"http://#backend#/v{version}/items/{{id}}"},
            "environments": {"RELEASE": {}, "TEST": {}}}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class _Phase:
    """One timed phase run by ``clients`` threads; ``work(client, http, deadline) -> (ok, errors)``."""

    def __init__(self, url: str, clients: int, seconds: float):
        self.url, self.clients, self.seconds = url, clients, seconds

    def run(self, work) -> tuple[int, int, float]:
        results = [(0, 0)] * self.clients
        barrier = threading.Barrier(self.clients + 1)
        deadline_box = {}

        def one(c: int) -> None:
            with httpx.Client(base_url=self.url, timeout=120.0,
                              headers={"Authorization": f"Bearer {ADMIN}"}) as http:
                http.get("/v1/settings")                   # connect before the clock starts
                barrier.wait()
                results[c] = work(c, http, deadline_box["at"])

        threads = [threading.Thread(target=one, args=(c,)) for c in range(self.clients)]
        for t in threads:
            t.start()
        start = time.perf_counter()
        deadline_box["at"] = start + self.seconds
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        return sum(r[0] for r in results), sum(r[1] for r in results), elapsed


def run_case(engine_url: str, workdir: Path, preload: int, clients: int, seconds: float
             ) -> dict:
    cp = ControlPlaneProcess(workdir, admin_token=ADMIN, store=engine_url).start(timeout=60)
    try:
        with cp.client(ADMIN) as admin:
            admin.timeout = httpx.Timeout(600.0)
            t0 = time.perf_counter()
            r = admin.put("/v1/config", json=many_apis.document(preload))
            if r.status_code != 200:
                raise RuntimeError(f"PUT /v1/config: {r.status_code} {r.text[:500]}")
            load_s = time.perf_counter() - t0
        created: list[list[int]] = [[] for _ in range(clients)]
        phase = _Phase(cp.url, clients, seconds)

        def creates(c, http, deadline):
            ok = err = i = 0
            while time.perf_counter() < deadline:
                r = http.post("/v1/apis", json=api_body(c, i))
                if r.status_code == 201:
                    ok += 1
                    created[c].append(i)
                else:
                    err += 1
                    print(f"create: {r.status_code} {r.text[:300]}", file=sys.stderr)
                i += 1
            return ok, err

        def replaces(c, http, deadline):
            ok = err = k = 0
            mine = created[c]
            while mine and time.perf_counter() < deadline:
                i = mine[k % len(mine)]
                r = http.put(f"/v1/apis/bench-c{c}-{i}", json=api_body(c, i, version=k + 1))
                if r.status_code == 200:
                    ok += 1
                else:
                    err += 1
                    print(f"replace: {r.status_code} {r.text[:300]}", file=sys.stderr)
                k += 1
            return ok, err

        def deletes(c, http, deadline):
            ok = err = 0
            mine = created[c]
            while mine and time.perf_counter() < deadline:
                i = mine.pop()
                r = http.delete(f"/v1/apis/bench-c{c}-{i}")
                if r.status_code == 204:
                    ok += 1
                else:
                    err += 1
                    print(f"delete: {r.status_code} {r.text[:300]}", file=sys.stderr)
            return ok, err

        out = {"load_s": load_s}
        for name, work in (("create", creates), ("replace", replaces), ("delete", deletes)):
            ok, err, elapsed = phase.run(work)
            out[name] = (ok, err, elapsed)
        return out
    finally:
        cp.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="sqlite,postgresql",
                    help="comma-separated: sqlite, postgresql")
    ap.add_argument("--preload", default="0,10000", help="APIs stored before the writes")
    ap.add_argument("--clients", default="1,8", help="concurrent clients")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    ap.add_argument("--section", default="admin-write", help="the RESULTS.md section to write")
    ap.add_argument("--title", default="Admin write throughput (control plane)")
    ap.add_argument("--no-write", action="store_true", help="print the report only")
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    preloads = [int(p) for p in args.preload.split(",")]
    client_counts = [int(c) for c in args.clients.split(",")]
    rows, errors = [], 0
    pg = None
    try:
        for engine in engines:
            for preload in preloads:
                for clients in client_counts:
                    with tempfile.TemporaryDirectory() as tmp:
                        if engine == "sqlite":
                            url = f"sqlite:///{Path(tmp) / 'cp.db'}"
                        elif engine == "postgresql":
                            if pg is None:
                                from tests.support.postgres import PostgresServer
                                pg = PostgresServer().start()
                            url = pg.create_database()
                        else:
                            raise SystemExit(f"unknown engine {engine!r}")
                        res = run_case(url, Path(tmp), preload, clients, args.seconds)
                    cells = []
                    for name in ("create", "replace", "delete"):
                        ok, err, elapsed = res[name]
                        errors += err
                        cells.append(f"{ok / elapsed:,.1f} ({ok})")
                    rows.append(f"| {engine} | {preload:,} | {clients} | {' | '.join(cells)} | "
                                f"{res['load_s']:.1f} s |")
                    print(rows[-1], flush=True)
    finally:
        if pg is not None:
            pg.stop()
    report = (f"## {args.title}\n\n`{command_line()}` -- {_cpu_model()}, "
              f"{time.strftime('%Y-%m-%d')}, phases of {args.seconds:g} s; writes answered per "
              "second (how many in the phase).  The store holds the preloaded APIs (plus ten "
              "groups); the load column is the `PUT /v1/config` that stored them.\n\n"
              "| store | APIs stored | clients | creates/s | replaces/s | deletes/s | load |\n"
              "|---|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n")
    print(report)
    if errors:
        print(f"{errors} writes failed", file=sys.stderr)
        return 1
    if not args.no_write:
        write_section(args.section, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
