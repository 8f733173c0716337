"""The throttling benchmark's pieces: the documents it serves, its checks that throttles are
applied, the accuracy arithmetic and the rate-controlled client, against real gateways, a real
backend and a real redis-server; then very short runs of both parts (the figures in RESULTS.md
are only as good as these)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import auth_bench
from benchmarks import run as harness
from benchmarks import throttle_bench as tb
from tests.support.gateway import ROOT, GatewayProcess

needs_wrk = pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed")
needs_nginx = pytest.mark.skipif(not os.access(harness.NGINX, os.X_OK), reason="nginx is not installed")
needs_redis = pytest.mark.skipif(not os.access(tb.REDIS_SERVER, os.X_OK),
                                 reason="redis-server is not installed")


@pytest.fixture(scope="module")
def cmd():
    return harness.tollgate_command()


# --- the documents ------------------------------------------------------------------------------


def test_the_throughput_document_binds_the_never_reached_throttle_and_validates(tmp_path, cmd):
    doc = tb.gateway_config("127.0.0.1:9")
    apis = {a["name"]: a for a in doc["apis"]}
    assert apis["plain"]["environments"] == {"RELEASE": {}}
    assert apis["throttled"]["environments"] == {"RELEASE": {"throttle": "never-reached"}}
    assert apis["tiny"]["environments"] == {"RELEASE": {"throttle": "tiny"}}
    # the same API shape but for the throttle: a fair comparison
    strip = {k: v for k, v in apis["plain"].items() if k not in ("name", "path", "environments")}
    assert strip == {k: v for k, v in apis["throttled"].items()
                     if k not in ("name", "path", "environments")}
    assert apis["plain"]["match_mode"] == "prefix" and apis["plain"]["auth"] == "none"
    never = {t["name"]: t for t in doc["throttles"]}["never-reached"]
    assert (never["api_limit"], never["ip_limit"], never["unit"]) == (2_000_000_000,
                                                                      1_000_000_000, "second")
    assert "redis" not in doc
    path, why = tb.configure(tmp_path, "t", doc, cmd)
    assert why is None and path.exists()


def test_the_redis_document_is_served_or_refused_with_the_reason(tmp_path, cmd):
    doc = tb.gateway_config("127.0.0.1:9", "redis://127.0.0.1:6390/0")
    assert doc["redis"] == {"url": "redis://127.0.0.1:6390/0", "timeout_ms": 50,
                            "fail_mode": "open"}
    _path, why = tb.configure(tmp_path, "r", doc, cmd)
    if why is not None:          # until the gateway serves Redis: skipped, and the report says why
        assert "redis" in why and "not supported in this version" in why
        assert tb.redis_refusal(why).startswith("the gateway refuses the `redis` section")


def test_a_document_the_gateway_refuses_is_reported_with_its_errors(tmp_path, cmd):
    doc = tb.accuracy_config("127.0.0.1:9", 3_000_000_000, None)     # over the largest limit
    _path, why = tb.configure(tmp_path, "bad", doc, cmd)
    assert why is not None and "throttles[0].api_limit" in why


def test_the_rate_limit_header_is_parsed():
    assert tb.rate_limit_header("remain:499,limit:500,time:1 second") == (499, 500)
    assert tb.rate_limit_header("remain:-1,limit:5,time:1 hour") == (-1, 5)
    assert tb.rate_limit_header(None) is None
    assert tb.rate_limit_header("limit:5") is None


# --- the checks against a real gateway ----------------------------------------------------------


def _as_service(gw: GatewayProcess):
    return SimpleNamespace(port=gw.port, name="gateway", log_tail=gw.log)


def test_the_checks_pass_on_the_benchmark_gateway(tmp_path, backend_m):
    gw = GatewayProcess(tb.gateway_config(backend_m.address), tmp_path).start()
    try:
        seen = tb.check_gateway(_as_service(gw), expect=None)
    finally:
        gw.stop()
    assert any(s.startswith("X-Apig-RateLimit-api: ") and "limit:2000000000" in s for s in seen)
    assert any(s.startswith("X-Apig-RateLimit-ip: ") for s in seen)
    assert any("then 429" in s for s in seen)
    # the backend got /json: the prefix is cut and the rest appended
    assert {r["target"] for r in backend_m.requests} >= {"/json"}


def test_the_checks_fail_when_the_throttle_is_not_applied(tmp_path, backend_m):
    doc = tb.gateway_config(backend_m.address)
    for a in doc["apis"]:
        if a["name"] == "throttled":
            a["environments"] = {"RELEASE": {}}
    gw = GatewayProcess(doc, tmp_path).start()
    try:
        with pytest.raises(RuntimeError, match="X-Apig-RateLimit-api.*not applied"):
            tb.check_gateway(_as_service(gw), expect=None)
    finally:
        gw.stop()


def test_the_checks_fail_when_the_tiny_limit_does_not_refuse(tmp_path, backend_m):
    doc = tb.gateway_config(backend_m.address)
    for t in doc["throttles"]:
        if t["name"] == "tiny":
            t["api_limit"] = 100
    gw = GatewayProcess(doc, tmp_path).start()
    try:
        with pytest.raises(RuntimeError, match="throttles are not applied"):
            tb.check_gateway(_as_service(gw), expect=None)
    finally:
        gw.stop()


# --- the accuracy arithmetic --------------------------------------------------------------------


def calls(spec):
    """[(sent, status, lane)] -> Calls (due = sent)."""
    return [tb.Call(s, s, st, "" if st else "Connection refused", lane) for s, st, lane in spec]


def test_tally_counts_the_calls_sent_in_the_span_only():
    cs = calls([(9.999, 200, 0), (10.0, 200, 0), (10.5, 429, 0), (11.2, 200, 1), (11.9, 503, 1),
                (12.0, 0, 1), (12.4, 200, 0), (12.5, 200, 0)])
    t = tb.tally(cs, 10.0, 12.5, limit=2)
    assert t.seconds == pytest.approx(2.5) and t.expected == pytest.approx(5.0)
    assert (t.sent, t.allowed, t.refused) == (6, 3, 1)      # 9.999 before, 12.5 at t1: out
    assert t.other == {"HTTP 503": 1, "Connection refused": 1}
    assert t.per_second == [1, 1, 1]                        # the last, partial second has a bin
    assert t.ratio == pytest.approx(0.6) and not t.within()
    assert tb.tally(cs, 10.0, 12.5, limit=2, lanes={1}).allowed == 1


def test_the_bounds_are_the_goal_in_whole_calls():
    t = tb.Tally(0.0, 20.0, limit=500, period=1.0)
    assert t.expected == 10_000 and t.bounds() == (9_500, 10_200)
    for allowed, ok in ((9_499, False), (9_500, True), (10_200, True), (10_201, False)):
        t.allowed = allowed
        assert t.within() is ok
    partial = tb.Tally(0.0, 10.0037, limit=500, period=1.0)      # exact times, not rounded
    assert partial.expected == pytest.approx(5001.85)
    assert partial.bounds() == (4752, 5101)
    assert tb.Tally(0.0, 2.0, limit=60, period=60.0).expected == pytest.approx(2.0)


# --- the rate-controlled client against real servers --------------------------------------------


def test_the_driver_holds_its_rate_on_keep_alive_connections(backend):
    d = tb.RateDriver(backend.port, "/echo", rate=200, connections=4)
    start, cs, _ = tb.drive([d], 1.0)
    assert len(cs) == 200                                  # due at start + i/200, i < 200
    assert [c.due for c in cs] == pytest.approx([start + i / 200 for i in range(200)])
    assert all(c.status == 200 and c.sent >= c.due - 1e-3 for c in cs)
    assert len(backend.requests) == 200
    assert backend.connections <= 4                        # kept alive, not one per call
    t = tb.tally(cs, start, start + 1.0, limit=200)
    assert t.allowed == 200 and t.ratio == pytest.approx(1.0)


def test_the_driver_records_statuses_refusals_timeouts_and_reconnects(backend):
    port = harness.free_port()                             # nothing listens there
    drivers = [tb.RateDriver(backend.port, "/status?code=429", 100, 2, lane=0),
               tb.RateDriver(backend.port, "/close", 50, 2, lane=1),
               tb.RateDriver(port, "/x", 50, 2, lane=2),
               tb.RateDriver(backend.port, "/hang", 10, 2, timeout=0.2, lane=3)]
    start, cs, _ = tb.drive(drivers, 0.5)
    by = {lane: [c for c in cs if c.lane == lane] for lane in range(4)}
    assert len(by[0]) == 50 and {c.status for c in by[0]} == {429}
    assert len(by[1]) == 25 and {c.status for c in by[1]} == {200}     # a new connection each
    assert len(by[2]) == 25 and {c.error for c in by[2]} == {os.strerror(111)}
    assert by[3] and {c.error for c in by[3]} == {"timeout"}
    with pytest.raises(ValueError):
        tb.RateDriver(backend.port, "/", 0)


def test_a_gateway_killed_mid_run_loses_its_master_and_workers(tmp_path, backend):
    args = SimpleNamespace(tollgate_cmd=harness.tollgate_command(), workers=2)
    conf = auth_bench.write_config(tb.accuracy_config(backend.address, 1000, None),
                                   tmp_path / "acc.yaml")
    gw = auth_bench.start_gateway(tmp_path, conf, args, "victim")
    try:
        d = tb.RateDriver(gw.port, "/a/echo", 100, 4)
        start, cs, done = tb.drive([d], 1.0, [(0.5, lambda: tb.kill_tree(gw))])
        t_kill, nprocs = done[0.5]
        assert nprocs == 3 and not gw.alive()
        assert t_kill == pytest.approx(start + 0.5, abs=0.05)
        before = [c for c in cs if c.sent < t_kill - 0.02]
        after = [c for c in cs if c.sent > t_kill + 0.02]
        assert before and {c.status for c in before} == {200}
        assert after and all(c.status == 0 and c.error for c in after)
        assert len(cs) == 100                              # the pace held through the errors
    finally:
        gw.stop()
        if gw in harness._SERVICES:
            harness._SERVICES.remove(gw)


# --- redis-server ----------------------------------------------------------------------------


@needs_redis
def test_redis_is_started_and_its_commands_counted(tmp_path):
    svc = tb.start_redis(tmp_path, harness.free_port())
    try:
        assert tb.resp_command(svc.port, "PING") == b"+PONG\r\n"
        a = tb.redis_commands(svc.port)
        b = tb.redis_commands(svc.port)
        assert b - a == 1                                  # the first INFO, counted after it
        tb.resp_command(svc.port, "SET", "k", "v")
        assert tb.resp_command(svc.port, "GET", "k") == b"$1\r\nv\r\n"
        assert tb.redis_commands(svc.port) - b - 1 == 2
    finally:
        svc.stop()
        if svc in harness._SERVICES:
            harness._SERVICES.remove(svc)
    assert tb.redis_version()[0].isdigit()


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--targets", "nginx,bogus"], ["--limit", "0"],
                                  ["--duration", "500"], ["--seconds", "0.5"],
                                  ["--warmup", "0"]])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        tb.parse_args(argv)
    assert "error:" in capsys.readouterr().err


def test_options_keep_the_targets_in_the_table_order():
    args = tb.parse_args(["--targets", "throttled,plain"])
    assert args.target_list == ["plain", "throttled"]
    assert tb.parse_args(["--accuracy", "--warmup", "0"]).warmup == 0


# --- very short runs of the whole thing ---------------------------------------------------------


@needs_wrk
@needs_nginx
def test_a_short_throughput_run_end_to_end():
    out = subprocess.run([sys.executable, "-m", "benchmarks.throttle_bench", "--duration", "1",
                          "--reps", "1", "--warmup", "1", "--no-write"],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode in (0, 1), out.stdout[-2000:] + out.stderr[-3000:]
    assert "| Tollgate, throttled (node table) (`throttled`) | " in out.stdout, out.stdout
    assert "| `throttled` / `plain` | " in out.stdout
    assert "X-Apig-RateLimit-ip: remain:" in out.stdout
    assert "non-2xx" not in out.stdout                   # the throttle never refused a call
    assert ("`throttled-redis` / `plain-redis` | " in out.stdout)
    assert "CPU" in out.stdout and "fastpath.IMPLEMENTATION" in out.stdout


@needs_nginx
def test_a_short_accuracy_run_end_to_end():
    out = subprocess.run([sys.executable, "-m", "benchmarks.throttle_bench", "--accuracy",
                          "--limit", "100", "--seconds", "2", "--warmup", "1", "--no-write"],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode in (0, 1), out.stdout[-2000:] + out.stderr[-3000:]
    assert "| whole span | 2.000 | " in out.stdout, out.stdout
    assert "L = 100 calls per second" in out.stdout
