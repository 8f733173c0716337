"""The node's channel health table (gateway.channels.table): slots, states, generation, passive
ejections, freeing on reload, and two processes sharing one segment through its descriptor."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from gateway.channels.table import (
    HEALTHY,
    STATE_NAMES,
    UNHEALTHY,
    UNKNOWN,
    HealthTable,
    create_health_segment,
    member_key,
)
from tests.support.gateway import ROOT

# (pure Python whatever the fastpath form: once is enough)
pytestmark = pytest.mark.once


def test_member_key_is_channel_host_and_port():
    assert member_key("lots", "127.0.0.1", 9001) == member_key("lots", "127.0.0.1", 9001)
    keys = {member_key("lots", "127.0.0.1", 9001), member_key("lots", "127.0.0.1", 9002),
            member_key("lots", "127.0.0.2", 9001), member_key("cars", "127.0.0.1", 9001)}
    assert len(keys) == 4
    assert STATE_NAMES[UNKNOWN] == "unknown" and STATE_NAMES[HEALTHY] == "healthy" \
        and STATE_NAMES[UNHEALTHY] == "unhealthy"


def test_slots_are_made_once_and_found_again():
    t = HealthTable(slots=64)
    a, b = member_key("c", "10.0.0.1", 80), member_key("c", "10.0.0.2", 80)
    assert t.slot(a, create=False) == -1
    sa = t.slot(a)
    sb = t.slot(b)
    assert sa >= 0 and sb >= 0 and sa != sb
    assert t.slot(a) == sa and t.slot(a, create=False) == sa
    assert t.state(sa) == UNKNOWN and t.ejections(sa) == 0 and t.passive_until(sa) == 0
    assert sorted(s for s, _ in t.keys()) == sorted([sa, sb])


def test_a_full_table_tracks_no_more_members():
    t = HealthTable(slots=4)
    slots = [t.slot(member_key("c", "h", p)) for p in range(1, 5)]
    assert sorted(slots) == [0, 1, 2, 3]
    assert t.slot(member_key("c", "h", 5)) == -1
    assert t.slot(member_key("c", "h", 5), create=False) == -1
    assert [t.slot(member_key("c", "h", p), create=False) for p in range(1, 5)] == slots


def test_states_and_the_generation():
    t = HealthTable(slots=16)
    s = t.slot(member_key("c", "h", 1))
    g = t.generation()
    assert t.set_state(s, HEALTHY) is True
    assert t.state(s) == HEALTHY and t.generation() > g
    g = t.generation()
    assert t.set_state(s, HEALTHY) is False          # no change: no bump
    assert t.generation() == g
    assert t.set_state(s, UNHEALTHY) is True and t.state(s) == UNHEALTHY and t.generation() > g
    with pytest.raises(ValueError):
        t.set_state(s, 7)
    with pytest.raises(IndexError):
        t.state(16)
    with pytest.raises(IndexError):
        t.set_state(-1, HEALTHY)
    assert t.state(s) == UNHEALTHY


def test_eject_readmit_and_reset():
    t = HealthTable(slots=16)
    s = t.slot(member_key("c", "h", 1))
    t.set_state(s, HEALTHY)
    g = t.generation()
    until = time.monotonic_ns() + 5_000_000_000
    assert t.eject(s, until) == 1
    assert (t.state(s), t.passive_until(s), t.ejections(s)) == (UNHEALTHY, until, 1)
    assert t.generation() > g
    assert t.eject(s, until + 1) == 2
    g = t.generation()
    t.readmit(s)
    assert (t.state(s), t.passive_until(s), t.ejections(s)) == (UNKNOWN, 0, 2)   # kept
    assert t.generation() > g
    t.reset_ejections(s)
    assert t.ejections(s) == 0


def test_free_empties_what_is_not_live_and_keeps_the_rest():
    t = HealthTable(slots=8)
    keep, drop = member_key("c", "h", 1), member_key("c", "h", 2)
    sk, sd = t.slot(keep), t.slot(drop)
    t.set_state(sk, HEALTHY)
    t.eject(sd, 123)
    g = t.generation()
    t.free([keep])
    assert t.generation() > g
    assert t.slot(keep, create=False) == sk and t.state(sk) == HEALTHY
    assert t.slot(drop, create=False) == -1
    again = t.slot(drop)                             # a freed member comes back fresh
    assert again >= 0
    assert (t.state(again), t.ejections(again), t.passive_until(again)) == (UNKNOWN, 0, 0)
    g = t.generation()
    t.free([keep, drop])                             # nothing to free: no bump
    assert t.generation() == g


def test_probing_goes_on_past_freed_slots():
    t = HealthTable(slots=8)
    keys = [member_key("c", "h", p) for p in range(1, 9)]
    slots = {k: t.slot(k) for k in keys}             # every slot used: chains wrap around
    t.free(keys[0::2])                              # the others are freed
    for k in keys[0::2]:                             # still found behind tombstones
        assert t.slot(k, create=False) == slots[k]
    new = [t.slot(member_key("d", "h", p)) for p in range(1, 5)]
    assert sorted(new) == sorted(slots[k] for k in keys[1::2])      # freed slots reused
    assert t.slot(member_key("d", "h", 9)) == -1


def test_a_segment_that_is_not_a_health_table_is_refused():
    fd = os.memfd_create("not-health", 0)
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(ValueError, match="not a health table"):
            HealthTable(fd)
    finally:
        os.close(fd)


def test_two_processes_share_one_table():
    fd = create_health_segment(128)
    try:
        t = HealthTable(fd)
        mine = t.slot(member_key("lots", "127.0.0.1", 9001))
        t.set_state(mine, HEALTHY)
        g = t.generation()
        child = textwrap.dedent(f"""
            import sys
            from gateway.channels.table import HealthTable, member_key, HEALTHY, UNHEALTHY
            t = HealthTable({fd})
            assert t.slots == 128
            s = t.slot(member_key("lots", "127.0.0.1", 9001), create=False)
            assert s == {mine} and t.state(s) == HEALTHY, (s, t.state(s))
            print(t.eject(s, 987654321))
            print(t.slot(member_key("lots", "127.0.0.1", 9002)))
        """)
        out = subprocess.run([sys.executable, "-c", child], cwd=ROOT, pass_fds=(fd,),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        ejections, theirs = (int(x) for x in out.stdout.split())
        assert ejections == 1
        assert (t.state(mine), t.passive_until(mine), t.ejections(mine)) == \
            (UNHEALTHY, 987654321, 1)
        assert t.generation() > g
        assert t.slot(member_key("lots", "127.0.0.1", 9002), create=False) == theirs != mine
    finally:
        os.close(fd)
