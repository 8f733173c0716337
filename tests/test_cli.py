"""The ``tollgate`` command line."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.support.gateway import ROOT


def run(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "tollgate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_gateway_help():
    out = run("gateway", "--help")
    assert out.returncode == 0, out.stderr
    for option in ("--config", "--listen", "--status-listen", "--workers", "--access-log",
                   "--max-body-bytes", "--drain-timeout", "--watch-interval"):
        assert option in out.stdout
    assert out.stdout.startswith("usage: tollgate gateway")


def test_top_level_help_lists_gateway():
    out = run("--help")
    assert out.returncode == 0
    assert "gateway" in out.stdout


def test_no_subcommand_is_a_usage_error():
    out = run()
    assert out.returncode == 2
    assert "usage:" in out.stderr


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000",
                                    "host:port", "127.0.0.1:-1"])
def test_bad_listen_is_a_usage_error(tmp_path, listen):
    config = tmp_path / "gw.yaml"
    config.write_text("version: 1\n")
    out = run("gateway", "--config", str(config), "--listen", listen, timeout=10)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "usage:" in out.stderr
    assert "--listen" in out.stderr
    assert "is not HOST:PORT" in out.stderr


def test_bad_status_listen_is_a_usage_error(tmp_path):
    out = run("gateway", "--config", str(tmp_path / "x.yaml"), "--status-listen", "9091", timeout=10)
    assert out.returncode == 2
    assert "--status-listen" in out.stderr


def test_missing_config_option_is_a_usage_error():
    out = run("gateway", "--listen", "127.0.0.1:8080")
    assert out.returncode == 2
    assert "--config" in out.stderr


def test_zero_workers_refused(tmp_path):
    out = run("gateway", "--config", str(tmp_path / "x.yaml"), "--workers", "0", timeout=10)
    assert out.returncode == 2
    assert "--workers" in out.stderr


@pytest.mark.parametrize("keys", ["0", "-5", "100000000"])
def test_throttle_keys_out_of_range_refused(tmp_path, keys):
    out = run("gateway", "--config", str(tmp_path / "x.yaml"), "--throttle-keys", keys,
              timeout=10)
    assert out.returncode == 2
    assert "--throttle-keys must be between 1 and 67108864" in out.stderr


def test_console_script_installed():
    exe = shutil.which("tollgate")
    if exe is None:
        pytest.skip("the tollgate console script is not installed (pip install . to get it)")
    out = subprocess.run([exe, "gateway", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "--listen" in out.stdout


# -- tollgate validate ----------------------------------------------------------------------------

VALID = """\
version: 1
environments: [{name: TEST}]
groups: [{name: g}]
apis:
  - {name: a, group: g, method: GET, path: /a, backend: {type: mock, mock: {body: a}},
     environments: {RELEASE: {}, TEST: {}}}
  - {name: b, group: g, method: GET, path: /b, backend: {type: mock, mock: {body: b}},
     environments: {RELEASE: {}}}
  - {name: hidden, group: g, method: GET, path: /c, backend: {type: mock, mock: {body: c}}}
"""


def test_validate_prints_ok_with_apis_per_environment_and_warnings(tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text(VALID)
    out = run("validate", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"OK: {config} (configuration ") and "3 APIs served" in lines[0]
    assert lines[1:3] == ["  RELEASE: 2 APIs", "  TEST: 1 API"]
    assert lines[3].startswith("warning: apis[2].environments: API 'hidden' is published in no "
                               "environment"), lines
    assert len(lines) == 4


def test_validate_prints_every_error_with_its_path_and_exits_1(tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text(VALID.replace("path: /b", "path: /b, match_mode: fuzzy")
                      .replace("groups: [{name: g}]", "groups: [{name: g}, {name: g}]")
                      .replace("body: a}}", "body: a}, timout_ms: 5}"))
    out = run("validate", str(config))
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        f"{config}: 2 errors",
        "apis[0].backend.timout_ms: unknown field",
        "apis[1].match_mode: invalid value 'fuzzy' (expected one of: exact, prefix)",
    ]


def test_validate_reports_semantic_errors_and_unsupported_features(tmp_path):
    config = tmp_path / "gw.json"
    config.write_text('{"version": 1, "groups": [{"name": "g"}, {"name": "g"}], "apis": [{"name": "a",'
                      ' "group": "g", "method": "GET", "path": "/a", "auth": "iam", "backend": '
                      '{"type": "mock", "mock": {}}, "environments": {"RELEASE": {}}}]}')
    out = run("validate", str(config))
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        f"{config}: 2 errors",
        "groups[1].name: duplicate name 'g'",
        "apis[0].auth: auth: iam needs IAM callers: iam.users (AK/SK) or iam.jwt (tokens)",
    ]


@pytest.mark.parametrize("content", [None, "", "version: [", "version: 2\n"])
def test_validate_unreadable_empty_or_broken_files_exit_1(tmp_path, content):
    config = tmp_path / "gw.yaml"
    if content is not None:
        config.write_text(content)
    out = run("validate", str(config))
    assert out.returncode == 1, out.stdout
    assert out.stdout.startswith(f"{config}: "), out.stdout
    assert "OK" not in out.stdout


def test_validate_checks_what_the_shipped_example_serves():
    out = run("validate", "tollgate/examples/gateway.yaml")
    assert out.returncode == 0, out.stdout
    assert out.stdout.startswith("OK: tollgate/examples/gateway.yaml")
