"""Configuration reloads of the running gateway: under load (no request may fail), refused bad
files (the old configuration keeps serving), and a reload with a request in flight.

A note on /metrics: each test reads it once, at its end (see test_observability for why).
"""
from __future__ import annotations

import copy
import http.client
import json
import signal
import threading
import time

import pytest

from tests.conftest import proxy_config

# (reloads are the master's and the worker's Python in either form: CI runs this module in the
# compiled pass only)
pytestmark = [pytest.mark.slow, pytest.mark.once]



def config_a(address):
    cfg = proxy_config(address)
    cfg["apis"][1]["backend"]["mock"]["body"] = '{"mock":"A"}'
    return cfg


def config_b(address):
    cfg = copy.deepcopy(config_a(address))
    cfg["apis"][1]["backend"]["mock"]["body"] = '{"mock":"B"}'
    cfg["apis"].append({"name": "added", "group": "main", "method": "GET", "path": "/added",
                        "backend": {"type": "mock", "mock": {"status": 200, "body": "added"}},
                        "environments": {"RELEASE": {}}})
    return cfg



def readyz(gw) -> dict:
    status, body = gw.status("/readyz")
    assert status == 200, body
    return json.loads(body)


def get(gw, target, timeout=10.0):
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        c.request("GET", target)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached in {timeout} s")


def scrape_once(gw) -> dict:
    """One /metrics scrape: {(sample name, ((label, value), ...)): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    status, body = gw.status("/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def reload(gw, config):
    gw.write_config(config)
    gw.signal(signal.SIGHUP)



def _mock_body(gw):
    return get(gw, "/mock")[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_under_load_loses_no_request(make_gateway, backend_m, workers):
    a, b = config_a(backend_m.address), config_b(backend_m.address)
    gw = make_gateway(a, workers=workers)
    stop = threading.Event()
    failures: list = []
    counts = [0] * 4
    mock_bodies: set = set()

    def load(index):
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        n = 0
        try:
            while not stop.is_set():
                target = "/mock" if n % 2 else f"/echo/load/{index}/{n}"
                n += 1
                try:
                    c.request("GET", target)
                    r = c.getresponse()
                    body = r.read()
                except Exception as exc:   # any connection error is a failed request
                    failures.append((target, repr(exc)))
                    c.close()
                    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
                    continue
                if r.status != 200:
                    failures.append((target, r.status, body[:200]))
                elif target == "/mock":
                    mock_bodies.add(body)
                elif json.loads(body)["target"] != target:
                    failures.append((target, "wrong answer", body[:200]))
                counts[index] += 1
        finally:
            c.close()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        for i in range(6):                       # B, A, B, A, B, A every ~0.5 s, under load
            cfg, body = (b, b'{"mock":"B"}') if i % 2 == 0 else (a, b'{"mock":"A"}')
            reload(gw, cfg)
            wait_for(lambda: _mock_body(gw) == body, what=f"reload {i} takes effect")
            time.sleep(0.4)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not failures, failures[:10]
    assert sum(counts) > 100, counts
    assert all(counts), f"a load thread made no request: {counts}"
    assert mock_bodies == {b'{"mock":"A"}', b'{"mock":"B"}'}, mock_bodies
    # every worker serves A (new connections spread over the workers) ...
    wait_for(lambda: all(get(gw, "/added")[1] != b"added" and _mock_body(gw) == b'{"mock":"A"}'
                         for _ in range(8)), what="A live in every worker")
    # ... and then B, with its new API
    reload(gw, b)
    wait_for(lambda: all(get(gw, "/added") == (200, b"added") and _mock_body(gw) == b'{"mock":"B"}'
                         for _ in range(8)), what="B and its new API live in every worker")
    assert "Traceback" not in gw.log()


def test_reload_is_reported_by_readyz_and_metrics(make_gateway, backend_m):
    a, b = config_a(backend_m.address), config_b(backend_m.address)
    gw = make_gateway(a)
    version_a = readyz(gw)["config_version"]
    assert version_a
    version_b = None
    for i in range(4):                                   # A -> B -> A -> B -> A
        cfg, body = (b, b'{"mock":"B"}') if i % 2 == 0 else (a, b'{"mock":"A"}')
        reload(gw, cfg)
        wait_for(lambda: _mock_body(gw) == body, what=f"reload {i} takes effect")
        live = readyz(gw)["config_version"]
        if cfg is b:
            assert live != version_a
            version_b = version_b or live
            assert live == version_b
        else:
            assert live == version_a
        wait_for(lambda: all(w["config_version"] == live for w in readyz(gw)["workers"]),
                 what="the workers report the new version")
    metrics = scrape_once(gw)
    assert metrics[("tollgate_config_reloads_total", (("result", "ok"),))] == 4
    assert metrics[("tollgate_config_reloads_total", (("result", "error"),))] == 0
    assert metrics[("tollgate_config_version_info", (("version", version_a),))] == 1


def test_bad_config_is_refused_and_old_one_keeps_serving(make_gateway, backend_m):
    a = config_a(backend_m.address)
    gw = make_gateway(a)

    bad = copy.deepcopy(a)
    bad["apis"][1]["backend"]["mock"]["bodyy"] = "typo"      # unknown field
    del bad["apis"][0]                                       # (and the proxy API removed)
    reload(gw, bad)
    wait_for(lambda: "apis[0].backend.mock.bodyy" in gw.log(), what="the error is logged")
    assert "unknown field" in gw.log()
    time.sleep(0.3)
    assert _mock_body(gw) == b'{"mock":"A"}'
    assert get(gw, "/echo/still")[0] == 200

    reload(gw, "version: 1\napis: [\n  - {name: x\n")           # not YAML at all
    wait_for(lambda: "invalid YAML" in gw.log(), what="the YAML error is logged")
    time.sleep(0.3)
    assert _mock_body(gw) == b'{"mock":"A"}'
    assert get(gw, "/echo/still")[0] == 200

    # a good file afterwards is applied
    reload(gw, config_b(backend_m.address))
    wait_for(lambda: get(gw, "/added") == (200, b"added"), what="the good config applies")
    assert _mock_body(gw) == b'{"mock":"B"}'


def test_bad_config_is_reported_by_readyz_and_metrics(make_gateway, backend_m):
    a = config_a(backend_m.address)
    gw = make_gateway(a)
    version_a = readyz(gw)["config_version"]
    for field in ("timeout_msec", "retry", "hostheader"):      # unknown fields
        bad = copy.deepcopy(a)
        bad["apis"][0]["backend"][field] = 5
        reload(gw, bad)
        wait_for(lambda: f"apis[0].backend.{field}" in gw.log(), what="the error is logged")
        ready = readyz(gw)
        assert ready["ready"] is True and ready["config_version"] == version_a
        assert all(w["config_version"] == version_a for w in ready["workers"])
    metrics = scrape_once(gw)
    assert metrics[("tollgate_config_reloads_total", (("result", "error"),))] >= 3
    assert metrics[("tollgate_config_reloads_total", (("result", "ok"),))] == 0
    assert metrics[("tollgate_config_version_info", (("version", version_a),))] == 1


def test_reload_while_a_slow_request_is_in_flight(make_gateway, backend_m):
    gw = make_gateway(config_a(backend_m.address))
    result = {}

    def slow():
        try:
            result["r"] = get(gw, "/slow?ms=2500")
        except Exception as exc:
            result["r"] = exc

    t = threading.Thread(target=slow)
    started = time.monotonic()
    t.start()
    time.sleep(0.3)
    reload(gw, config_b(backend_m.address))
    wait_for(lambda: get(gw, "/added") == (200, b"added"), what="the new config applies")
    assert time.monotonic() - started < 2.0, "the reload waited for the slow request"
    t.join(10)
    assert not isinstance(result["r"], Exception), result["r"]
    status, body = result["r"]
    assert status == 200
    assert json.loads(body)["target"] == "/slow?ms=2500"


# -- what the operator reads in the log --------------------------------------------------------

def log_lines(gw, text):
    return [line for line in gw.log().splitlines() if text in line]


def test_sighup_with_an_unchanged_file_logs_one_line(make_gateway, backend_m):
    gw = make_gateway(config_a(backend_m.address))
    version = readyz(gw)["config_version"]
    gw.signal(signal.SIGHUP)
    wait_for(lambda: log_lines(gw, "is unchanged"), what="a log line for the unchanged file")
    time.sleep(0.3)
    lines = log_lines(gw, "SIGHUP")
    assert len(lines) == 1, gw.log()
    assert version in lines[0] and "still serving" in lines[0]
    assert readyz(gw)["config_version"] == version


def test_a_config_file_that_disappears_keeps_serving_and_comes_back(make_gateway, backend_m):
    gw = make_gateway(config_a(backend_m.address))
    version = readyz(gw)["config_version"]
    gw.config_path.unlink()
    wait_for(lambda: log_lines(gw, "is gone"), what="a log line for the missing file")
    time.sleep(0.6)   # three more polls of the file (--watch-interval 0.2): still one line
    lines = log_lines(gw, "is gone")
    assert len(lines) == 1 and version in lines[0] and "still serving" in lines[0], gw.log()
    assert get(gw, "/mock") == (200, b'{"mock":"A"}')
    gw.signal(signal.SIGHUP)          # asked to reload a file that is not there: one line
    wait_for(lambda: log_lines(gw, "cannot read"), what="a log line for the failed SIGHUP")
    assert len(log_lines(gw, "cannot read")) == 1
    assert get(gw, "/mock") == (200, b'{"mock":"A"}')
    gw.write_config(config_b(backend_m.address))   # back, with new content: loaded
    wait_for(lambda: get(gw, "/mock") == (200, b'{"mock":"B"}'), what="the new file served")


def test_an_unreadable_config_file_logs_one_line_and_keeps_serving(make_gateway, backend_m):
    gw = make_gateway(config_a(backend_m.address))
    version = readyz(gw)["config_version"]
    gw.config_path.unlink()
    gw.config_path.mkdir()            # unreadable even for root: a directory in its place
    try:
        # the file watcher notices the change and tries once
        wait_for(lambda: log_lines(gw, "cannot read"), what="a log line for the unreadable file")
        time.sleep(0.6)               # three more polls: nothing new to say
        lines = log_lines(gw, "cannot read")
        assert len(lines) == 1 and version in lines[0] and "still serving" in lines[0], gw.log()
        gw.signal(signal.SIGHUP)      # each SIGHUP is answered with one line
        wait_for(lambda: len(log_lines(gw, "cannot read")) == 2, what="a line for the SIGHUP")
        assert "Traceback" not in gw.log()
        assert get(gw, "/mock") == (200, b'{"mock":"A"}')
    finally:
        gw.config_path.rmdir()


def test_a_reload_while_workers_start_neither_kills_them_nor_leaves_them_behind(tmp_path,
                                                                                 backend_m):
    # the new file is saved and SIGHUP sent as soon as the master answers, while its workers
    # are still starting (fresh interpreters, no SIGHUP handler yet: the signal's default
    # action would end them): none dies, and each serves the new file once ready
    from tests.support.gateway import GatewayProcess
    gw = GatewayProcess(config_a(backend_m.address), tmp_path, workers=2)
    gw.start(ready=False)
    try:
        status, body = gw.status("/readyz")
        assert status == 503, body          # (the workers were not ready yet: the case tested)
        reload(gw, config_b(backend_m.address))
        wait_for(lambda: gw.status("/readyz")[0] == 200, 20, "workers ready")
        version = readyz(gw)["config_version"]
        wait_for(lambda: all(w["config_version"] == version for w in readyz(gw)["workers"]),
                 10, "every worker on the new file")
        for _ in range(6):                  # (connections spread over both workers)
            assert _mock_body(gw) == b'{"mock":"B"}'
            assert get(gw, "/added")[0] == 200
        assert "exited with" not in gw.log(), gw.log()
    finally:
        gw.stop()
