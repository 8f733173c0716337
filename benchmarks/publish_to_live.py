"""Publish-to-live: ``POST /v1/apis/{name}/publish`` -> first request answered by the new version
at a gateway following the control plane (real processes, SQLite store, mock-backend APIs).

    python -m benchmarks.publish_to_live 10 1000
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.control_plane import ControlPlaneProcess
from tests.support.gateway import GatewayProcess

ADMIN = "benchmark-admin-token-0123456789"


def api(i: int, body: str) -> dict:
    return {"name": f"api{i}", "group": "main", "method": "GET", "path": f"/a/{i}",
            "backend": {"type": "mock", "mock": {"status": 200, "body": body}},
            "environments": {"RELEASE": {}}}


def measure(n: int, rounds: int = 5) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cp = ControlPlaneProcess(Path(tmp), admin_token=ADMIN).start()
        gw = None
        try:
            with cp.client(ADMIN) as admin, httpx.Client(timeout=5.0) as client:
                doc = {"version": 1, "groups": [{"name": "main"}],
                       "apis": [api(i, "v0") for i in range(n)]}
                assert admin.put("/v1/config", json=doc).status_code == 200
                token = admin.post("/v1/tokens", json={"name": "gw", "role": "gateway"}
                                   ).json()["token"]
                assert admin.post("/v1/publish", json={"env": "RELEASE", "apis": "all"}
                                  ).status_code == 201
                gw = GatewayProcess(None, Path(tmp), extra_args=[
                    "--control-plane", cp.url, f"--token={token}",
                    "--state-dir", f"{tmp}/state"]).start(timeout=120)
                times = []
                for r in range(1, rounds + 1):
                    body = f"v{r}"
                    assert admin.patch("/v1/apis/api0", json={"backend": {"mock": {"body": body}}}
                                       ).status_code == 200
                    start = time.perf_counter()
                    assert admin.post("/v1/apis/api0/publish", json={"env": "RELEASE"}
                                      ).status_code == 201
                    while client.get(gw.url + "/a/0").text != body:
                        time.sleep(0.005)
                    times.append(time.perf_counter() - start)
                return times
        finally:
            if gw is not None:
                gw.stop()
            cp.stop()


if __name__ == "__main__":
    for n in map(int, sys.argv[1:] or ["10", "1000"]):
        t = measure(n)
        print(f"{n} APIs: publish-to-live median {statistics.median(t) * 1000:.0f} ms "
              f"(min {min(t) * 1000:.0f}, max {max(t) * 1000:.0f}, {len(t)} publishes)")
