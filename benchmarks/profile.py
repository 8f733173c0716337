"""Where a proxied request's instructions go: one worker under callgrind, driven by wrk.

Counts instructions (not time: a count does not move with the machine's load) of a Tollgate
worker serving ``GET /json`` through an ``http`` API to the upstream nginx of
``benchmarks.run``, divides them by the requests served while counting, and groups them by
where they run (llhttp, our compiled code, the interpreter's allocator and GIL, uvloop...).

    python -m benchmarks.profile                         # this tree
    python -m benchmarks.profile --before ../old-tree    # and another checkout, side by side
    python -m benchmarks.profile --https-backend         # this tree to a plain, then an https,
                                                         # upstream (the same nginx over TLS)

``--before`` takes a checkout of an older commit, built in place (``python setup.py
build_ext --inplace`` there); both are run in the same session, one after the other.  Needs
``valgrind`` (Debian package) besides nginx and wrk.  Writes the ``profile`` section of
RESULTS.md unless ``--no-write``.
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
from collections import defaultdict
from pathlib import Path

from benchmarks import run as harness
from benchmarks.results import command_line, write_section

# (group, test) in order: the first group whose test matches a function's "file:function
# [object]" line takes its instructions
GROUPS = [
    ("llhttp (parsing)", lambda f, o: re.search(r"llhttp[^/]*/src/|/vendor/llhttp/", f)),
    ("HTTP glue: fastpath.http1 callbacks and head builders",
     lambda f, o: "_compiled/http1" in o),
    ("HTTP glue: httptools' Python callbacks",
     lambda f, o: "httptools" in o),
    ("gateway + fastpath compiled code (routing, exchange, proxying, metrics)",
     lambda f, o: "/gateway/" in o or "/fastpath/" in o),
    ("interpreter: bytecode (timers, not requests)",
     lambda f, o: "libpython" in o and re.search(r"EvalFrame|_PyEval_Vector|specialize\.c", f)),
    ("interpreter: object allocation and freeing",
     lambda f, o: "libpython" in o and re.search(r"obmalloc|_Py_Dealloc|dealloc|GenericAlloc|_New|FromStringAndSize|NewReference", f)),
    ("interpreter: GIL and thread state (taken by each uvloop callback)",
     lambda f, o: ("libpython" in o and re.search(r"ceval_gil|pystate|PyEval_(Save|Restore)Thread", f))
     or ("libc" in o and "pthread" in f)),
    ("interpreter: calls, attribute and dict lookups, other",
     lambda f, o: "libpython" in o),
    ("uvloop + libuv (event loop, transports, its TLS layer)", lambda f, o: "uvloop" in o),
    ("OpenSSL (libssl, libcrypto)", lambda f, o: "libssl" in o or "libcrypto" in o),
    ("Python's ssl module (_ssl)", lambda f, o: "_ssl." in o),
    ("libc (memcpy, syscall wrappers...)", lambda f, o: "libc" in o),
    ("other", lambda f, o: True),
]

LINE = re.compile(r"^\s*([\d,]+) \([^)]*\)\s+(\S.*?)(?: \[(.*)\])?$")


def object_of(where: str, obj: str) -> str:
    """The object file of a callgrind line; lines of code inlined from a header (object.h...)
    come without one: it is told by the function's (Cython-mangled) name or the source path."""
    if obj:
        return obj
    function = where.rsplit(":", 1)[-1]
    if "_compiled_5http1" in function:
        return "fastpath/_compiled/http1"
    if "_6uvloop_" in function:
        return "uvloop"
    if "_7gateway_" in function or "_8fastpath_" in function:
        return "/gateway/"
    if "/Python-3." in where or "/Include/" in where:
        return "libpython"
    return ""


def breakdown(callgrind_out: Path) -> dict[str, int]:
    text = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", str(callgrind_out)],
                          capture_output=True, text=True, check=True).stdout
    groups: dict[str, int] = defaultdict(int)
    started = False
    for line in text.splitlines():
        if "file:function" in line:
            started = True
            continue
        if not started:
            continue
        m = LINE.match(line)
        if not m:
            continue
        count, where = int(m.group(1).replace(",", "")), m.group(2)
        obj = object_of(where, m.group(3) or "")
        for name, test in GROUPS:
            if test(where, obj):
                groups[name] += count
                break
    return dict(groups)


def profile_tree(tree: Path, conf: Path, workdir: Path, seconds: int, connections: int,
                 label: str) -> tuple[int, dict[str, int], Path]:
    """Run a worker of ``tree`` serving ``conf`` under callgrind; return (requests, groups,
    callgrind file)."""
    port = harness.free_port()
    out = workdir / f"{label}.callgrind"
    settings = json.dumps({"config": str(conf), "host": "127.0.0.1", "port": port})
    env = dict(os.environ, PYTHONPATH=str(tree))
    log = open(workdir / f"{label}.log", "wb")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                             f"--callgrind-out-file={out}", sys.executable, "-m", "gateway.worker",
                             settings], cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}{harness.PATH}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{label}: the worker exited; see {workdir / (label + '.log')}")
            try:
                if harness.http_get(url) == (200, harness.BODY.encode()):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the worker did not answer under valgrind in 120 s")
            time.sleep(0.5)
        harness.run_wrk(url, 3, 1, connections)                       # warm up, not counted
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True, check=True)
        result = harness.run_wrk(url, seconds, 1, connections)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    if result.errors:
        raise RuntimeError(f"{label}: wrk saw errors: {result}")
    dumps = sorted(workdir.glob(f"{label}.callgrind*"))
    dumps = [d for d in dumps if d.stat().st_size > 0 and d.name != out.name] or [out]
    return result.requests, breakdown(dumps[-1]), dumps[-1]


def git_describe(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(tree)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="an older checkout, built in place")
    parser.add_argument("--duration", type=int, default=10, help="seconds counted (default 10)")
    parser.add_argument("--connections", type=int, default=10, help="wrk -c (default 10)")
    parser.add_argument("--https-backend", action="store_true",
                        help="profile this tree to a plain and to an https upstream")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    workdir = harness.WORK_ROOT / f"profile-{int(time.time())}"
    (workdir / "tmp").mkdir(parents=True)
    trees = ([("before", args.before.resolve())] if args.before else []) + [("now", harness.REPO)]
    results = []
    try:
        upstream, upstream_addr, _status = harness.start_upstream(workdir)
        plain = harness.render(harness.HERE / "config" / "tollgate.yaml", workdir / "plain.yaml",
                               UPSTREAM=upstream_addr)
        if args.https_backend:
            from benchmarks import tls_bench
            cert, key = tls_bench.make_certificate(workdir)
            _svc, tls_addr = tls_bench.start_upstream_tls(workdir, cert, key)
            https = workdir / "https.yaml"
            https.write_text(plain.read_text().replace(
                'url: "http://#upstream#/"',
                f'url: "https://{tls_addr}/", tls: {{ca_file: {cert}, server_name: bench.test}}'))
            runs = [("http backend", harness.REPO, plain), ("https backend", harness.REPO, https)]
        else:
            runs = [(label, tree, plain) for label, tree in trees]
        for label, tree, conf in runs:
            harness.log(f"profiling {label}: {git_describe(tree)}")
            requests, groups, dump = profile_tree(tree, conf, workdir, args.duration,
                                                  args.connections, label.replace(" ", "-"))
            results.append((label, tree, requests, groups, dump))
    finally:
        harness.stop_all()
    names = [name for name, _test in GROUPS]
    head = "| where | " + " | ".join(f"{label}: instr/req | share" for label, *_ in results) + " |"
    lines = [f"Command: `{command_line()}`", "", *harness.machine_info(), "",
             *[f"- {label}: `{git_describe(tree)}`; {requests:,} requests counted "
               f"(wrk -t1 -c{args.connections} -d{args.duration}s, worker under callgrind)"
               for label, tree, requests, _g, _d in results], "",
             head, "|---|" + "---:|---:|" * len(results)]
    totals = [sum(g.values()) / n for _l, _t, n, g, _d in results]
    for name in names:
        cells = [g.get(name, 0) / n for _l, _t, n, g, _d in results]
        if any(c >= 1 for c in cells):
            lines.append(f"| {name} | " + " | ".join(
                f"{c:,.0f} | {100 * c / t:.0f}%" for c, t in zip(cells, totals)) + " |")
    lines.append("| **total** | " + " | ".join(f"**{t:,.0f}** | 100%" for t in totals) + " |")
    if len(totals) == 2:
        ratio = "https / http backend" if args.https_backend else "Now / before"
        lines += ["", f"{ratio}: {totals[1] / totals[0]:.2f}x the instructions per request."]
    lines += ["", "Instructions are user-space only (callgrind does not see the kernel); the "
              "CPU time per request that `benchmarks.run` measures adds the system time of the "
              "syscalls, about the same for Tollgate and nginx."]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write and args.https_backend:
        write_section("profile-https", "## Profile of a request to an https backend (callgrind)"
                      "\n\n" + markdown)
    elif not args.no_write:
        write_section("profile", "## Profile of one proxied request (callgrind)\n\n" + markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
