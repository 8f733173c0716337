"""Micro-benchmark of the route index and the path normalizer, both forms.

Run as ``python -m benchmarks.router_bench`` (``--quick`` for a smoke run).  It builds a Router
with 10 APIs and one with 10,000 (realistic templates over two environments and a few hosts; the
10 are the first 10 of the 10,000), times ``match`` over one fixed mix of hits and misses that
means the same in both, and times ``normalize_path`` on clean and dirty paths.  Timing is
timeit-style: many loops, best of several repeats, reported in ns per call (the loop that feeds
the calls is included, the same for both forms).  The table goes to stdout and to the "router"
section of benchmarks/RESULTS.md, with the two ratios that matter:

* compiled / pure speed-up of a lookup (target >= 3x);
* cost of a lookup among 10,000 APIs against among 10 (target: within 10%).
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import fastpath
from benchmarks.results import command_line, write_section

ENVS = ("RELEASE", "TEST")
HOST_SETS = ((), ("api.example.com",), ("shop.example.com",), ("iot.example.com", "iot2.example.com"))
RESOURCES = ("orders", "users", "items", "devices", "invoices", "carts", "sessions", "reports")
SUBS = ("lines", "events", "history", "status")

# (method, template, mode) per service: five APIs each.
SERVICE_ROUTES = (
    ("GET", "/{svc}/v{v}/{res}", "exact"),
    ("POST", "/{svc}/v{v}/{res}", "exact"),
    ("GET", "/{svc}/v{v}/{res}/{{id}}", "exact"),
    ("ANY", "/{svc}/v{v}/{res}/{{id}}/{sub}/{{sub_id}}", "exact"),
    ("GET", "/{svc}/static", "prefix"),
)


def service_apis(service: int, rng: random.Random) -> list[tuple]:
    """The five APIs of service number ``service``, as add() arguments."""
    svc = f"svc{service:05d}"
    env = ENVS[service % 2]
    hosts = HOST_SETS[(service // 2) % len(HOST_SETS)]
    version = 1 + rng.randrange(3)
    res = RESOURCES[rng.randrange(len(RESOURCES))]
    sub = SUBS[rng.randrange(len(SUBS))]
    apis = []
    for method, template, mode in SERVICE_ROUTES:
        path = template.format(svc=svc, v=version, res=res, sub=sub)
        apis.append((env, hosts, method, path, mode, f"{svc}:{method}:{path}:{mode}"))
    return apis


def build_apis(count: int) -> tuple[list[tuple], list[tuple]]:
    """(10 APIs, ``count`` APIs), deterministic; the 10 are the first 10 of the ``count``.

    The 10 span every (environment, host) tree the big set has, so that a lookup does the same
    host work in both and only the number of APIs differs: one API of each of the first 8
    services (2 environments x 4 host sets: GETs by id, a static GET and POST, an ANY with two
    parameters), the static prefix of service 0 and a catch-all file server with a greedy
    parameter.
    """
    rng = random.Random(20240611)
    services = [service_apis(service, rng) for service in range(count // len(SERVICE_ROUTES) + 1)]
    files = (ENVS[0], (), "GET", "/files/{path+}", "exact", "files")
    picks = ((0, 2), (1, 2), (2, 2), (3, 2), (4, 0), (5, 1), (6, 3), (7, 3), (0, 4))
    small = [services[service][route] for service, route in picks] + [files]
    rest = [api for apis in services for api in apis if api not in small]
    return small, small + rest[:count - len(small)]


def request_mix(apis10: list[tuple]) -> list[tuple]:
    """A fixed mix of lookups: hits on the 10 APIs both routers share, and misses in both."""
    hits = []
    for env, hosts, method, template, mode, _target in apis10:
        host = (hosts[-1] + ":443") if hosts else "gw.example.com"
        if template == "/files/{path+}":
            hits.append((env, host, "GET", "/files/2024/06/report.pdf"))
            continue
        path = template.replace("{id}", "12345").replace("{sub_id}", "7")
        if mode == "prefix":
            path += "/css/app.css"
        hits.append((env, host, "PATCH" if method == "ANY" else method, path))
    hits.append((hits[0][0], "GW.EXAMPLE.COM", "HEAD", hits[0][3]))             # HEAD -> GET
    misses = [
        (ENVS[0], "gw.example.com", "GET", "/nosuchservice/v1/orders"),          # first segment
        (ENVS[0], "gw.example.com", "GET", hits[0][3] + "/extra/segments"),      # deep miss
        (ENVS[0], "gw.example.com", "DELETE", hits[0][3]),                       # wrong method
        ("DEV", "gw.example.com", "GET", hits[0][3]),                            # unknown env
        (ENVS[1], "api.example.com", "GET", "/"),                                # root
    ]
    return hits + misses


def best_ns_per_call(runners: dict, repeats: int, budget: float) -> dict:
    """Best ns per call of each ``runners[key] = (fn, calls_per_loop)``; fn(loops) runs the calls.

    Each runner gets a loop count sized to take about ``budget`` seconds (autorange, like
    timeit); the repeats are interleaved across runners, so that a burst of load on the machine
    hits all of them alike rather than one.
    """
    loops = {}
    for key, (fn, _calls) in runners.items():
        count = 1
        while True:
            started = time.perf_counter()
            fn(count)
            elapsed = time.perf_counter() - started
            if elapsed >= budget / 5:
                break
            count *= 2
        loops[key] = max(1, int(count * budget / max(elapsed, 1e-9)))
    best = {key: float("inf") for key in runners}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for key, (fn, calls) in runners.items():
                started = time.perf_counter()
                fn(loops[key])
                best[key] = min(best[key], (time.perf_counter() - started) / (loops[key] * calls) * 1e9)
    finally:
        if gc_was_enabled:
            gc.enable()
    return best


def lookup_runner(router, requests):
    match = router.match

    def run(loops):
        for _ in range(loops):
            for env, host, method, path in requests:
                match(env, host, method, path)
    return run


def normalize_runner(normalize, paths):
    def run(loops):
        for _ in range(loops):
            for path in paths:
                normalize(path)
    return run


CLEAN_PATHS = ["/svc00001/v2/orders/12345", "/files/2024/06/report.pdf", "/", "/api/v1/users/42/lines/7",
               "/.well-known/openid-configuration"]
DIRTY_PATHS = ["/svc00001//v2/./orders/12345", "/files/%7Euser/a%2fb/../c", "/a/b/%2e%2e/c/",
               "/api/v1/users/%34%32", "/x/y/z/../../../w"]


def build_router(module, apis):
    router = module.Router()
    for args in apis:
        router.add(*args)
    router.freeze()
    return router


def versions() -> list[str]:
    try:
        import Cython
        cython_version = Cython.__version__
    except ImportError:  # pragma: no cover
        cython_version = "not installed"
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=repo, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fastpath"], capture_output=True,
                               text=True, cwd=repo, timeout=10).stdout.strip()
    except OSError:  # pragma: no cover
        commit, dirty = "unknown", ""
    compiled_router = fastpath.load("router", compiled=True)
    typed = not hasattr(compiled_router, "_walk") and not hasattr(compiled_router._Node(), "__dict__")
    return [
        f"Python {platform.python_version()} ({platform.machine()}, {os.cpu_count()} CPUs), "
        f"Cython {cython_version}",
        f"fastpath at commit {commit}" + (" with local changes in fastpath/" if dirty else "")
        + f"; live form: {fastpath.IMPLEMENTATION}",
        "compiled forms: " + ", ".join(
            Path(fastpath.load(name, compiled=True).__file__).name for name in ("pathnorm", "router"))
        + ("; typed by their .pxd" if typed else "; NOT typed by their .pxd (the build ignored it)"),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timings, no RESULTS.md")
    args = parser.parse_args(argv)
    repeats, budget = (2, 0.02) if args.quick else (9, 0.25)

    try:
        forms = {"pure": (fastpath.load("pathnorm", compiled=False), fastpath.load("router", compiled=False)),
                 "compiled": (fastpath.load("pathnorm", compiled=True), fastpath.load("router", compiled=True))}
    except ImportError as exc:
        print(f"the compiled forms are not built ({exc}): python setup.py build_ext --inplace", file=sys.stderr)
        return 2

    apis_small, apis_big = build_apis(10_000)
    requests = request_mix(apis_small)
    sizes = {10: apis_small, 10_000: apis_big}

    runners = {}
    answers = {}
    for form, (_pathnorm, router_mod) in forms.items():
        for size, apis in sizes.items():
            router = build_router(router_mod, apis)
            answers[form, size] = [router.match(*request) for request in requests]
            hits = sum(result is not None for result in answers[form, size])
            assert hits == len(requests) - 5, (form, size, answers[form, size])
            runners["match", form, size] = (lookup_runner(router, requests), len(requests))
    # The same answers from both forms and both sizes.
    assert len({repr(a) for a in answers.values()}) == 1
    for form, (pathnorm_mod, _router) in forms.items():
        for kind, paths in (("clean", CLEAN_PATHS), ("dirty", DIRTY_PATHS)):
            runners["normalize", form, kind] = (normalize_runner(pathnorm_mod.normalize_path, paths), len(paths))
    best = best_ns_per_call(runners, repeats, budget)
    lookups = {(form, size): best["match", form, size] for form in forms for size in sizes}
    normalize = {(form, kind): best["normalize", form, kind] for form in forms for kind in ("clean", "dirty")}

    speedup_small = lookups["pure", 10] / lookups["compiled", 10]
    speedup_big = lookups["pure", 10_000] / lookups["compiled", 10_000]
    growth = {form: lookups[form, 10_000] / lookups[form, 10] for form in forms}

    def verdict(ok):
        return "met" if ok else "NOT met"

    lines = [
        "## Router and path normalization (micro-benchmark)",
        "",
        f"Command: `{command_line()}`",
        "",
        *[f"- {line}" for line in versions()],
        f"- lookup mix: {len(requests)} requests, {len(requests) - 5} hits (static, params, "
        "greedy, prefix, host with port, ANY, HEAD->GET) and 5 misses; "
        f"timings are best of {repeats}, ns per call",
        "",
        "| operation | pure (ns) | compiled (ns) | compiled speed-up |",
        "|---|---:|---:|---:|",
        f"| match, 10 APIs | {lookups['pure', 10]:.0f} | {lookups['compiled', 10]:.0f} | {speedup_small:.1f}x |",
        f"| match, 10,000 APIs | {lookups['pure', 10_000]:.0f} | {lookups['compiled', 10_000]:.0f} "
        f"| {speedup_big:.1f}x |",
        f"| normalize_path, clean | {normalize['pure', 'clean']:.0f} | {normalize['compiled', 'clean']:.0f} "
        f"| {normalize['pure', 'clean'] / normalize['compiled', 'clean']:.1f}x |",
        f"| normalize_path, dirty | {normalize['pure', 'dirty']:.0f} | {normalize['compiled', 'dirty']:.0f} "
        f"| {normalize['pure', 'dirty'] / normalize['compiled', 'dirty']:.1f}x |",
        "",
        f"- compiled/pure lookup speed-up: {min(speedup_small, speedup_big):.1f}x at worst "
        f"(target >= 3x: {verdict(min(speedup_small, speedup_big) >= 3)})",
        f"- 10,000 vs 10 APIs lookup cost: compiled {growth['compiled']:.2f}x, pure {growth['pure']:.2f}x "
        f"(target within 10%: {verdict(max(growth.values()) <= 1.10)})",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.quick:
        write_section("router", markdown)
        print("\nwritten to the 'router' section of benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
