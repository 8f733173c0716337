"""Tollgate side by side with nginx: throughput, latency and CPU per request of each proxy.

One run starts

* an upstream nginx that answers ``GET /json`` with a static ~100-byte JSON document,
* nginx as the reference reverse proxy (1 worker, upstream keep-alive pool >= the concurrency),
* Tollgate (``python -m tollgate gateway``, 1 worker by default) proxying everything to it,

warms each proxy up, then drives them one at a time with wrk (127.0.0.1 only, bounded
duration), interleaving the targets over several reps (the order rotates each rep), and prints
requests/s, p50/p99 latency, CPU microseconds per request of all of each proxy's processes
(user/system), the upstream's CPU per request, and the ratios Tollgate/nginx against the targets.
The markdown report goes to the ``proxy`` section of benchmarks/RESULTS.md (``proxy-N-workers``
with ``--workers N``) unless ``--no-write``.

    python -m benchmarks.run [--duration 10] [--reps 3] [--connections 50] [--threads 1]
                             [--workers 1] [--targets nginx,tollgate] [--access-log-cost]
                             [--no-write] [--keep-work]

Every process it starts is stopped on exit (normal end, exception, SIGINT/SIGTERM/SIGHUP) and
gets SIGTERM from the kernel should this script die without cleaning up.  Exit status: 0 when
every run was clean, 1 when a run saw socket errors, non-2xx answers or a proxy process change,
2 when the benchmark could not run at all.
"""
from __future__ import annotations

import argparse
import atexit
import ctypes
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.results import command_line, write_section
else:
    from .results import command_line, write_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK_ROOT = HERE / ".work"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"

#: What the upstream answers: 103 bytes of JSON (no single quote: it sits in an nginx string).
BODY = '{"id":4711,"name":"tollgate-bench","tags":["api","gateway"],"active":true,"score":0.97,"ts":1704067200}'
PATH = "/json"

#: Target -> (comparison, bound) for the ratios Tollgate/nginx.
TARGETS = {
    "req/s": (">=", 0.95),
    "user CPU/req": ("<=", 1.2),
    "CPU/req": ("<=", 1.35),
    "p99": ("<=", 1.2),
}

WARMUP_SECONDS = 2
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

# An HTTP client that never goes through an http_proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loud(message: str) -> None:
    bar = "!" * 78
    print(f"{bar}\n!!! {message}\n{bar}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# /proc: process trees and their CPU time


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    state: str
    utime: int    # clock ticks, this process (all its threads)
    stime: int
    cutime: int   # clock ticks of its children that it has waited for
    cstime: int
    start: int    # start time (ticks after boot): tells a pid apart from a reused one


def _read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()   # the command name may hold spaces and ')'
    # rest[0] is field 3 (state), so field N is rest[N - 3].
    return ProcStat(pid, int(rest[1]), rest[0].decode(), int(rest[11]), int(rest[12]),
                    int(rest[13]), int(rest[14]), int(rest[19]))


def process_tree(root: int) -> dict[int, ProcStat]:
    """The process ``root`` and all its descendants, found by scanning /proc/*/stat for ppids.

    (/proc/<pid>/task/*/children needs CONFIG_PROC_CHILDREN, which not every kernel has.)
    """
    table: dict[int, ProcStat] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _read_stat(int(entry.name))
            if st is not None:
                table[st.pid] = st
    if root not in table:
        return {}
    children: dict[int, list[int]] = {}
    for st in table.values():
        children.setdefault(st.ppid, []).append(st.pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        tree[pid] = table[pid]
        todo.extend(children.get(pid, ()))
    return tree


@dataclass(frozen=True)
class CpuSample:
    user: int     # ticks
    system: int
    procs: frozenset   # (pid, start) of the live processes

    @staticmethod
    def of(root: int) -> "CpuSample":
        # utime+stime of every live process of the tree, plus what each has collected from
        # children it reaped (cutime/cstime): every CPU tick of the tree, counted once, even when
        # a worker exits and is replaced during the run.
        tree = process_tree(root)
        return CpuSample(sum(p.utime + p.cutime for p in tree.values()),
                         sum(p.stime + p.cstime for p in tree.values()),
                         frozenset((p.pid, p.start) for p in tree.values()))


def system_cpu() -> tuple[int, int, int]:
    """(busy, steal, total) ticks of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return user + nice + system + irq + softirq, steal, total


# --------------------------------------------------------------------------------------------
# Services: the processes this script starts, and stops whatever happens

_SERVICES: list["Service"] = []


def _pdeathsig() -> None:
    """In the child, before exec: SIGTERM it if this script dies without cleaning up."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:
        pass


class Service:
    """A server process (with its children) run in its own session, logs in the work dir."""

    def __init__(self, name: str, argv: list[str], workdir: Path, url: str,
                 env: dict[str, str] | None = None):
        self.name, self.argv, self.workdir, self.url = name, argv, workdir, url
        self.env = env
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._known: set[tuple[int, int]] = set()   # (pid, start) of every process seen

    def start(self) -> None:
        log(f"starting {self.name}: {' '.join(self.argv)}")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=str(REPO), env=self.env,
                                         start_new_session=True, preexec_fn=_pdeathsig)
        _SERVICES.append(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> CpuSample:
        sample = CpuSample.of(self.pid)
        self._known |= sample.procs
        return sample

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def died_why(self) -> str:
        """Why the process is gone, as far as its log tells (for Tollgate: whether it was told to stop)."""
        if self.alive():
            return "still running"
        why = f"exited with status {self.proc.returncode}"
        if "stopping: draining workers" in self.log_tail(400):
            why += (" after a SIGTERM/SIGINT that this harness did not send (its log says it was "
                    "told to stop): another process killed it, e.g. a `pkill -f tollgate`")
        return why

    def wait_ready(self, check, timeout: float = READY_TIMEOUT) -> None:
        """Poll ``check()`` (True when serving) until it holds; fail if the process exits."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode} "
                                   f"before it was ready; log tail:\n{self.log_tail()}")
            try:
                if check():
                    self.cpu()   # remember its processes (for stop())
                    log(f"{self.name} ready (pid {self.pid}, "
                        f"{len(process_tree(self.pid))} processes)")
                    return
            except Exception as exc:   # connection refused, 503 while starting...
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s (last: {last!r}); "
                           f"log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.alive():
            self.cpu()
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                loud(f"{self.name} (pid {self.pid}) ignored SIGTERM for {STOP_TIMEOUT:.0f}s: SIGKILL")
            except ProcessLookupError:
                pass
        # Whatever is left of what we started: the session/process group created for it, then
        # any process seen in its tree that still exists with the same start time.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid, start in self._known:
            st = _read_stat(pid)
            if st is not None and st.start == start and st.state != "Z":
                try:
                    os.kill(pid, signal.SIGKILL)
                    log(f"killed leftover process {pid} of {self.name}")
                except ProcessLookupError:
                    pass
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            loud(f"{self.name} (pid {self.pid}) did not exit even after SIGKILL")
        self.proc = None


def stop_all() -> None:
    while _SERVICES:
        service = _SERVICES.pop()
        try:
            service.stop()
        except Exception as exc:   # keep stopping the others
            loud(f"could not stop {service.name}: {exc!r}")


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)   # unwinds through the finally blocks, which stop everything


# --------------------------------------------------------------------------------------------
# Helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _HTTP.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def render(template: Path, out: Path, **values) -> Path:
    text = template.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    left = re.findall(r"\{\{[A-Z_]+\}\}", text)
    if left:
        raise RuntimeError(f"{template}: placeholders left unfilled: {sorted(set(left))}")
    out.write_text(text, encoding="utf-8")
    return out


def run_text(argv: list[str], timeout: float = 20.0) -> str:
    """stdout+stderr of a short command, or what went wrong."""
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, cwd=str(REPO))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    out = (cp.stdout + cp.stderr).strip()
    if cp.returncode != 0 and "\n" in out:   # a traceback: keep its last line
        out = f"error: {out.splitlines()[-1]}"
    return out


def upstream_counters(status_url: str) -> tuple[int, int]:
    """(accepted connections, requests) of the upstream nginx, from stub_status."""
    code, body = http_get(status_url)
    if code != 200:
        raise RuntimeError(f"upstream status: HTTP {code}")
    # Active connections: 1 \n server accepts handled requests \n 10 10 12 \n Reading...
    accepts, _handled, requests = body.decode().splitlines()[2].split()
    return int(accepts), int(requests)


# --------------------------------------------------------------------------------------------
# wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    requests: int
    seconds: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    avg_ms: float
    max_ms: float
    socket_errors: dict[str, int]
    non2xx: int
    raw: str

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non2xx


def parse_wrk(out: str) -> WrkResult:
    def find(pattern: str) -> re.Match:
        m = re.search(pattern, out, re.M)
        if not m:
            raise ValueError(f"wrk output has no match for {pattern!r}:\n{out}")
        return m

    pct = {p: _ms(find(rf"^\s*{p}%\s+(\S+)\s*$").group(1)) for p in (50, 75, 90, 99)}
    lat = find(r"^\s*Latency\s+(\S+)\s+\S+\s+(\S+)")
    done = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
    socket_errors = {}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        requests=int(done.group(1)),
        seconds=_ms(done.group(2) + done.group(3)) / 1e3,
        p50_ms=pct[50], p75_ms=pct[75], p90_ms=pct[90], p99_ms=pct[99],
        avg_ms=_ms(lat.group(1)), max_ms=_ms(lat.group(2)),
        socket_errors={k: v for k, v in socket_errors.items() if v},
        non2xx=int(m.group(1)) if m else 0,
        raw=out,
    )


def run_wrk(url: str, seconds: int, threads: int, connections: int,
            headers: tuple[str, ...] = (), script: str | None = None) -> WrkResult:
    """wrk against ``url``; ``script``: a Lua file (``-s``), e.g. one choosing each request."""
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "5s", *(f"-H{h}" for h in headers), *(["-s", script] if script else []),
            url]
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                        stdin=subprocess.DEVNULL, preexec_fn=_pdeathsig)
    if cp.returncode != 0:
        raise RuntimeError(f"wrk exited with {cp.returncode}: {cp.stdout}{cp.stderr}")
    if script and cp.stderr.strip():
        # (wrk runs on with its default request when the script does not load)
        raise RuntimeError(f"wrk script {script}: {cp.stderr.strip()[-1000:]}")
    return parse_wrk(cp.stdout)


def run_bench(name: str, run, args, tools=(NGINX, WRK), needs_tollgate: bool = True) -> int:
    """What a benchmark's main() does around its measurement: refuse to start without
    ``tools`` (2), stop every process started on a signal or at exit, find Tollgate
    (``args.tollgate_cmd``) when ``needs_tollgate``, then ``run(args, workdir)`` in a fresh work
    dir ``benchmarks/.work/<name>-<time>-<pid>``, removed after a clean run (status 0) unless
    ``--keep-work``.  A RuntimeError, ValueError, OSError or timeout ends the run with 2."""
    for tool in tools:
        if not os.access(tool, os.X_OK):
            print(f"{tool} is missing (Debian packages nginx-light and wrk)", file=sys.stderr)
            return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(stop_all)
    if needs_tollgate:
        try:
            args.tollgate_cmd = tollgate_command()
        except RuntimeError as exc:
            loud(str(exc))
            return 2
    workdir = WORK_ROOT / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    (workdir / "tmp").mkdir(parents=True)
    status = 2
    try:
        status = run(args, workdir)
        return status
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        loud(f"benchmark failed: {exc}")
        return 2
    finally:
        stop_all()
        if status == 0 and not args.keep_work:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"work dir kept: {workdir}")


# --------------------------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    name: str           # as shown in the tables
    service: Service
    url: str            # what wrk drives
    headers: tuple[str, ...] = ()   # wrk -H, for every request
    script: str | None = None       # wrk -s: a Lua script (e.g. making each request)


@dataclass
class Run:
    target: str
    rep: int
    session: int
    wrk: WrkResult
    cpu_user_us: float      # per request, all the proxy's processes
    cpu_sys_us: float
    upstream_cpu_us: float  # per request, the upstream nginx
    upstream_requests: int
    upstream_new_conns: int
    procs: int
    problems: list[str] = field(default_factory=list)

    @property
    def cpu_us(self) -> float:
        return self.cpu_user_us + self.cpu_sys_us


def measure(target: Target, upstream: Service, upstream_status: str, rep: int,
            args: argparse.Namespace, session: int = 1) -> Run:
    up_before = upstream_counters(upstream_status)
    cpu_before, ucpu_before = target.service.cpu(), upstream.cpu()
    try:
        result = run_wrk(target.url, args.duration, args.threads, args.connections, target.headers,
                         target.script)
    except RuntimeError as exc:
        state = target.service.died_why()
        raise RuntimeError(f"{target.name} rep {rep}: {exc}\n{target.name} (pid "
                           f"{target.service.pid}) {state}; tail of "
                           f"{target.service.log_path}:\n{target.service.log_tail()}") from None
    cpu_after, ucpu_after = target.service.cpu(), upstream.cpu()
    up_after = upstream_counters(upstream_status)

    problems = []
    n = max(result.requests, 1)
    if result.requests == 0:
        problems.append("no request completed")
    if result.socket_errors:
        problems.append("socket errors " + ", ".join(f"{k} {v}" for k, v in result.socket_errors.items()))
    if result.non2xx:
        problems.append(f"{result.non2xx} non-2xx/3xx responses")
    if not target.service.alive():
        problems.append(f"process {target.service.died_why()}")
    if cpu_after.procs != cpu_before.procs:
        gone, new = cpu_before.procs - cpu_after.procs, cpu_after.procs - cpu_before.procs
        problems.append(f"processes changed during the run: gone {sorted(p for p, _ in gone)}, "
                        f"new {sorted(p for p, _ in new)}")
    tick_us = 1e6 / CLK_TCK
    # The stub_status query made by the second upstream_counters() call counts once in each.
    run = Run(
        target=target.name, rep=rep, session=session, wrk=result,
        cpu_user_us=(cpu_after.user - cpu_before.user) * tick_us / n,
        cpu_sys_us=(cpu_after.system - cpu_before.system) * tick_us / n,
        upstream_cpu_us=((ucpu_after.user + ucpu_after.system)
                         - (ucpu_before.user + ucpu_before.system)) * tick_us / n,
        upstream_requests=up_after[1] - up_before[1] - 1,
        upstream_new_conns=up_after[0] - up_before[0] - 1,
        procs=len(cpu_after.procs),
        problems=problems,
    )
    for problem in problems:
        loud(f"{target.name} rep {rep}: {problem}")
    return run


def start_upstream(workdir: Path) -> tuple[Service, str, str]:
    port, status_port = free_port(), free_port()
    conf = render(HERE / "nginx" / "upstream.conf", workdir / "upstream.conf",
                  WORKERS=1, WORKDIR=workdir, PORT=port, STATUS_PORT=status_port, BODY=BODY)
    svc = Service("upstream-nginx", [NGINX, "-p", str(workdir), "-c", str(conf),
                                     "-g", "daemon off;"], workdir, f"http://127.0.0.1:{port}")
    svc.start()
    svc.wait_ready(lambda: http_get(svc.url + PATH) == (200, BODY.encode()))
    return svc, f"127.0.0.1:{port}", f"http://127.0.0.1:{status_port}/status"


def start_nginx_proxy(workdir: Path, upstream: str, args: argparse.Namespace) -> Target:
    port = free_port()
    conf = render(HERE / "nginx" / "proxy.conf", workdir / "proxy.conf",
                  WORKERS=args.workers, WORKDIR=workdir, PORT=port,
                  UPSTREAM_PORT=upstream.rsplit(":", 1)[1],
                  UPSTREAM_KEEPALIVE=max(256, args.connections))
    svc = Service("nginx", [NGINX, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"],
                  workdir, f"http://127.0.0.1:{port}")
    svc.start()
    svc.wait_ready(lambda: http_get(svc.url + PATH) == (200, BODY.encode()))
    return Target("nginx", svc, svc.url + PATH)


def start_floor(workdir: Path, upstream: str) -> Target:
    """The floor of the stack (benchmarks/floor_proxy.py): what uvloop + httptools cost alone."""
    port = free_port()
    svc = Service("floor", [sys.executable, "-m", "benchmarks.floor_proxy", str(port),
                            upstream.rsplit(":", 1)[1]], workdir, f"http://127.0.0.1:{port}")
    svc.start()
    svc.wait_ready(lambda: http_get(svc.url + PATH) == (200, BODY.encode()))
    return Target("floor", svc, svc.url + PATH)


def tollgate_command() -> list[str]:
    """``python -m tollgate`` from this interpreter, else the ``tollgate`` console script."""
    cmd = [sys.executable, "-m", "tollgate"]
    probe = run_text(cmd + ["gateway", "--help"])
    if "--listen" in probe:
        return cmd
    script = shutil.which("tollgate")
    if script and "--listen" in run_text([script, "gateway", "--help"]):
        return [script]
    raise RuntimeError(f"Tollgate is not runnable here: `python -m tollgate gateway --help` "
                       f"said: {probe[-500:]}  (use --targets nginx to skip it)")


def start_tollgate(workdir: Path, upstream: str, args: argparse.Namespace, name: str,
                   access_log: Path | None) -> Target:
    port, status_port = free_port(), free_port()
    conf = render(HERE / "config" / "tollgate.yaml", workdir / f"{name}.yaml", UPSTREAM=upstream)
    argv = args.tollgate_cmd + [
        "gateway", "--config", str(conf), "--listen", f"127.0.0.1:{port}",
        "--status-listen", f"127.0.0.1:{status_port}", "--workers", str(args.workers)]
    if access_log is not None:
        argv += ["--access-log", str(access_log)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    svc = Service(name, argv, workdir, f"http://127.0.0.1:{port}", env=env)
    svc.start()
    svc.wait_ready(lambda: http_get(f"http://127.0.0.1:{status_port}/readyz")[0] == 200)
    code, body = http_get(svc.url + PATH)
    if (code, body) != (200, BODY.encode()):
        raise RuntimeError(f"{name}: GET {PATH} answered {code} {body[:200]!r}, "
                           f"expected 200 {BODY!r}; log tail:\n{svc.log_tail()}")
    return Target(name, svc, svc.url + PATH)


# --------------------------------------------------------------------------------------------
# Report


def _wrk_version() -> str:
    try:   # `wrk -v` prints its version, then its usage, and exits 1
        cp = subprocess.run([WRK, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = (cp.stdout + cp.stderr).strip().splitlines()
    return re.sub(r"\s+Copyright.*", "", lines[0]) if lines else "unknown"


def machine_info() -> list[str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- machine: {os.cpu_count()} CPUs ({usable} usable, `nproc` {run_text(['nproc'])}), "
        f"{model}; {platform.system()} {platform.release()}",
        f"- nginx: {run_text([NGINX, '-v'])}; wrk: {_wrk_version()}",
        f"- python: {platform.python_version()} ({sys.executable}); fastpath.IMPLEMENTATION: "
        f"{run_text([sys.executable, '-c', 'import fastpath; print(fastpath.IMPLEMENTATION)'])}",
    ]


def _fmt_ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _verdict(value: float, metric: str) -> str:
    op, bound = TARGETS[metric]
    ok = value >= bound if op == ">=" else value <= bound
    return "PASS" if ok else "FAIL"


def rep_table(runs: list[Run]) -> list[str]:
    lines = ["| target | req/s | p50 ms | p99 ms | CPU us/req (user/sys) | upstream CPU us/req "
             "| upstream reqs / new conns | procs | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        lines.append(
            f"| {r.target} | {r.wrk.rps:,.0f} | {_fmt_ms(r.wrk.p50_ms)} | {_fmt_ms(r.wrk.p99_ms)} "
            f"| {r.cpu_us:.1f} ({r.cpu_user_us:.1f}/{r.cpu_sys_us:.1f}) | {r.upstream_cpu_us:.1f} "
            f"| {r.upstream_requests:,} / {r.upstream_new_conns:,} | {r.procs} "
            f"| {'; '.join(r.problems) if r.problems else 'none'} |")
    return lines


def median_of(runs: list[Run], key) -> float:
    return statistics.median(key(r) for r in runs)


def report(args, runs: list[Run], names: list[str], info: list[str], steal: str,
           tollgate_notes: list[str]) -> str:
    by_target = {n: [r for r in runs if r.target == n] for n in names}
    md = ["## Proxy: Tollgate vs nginx", "",
          f"Command: `{command_line()}`", "",
          f"Setup: wrk `-t{args.threads} -c{args.connections} -d{args.duration}s --latency` on "
          f"`GET {PATH}` (a {len(BODY)}-byte JSON answer from an upstream nginx, 1 worker); "
          f"proxies with {args.workers} worker(s); nginx upstream `keepalive "
          f"{max(256, args.connections)}`; {args.sessions} session(s) of {args.reps} reps (each "
          f"session starts every process afresh), targets interleaved (order rotates "
          f"each rep), after a {WARMUP_SECONDS}s warm-up of each. 127.0.0.1 only. "
          f"CPU us/req = user+system CPU time of all the proxy's processes (master and workers) "
          f"over the run / requests completed.", ""]
    md += info + [f"- during the measured runs: {steal}", f"- run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]

    problems = [r for r in runs if r.problems]
    if problems:
        md += ["**WARNING: some runs were not clean:**", ""]
        md += [f"- {r.target} session {r.session} rep {r.rep}: {'; '.join(r.problems)}"
               for r in problems] + [""]

    md += ["### Summary (median over all reps of all sessions)", "",
           "| target | req/s | p50 ms | p99 ms | CPU us/req | user | sys | upstream CPU us/req |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    med = {}
    for n in names:
        rs = by_target[n]
        med[n] = {
            "rps": median_of(rs, lambda r: r.wrk.rps),
            "p50": median_of(rs, lambda r: r.wrk.p50_ms),
            "p99": median_of(rs, lambda r: r.wrk.p99_ms),
            "cpu": median_of(rs, lambda r: r.cpu_us),
            "user": median_of(rs, lambda r: r.cpu_user_us),
            "sys": median_of(rs, lambda r: r.cpu_sys_us),
            "up": median_of(rs, lambda r: r.upstream_cpu_us),
        }
        m = med[n]
        md.append(f"| {n} | {m['rps']:,.0f} | {_fmt_ms(m['p50'])} | {_fmt_ms(m['p99'])} "
                  f"| {m['cpu']:.1f} | {m['user']:.1f} | {m['sys']:.1f} | {m['up']:.1f} |")
    md.append("")

    if "nginx" in med and "tollgate" in med:
        md += ["### Tollgate / nginx", "",
               "| metric | ratio (of medians) | per-rep range | target | verdict |",
               "|---|---:|---:|---:|---|"]
        pairs = {
            "req/s": ("rps", lambda r: r.wrk.rps),
            "user CPU/req": ("user", lambda r: r.cpu_user_us),
            "CPU/req": ("cpu", lambda r: r.cpu_us),
            "p99": ("p99", lambda r: r.wrk.p99_ms),
        }
        for metric, (key, get) in pairs.items():
            ratio = med["tollgate"][key] / med["nginx"][key]
            per_rep = [get(t) / get(g) for t, g in zip(by_target["tollgate"], by_target["nginx"])]
            op, bound = TARGETS[metric]
            md.append(f"| {metric} | {ratio:.2f}x | {min(per_rep):.2f}-{max(per_rep):.2f} "
                      f"| {op} {bound:.2f} | {_verdict(ratio, metric)} |")
        md.append("")
        if args.sessions > 1:
            md += ["Per session (ratios of that session's medians):", "",
                   "| session | req/s | user CPU/req | CPU/req | p99 |", "|---|---:|---:|---:|---:|"]
            for s in range(1, args.sessions + 1):
                cells = []
                for metric, (_key, get) in pairs.items():
                    t = statistics.median(get(r) for r in by_target["tollgate"] if r.session == s)
                    g = statistics.median(get(r) for r in by_target["nginx"] if r.session == s)
                    cells.append(f"{t / g:.2f}x")
                md.append(f"| {s} | " + " | ".join(cells) + " |")
            md.append("")

    if "tollgate" in med and "tollgate+accesslog" in med:
        base, logged = med["tollgate"], med["tollgate+accesslog"]
        md += ["### Access log cost (Tollgate with `--access-log FILE` / without)", "",
               "| | req/s | CPU us/req |", "|---|---:|---:|",
               f"| without | {base['rps']:,.0f} | {base['cpu']:.1f} |",
               f"| with | {logged['rps']:,.0f} | {logged['cpu']:.1f} |",
               f"| ratio | {logged['rps'] / base['rps']:.2f}x | {logged['cpu'] / base['cpu']:.2f}x "
               f"(+{logged['cpu'] - base['cpu']:.1f} us/req) |", ""]

    md += tollgate_notes
    for s in range(1, args.sessions + 1):
        for rep in range(1, args.reps + 1):
            title = f"Session {s}, rep {rep}" if args.sessions > 1 else f"Rep {rep}"
            md += [f"### {title}", ""] + rep_table(
                [r for r in runs if r.rep == rep and r.session == s]) + [""]
    md += ["Columns: req/s and latency percentiles as wrk reports them (latency from wrk's "
           "sending a request to its reading the whole answer). \"upstream reqs / new conns\": "
           "requests the upstream nginx served and TCP connections it accepted during the run "
           "(a proxy with a warm keep-alive pool opens none, or a few replacing those cut off when the "
           "previous run stopped). \"procs\": processes of the proxy (master + workers)."]
    return "\n".join(md) + "\n"


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--sessions", type=int, default=2,
                   help="sessions, each starting every process afresh and running --reps "
                        "(default 2)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument("--workers", type=int, default=1, help="worker processes of each proxy (default 1)")
    p.add_argument("--targets", default="nginx,tollgate,floor",
                   help="comma-separated, among nginx,tollgate,floor (default all three; floor is "
                        "benchmarks/floor_proxy.py, the least a uvloop + httptools proxy costs)")
    p.add_argument("--access-log-cost", action="store_true",
                   help="also run Tollgate with --access-log FILE and report what it costs")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    p.add_argument("--keep-work", action="store_true",
                   help="keep benchmarks/.work/<run>/ (confs, logs) even after a clean run")
    args = p.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_list) - {"nginx", "tollgate", "floor"}
    if unknown or not args.target_list:
        p.error(f"--targets: unknown {sorted(unknown)}; choose among nginx,tollgate,floor")
    if args.access_log_cost and "tollgate" not in args.target_list:
        p.error("--access-log-cost needs the tollgate target")
    if min(args.duration, args.reps, args.sessions, args.connections, args.threads, args.workers) < 1:
        p.error("--duration, --reps, --sessions, --connections, --threads and --workers must be >= 1")
    if args.connections < args.threads:
        p.error("--connections must be >= --threads (wrk needs a connection per thread)")
    if args.duration > 120:
        p.error("--duration is capped at 120 s to keep the run bounded")
    return args


def run_session(args: argparse.Namespace, workdir: Path, session: int, runs: list[Run],
                notes: list[str]) -> list[str]:
    """Start the upstream and every target, warm them up, run the interleaved reps (appended to
    ``runs``; problems to ``notes``).  Returns the target names; the caller stops everything."""
    (workdir / "tmp").mkdir(parents=True)
    upstream, upstream_addr, upstream_status = start_upstream(workdir)
    targets: list[Target] = []
    if "nginx" in args.target_list:
        targets.append(start_nginx_proxy(workdir, upstream_addr, args))
    if "tollgate" in args.target_list:
        targets.append(start_tollgate(workdir, upstream_addr, args, "tollgate", None))
        if args.access_log_cost:
            targets.append(start_tollgate(workdir, upstream_addr, args, "tollgate+accesslog",
                                          workdir / "tollgate-access.log"))
    if "floor" in args.target_list:
        targets.append(start_floor(workdir, upstream_addr))

    for t in targets:
        log(f"session {session}: warm-up {t.name}: {WARMUP_SECONDS}s")
        warm = run_wrk(t.url, WARMUP_SECONDS, args.threads, args.connections)
        if warm.errors or not t.service.alive():
            problem = (f"{t.name} warm-up (session {session}): {warm.errors} errors (socket "
                       f"{warm.socket_errors}, non-2xx {warm.non2xx}); process {t.service.died_why()}")
            loud(problem)
            notes += [f"**{problem}**", ""]

    for rep in range(1, args.reps + 1):
        k = (rep - 1) % len(targets)
        for t in targets[k:] + targets[:k]:
            log(f"session {session}/{args.sessions}, rep {rep}/{args.reps}: {t.name} for {args.duration}s")
            run = measure(t, upstream, upstream_status, rep, args, session)
            runs.append(run)
            log(f"  {run.wrk.rps:,.0f} req/s, p50 {_fmt_ms(run.wrk.p50_ms)} ms, "
                f"p99 {_fmt_ms(run.wrk.p99_ms)} ms, CPU {run.cpu_us:.1f} us/req "
                f"(user {run.cpu_user_us:.1f}, sys {run.cpu_sys_us:.1f}), "
                f"upstream {run.upstream_cpu_us:.1f} us/req")

    for t in targets:
        if t.name.startswith("tollgate"):
            tail = t.service.log_tail(200)
            if re.search(r"Traceback|\bERROR\b|\bCRITICAL\b", tail):
                notes += [f"**{t.name} logged errors** (session {session}, tail of its log):", "",
                          "```", t.service.log_tail(40), "```", ""]
    return [t.name for t in targets]


def main(argv=None) -> int:
    args = parse_args(argv)
    for tool in (NGINX, WRK):
        if not os.access(tool, os.X_OK):
            print(f"{tool} is missing (Debian packages nginx-light and wrk)", file=sys.stderr)
            return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(stop_all)

    if "tollgate" in args.target_list:
        try:
            args.tollgate_cmd = tollgate_command()   # fail before starting anything
        except RuntimeError as exc:
            loud(str(exc))
            return 2
    workdir = WORK_ROOT / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    (workdir / "tmp").mkdir(parents=True)
    clean = False
    try:
        info = machine_info()
        runs: list[Run] = []
        notes: list[str] = []
        busy0, steal0, total0 = system_cpu()
        for session in range(1, args.sessions + 1):
            names = run_session(args, workdir / f"session-{session}", session, runs, notes)
            stop_all()      # the next session starts every process afresh
        busy1, steal1, total1 = system_cpu()
        span = max(total1 - total0, 1)
        steal = (f"machine busy {100 * (busy1 - busy0) / span:.0f}% of all CPUs, "
                 f"steal {100 * (steal1 - steal0) / span:.1f}%; load average "
                 f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        md = report(args, runs, names, info, steal, notes)
        print(md)
        if not args.no_write:
            # one section per worker count: the 1- and 2-worker figures are kept side by side
            section = "proxy" if args.workers == 1 else f"proxy-{args.workers}-workers"
            write_section(section, md)
            log(f"wrote the '{section}' section of benchmarks/RESULTS.md")
        clean = not any(r.problems for r in runs) and not notes
        if not clean:
            loud("some runs were not clean: see the WARNING above")
        return 0 if clean else 1
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        loud(f"benchmark failed: {exc}")
        return 2
    finally:
        stop_all()
        if clean and not args.keep_work:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            if not args.keep_work:
                for big in workdir.glob("session-*/tollgate-access.log"):
                    big.unlink()
            log(f"work dir kept: {workdir}")


if __name__ == "__main__":
    sys.exit(main())
