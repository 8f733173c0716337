"""benchmarks.balancer_bench runs and reports both forms of the load balancer."""
from __future__ import annotations

import pytest

from benchmarks import balancer_bench
from fastpath import compiled_available


@pytest.mark.skipif(not compiled_available(), reason="the compiled fastpath is not built")
def test_a_short_run_reports_every_kind_both_forms(capsys):
    assert balancer_bench.main(["--seconds", "0.02", "--reps", "1", "--no-write"]) == 0
    out = capsys.readouterr().out
    for kind in ("wrr", "wlc", "source_hash", "uri_hash"):
        assert f"| {kind} | 2 | " in out and f"| {kind} | 16 | " in out
    assert "compiled / interpreted: " in out
    assert "machine: " in out
