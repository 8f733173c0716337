"""The two forms of fastpath.sdksign give the same canonical URI and query for any bytes a
client can put in a request target (a signature check that differs between forms would accept
in one what it refuses in the other)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, seed
from hypothesis import strategies as st

from fastpath import load

SEED = 20261130

# the bytes that matter: unreserved, reserved, '%' with and without hex, non-ASCII, UTF-8 pieces
_ALPHABET = st.sampled_from([b"a", b"Z", b"0", b"-", b"_", b".", b"~", b"/", b"?", b"=", b"&",
                             b"+", b" ", b"%", b"%2", b"%2F", b"%2f", b"%41", b"%zz", b"%E4",
                             b"%BD%A0", b"%E4%BD%A0", b"%C3%A9", b"%ED%A0%80", b"%F4%90%80%80",
                             b"%C0%AF", b"\xc3\xa9", b"\xff", b"!", b"*", b"'", b"(", b")",
                             b";", b":", b"@", b"$", b",", b"[", b"]"])
TARGETS = st.lists(_ALPHABET, max_size=30).map(b"".join)


@pytest.fixture(scope="module")
def forms():
    try:
        return load("sdksign", False), load("sdksign", True)
    except ImportError:
        pytest.skip("the compiled form is not built")


@seed(SEED)
@settings(max_examples=3000, deadline=None)
@given(raw=TARGETS)
def test_canonical_uri_and_query_agree(forms, raw):
    pure, compiled = forms
    assert compiled.canonical_uri(raw) == pure.canonical_uri(raw)
    assert compiled.canonical_query(raw) == pure.canonical_query(raw)


@pytest.mark.parametrize("raw", [b"", b"/", b"%", b"%%", b"/a%2", b"a=%", b"&&&", b"=", b"==",
                                 b"a=b=c", b"%ED%A0%80", b"\xff=\xfe", b"%C3%A9=%C3"])
def test_edge_cases_agree(forms, raw):
    pure, compiled = forms
    assert compiled.canonical_uri(raw) == pure.canonical_uri(raw)
    assert compiled.canonical_query(raw) == pure.canonical_query(raw)


DATES = st.builds(lambda y, mo, d, h, mi, s: b"%04d%02d%02dT%02d%02d%02dZ" % (y, mo, d, h, mi, s),
                  st.integers(1, 9999), st.integers(0, 13), st.integers(0, 32),
                  st.integers(0, 24), st.integers(0, 60), st.integers(0, 61))


@seed(SEED)
@settings(max_examples=3000, deadline=None)
@given(value=st.one_of(DATES, st.binary(max_size=18)))
def test_dates_are_read_alike(forms, value):
    from fastpath.sdksign import SignatureError
    answers = []
    for form in forms:
        try:
            answers.append(form.parse_date(value))
        except SignatureError as exc:
            answers.append(exc.reason)
    assert answers[0] == answers[1], value


_AUTH_PIECES = st.sampled_from([
    b"SDK-HMAC-SHA256 ", b"SDK-HMAC-SHA256", b"sdk-hmac-sha256 ", b"Access=", b"Access",
    b"SignedHeaders=", b"Signature=", b"Other=", b"key-1", b"host", b"x-sdk-date", b"Host",
    b";", b";;", b",", b", ", b" ", b"\t", b"=", b"a" * 64, b"0123456789abcdef" * 4,
    b"ABCDEF" * 10, b"content-type", b"\xc3\xa9"])
AUTHORIZATIONS = st.lists(_AUTH_PIECES, max_size=14).map(b"".join)
_WELL_FORMED = st.builds(
    lambda access, names, sig: b"SDK-HMAC-SHA256 Access=%s, SignedHeaders=%s, Signature=%s"
    % (access, b";".join(names), sig),
    st.sampled_from([b"k", b"key-0001", b"a b", b""]),
    st.lists(st.sampled_from([b"host", b"x-sdk-date", b"content-type", b"X-Up", b"", b"a"]),
             max_size=4),
    st.sampled_from([b"0123456789abcdef" * 4, b"0123456789ABCDEF" * 4, b"abc", b"g" * 64]))


@seed(SEED)
@settings(max_examples=3000, deadline=None)
@given(value=st.one_of(AUTHORIZATIONS, _WELL_FORMED))
def test_authorization_values_are_read_alike(forms, value):
    """The compiled scan of Authorization accepts and refuses what the interpreted form does,
    with the same message."""
    from fastpath.sdksign import SignatureError
    answers = []
    for form in forms:
        try:
            answers.append(tuple(form.parse_authorization(value)))
        except SignatureError as exc:
            answers.append(exc.reason)
    assert answers[0] == answers[1], value
