"""What the gateway tells its operators: /healthz, /readyz, /metrics and the JSON access log.

/metrics: workers push their totals to the master every 0.5 s, so each test makes its requests,
waits for one push (``settle``) and then reads the metrics; repeated scrapes keep following the
workers (``test_metrics_keep_updating_between_scrapes``).
"""
from __future__ import annotations

import http.client
import json
import re
import threading
import time
import uuid

import pytest

import fastpath
from tests.conftest import proxy_config
from tests.support.gateway import GatewayProcess

PUSH_WAIT = 1.0          # > push interval (0.5 s) + tick



@pytest.fixture(scope="module")
def plain_gw(backend_m, tmp_path_factory):
    """A default gateway (no access log) that is never scraped for /metrics."""
    g = GatewayProcess(proxy_config(backend_m.address), tmp_path_factory.mktemp("plain"))
    g.start()
    yield g
    g.stop()


def status_get(gw, path, method="GET", timeout=2.0):
    c = http.client.HTTPConnection("127.0.0.1", gw.status_port, timeout=timeout)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read()
    finally:
        c.close()


def scrape_once(gw):
    """(samples {(name, ((label, value), ...)): value}, raw text) from one /metrics scrape."""
    from prometheus_client.parser import text_string_to_metric_families
    status, ctype, body = status_get(gw, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    text = body.decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return samples, text


def labels(**kw):
    return tuple(sorted(kw.items()))


class Client:
    """A keep-alive client connection to the gateway."""

    def __init__(self, gw):
        self.c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)

    def __call__(self, method, target, headers=None, body=None):
        self.c.request(method, target, body=body, headers=headers or {})
        r = self.c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    def close(self):
        self.c.close()


# -- health -------------------------------------------------------------------------------------

def test_healthz(plain_gw):
    status, ctype, body = status_get(plain_gw, "/healthz")
    assert status == 200 and body == b"ok\n"


def test_readyz(plain_gw):
    status, ctype, body = status_get(plain_gw, "/readyz")
    assert status == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert doc["ready"] is True
    assert re.fullmatch(r"[0-9a-f]{8,64}", doc["config_version"])
    assert len(doc["workers"]) == 1
    worker = doc["workers"][0]
    assert worker["ready"] is True and worker["pid"] > 0
    assert worker["config_version"] == doc["config_version"]


def test_status_listener_unknown_path_and_method(plain_gw):
    assert status_get(plain_gw, "/nope")[0] == 404
    assert status_get(plain_gw, "/healthz", method="POST")[0] == 405


# -- metrics ------------------------------------------------------------------------------------

def test_metrics_after_traffic(make_gateway, backend_m):
    gw = make_gateway(proxy_config(backend_m.address))
    version = json.loads(status_get(gw, "/readyz")[2])["config_version"]
    c = Client(gw)
    try:
        assert c("GET", "/reset")[0] == 502                                # gateway error
    finally:
        c.close()
    c = Client(gw)
    try:
        for _ in range(3):
            assert c("GET", "/mock")[0] == 200
        assert c("GET", "/mock", {"X-Stage": "TEST"})[0] == 200
        assert c("GET", "/echo/one")[0] == 200
        assert c("POST", "/echo/two", body=b"{}")[0] == 200
        assert c("GET", "/status?code=503")[0] == 503
        assert c("GET", "/nothing", {"X-Stage": "TEST"})[0] == 404      # no API in TEST
    finally:
        c.close()
    time.sleep(PUSH_WAIT)
    m, text = scrape_once(gw)
    req = "tollgate_requests_total"
    assert m[(req, labels(api="mock", env="RELEASE", status="2xx"))] == 3
    assert m[(req, labels(api="mock", env="TEST", status="2xx"))] == 1
    assert m[(req, labels(api="all", env="RELEASE", status="2xx"))] == 2
    assert m[(req, labels(api="all", env="RELEASE", status="5xx"))] == 2
    # the 404 is counted, and under no configured API
    fours = {k: v for k, v in m.items() if k[0] == req and dict(k[1])["status"] == "4xx"}
    assert sum(fours.values()) == 1 and all(dict(k[1])["api"] not in ("all", "mock") for k in fours)
    assert sum(v for k, v in m.items() if k[0] == req) == 9
    # errors by ROMA code
    assert m[("tollgate_errors_total", labels(code="APIC.0101"))] == 1
    assert m[("tollgate_errors_total", labels(code="APIC.0202"))] == 1
    # request duration histogram
    dur = "tollgate_request_duration_seconds"
    assert m[(dur + "_count", labels(api="mock", env="RELEASE"))] == 3
    assert m[(dur + "_count", labels(api="all", env="RELEASE"))] == 4
    assert m[(dur + "_bucket", labels(api="mock", env="RELEASE", le="+Inf"))] == 3
    assert m[(dur + "_sum", labels(api="all", env="RELEASE"))] > 0
    buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in m.items()
                      if k[0] == dur + "_bucket" and dict(k[1])["api"] == "all"))
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)   # cumulative
    # upstream duration: proxied requests that got a response head; none for the mock
    up = "tollgate_upstream_duration_seconds"
    assert m[(up + "_count", labels(api="all", env="RELEASE"))] == 3
    assert m[(up + "_sum", labels(api="all", env="RELEASE"))] > 0
    assert (up + "_count", labels(api="mock", env="RELEASE")) not in m
    # gauges
    assert m[("tollgate_in_flight_requests", ())] == 0
    assert ("tollgate_client_connections", ()) in m
    assert m[("tollgate_upstream_pool_connections", labels(state="idle"))] >= 1
    assert m[("tollgate_upstream_pool_connections", labels(state="busy"))] == 0
    assert m[("tollgate_config_version_info", labels(version=version))] == 1
    assert m[("tollgate_config_reloads_total", labels(result="ok"))] == 0
    assert m[("tollgate_config_reloads_total", labels(result="error"))] == 0
    assert m[("tollgate_workers", ())] == 1
    assert m[("tollgate_fastpath_info", labels(implementation=fastpath.IMPLEMENTATION))] == 1
    for family in ("tollgate_requests", "tollgate_errors", "tollgate_config_reloads"):
        assert f"# TYPE {family}_total counter" in text or f"# TYPE {family} counter" in text


def test_in_flight_and_busy_pool_gauges(make_gateway, backend_m):
    gw = make_gateway(proxy_config(backend_m.address))
    done = {}

    def slow():
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        try:
            c.request("GET", "/slow?ms=1800")
            r = c.getresponse()
            done["status"] = r.status
            r.read()
        finally:
            c.close()

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(PUSH_WAIT)
    m, _ = scrape_once(gw)
    t.join(10)
    assert done.get("status") == 200
    assert m[("tollgate_in_flight_requests", ())] == 1
    assert m[("tollgate_upstream_pool_connections", labels(state="busy"))] == 1
    assert m[("tollgate_client_connections", ())] >= 1


def test_metric_labels_never_contain_raw_paths(make_gateway, backend_m):
    gw = make_gateway(proxy_config(backend_m.address))
    tokens = [uuid.uuid4().hex[:12] for _ in range(100)]
    c = Client(gw)
    try:
        for tok in tokens[:50]:                       # 404: no API in TEST for these
            assert c("GET", f"/{tok}/x?{tok}=1", {"X-Stage": "TEST"})[0] == 404
        for tok in tokens[50:]:                       # 200 through the prefix API
            assert c("GET", f"/echo/{tok}?q={tok}")[0] == 200
    finally:
        c.close()
    time.sleep(PUSH_WAIT)
    m, text = scrape_once(gw)
    for tok in tokens:
        assert tok not in text
    assert m[("tollgate_errors_total", labels(code="APIC.0101"))] == 50
    label_values = {v for (_, lbls) in m for _, v in lbls}
    # bounded: names, classes, codes, buckets, TLS handshake states and failure reasons
    assert len(label_values) < 60, label_values
    assert m[("tollgate_requests_total", labels(api="all", env="RELEASE", status="2xx"))] == 50



def test_metrics_keep_updating_between_scrapes(make_gateway, backend_m):
    gw = make_gateway(proxy_config(backend_m.address))
    c = Client(gw)
    try:
        assert c("GET", "/mock")[0] == 200
        time.sleep(PUSH_WAIT)
        for _ in range(50):             # an eager scraper: every scrape answers at once
            m, _ = scrape_once(gw)
            assert m[("tollgate_requests_total", labels(api="mock", env="RELEASE", status="2xx"))] == 1
        for n in (2, 3):                # and the figures still follow the traffic
            assert c("GET", "/mock")[0] == 200
            time.sleep(PUSH_WAIT)
            m, _ = scrape_once(gw)
            assert m[("tollgate_requests_total", labels(api="mock", env="RELEASE", status="2xx"))] == n
    finally:
        c.close()
    assert "Task was destroyed" not in gw.log()


# -- access log ---------------------------------------------------------------------------------

def _read_lines(path, n, timeout=3.0):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{len(lines)} access log lines, expected {n}: {lines}")


def test_access_log_one_json_line_per_request(make_gateway, backend_m, tmp_path):
    log_path = tmp_path / "access.jsonl"
    gw = make_gateway(proxy_config(backend_m.address), access_log=str(log_path))
    c = Client(gw)
    sent = []
    try:
        for method, target, headers, body in [
            ("GET", "/echo/a/b?token=SECRET-TOKEN-123&x=1", {}, None),
            ("GET", "/mock?api_key=SECRET-KEY-456", {}, None),
            ("POST", "/echo/post", {}, b'{"password":"SECRET-BODY-789"}'),
            ("GET", "/missing?token=SECRET-TOKEN-123", {"X-Stage": "TEST"}, None),
            ("GET", "/status?code=503", {}, None),
        ]:
            status, h, _ = c(method, target, headers, body)
            sent.append((method, target.split("?")[0], status, h["x-request-id"]))
    finally:
        c.close()
    lines = _read_lines(log_path, len(sent))
    time.sleep(0.2)
    lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
    assert len(lines) == len(sent), lines
    records = [json.loads(ln) for ln in lines]
    by_id = {r["request_id"]: r for r in records}
    assert len(by_id) == len(sent)
    for method, path, status, rid in sent:
        r = by_id[rid]
        assert r["method"] == method
        assert r["path"] == path
        assert r["status"] == status
        assert isinstance(r["duration_ms"], (int, float)) and r["duration_ms"] >= 0
    assert by_id[sent[0][3]]["api"] == "all" and by_id[sent[0][3]]["env"] == "RELEASE"
    assert by_id[sent[1][3]]["api"] == "mock" and by_id[sent[1][3]]["env"] == "RELEASE"
    assert by_id[sent[3][3]].get("api", "") == ""           # unrouted
    text = log_path.read_text()
    assert "SECRET" not in text
    assert "SECRET" not in gw.log()


def test_access_log_to_stdout(make_gateway, backend_m):
    gw = make_gateway(proxy_config(backend_m.address), access_log="-")
    c = Client(gw)
    try:
        _, h, _ = c("GET", "/mock?token=SECRET-STDOUT")
    finally:
        c.close()
    rid = h["x-request-id"]
    deadline = time.monotonic() + 3
    while rid not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(ln for ln in gw.log().splitlines() if rid in ln)
    record = json.loads(line)
    assert record["request_id"] == rid and record["status"] == 200 and record["api"] == "mock"
    assert "SECRET" not in gw.log()


def test_access_log_off_by_default(plain_gw):
    c = Client(plain_gw)
    try:
        ids = [c("GET", t)[1]["x-request-id"] for t in ("/mock", "/echo/x?token=SECRET-OFF")]
    finally:
        c.close()
    time.sleep(0.3)
    log = plain_gw.log()
    for rid in ids:
        assert rid not in log
    for line in log.splitlines():
        if line.startswith("{"):
            raise AssertionError(f"a JSON line in the gateway output: {line}")
    assert sorted(p.name for p in plain_gw.workdir.iterdir()) == ["gateway.log", "gateway.yaml"]
