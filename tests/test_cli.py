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


def test_console_script_installed():
    exe = shutil.which("tollgate")
    if exe is None:
        pytest.skip("the tollgate console script is not installed (pip install . to get it)")
    out = subprocess.run([exe, "gateway", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "--listen" in out.stdout
