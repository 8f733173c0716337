"""A plain proxied request runs no interpreted Python in a compiled worker.

The worker runs under ``sys.setprofile``, which sees every Python function call (compiled
functions raise no event): the test drives many keep-alive requests through it and checks that
no Python function ran anywhere near once per request.  What does run is the worker's timers
(the clock, the sweep, metrics pushes): a handful per second, whatever the traffic.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

import fastpath
from gateway import pipeline
from tests.conftest import proxy_config
from tests.support.gateway import ROOT, free_port

pytestmark = pytest.mark.skipif(fastpath.IMPLEMENTATION != "compiled"
                                or not pipeline.__file__.endswith(".so"),
                                reason="the compiled form is what is checked")

REQUESTS = 4000

# Runs the worker as the master would, with a profile hook counting Python calls per function;
# the counts are written as JSON when the worker exits.
_PROBE = r"""
import atexit, collections, json, sys
from gateway import worker
calls = collections.Counter()
def hook(frame, event, arg):
    if event == "call":
        code = frame.f_code
        calls[f"{code.co_filename}:{code.co_firstlineno}:{code.co_qualname}"] += 1
out = sys.argv.pop(1)
def dump():
    sys.setprofile(None)
    with open(out, "w") as f:
        json.dump(calls, f)
atexit.register(dump)
sys.setprofile(hook)
worker.main(sys.argv[1:])
"""


def _wait_port(port, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("worker did not listen")


def _drive(port, count):
    request = b"GET /hot HTTP/1.1\r\nHost: gw.test\r\nUser-Agent: probe\r\n\r\n"
    done = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        buf = b""
        while done < count:
            sock.sendall(request)
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buf[:head_end].lower()
                    assert head.startswith(b"http/1.1 200"), head
                    length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(buf) >= head_end + 4 + length:
                        buf = buf[head_end + 4 + length:]
                        break
                chunk = sock.recv(65536)
                assert chunk, "gateway closed the connection"
                buf += chunk
            done += 1
    return done


def test_plain_request_runs_no_python_function(backend, tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump(proxy_config(backend.address)))
    counts = tmp_path / "calls.json"
    port = free_port()
    settings = json.dumps({"config": str(config), "host": "127.0.0.1", "port": port})
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", _PROBE, str(counts), settings], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        _wait_port(port, proc)
        assert _drive(port, 50) == 50          # warm: first-use paths are not the plain path
        assert _drive(port, REQUESTS) == REQUESTS
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()
    calls = json.loads(counts.read_text())
    assert calls, "the probe saw no Python call at all: it is not hooked in"
    busiest = sorted(calls.items(), key=lambda item: -item[1])[:5]
    # a function on the request path would have run >= REQUESTS times
    assert busiest[0][1] < REQUESTS // 20, f"Python functions called per request: {busiest}"
