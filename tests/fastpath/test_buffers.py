"""concat: b"".join for message heads, on both forms of fastpath.buffers."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from .conftest import SEED


@pytest.mark.parametrize("parts", [(), [], (b"",), (b"a",), (b"GET", b" ", b"/x", b" HTTP/1.1\r\n"),
                                   [b"", b"a", b"", b"bc", b""], (b"\x00\xff" * 1000, b"z")])
def test_concat_is_join(buffers_mod, parts):
    assert buffers_mod.concat(parts) == b"".join(parts)
    assert type(buffers_mod.concat(parts)) is bytes


def test_concat_takes_other_buffers_like_join(buffers_mod):
    assert buffers_mod.concat((b"a", bytearray(b"b"), memoryview(b"c"))) == b"abc"
    assert buffers_mod.concat([bytearray(b"x")]) == b"x"


@pytest.mark.parametrize("bad", [(b"a", "b"), [None], (b"a", 1)])
def test_concat_refuses_what_join_refuses(buffers_mod, bad):
    with pytest.raises(TypeError):
        buffers_mod.concat(bad)


@seed(SEED)
@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=300), max_size=40), st.booleans())
def test_concat_matches_join_on_random_parts(buffers_mod, parts, as_tuple):
    value = tuple(parts) if as_tuple else parts
    assert buffers_mod.concat(value) == b"".join(parts)
