"""Path normalisation as routed and as forwarded, and environment selection with X-Stage.

APIs of the module's gateway:

* ``/api``   prefix, ANY, to the backend url ``http://backend/api``: the rest of the normalised
  path is appended, so ``/api/x/y`` is forwarded as ``/api/x/y`` (the backend's /echo answer
  shows the target it received);
* ``/admin`` exact, GET, a mock answering ``{"admin":true}``;
* ``/echo``  prefix, ANY, to the backend, published in RELEASE only;
* ``/mock``  exact, GET, a mock, published in RELEASE and TEST.
"""
from __future__ import annotations

import pytest

from tests.support.backend import Backend
from tests.support.client import assert_http_date, exchange
from tests.support.gateway import GatewayProcess

ADMIN = b'{"admin":true}'
MOCK = b'{"mock":true}'


def paths_config(backend_address: str) -> dict:
    def mock(body):
        return {"type": "mock", "mock": {"status": 200, "headers": {"Content-Type": "application/json"},
                                         "body": body}}
    return {
        "version": 1,
        "environments": [{"name": "TEST"}],
        "groups": [{"name": "main", "variables": {"RELEASE": {"backend": backend_address},
                                                   "TEST": {"backend": backend_address}}}],
        "apis": [
            {"name": "api", "group": "main", "method": "ANY", "path": "/api", "match_mode": "prefix",
             "backend": {"type": "http", "url": "http://#backend#/api"},
             "environments": {"RELEASE": {}}},
            {"name": "admin", "group": "main", "method": "GET", "path": "/admin",
             "backend": mock(ADMIN.decode()), "environments": {"RELEASE": {}}},
            {"name": "echo", "group": "main", "method": "ANY", "path": "/echo", "match_mode": "prefix",
             "backend": {"type": "http", "url": "http://#backend#/echo"},
             "environments": {"RELEASE": {}}},
            {"name": "mock", "group": "main", "method": "GET", "path": "/mock",
             "backend": mock(MOCK.decode()), "environments": {"RELEASE": {}, "TEST": {}}},
        ],
    }


@pytest.fixture(scope="module")
def backend():
    b = Backend().start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def gw(backend, tmp_path_factory):
    g = GatewayProcess(paths_config(backend.address), tmp_path_factory.mktemp("paths")).start()
    yield g
    g.stop()


def get(gw, target: bytes, headers: bytes = b""):
    data = b"GET " + target + b" HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n" + headers + b"\r\n"
    responses, _ = exchange(gw.port, data, timeout=5)
    assert len(responses) == 1 and responses[0].complete, responses
    return responses[0]


def forwarded(gw, target: bytes) -> str:
    """The target the backend received for a GET of ``target`` (from its /echo answer)."""
    r = get(gw, target)
    assert r.status == 200, r
    assert r.header("X-Backend"), f"not answered by the backend: {r}"
    return r.json()["target"]


def assert_error(r, status, code):
    assert r.status == status, r
    body = r.json()
    assert body["error_code"] == code, body
    assert body["request_id"] == r.header("X-Request-Id"), r


# -- routed on the normalised path ------------------------------------------------------------

@pytest.mark.parametrize("target", [
    b"/api/../admin",
    b"/api/%2e%2e/admin",
    b"/api/%2E%2E/admin",
    b"/api/.%2e/admin",
    b"/api/x/../../admin",
    b"/./admin",
    b"//admin",
    b"/%61dmin",
])
def test_dot_segments_and_escapes_route_to_admin(gw, backend, target):
    before = len(backend.requests)
    r = get(gw, target)
    assert r.status == 200, r
    assert r.body == ADMIN
    assert len(backend.requests) == before, "the backend must not be involved"


def test_plain_admin_is_the_mock(gw):
    r = get(gw, b"/admin")
    assert r.status == 200 and r.body == ADMIN


def test_encoded_slash_does_not_become_a_separator(gw):
    # /api%2F..%2Fadmin is one segment "api%2F..%2Fadmin": no API matches it
    r = get(gw, b"/api%2F..%2Fadmin")
    assert_error(r, 404, "APIC.0101")


# -- forwarded in the normalised form -------------------------------------------------------

def test_repeated_slashes_are_collapsed_when_forwarded(gw):
    assert forwarded(gw, b"/api//x///y") == "/api/x/y"


def test_dot_segments_inside_the_prefix_are_resolved_when_forwarded(gw):
    assert forwarded(gw, b"/api/x/./y/../z") == "/api/x/z"


def test_trailing_slash_is_forwarded(gw):
    assert forwarded(gw, b"/api/x/") == "/api/x/"


def test_prefix_alone_is_forwarded_as_the_backend_path(gw):
    assert forwarded(gw, b"/api") == "/api"


def test_encoded_slash_stays_encoded(gw):
    assert forwarded(gw, b"/api/a%2Fb") == "/api/a%2Fb"


def test_encoded_slash_lower_case_is_upper_cased_and_kept(gw):
    assert forwarded(gw, b"/api/a%2fb") == "/api/a%2Fb"


def test_encoded_backslash_stays_encoded(gw):
    assert forwarded(gw, b"/api/a%5cb") == "/api/a%5Cb"


def test_unreserved_escape_is_decoded(gw):
    assert forwarded(gw, b"/api/%41bc") == "/api/Abc"
    assert forwarded(gw, b"/api/%7euser") == "/api/~user"


def test_double_encoding_is_decoded_once_only(gw):
    # %25 is the kept escape, "2e" plain characters: decoded once only, never a dot segment
    assert forwarded(gw, b"/api/%252e%252e/x") == "/api/%252e%252e/x"
    assert forwarded(gw, b"/api/%25%2e/x") == "/api/%25./x"


def test_encoded_space_is_kept(gw):
    assert forwarded(gw, b"/api/a%20b") == "/api/a%20b"


# -- refused paths -------------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    b"/../etc/passwd",
    b"/api/../../etc/passwd",
    b"/%2e%2e/etc/passwd",
    b"/api/%00",
    b"/api/a%00b",
    b"/api/%zz",
    b"/api/%2",
    b"/api/%g1",
    b"/api/a\\b",
])
def test_malformed_path_is_400(gw, backend, target):
    before = len(backend.requests)
    r = get(gw, target)
    assert_error(r, 400, "APIC.0201")
    assert len(backend.requests) == before


# -- query string ------------------------------------------------------------------------

@pytest.mark.parametrize("query", [
    b"a=1&b=2",
    b"x=%2f%2F%00%zz&y=..%2F..&z=/../..//",
    b"q=a+b&q=c%20d&&empty=&=v",
    b"k=%41%7e~!$'()*,;:@/?",
])
def test_query_string_is_forwarded_byte_for_byte(gw, query):
    assert forwarded(gw, b"/api/q?" + query) == "/api/q?" + query.decode()


def test_query_is_not_normalised_with_the_path(gw):
    assert forwarded(gw, b"/api//a/../b?p=//a/../b") == "/api/b?p=//a/../b"


# -- not found, stages ------------------------------------------------------------------

def test_unknown_path_is_404_apic_0101(gw, backend):
    before = len(backend.requests)
    r = get(gw, b"/nothing/here")
    assert_error(r, 404, "APIC.0101")
    assert set(r.json()) == {"error_code", "error_msg", "request_id"}
    assert_http_date(r.header("Date"))
    assert len(backend.requests) == before


def test_prefix_does_not_match_inside_a_segment(gw):
    assert_error(get(gw, b"/apix"), 404, "APIC.0101")


def test_exact_api_does_not_take_a_longer_path(gw):
    assert_error(get(gw, b"/admin/x"), 404, "APIC.0101")


def test_release_is_the_default_stage(gw):
    assert get(gw, b"/echo?s=release").status == 200
    assert get(gw, b"/mock").body == MOCK


def test_stage_test_serves_what_is_published_in_test(gw):
    r = get(gw, b"/mock", b"X-Stage: TEST\r\n")
    assert r.status == 200 and r.body == MOCK


def test_stage_test_does_not_serve_release_only_apis(gw, backend):
    before = len(backend.requests)
    assert_error(get(gw, b"/echo?s=test", b"X-Stage: TEST\r\n"), 404, "APIC.0101")
    assert_error(get(gw, b"/admin", b"X-Stage: TEST\r\n"), 404, "APIC.0101")
    assert len(backend.requests) == before


def test_explicit_release_stage(gw):
    r = get(gw, b"/admin", b"X-Stage: RELEASE\r\n")
    assert r.status == 200 and r.body == ADMIN


def test_unknown_stage_is_404(gw, backend):
    before = len(backend.requests)
    assert_error(get(gw, b"/mock", b"X-Stage: NOPE\r\n"), 404, "APIC.0101")
    assert_error(get(gw, b"/echo", b"X-Stage: NOPE\r\n"), 404, "APIC.0101")
    assert len(backend.requests) == before
