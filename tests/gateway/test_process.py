"""The gateway as processes: several workers, SIGTERM drain, a killed worker, a bad config at
start, the fastpath implementation in use.

A note on /metrics: each gateway here is scraped once at most (see test_observability).
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

import fastpath
from tests.conftest import proxy_config
from tests.support.gateway import ROOT, GatewayProcess, free_port

# (process management is the master's and the worker's Python in either form: CI runs this module
# in the compiled pass only)
pytestmark = pytest.mark.once




def readyz(gw):
    status, body = gw.status("/readyz")
    return status, json.loads(body)


def scrape_once(gw) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    status, body = gw.status("/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def get(gw, target, timeout=10.0):
    """One request on a new connection: (status, headers dict, body)."""
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        c.request("GET", target)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def worker_of(headers) -> str:
    """Request ids are a per-process random prefix (16 hex) and a counter."""
    return headers["x-request-id"][:16]


def wait_exit(gw, timeout):
    try:
        return gw.proc.wait(timeout)
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait(5)
        gw.stop()   # closes its log


# -- several workers ----------------------------------------------------------------------------

def test_two_workers_both_serve(make_gateway, backend_m):
    gw = make_gateway(proxy_config(backend_m.address), workers=2)
    status, ready = readyz(gw)
    assert status == 200 and ready["ready"] is True
    pids = [w["pid"] for w in ready["workers"]]
    assert len(pids) == 2 and len(set(pids)) == 2 and all(w["ready"] for w in ready["workers"])
    for pid in pids:
        os.kill(pid, 0)                      # real, live processes
    seen = set()
    for i in range(60):                      # new connections: the kernel spreads them
        status, headers, _ = get(gw, f"/echo/{i}" if i % 2 else "/mock")
        assert status == 200
        seen.add(worker_of(headers))
        if len(seen) == 2 and i >= 20:
            break
    assert len(seen) == 2, "only one worker answered 20+ new connections"
    metrics = scrape_once(gw)
    assert metrics[("tollgate_workers", ())] == 2


def test_killed_worker_is_started_again(make_gateway, backend_m):
    gw = make_gateway(proxy_config(backend_m.address), workers=2)
    _, ready = readyz(gw)
    old = [w["pid"] for w in ready["workers"]]
    os.kill(old[0], signal.SIGKILL)
    time.sleep(0.1)
    # the other worker keeps serving meanwhile; count refusals, and require that it serves
    deadline = time.monotonic() + 30   # a bound, not a speed claim: a loaded CI box is slow
    new = None
    served = refused = 0
    while time.monotonic() < deadline:
        try:
            status, headers, _ = get(gw, "/mock")
        except ConnectionError:
            refused += 1
            time.sleep(0.05)
            continue
        assert status == 200
        served += 1
        code, ready = readyz(gw)
        pids = [w["pid"] for w in ready["workers"]]
        if code == 200 and old[0] not in pids and old[1] in pids and all(w["ready"] for w in ready["workers"]):
            new = (set(pids) - {old[1]}).pop()
            break
        time.sleep(0.1)
    assert new, f"the killed worker was not replaced: {ready}"
    # the workers share the master's listening socket: what the dead worker had not accepted
    # is accepted by the other, so no connection is refused
    assert served >= 1 and refused == 0, (served, refused)
    os.kill(new, 0)
    assert ready["ready"] is True
    seen = set()
    for i in range(40):
        status, headers, _ = get(gw, f"/echo/after/{i}")
        assert status == 200
        seen.add(worker_of(headers))
        if len(seen) == 2:
            break
    assert len(seen) == 2, "the new worker does not serve"
    assert "exited with" in gw.log()


# -- SIGTERM ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_drains_in_flight_request_then_exits_0(make_gateway, backend_m):
    gw = make_gateway(proxy_config(backend_m.address))
    result = {}

    def slow():
        try:
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
            c.request("GET", "/slow?ms=1500")
            r = c.getresponse()
            result["r"] = (r.status, r.getheader("Connection"), r.read())
            c.close()
        except Exception as exc:
            result["r"] = exc

    # an idle keep-alive connection, closed by the drain
    idle = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    idle.sendall(b"GET /mock HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.4)                                   # the slow request is at the backend
    sent = time.monotonic()
    gw.signal(signal.SIGTERM)
    time.sleep(0.4)
    # draining: new connections are refused
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()
    # the idle connection was closed
    idle.settimeout(2)
    try:
        assert idle.recv(65536) == b""
    except ConnectionResetError:
        pass
    finally:
        idle.close()
    t.join(10)
    assert not isinstance(result.get("r"), Exception), result
    status, connection, body = result["r"]
    assert status == 200
    assert json.loads(body)["target"] == "/slow?ms=1500"
    assert connection == "close"
    code = wait_exit(gw, 10)
    assert code == 0
    assert time.monotonic() - sent < 6.0


def test_sigterm_with_nothing_in_flight_exits_quickly(make_gateway, backend_m):
    gw = make_gateway(proxy_config(backend_m.address), workers=2)
    assert get(gw, "/mock")[0] == 200
    pids = [w["pid"] for w in readyz(gw)[1]["workers"]]
    t0 = time.monotonic()
    gw.signal(signal.SIGTERM)
    assert wait_exit(gw, 10) == 0
    assert time.monotonic() - t0 < 3.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state == "Z", f"worker {pid} still running after the master exited"


# -- configuration at start ---------------------------------------------------------------------

def _run_gateway(config_path, timeout=20):
    return subprocess.run(
        [sys.executable, "-m", "tollgate", "gateway", "--config", str(config_path),
         "--listen", f"127.0.0.1:{free_port()}", "--status-listen", f"127.0.0.1:{free_port()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_bad_config_at_start_exits_2_naming_the_error(tmp_path, backend_m):
    cfg = proxy_config(backend_m.address)
    cfg["apis"][0]["backend"]["timeout_ms"] = 0                 # out of range
    cfg["apis"][1]["backend"]["mock"]["colour"] = "blue"         # unknown field
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = _run_gateway(path)
    assert out.returncode == 2, out
    assert "apis[0].backend.timeout_ms" in out.stderr
    assert "apis[1].backend.mock.colour" in out.stderr
    assert str(path) in out.stderr


def test_unreadable_or_broken_config_at_start_exits_2(tmp_path):
    out = _run_gateway(tmp_path / "missing.yaml")
    assert out.returncode == 2 and "missing.yaml" in out.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\napis: [\n")
    out = _run_gateway(broken)
    assert out.returncode == 2 and "YAML" in out.stderr


# -- fastpath implementation --------------------------------------------------------------------

def test_fastpath_pure_when_extensions_disabled(make_gateway, backend_m):
    gw = make_gateway(proxy_config(backend_m.address), env={"TOLLGATE_NO_EXTENSIONS": "1"})
    assert get(gw, "/echo/pure")[0] == 200
    metrics = scrape_once(gw)
    assert metrics[("tollgate_fastpath_info", (("implementation", "pure"),))] == 1
    assert ("tollgate_fastpath_info", (("implementation", "compiled"),)) not in metrics
    assert "fastpath pure" in gw.log()


@pytest.mark.skipif(not fastpath.compiled_available(), reason="fastpath is not compiled here")
def test_fastpath_compiled_by_default(make_gateway, backend_m):
    gw = make_gateway(proxy_config(backend_m.address), env={"TOLLGATE_NO_EXTENSIONS": ""})
    assert get(gw, "/echo/compiled")[0] == 200
    metrics = scrape_once(gw)
    assert metrics[("tollgate_fastpath_info", (("implementation", "compiled"),))] == 1
    assert ("tollgate_fastpath_info", (("implementation", "pure"),)) not in metrics


# -- one address, one gateway -------------------------------------------------------------------

def test_a_second_gateway_on_the_same_address_refuses_to_start(make_gateway, backend_m, tmp_path):
    first = make_gateway(proxy_config(backend_m.address), workers=2)
    second = GatewayProcess(proxy_config(backend_m.address), tmp_path, port=first.port, name="second")
    try:
        with pytest.raises(RuntimeError, match="exited with 1"):
            second.start(timeout=15)
    finally:
        second.stop()       # (had it started, it must not outlive the test)
    assert f"cannot serve on 127.0.0.1:{first.port}: the address is already in use" in second.log()
    for _ in range(20):      # every connection still reaches the first gateway's configuration
        assert get(first, "/mock")[0] == 200


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "so-reuseport"])
def test_an_address_held_by_another_program_refuses_to_start(backend_m, tmp_path, reuse_port):
    other = socket.socket()
    if reuse_port:           # another program that would share the port with anyone
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen(8)
    try:
        gw = GatewayProcess(proxy_config(backend_m.address), tmp_path, port=other.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="exited with 1"):
                gw.start(timeout=15)
        finally:
            gw.stop()
        assert "the address is already in use" in gw.log()
    finally:
        other.close()


def test_an_api_published_nowhere_is_a_warning_at_load(make_gateway, backend_m):
    config = proxy_config(backend_m.address)
    config["apis"].append({"name": "hidden", "group": "main", "method": "GET", "path": "/hidden",
                           "backend": {"type": "mock", "mock": {"body": "x"}}})
    gw = make_gateway(config)
    warnings = [line for line in gw.log().splitlines() if "WARNING" in line and "hidden" in line]
    assert len(warnings) == 1, gw.log()
    assert "apis[2].environments" in warnings[0] and "published in no environment" in warnings[0]
    assert get(gw, "/hidden")[2] != b"x"     # not served by the hidden API (the prefix API answers)
