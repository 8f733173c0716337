"""The admin write benchmark, run tiny: a real control plane on SQLite (and PostgreSQL when it
is installed), a few APIs preloaded, two clients, short phases -- every write answered as it
should be (the bench exits 1 on any other answer), the report's table filled."""
from __future__ import annotations

import re

import pytest

from benchmarks import admin_write_bench as bench
from tests.support.postgres import find_bindir

pytestmark = pytest.mark.once      # the control plane is pure Python


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_the_bench_runs_tiny_and_reports_every_phase(engine, capsys):
    if engine == "postgresql" and find_bindir() is None:
        pytest.skip("PostgreSQL is not installed (no initdb: Debian package postgresql)")
    code = bench.main(["--engines", engine, "--preload", "30", "--clients", "2",
                       "--seconds", "0.5", "--no-write"])
    out = capsys.readouterr().out
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith(f"| {engine} | 30 | 2 |"))
    counts = [int(n) for n in re.findall(r"\((\d+)\)", row)]
    assert len(counts) == 3 and all(n > 0 for n in counts), row   # creates, replaces, deletes
    assert "creates/s" in out


def test_the_bench_bodies_are_apis_the_control_plane_accepts_and_distinct():
    a, b = bench.api_body(0, 1), bench.api_body(1, 1)
    assert a["name"] != b["name"] and a["path"] != b["path"]
    assert bench.api_body(0, 1, version=2)["backend"] != a["backend"]
