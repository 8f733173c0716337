"""fastpath.limiter in both forms: the sliding window counter's decisions at window edges, the
shared table (slots, expiry, reclaiming, a full table), and exact totals when several
processes draw on one table at once."""
from __future__ import annotations

import mmap
import multiprocessing
import os

import pytest

from tests.fastpath.conftest import load_form

S = 1_000_000_000           # one second, in ns
T0 = 1_000 * S              # a window start


def table(mod, slots=1024, lock_fd=-1):
    buf = mmap.mmap(-1, mod.table_size(slots))
    mod.init_table(buf, slots)
    return mod.CounterTable(buf, lock_fd)


def takes(t, key, limit, times, period=S, sliding=True):
    return [t.take(key, limit, period, 1, now, sliding) for now in times]


def test_a_burst_gets_exactly_the_limit_then_refusals(limiter_mod):
    t = table(limiter_mod)
    k = limiter_mod.hash_key(b"api")
    assert takes(t, k, 5, [T0 + i for i in range(7)]) == [4, 3, 2, 1, 0, -1, -1]


def test_no_boundary_burst_the_previous_window_still_counts(limiter_mod):
    """A fixed window would grant 10 more right after the boundary; the sliding estimate
    (prev * (P - e) / P + cur) grants them only as the previous window slides out."""
    t = table(limiter_mod)
    k = limiter_mod.hash_key(b"edge")
    # 10 calls in the last millisecond of a window
    assert min(takes(t, k, 10, [T0 + S - 1_000_000 + i for i in range(10)])) >= 0
    assert t.take(k, 10, S, 1, T0 + S - 1, True) == -1
    # just after the boundary: prev (10) weighs ~10 -> nothing passes
    assert t.take(k, 10, S, 1, T0 + S + 1_000, True) == -1
    # 25 % into the window: prev weighs 7.5 -> 2 calls pass (7.5 + 2 <= 10), the third not
    now = T0 + S + S // 4
    assert takes(t, k, 10, [now, now + 1, now + 2]) == [1, 0, -1]
    # 75 % in: prev weighs 2.5, cur 2 -> 5 more pass (2.5 + 2 + 5 = 9.5 <= 10), not a sixth
    now = T0 + S + 3 * S // 4
    assert takes(t, k, 10, [now + i for i in range(6)])[-2:] == [0, -1]


def test_any_one_second_span_stays_near_the_limit_under_overload(limiter_mod):
    """3x overload, evenly spread: per window, at most the limit passes, and it converges on
    the limit (what the sliding window promises; a fixed window allows 2x in a span that
    straddles a boundary)."""
    t = table(limiter_mod)
    k = limiter_mod.hash_key(b"steady")
    limit, rate = 100, 300
    passed = []
    for i in range(10 * rate):
        now = T0 + i * S // rate
        if t.take(k, limit, S, 1, now, True) >= 0:
            passed.append(now)
    per_window = [sum(1 for p in passed if T0 + w * S <= p < T0 + (w + 1) * S) for w in range(10)]
    assert per_window[0] == limit
    assert all(limit - 2 <= n <= limit for n in per_window), per_window
    # sliding spans of one second, stepped every 50 ms: never more than limit + 1
    for start in range(0, 9 * S, S // 20):
        span = sum(1 for p in passed if T0 + start <= p < T0 + start + S)
        assert span <= limit + 1, (start, span)


def test_fixed_windows_reset_at_the_boundary(limiter_mod):
    t = table(limiter_mod)
    k = limiter_mod.hash_key(b"quota")
    day = 86_400 * S
    assert takes(t, k, 2, [T0, T0 + 1, T0 + 2], day, False) == [1, 0, -1]
    assert t.wait_ns(k, 2, day, 1, T0 + 2, False) == day - (T0 + 2) % day
    start = (T0 // day + 1) * day
    assert takes(t, k, 2, [start, start + 1, start + 2], day, False) == [1, 0, -1]


def test_wait_ns_is_when_the_next_call_passes(limiter_mod):
    t = table(limiter_mod)
    k = limiter_mod.hash_key(b"wait")
    takes(t, k, 4, [T0 + i for i in range(4)])
    wait = t.wait_ns(k, 4, S, 1, T0 + 10)
    assert wait > 0
    assert t.take(k, 4, S, 1, T0 + 10 + wait - 1_000, True) == -1
    assert t.take(k, 4, S, 1, T0 + 10 + wait, True) >= 0
    # a key never seen can pass now
    assert t.wait_ns(limiter_mod.hash_key(b"other"), 4, S, 1, T0) == 0


def test_refund_gives_a_call_back_in_the_same_window_only(limiter_mod):
    t = table(limiter_mod)
    k = limiter_mod.hash_key(b"refund")
    assert takes(t, k, 2, [T0, T0 + 1, T0 + 2]) == [1, 0, -1]
    t.refund(k, S, 1, T0 + 3)
    assert t.take(k, 2, S, 1, T0 + 4, True) == 0
    t.refund(k, S, 1, T0 + 10 * S)          # a later window: nothing to give back there
    assert t.take(k, 2, S, 1, T0 + 5, True) == -1


def test_keys_are_independent_and_hashes_continue_a_seed(limiter_mod):
    t = table(limiter_mod)
    seed = limiter_mod.hash_key(b"policy\0ip\0")
    a = limiter_mod.hash_key(b"10.0.0.1", seed)
    b = limiter_mod.hash_key(b"10.0.0.2", seed)
    assert a != b and a == limiter_mod.hash_key(b"policy\0ip\x0010.0.0.1")
    assert takes(t, a, 1, [T0, T0 + 1]) == [0, -1]
    assert t.take(b, 1, S, 1, T0 + 2, True) == 0


def test_a_full_table_lets_new_keys_pass_untracked_and_counts_it(limiter_mod):
    t = table(limiter_mod, slots=16)
    keys = [limiter_mod.hash_key(b"k%d" % i) for i in range(17)]
    for k in keys[:16]:
        assert t.take(k, 5, S, 1, T0, True) == 4
    assert t.take(keys[16], 5, S, 1, T0, True) == -2
    assert t.full_events == 1
    # the keys already there are still counted
    assert t.take(keys[0], 5, S, 1, T0 + 1, True) == 3
    # once they expire (2 periods after their last call) their slots are reused
    assert t.take(keys[16], 5, S, 1, T0 + 3 * S, True) == 4


def test_expired_slot_reused_by_another_key_starts_from_zero(limiter_mod):
    t = table(limiter_mod, slots=16)
    keys = [limiter_mod.hash_key(b"x%d" % i) for i in range(16)]
    for k in keys:
        takes(t, k, 3, [T0, T0, T0])
    new = limiter_mod.hash_key(b"newcomer")
    assert t.take(new, 3, S, 1, T0 + 5 * S, True) == 2


def test_a_table_is_checked_when_opened(limiter_mod):
    with pytest.raises(ValueError):
        limiter_mod.CounterTable(bytearray(4096))
    with pytest.raises(ValueError):
        limiter_mod.table_size(100)


def _hammer(form, fd, size, key, n, limit, barrier, out):
    mod = load_form("limiter", form)
    buf = mmap.mmap(fd, size)
    t = mod.CounterTable(buf, fd if form == "pure" else -1)
    now = T0 + S // 2
    barrier.wait(timeout=30)
    passed = sum(1 for _ in range(n) if t.take(key, limit, 3600 * S, 1, now, True) >= 0)
    out.put(passed)


def test_processes_sharing_a_table_grant_exactly_the_limit(form):
    """Four processes take concurrently from one key of one shared table (a memfd, as the
    gateway's workers do): together they get exactly the limit, no call more or less."""
    mod = load_form("limiter", form)
    size = mod.table_size(1024)
    fd = os.memfd_create("limiter-test", 0)
    os.ftruncate(fd, size)
    with mmap.mmap(fd, size) as buf:
        mod.init_table(buf, 1024)
    key = mod.hash_key(b"contended")
    n, limit = (4_000, 10_000) if form == "pure" else (300_000, 750_000)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_hammer, args=(form, fd, size, key, n, limit, barrier, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    os.close(fd)
    assert sum(results) == limit, results
    assert sum(1 for r in results if r > 0) >= 2, results     # (they did contend)
