"""The channel benchmark: its document, its counters parsing and RESULTS.md parts, then very short
runs of both modes against real nginx upstreams and a real gateway (the figures in RESULTS.md are
only as good as these)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from benchmarks import auth_bench
from benchmarks import channel_bench as cb
from benchmarks import run as harness
from tests.support.gateway import ROOT

needs_tools = pytest.mark.skipif(not shutil.which("wrk") or not os.access(harness.NGINX, os.X_OK),
                                 reason="nginx or wrk is not installed")


def test_the_document_has_two_apis_of_the_same_shape_and_validates(tmp_path):
    doc = cb.gateway_config("127.0.0.1:9001", "127.0.0.1:9002")
    apis = {a["name"]: a for a in doc["apis"]}
    assert apis["plain"]["backend"]["url"] == "http://#upstream#/"
    assert apis["channel"]["backend"] == {"type": "http", "channel": "pool", "path": "/",
                                          "timeout_ms": 5000}
    shape = lambda a: {k: v for k, v in a.items() if k not in ("name", "path", "backend")}
    assert shape(apis["plain"]) == shape(apis["channel"])
    (ch,) = doc["channels"]
    assert ch["balance"] == "wrr" and [m["port"] for m in ch["members"]] == [9001, 9002]
    assert {m["weight"] for m in ch["members"]} == {1}
    assert ch["health_check"] == {"protocol": "http", "path": "/json", "interval_s": 2,
                                  "timeout_s": 1}
    ok, out = auth_bench.validate(harness.tollgate_command(),
                                  auth_bench.write_config(doc, tmp_path / "c.yaml"))
    assert ok, out


def test_the_channel_counters_are_read_for_the_channel_only():
    text = ('# TYPE tollgate_channel_retries_total counter\n'
            'tollgate_channel_retries_total{channel="pool"} 27.0\n'
            'tollgate_channel_retries_total{channel="other"} 5.0\n'
            'tollgate_channel_member_ejections_total{channel="pool"} 1.0\n'
            'tollgate_channel_member_ejections_created{channel="pool"} 1.7e9\n')
    assert cb.parse_counters(text, "pool") == {
        "tollgate_channel_member_ejections_total": 1.0, "tollgate_channel_retries_total": 27.0}
    assert cb.parse_counters("", "pool") == dict.fromkeys(cb.METRICS, 0.0)


def test_each_mode_rewrites_its_own_part_of_the_channel_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n<!-- begin:proxy -->\nP\n<!-- end:proxy -->\n")
    cb.write_part("chaos", "chaos 1", results)
    cb.write_part("throughput", "tp 1", results)
    cb.write_part("chaos", "chaos 2", results)
    text = results.read_text()
    assert "P" in text and "chaos 1" not in text and "chaos 2" in text and "tp 1" in text
    section = re.search(r"<!-- begin:channel -->(.*)<!-- end:channel -->", text, re.S).group(1)
    assert section.index("tp 1") < section.index("chaos 2")
    assert text.count("<!-- begin:channel-chaos -->") == 1


@pytest.mark.parametrize("argv", [["--kill-at", "12", "--restart-at", "5"],
                                  ["--chaos-seconds", "8", "--restart-at", "9"],
                                  ["--reps", "0"], ["--connections", "1", "--threads", "2"]])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cb.parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


@needs_tools
def test_a_short_throughput_run_end_to_end():
    out = subprocess.run([sys.executable, "-m", "benchmarks.channel_bench", "--duration", "1",
                          "--reps", "1", "--warmup", "1", "--no-write"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stdout[-2000:] + out.stderr[-3000:]
    assert "| `channel` / `plain` req/s | " in out.stdout, out.stdout
    assert "fastpath.IMPLEMENTATION" in out.stdout and "| CPU us/req |" in out.stdout
    assert re.search(r"/status/channels: 127\.0\.0\.1:\d+ healthy, 127\.0\.0\.1:\d+ healthy",
                     out.stdout)
    # the channel spread calls over the upstream's two ports (its members), the plain API used
    # the first one only
    channel = re.search(r"GET /c/json: answered on ports (\d+) (\d+), (\d+) (\d+)$", out.stdout,
                        re.M)
    assert channel and int(channel.group(2)) == int(channel.group(4)) == 20, out.stdout
    plain = re.search(r"GET /p/json: answered on ports (\d+) 40$", out.stdout, re.M)
    assert plain and plain.group(1) in (channel.group(1), channel.group(3)), out.stdout
    assert "non-2xx" not in out.stdout


@needs_tools
def test_a_short_chaos_run_end_to_end():
    out = subprocess.run([sys.executable, "-m", "benchmarks.channel_bench", "--chaos",
                          "--chaos-seconds", "7", "--kill-at", "1", "--restart-at", "2",
                          "--warmup", "1", "--no-write"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stdout[-2000:] + out.stderr[-3000:]
    row = re.search(r"^\| 1 \| [\d,]+ \| [\d,]+ \| (.*?) \| ([\d,]+) \| (\d+) \| (\d+) \| (.*?) \|",
                    out.stdout, re.M)
    assert row, out.stdout
    _errors, _non2xx, ejections, retries, after_kill = row.groups()
    assert int(ejections) >= 1                              # the killed member was taken out
    assert re.search(r"127\.0\.0\.1:\d+ unhealthy", after_kill), after_kill
    assert "killed" not in out.stderr or "(2 processes)" in out.stderr
    assert "What the gateway logged during the run:" in out.stdout
    assert "ejected by traffic" in out.stdout
