"""The locust scenarios users run against their deployment, run headless against a real gateway."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import pytest

from tests.support.gateway import ROOT, GatewayProcess

EXAMPLE = ROOT / "tollgate" / "examples" / "gateway.yaml"


def run_locust(host: str, tmp_path, *args: str, seconds: int = 3):
    prefix = tmp_path / "stats"
    out = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"),
         "--headless", "-u", "6", "-r", "6", "-t", f"{seconds}s", "--host", host,
         "--csv", str(prefix), "--only-summary", "--stop-timeout", "2", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    stats = {}
    if (tmp_path / "stats_stats.csv").exists():
        with open(tmp_path / "stats_stats.csv", newline="") as f:
            for row in csv.DictReader(f):
                stats[(row["Type"], row["Name"])] = (int(row["Request Count"]),
                                                     int(row["Failure Count"]))
    return out, stats


@pytest.fixture(scope="module")
def example_gateway(tmp_path_factory):
    gw = GatewayProcess(EXAMPLE.read_text(), tmp_path_factory.mktemp("locust")).start()
    yield gw
    gw.stop()


def test_every_scenario_makes_requests_and_none_fails(example_gateway, tmp_path):
    out, stats = run_locust(example_gateway.url, tmp_path, "PlainGet", "PostJson", "WeightedMix")
    assert out.returncode == 0, out.stderr[-3000:]
    for key in [("GET", "/demo/hello"), ("POST", "/demo/orders"),
                ("GET", "GET /demo/hello"), ("POST", "POST /demo/orders")]:
        count, failures = stats.get(key, (0, 0))
        assert count > 0, (key, stats)
        assert failures == 0, (key, stats)
    total, failed = stats[("", "Aggregated")]
    assert total > 0 and failed == 0
    # the gateway saw them: its own request counter moved
    assert example_gateway.metric("tollgate_requests_total", api="hello") > 0


def test_paths_and_stage_come_from_the_command_line(example_gateway, tmp_path):
    out, stats = run_locust(example_gateway.url, tmp_path, "PlainGet", "--get-path", "/demo/nowhere",
                            "--stage", "TEST", seconds=2)
    count, failures = stats.get(("GET", "/demo/nowhere"), (0, 0))
    assert count > 0 and failures == count, stats      # a 404 from the gateway is a failure
    assert out.returncode != 0


def test_a_malformed_mix_is_refused_before_the_run(example_gateway, tmp_path):
    out, stats = run_locust(example_gateway.url, tmp_path, "WeightedMix", "--mix", "GET nowhere=x",
                            seconds=2)
    assert out.returncode != 0
    assert "--mix item" in out.stderr
