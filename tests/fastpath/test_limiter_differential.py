"""The two forms of fastpath.limiter decide alike: the same random sequences of calls (keys,
limits, periods, clock steps, refunds, fixed and sliding windows) give the same answers."""
from __future__ import annotations

import mmap

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from fastpath import load

SEED = 20261130
S = 1_000_000_000

OPS = st.lists(st.tuples(
    st.sampled_from(["take", "take", "take", "wait", "refund"]),
    st.integers(0, 40),                         # key index (40 keys in a 16-slot table: full)
    st.integers(1, 50),                         # limit
    st.sampled_from([S // 10, S, 60 * S]),      # period
    st.integers(0, S // 3),                     # clock step
    st.booleans(),                              # sliding
), max_size=300)


@pytest.fixture(scope="module")
def forms():
    try:
        return load("limiter", False), load("limiter", True)
    except ImportError:
        pytest.skip("the compiled form is not built")


def _run(mod, ops):
    buf = mmap.mmap(-1, mod.table_size(16))
    mod.init_table(buf, 16)
    t = mod.CounterTable(buf)
    now = 7 * S
    out = []
    for op, k, limit, period, step, sliding in ops:
        now += step
        key = mod.hash_key(b"key%d" % k)
        if op == "take":
            out.append(t.take(key, limit, period, 1, now, sliding))
        elif op == "wait":
            out.append(t.wait_ns(key, limit, period, 1, now, sliding))
        else:
            t.refund(key, period, 1, now)
    return out, t.full_events


@seed(SEED)
@settings(max_examples=400, deadline=None)
@given(ops=OPS)
def test_forms_agree(forms, ops):
    pure, compiled = forms
    assert _run(pure, ops) == _run(compiled, ops)


@seed(SEED)
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), prefix=st.binary(max_size=16))
def test_hashes_agree(forms, data, prefix):
    pure, compiled = forms
    assert pure.hash_key(data) == compiled.hash_key(data)
    assert pure.hash_key(data, pure.hash_key(prefix)) == compiled.hash_key(data, compiled.hash_key(prefix))
