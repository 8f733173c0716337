"""The publish benchmarks (benchmarks/publish_to_live.py) at tiny sizes: the phases read from a
gateway's log, one round of each kind of publish, and a short stream run under wrk (the figures
in RESULTS.md are only as good as these)."""
from __future__ import annotations

import shutil

import pytest

from benchmarks import publish_to_live as pl

needs_wrk = pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed")

LOG = """\
2026-12-01 02:00:00,100 master[7] INFO reload (control plane revision 4): config a -> b
2026-12-01 02:00:00,150 worker[8] INFO worker 0: configuration b is live (9 of 10 compiled APIs \
kept from the last one; loaded in 30 ms)
2026-12-01 02:00:00,170 worker[9] INFO worker 1: configuration b is live (9 of 10 compiled APIs \
kept from the last one; loaded in 40 ms)
2026-12-01 02:00:00,180 master[7] INFO serving revision 4 from the control plane (1234 bytes, \
written and checked in 60 ms)
"""


def test_phases_split_a_round_by_the_gateway_log():
    reload_at = pl._when("2026-12-01 02:00:00,100")
    sent, answered = reload_at - 0.3, reload_at - 0.1
    got = pl.phases(LOG, 4, sent, answered, reload_at + 0.1, workers=2)
    assert list(got) == list(pl.PHASES)
    assert got["publish call"] == pytest.approx(0.2)
    assert got["write + master check"] == pytest.approx(0.06)
    assert got["wake-up + transfer"] == pytest.approx(0.04, abs=1e-3)
    assert got["worker reload"] == pytest.approx(0.07, abs=1e-3)     # the last worker
    assert got["first answer"] == pytest.approx(0.03, abs=1e-3)
    with pytest.raises(RuntimeError, match="revision 5"):
        pl.phases(LOG, 5, sent, answered, reload_at, workers=1)
    with pytest.raises(RuntimeError, match="1 worker reload"):
        pl.phases(LOG.replace("worker 1: configuration", "worker 1: something"), 4, sent,
                  answered, reload_at, workers=2)


def test_publish_to_live_measures_both_kinds_at_a_tiny_size(tmp_path):
    results = pl.measure(3, rounds=1, workdir=tmp_path)
    assert set(results) == {"one", "all"}
    for rows in results.values():
        (row,) = rows
        assert set(row) == {"total", *pl.PHASES}
        assert all(v >= 0 for v in row.values())
        assert row["total"] >= row["publish call"] > 0
    text = pl.report_live({3: results}, 1)
    assert "| 3 | one API changed |" in text and "| 3 | all changed" in text


@needs_wrk
def test_the_stream_run_serves_every_request_while_publishing(tmp_path):
    r = pl.stream(3, seconds=1, connections=2, workdir=tmp_path, cycles=2)
    assert r["steady"].requests > 0 and r["during"].requests > 0
    assert r["steady"].errors == 0 and r["during"].errors == 0
    assert r["publishes"] >= 1 and not r["publish_failures"]
    assert r["applied"] >= 1 + r["publishes"]          # (the setup's three, then the stream's)
    assert r["cpu_during"]["workers"] > 0
    text = pl.report_stream({3: r}, 1, 2, 2)
    assert "| 3 |" in text and "non-2xx 0" in text
