"""The README's "try it" steps, run as written against the shipped example configuration (only
the gateway's own ports are free ones here, so the test cannot collide with a gateway you run)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.support.gateway import ROOT, GatewayProcess

EXAMPLE = ROOT / "tollgate" / "examples" / "gateway.yaml"


def call(gw, path, method="GET", data=None, headers=None):
    req = urllib.request.Request(gw.url + path, method=method, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)    # as http.server does
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture
def example(tmp_path):
    gw = GatewayProcess(EXAMPLE.read_text(), tmp_path).start()
    yield gw
    gw.stop()


def test_the_example_answers_as_the_readme_says(example, tmp_path):
    if not port_free(9001) or not port_free(9002):
        pytest.skip("ports 9001/9002 of the example's backends are in use on this machine")
    assert call(example, "/demo/hello") == (200, b'{"hello": "world"}')
    assert call(example, "/demo/orders", "POST", b'{"n": 1}') == (201, b'{"created": true}')
    status, body = call(example, "/demo/items/42")
    assert status == 502 and json.loads(body)["error_code"] == "APIC.0202"
    server = subprocess.Popen([sys.executable, "-m", "http.server", "9001", "--bind", "127.0.0.1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while port_free(9001):
            assert time.monotonic() < deadline, "python -m http.server did not start"
            time.sleep(0.05)
        status, body = call(example, "/demo/items/42")
        assert status == 404 and b"File not found" in body    # the backend's own 404, passed on
        status, body = call(example, "/demo/items/42", headers={"X-Stage": "TEST"})
        assert status == 502 and json.loads(body)["error_code"] == "APIC.0202"
        status, body = call(example, "/demo/items/42", headers={"X-Stage": "test"})
        assert status == 404 and json.loads(body)["error_code"] == "APIC.0101"
    finally:
        server.terminate()
        server.wait(10)
    assert example.status("/healthz")[0] == 200
