"""HTTP and mock backends through the real gateway: failures (502/504), retries, the keep-alive
pool and its race, Host header, url paths and environment variables, method override, mocks.

One gateway serves the module with one API per backend behaviour (see ``CONFIG``).
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from tests.support.backend import Backend
from tests.support.client import assert_http_date
from tests.support.gateway import GatewayProcess, free_port


class AcceptCloser:
    """A backend that accepts every connection and closes it without answering: counts attempts.

    ``read_request``: close once the request head has arrived (the gateway has sent it), else
    close at once after accepting.
    """

    def __init__(self, read_request=True):
        self.read_request = read_request
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.read_request:
                c.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        got = c.recv(65536)
                        if not got:
                            break
                        data += got
                except OSError:
                    pass
            c.close()

    def stop(self):
        self._stop = True
        self._thread.join(5)
        self.sock.close()


def _api(name, path, url, *, method="ANY", mode="prefix", envs=("RELEASE",), backend_method=None,
         **backend):
    if backend_method:
        backend["method"] = backend_method
    return {"name": name, "group": "main", "method": method, "path": path, "match_mode": mode,
            "backend": {"type": "http", "url": url, **backend},
            "environments": {e: {} for e in envs}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    b1 = Backend().start()                       # RELEASE backend
    b2 = Backend().start()                       # TEST backend
    race_get = Backend(idle_close_s=0.2).start()
    race_post = Backend(idle_close_s=0.2).start()
    closer = AcceptCloser()
    closer_now = AcceptCloser(read_request=False)
    dead = free_port()                           # nothing listens there
    config = {
        "version": 1,
        "environments": [{"name": "TEST"}],
        "groups": [{"name": "main", "variables": {
            "RELEASE": {"backend": b1.address, "base": "rel"},
            "TEST": {"backend": b2.address, "base": "tst"}}}],
        "apis": [
            _api("all", "/", "http://#backend#/", envs=("RELEASE", "TEST")),
            _api("dead", "/dead", f"http://127.0.0.1:{dead}/"),
            _api("dead3", "/dead3", f"http://127.0.0.1:{dead}/", retries=3),
            _api("timeout", "/timeout", "http://#backend#/", timeout_ms=300),
            _api("closer", "/closer", f"http://127.0.0.1:{closer.port}/"),
            _api("closer0", "/closer0", f"http://127.0.0.1:{closer.port}/", retries=0),
            _api("closer3", "/closer3", f"http://127.0.0.1:{closer.port}/", retries=3),
            _api("closenow", "/closenow", f"http://127.0.0.1:{closer_now.port}/", timeout_ms=1000),
            _api("hosthdr", "/hosthdr", "http://#backend#/", host_header="custom.example:8443"),
            _api("based", "/based", "http://#backend#/#base#/x/", envs=("RELEASE", "TEST")),
            _api("item", "/items/{id}", "http://#backend#/store/{id}/detail", method="GET",
                 mode="exact"),
            _api("asget", "/asget", "http://#backend#/override", method="GET", mode="exact",
                 backend_method="POST"),
            _api("race", "/race", f"http://{race_get.address}/"),
            _api("racepost", "/racepost", f"http://{race_post.address}/"),
            {"name": "mocked", "group": "main", "method": "GET", "path": "/mocked",
             "backend": {"type": "mock", "mock": {
                 "status": 201, "headers": {"Content-Type": "text/plain", "X-Mock": "yes"},
                 "body": "hello mock \u00e9"}},
             "environments": {"RELEASE": {}, "TEST": {}}},
        ],
    }
    gw = GatewayProcess(config, tmp_path_factory.mktemp("backends"))
    gw.start()
    yield {"gw": gw, "b1": b1, "b2": b2, "race_get": race_get, "race_post": race_post,
           "closer": closer, "closer_now": closer_now, "dead": dead}
    gw.stop()
    closer.stop()
    closer_now.stop()
    for b in (b1, b2, race_get, race_post):
        b.stop()


@pytest.fixture
def gw(setup):
    return setup["gw"]


def call(gw, method, target, body=None, headers=None, timeout=10.0):
    """One request on a new keep-alive connection with http.client: (status, headers, body)."""
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        c.request(method, target, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def assert_error(status, headers, body, want_status, code):
    assert status == want_status, body
    assert headers.get("content-type") == "application/json"
    doc = json.loads(body)
    assert doc["error_code"] == code
    assert doc["request_id"] == headers["x-request-id"]
    assert doc["error_msg"]


# -- failures -----------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["/dead", "/dead3"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_dead_backend_is_502_apic_0202(gw, prefix, method):
    t0 = time.monotonic()
    status, headers, body = call(gw, method, f"{prefix}/x", body=b"{}" if method == "POST" else None)
    assert_error(status, headers, body, 502, "APIC.0202")
    assert time.monotonic() - t0 < 2.0


def test_502_does_not_leak_the_backend_address(gw, setup):
    status, headers, body = call(gw, "GET", "/dead/x")
    assert status == 502
    assert str(setup["dead"]).encode() not in body


def test_backend_reset_is_502(gw):
    status, headers, body = call(gw, "GET", "/reset")
    assert_error(status, headers, body, 502, "APIC.0202")


@pytest.mark.parametrize("target", ["/garbage", "/smuggle"])
def test_invalid_backend_response_is_502(gw, target):
    status, headers, body = call(gw, "GET", target)
    assert_error(status, headers, body, 502, "APIC.0202")


@pytest.mark.parametrize("target", ["/timeout/slow?ms=2000", "/timeout/hang"])
def test_backend_timeout_is_504_apic_0203(gw, target):
    t0 = time.monotonic()
    status, headers, body = call(gw, "GET", target)
    elapsed = time.monotonic() - t0
    assert_error(status, headers, body, 504, "APIC.0203")
    assert elapsed < 2.0


def test_client_connection_serves_on_after_a_504(gw):
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        c.request("GET", "/timeout/slow?ms=700")
        r = c.getresponse()
        assert r.status == 504
        r.read()
        for i in range(3):      # the late answer of the slow backend never shows up here
            c.request("GET", f"/timeout/echo/{i}")
            r = c.getresponse()
            body = json.loads(r.read())
            assert r.status == 200 and body["target"] == f"/echo/{i}"
            time.sleep(0.25)
    finally:
        c.close()


def test_backend_within_timeout_is_200(gw):
    status, _, body = call(gw, "GET", "/timeout/slow?ms=50")
    assert status == 200 and json.loads(body)["target"] == "/slow?ms=50"


def test_gateway_keeps_serving_after_backend_failures(gw):
    for target in ("/reset", "/garbage", "/timeout/hang", "/dead/x"):
        call(gw, "GET", target)
    status, _, body = call(gw, "GET", "/echo/after")
    assert status == 200


# -- retries ------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix,method,attempts", [
    ("/closer", "GET", 2),       # retries -1: idempotent methods once more
    ("/closer", "HEAD", 2),
    ("/closer", "PUT", 2),
    ("/closer", "DELETE", 2),
    ("/closer", "POST", 1),      # ... POST/PATCH never
    ("/closer", "PATCH", 1),
    ("/closer0", "GET", 1),      # retries 0: never
    ("/closer3", "GET", 4),      # retries 3: three more times
    ("/closer3", "POST", 1),     # a request that was sent is retried only when idempotent
])
def test_retries_count_connection_attempts(gw, setup, prefix, method, attempts):
    closer = setup["closer"]
    closer.accepted = 0
    body = b'{"a":1}' if method in ("POST", "PUT", "PATCH") else None
    status, headers, resp = call(gw, method, f"{prefix}/x", body=body)
    assert status == 502
    if method != "HEAD":
        assert json.loads(resp)["error_code"] == "APIC.0202"
    time.sleep(0.1)            # a (wrong) extra attempt would show up now
    assert closer.accepted == attempts


def test_backend_closing_right_after_accept_is_502_not_a_hang(gw, setup):
    for method in ["GET", "POST"] * 5:
        t0 = time.monotonic()
        status, headers, body = call(gw, method, "/closenow/x", body=b"{}" if method == "POST" else None)
        assert (status, round(time.monotonic() - t0, 1) < 0.9) == (502, True), (method, status, body)
        assert json.loads(body)["error_code"] == "APIC.0202"


# -- the keep-alive pool ------------------------------------------------------------------------

def test_pooled_keep_alive_reuses_backend_connections(gw, setup):
    b1 = setup["b1"]
    call(gw, "GET", "/echo/warm")
    before = b1.connections
    for i in range(30):                      # a new client connection each time
        status, _, body = call(gw, "GET", f"/echo/pool/{i}")
        assert status == 200
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        for i in range(30):                  # and one client connection for many
            c.request("GET", f"/echo/pool2/{i}")
            r = c.getresponse()
            assert r.status == 200 and json.loads(r.read())["target"] == f"/echo/pool2/{i}"
    finally:
        c.close()
    assert b1.connections - before <= 2, f"{b1.connections - before} new backend connections for 60 requests"


def _race_delays(n):
    """Waits sweeping around the backend's 0.2 s idle close, so some reuses meet the close."""
    return [0.1965 + (i % 22) * 0.00025 for i in range(n)]


def _race_run(gw, method, prefix, n=33):
    """``n`` requests on one client connection, each ~0.2 s after the previous answer, while the
    backend closes connections idle for 0.2 s: [(status, request id, body)]."""
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    results = []
    try:
        for i, delay in enumerate(_race_delays(n)):
            c.request(method, f"{prefix}/echo/{i}", body=b'{"n":%d}' % i if method == "POST" else None)
            r = c.getresponse()
            body = r.read()
            results.append((r.status, r.getheader("X-Request-Id"), body))
            if r.status != 200 or r.getheader("Connection") == "close":
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            time.sleep(delay)
    finally:
        c.close()
    return results


@pytest.fixture(scope="module")
def race_results(setup):
    """The GET and the POST sequences run at the same time (two client connections, two
    backends with ``idle_close_s=0.2``) to save time."""
    gw = setup["gw"]
    out = {}

    def run(method, prefix):
        try:
            out[method] = _race_run(gw, method, prefix)
        except Exception as exc:  # reported by the test
            out[method] = exc

    threads = [threading.Thread(target=run, args=("GET", "/race")),
               threading.Thread(target=run, args=("POST", "/racepost"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _ids_seen(backend):
    return [v for rec in backend.requests for k, v in rec["headers"] if k.lower() == "x-request-id"]


def test_keep_alive_race_get_never_fails(setup, race_results):
    results = race_results["GET"]
    assert not isinstance(results, Exception), results
    statuses = [status for status, _, _ in results]
    assert len(statuses) >= 30
    assert statuses == [200] * len(statuses), statuses
    backend = setup["race_get"]
    # the backend closed idle connections under the gateway: it saw many connections ...
    assert backend.connections > 5
    # ... and each GET exactly once (a replay happens only when the backend never read it)
    assert sorted(_ids_seen(backend)) == sorted(rid for _, rid, _ in results)


def test_keep_alive_race_post_is_never_replayed(setup, race_results):
    """POST is not idempotent: a POST that meets the backend's close is not sent again (the
    gateway cannot know whether the backend acted on it); the client gets 502 APIC.0202.
    Every POST reaches the backend at most once, and only the answered ones reached it."""
    results = race_results["POST"]
    assert not isinstance(results, Exception), results
    assert len(results) >= 30
    ok = [rid for status, rid, _ in results if status == 200]
    failed = [(status, body) for status, _, body in results if status != 200]
    for status, body in failed:
        assert status == 502 and json.loads(body)["error_code"] == "APIC.0202"
    seen = _ids_seen(setup["race_post"])
    assert len(seen) == len(set(seen)), "a POST reached the backend twice"
    assert sorted(seen) == sorted(ok), "a POST answered 502 had reached the backend"
    print(f"keep-alive race, POST: {len(ok)} answered, {len(failed)} got 502")


# -- what the backend sees ----------------------------------------------------------------------

def _echo(gw, target, headers=None, method="GET"):
    status, h, body = call(gw, method, target, headers=headers)
    assert status == 200, body
    return json.loads(body)


def _host(rec):
    return [v for k, v in rec["headers"] if k.lower() == "host"]


def test_default_host_is_the_backend_url_authority(gw, setup):
    rec = _echo(gw, "/echo/host", headers={"Host": "client.example"})
    assert _host(rec) == [setup["b1"].address]


def test_host_header_option_sets_the_host_the_backend_sees(gw):
    rec = _echo(gw, "/hosthdr/echo", headers={"Host": "client.example"})
    assert _host(rec) == ["custom.example:8443"]
    assert rec["target"] == "/echo"


def test_backend_path_prefix_rest_and_variables_per_environment(gw, setup):
    b1, b2 = setup["b1"], setup["b2"]
    rec = _echo(gw, "/based/echo/q?z=1&y=2")
    assert rec["target"] == "/rel/x/echo/q?z=1&y=2"
    assert _host(rec) == [b1.address]
    rec = _echo(gw, "/based/echo/q?z=1&y=2", headers={"X-Stage": "TEST"})
    assert rec["target"] == "/tst/x/echo/q?z=1&y=2"
    assert _host(rec) == [b2.address]
    # the request went to the TEST backend, not the RELEASE one
    assert any(r["target"] == "/tst/x/echo/q?z=1&y=2" for r in b2.requests)
    assert not any(r["target"].startswith("/tst/") for r in b1.requests)


def test_prefix_api_without_rest(gw):
    assert _echo(gw, "/based")["target"] == "/rel/x/"


def test_path_parameter_in_backend_url(gw):
    rec = _echo(gw, "/items/42?full=1")
    assert rec["target"] == "/store/42/detail?full=1"


def test_backend_method_override(gw):
    rec = _echo(gw, "/asget")
    assert rec["method"] == "POST"
    assert rec["target"] == "/override"
    assert rec["body_length"] == 0


def test_mock_backend_status_headers_body(gw):
    for stage in (None, "TEST"):
        status, headers, body = call(gw, "GET", "/mocked", headers={"X-Stage": stage} if stage else {})
        assert status == 201
        assert headers["content-type"] == "text/plain"
        assert headers["x-mock"] == "yes"
        assert body == "hello mock \u00e9".encode()
        assert headers["content-length"] == str(len(body))
        assert headers.get("x-request-id")
        assert_http_date(headers.get("date"))     # the gateway is the origin of a mock answer
