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


# --- SignedGet: APP-signed calls (huaweicloudsdkcore) against an auth: app API -----------------

APP_KEY, APP_SECRET = "locust-app-key", "locust-app-secret"


@pytest.fixture(scope="module")
def signed_gateway(tmp_path_factory, backend_m):
    config = {"version": 1, "groups": [{"name": "demo"}],
              "apps": [{"name": "locust-app", "key": APP_KEY, "secret": APP_SECRET}],
              "apis": [{"name": "signed", "group": "demo", "method": "GET", "path": "/demo/signed",
                        "auth": "app",
                        "backend": {"type": "http", "url": f"http://{backend_m.address}/echo"},
                        "environments": {"RELEASE": {"apps": ["locust-app"]}}}]}
    gw = GatewayProcess(config, tmp_path_factory.mktemp("locust-signed")).start()
    yield gw
    gw.stop()


def test_signed_calls_are_accepted_by_an_app_auth_api(signed_gateway, backend_m, tmp_path):
    backend_m.requests.clear()
    out, stats = run_locust(signed_gateway.url, tmp_path, "SignedGet", "--app-key", APP_KEY,
                            "--app-secret", APP_SECRET)
    assert out.returncode == 0, out.stderr[-3000:]
    count, failures = stats.get(("GET", "signed GET /demo/signed"), (0, 0))
    assert count > 20 and failures == 0, stats
    # they passed the signature check and reached the backend, each with its own query
    assert signed_gateway.metric("tollgate_requests_total", api="signed") > 0
    assert signed_gateway.metric("tollgate_auth_failures_total") == 0
    targets = [r["target"] for r in backend_m.requests]
    assert len(targets) >= count - 6 and len(set(targets)) > 20, targets[:10]
    assert all(t.startswith("/echo?n=") for t in targets), targets[:10]


def test_signed_calls_with_a_wrong_secret_all_fail(signed_gateway, tmp_path):
    out, stats = run_locust(signed_gateway.url, tmp_path, "SignedGet", "--app-key", APP_KEY,
                            "--app-secret", "not-the-secret", seconds=2)
    count, failures = stats.get(("GET", "signed GET /demo/signed"), (0, 0))
    assert count > 0 and failures == count, stats     # 401 APIC.0303 each time
    assert out.returncode != 0


def test_signed_get_needs_credentials(example_gateway, tmp_path):
    out, _ = run_locust(example_gateway.url, tmp_path, "SignedGet", seconds=1)
    assert out.returncode != 0
    assert "--app-key" in out.stderr
    # naming no scenario runs the others, without SignedGet
    out, stats = run_locust(example_gateway.url, tmp_path, seconds=2)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SignedGet left out" in out.stderr
    assert stats.get(("GET", "/demo/hello"), (0, 0))[0] > 0
    assert not any("signed" in name for _type, name in stats), stats


# --- ThrottledGet: an API bound to a throttle, driven past its limit ---------------------------


@pytest.fixture(scope="module")
def throttled_gateway(tmp_path_factory):
    mock = {"type": "mock", "mock": {"status": 200, "body": "ok"}}
    config = {"version": 1, "groups": [{"name": "demo"}],
              "throttles": [{"name": "few", "interval": 1, "unit": "second", "api_limit": 20}],
              "apis": [{"name": "throttled", "group": "demo", "method": "GET",
                        "path": "/demo/throttled", "backend": mock,
                        "environments": {"RELEASE": {"throttle": "few"}}},
                       {"name": "broken", "group": "demo", "method": "GET", "path": "/demo/broken",
                        "backend": {"type": "mock", "mock": {"status": 503, "body": "down"}},
                        "environments": {"RELEASE": {}}}]}
    gw = GatewayProcess(config, tmp_path_factory.mktemp("locust-throttled")).start()
    yield gw
    gw.stop()


def test_throttled_calls_count_429_apart_and_not_as_failures(throttled_gateway, tmp_path):
    out, stats = run_locust(throttled_gateway.url, tmp_path, "ThrottledGet")
    assert out.returncode == 0, out.stderr[-3000:]
    passed, failed = stats.get(("GET", "GET /demo/throttled"), (0, 0))
    refused, refused_failed = stats.get(("GET", "throttled (429) GET /demo/throttled"), (0, 0))
    assert passed > 0 and failed == 0, stats
    assert refused > passed and refused_failed == 0, stats        # driven far past 20/s
    # what the gateway let through is what locust counted as passed
    assert throttled_gateway.metric("tollgate_throttled_total", policy="few",
                                    dimension="api") >= refused - 6
    assert stats[("", "Aggregated")][1] == 0


def test_throttled_get_counts_any_other_answer_as_a_failure(throttled_gateway, tmp_path):
    out, stats = run_locust(throttled_gateway.url, tmp_path, "ThrottledGet",
                            "--throttled-path", "/demo/broken", seconds=2)
    count, failures = stats.get(("GET", "GET /demo/broken"), (0, 0))
    assert count > 0 and failures == count, stats                 # 503 is no throttle's answer
    assert out.returncode != 0


def test_throttled_get_runs_only_when_named(throttled_gateway, tmp_path):
    # naming no scenario runs the others (here against paths this gateway has not: 404s)
    _out, stats = run_locust(throttled_gateway.url, tmp_path, "--throttled-path",
                             "/demo/throttled", seconds=2)
    assert stats.get(("GET", "/demo/hello"), (0, 0))[0] > 0, stats
    assert not any("/demo/throttled" in name for _type, name in stats), stats


# --- ChannelGet: an API whose backend is a load balance channel ---------------------------------


def test_channel_get_counts_calls_per_member(tmp_path_factory, tmp_path):
    from tests.support.backend import Backend

    heavy, light = Backend().start(), Backend().start()
    config = {"version": 1, "groups": [{"name": "demo"}],
              "channels": [{"name": "pool", "port": 80, "members": [
                  {"host": "127.0.0.1", "port": heavy.port, "weight": 3},
                  {"host": "127.0.0.1", "port": light.port, "weight": 1}]}],
              "apis": [{"name": "pooled", "group": "demo", "method": "GET",
                        "path": "/demo/channel", "backend": {"channel": "pool", "path": "/echo"},
                        "environments": {"RELEASE": {}}}]}
    gw = GatewayProcess(config, tmp_path_factory.mktemp("locust-channel")).start()
    try:
        out, stats = run_locust(gw.url, tmp_path, "ChannelGet", "--member-header", "X-Backend")
    finally:
        gw.stop()
        heavy.stop()
        light.stop()
    assert out.returncode == 0, out.stderr[-3000:]
    to_heavy = stats.get(("GET", f"GET /demo/channel [{heavy.port}]"), (0, 0))
    to_light = stats.get(("GET", f"GET /demo/channel [{light.port}]"), (0, 0))
    assert to_heavy[1] == 0 and to_light[1] == 0, stats
    assert to_light[0] > 0, stats
    # smooth weighted round robin, one worker: 3 to 1 (give or take the calls in flight)
    assert abs(to_heavy[0] - 3 * to_light[0]) <= 12, stats
