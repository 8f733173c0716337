"""benchmarks.limiter_bench runs and reports both forms of the throttle counter."""
from __future__ import annotations

import pytest

from benchmarks import limiter_bench
from fastpath import compiled_available


@pytest.mark.skipif(not compiled_available(), reason="the compiled fastpath is not built")
def test_a_short_run_reports_both_forms(capsys):
    assert limiter_bench.main(["--seconds", "0.05", "--reps", "1", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "| one hot key | " in out and "| 10,000 callers | " in out
    assert "ratio (locked / compiled)" in out
