"""The WebSocket benchmark's own echo server and load client work, direct and through the
gateway (the figures in RESULTS.md are only as good as these two programs)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def echo_port():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.ws_bench", "--serve", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def load(port, seconds=1):
    out = subprocess.run([sys.executable, "-m", "benchmarks.ws_bench", "--load", str(port),
                          "--connections", "3", "--duration", str(seconds)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_echoes_flow_direct_and_through_the_gateway(echo_port, tmp_path):
    direct = load(echo_port)
    assert direct["messages"] > 100 and direct["rate"] > 0
    config = {"version": 1, "groups": [{"name": "bench"}], "apis": [{
        "name": "ws", "group": "bench", "method": "GET", "path": "/ws",
        "backend": {"type": "http", "url": f"http://127.0.0.1:{echo_port}/ws"},
        "environments": {"RELEASE": {}}}]}
    gw = GatewayProcess(config, tmp_path).start()
    try:
        through = load(gw.port)
        assert through["messages"] > 100
        time.sleep(0.6)                 # (one metrics push)
        assert gw.metric("tollgate_websocket_tunnels_total") == 3
        # each message: a 1032-byte client frame up, a 1028-byte server frame down
        assert gw.metric("tollgate_websocket_bytes_total", direction="to_backend") >= 1032 * through["messages"]
    finally:
        gw.stop()
