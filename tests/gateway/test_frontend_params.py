"""Frontend parameter checks and defaults, end to end: the real gateway refuses what breaks a
check (400 APIC.0201 naming the parameter), lets the rest through, and defaults reach the
backend through a mapping and without one."""
from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.gateway.test_app_auth import APPS
from tests.support.client import request

PARAMS = [
    {"name": "limit", "location": "query", "type": "number", "min": 1, "max": 100,
     "default": 20},
    {"name": "sort", "location": "query", "enum": ["asc", "desc"]},
    {"name": "q", "location": "query", "required": True, "min": 2, "max": 5},
    {"name": "X-Ratio", "location": "header", "type": "number", "enum": [0.5, 1, 2]},
    {"name": "X-Lang", "location": "header", "default": "en", "max": 8},
    {"name": "X-Tenant", "location": "header", "required": True},
    {"name": "lot", "location": "path", "type": "number", "max": 999},
]


def config(backend_address, backend_params=(), auth="none"):
    return {"version": 1, "groups": [{"name": "main"}], "apps": APPS,
            "apis": [{"name": "lots", "group": "main", "method": "GET", "path": "/lots/{lot}",
                      "auth": auth, "params": PARAMS,
                      "backend": {"type": "http",
                                  "url": f"http://{backend_address}/echo/{{lot}}",
                                  "params": list(backend_params)},
                      "environments": {"RELEASE": {"apps": ["shop"]} if auth == "app"
                                       else {}}}]}


GOOD = {"X-Tenant": "t1"}


def call(gw, target, headers=GOOD):
    return request(gw.port, "GET", target, headers)


def header(record, name):
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


@pytest.fixture(scope="module")
def gateway_m(make_gateway_m, backend_m):
    return make_gateway_m(config(backend_m.address))


@pytest.fixture
def backend(fresh_backend_m):
    return fresh_backend_m


@pytest.fixture
def gw(gateway_m, backend):
    return gateway_m


def refused(r, *words):
    assert r.status == 400, r
    body = r.json()
    assert body["error_code"] == "APIC.0201"
    for word in words:
        assert word in body["error_msg"], body
    return body["error_msg"]


def test_a_valid_request_passes_with_defaults_forwarded(gw, backend):
    r = call(gw, "/lots/7?q=abc&sort=asc")
    assert r.status == 200, r.body
    record = backend.requests[-1]
    pairs = parse_qsl(urlsplit(record["target"]).query, keep_blank_values=True)
    assert pairs == [("q", "abc"), ("sort", "asc"), ("limit", "20")]
    assert header(record, "X-Lang") == ["en"]
    r = call(gw, "/lots/7?q=abc&limit=5", {**GOOD, "X-Lang": "fr"})
    assert r.status == 200
    record = backend.requests[-1]
    assert parse_qsl(urlsplit(record["target"]).query) == [("q", "abc"), ("limit", "5")]
    assert header(record, "X-Lang") == ["fr"], "a default never replaces the client's value"


def test_missing_required_parameters(gw, backend):
    assert refused(call(gw, "/lots/7"), "q") == "Missing required parameter: q"
    assert refused(call(gw, "/lots/7?q=abc", {}), "X-Tenant") == \
        "Missing required parameter: X-Tenant"
    assert call(gw, "/lots/7?q=ab", {"x-tenant": "t"}).status == 200, "header names: any case"
    assert backend.requests and all(r["target"].startswith("/echo/7?q=ab")
                                    for r in backend.requests)


@pytest.mark.parametrize("target, headers, words", [
    ("/lots/7?q=abc&limit=abc", {}, ["limit", "'abc' is not a number"]),
    ("/lots/7?q=abc&limit=0x10", {}, ["limit", "not a number"]),
    ("/lots/7?q=abc&limit=NaN", {}, ["limit", "not a number"]),
    ("/lots/7?q=abc&limit=inf", {}, ["limit", "not a number"]),
    ("/lots/7?q=abc&limit=%201", {}, ["limit", "not a number"]),
    ("/lots/7?q=abc&limit=", {}, ["limit", "not a number"]),
    ("/lots/7?q=abc&limit=1e1%2B1", {}, ["limit", "'1e1+1' is not a number"]),
    ("/lots/7?q=abc&limit=1+", {}, ["limit", "'1 ' is not a number"]),
    ("/lots/7?q=abc&limit=1e999", {}, ["limit", "not a finite number"]),
    ("/lots/7?q=abc&limit=0", {}, ["limit", "less than the minimum 1"]),
    ("/lots/7?q=abc&limit=100.5", {}, ["limit", "greater than the maximum 100"]),
    ("/lots/7?q=abc&sort=up", {}, ["sort", "'up' is not one of asc, desc"]),
    ("/lots/7?q=a", {}, ["q", "shorter than 2 characters"]),
    ("/lots/7?q=abcdef", {}, ["q", "longer than 5 characters"]),
    ("/lots/7?q=abc", {"X-Ratio": "3"}, ["X-Ratio", "'3' is not one of 0.5, 1, 2"]),
    ("/lots/7?q=abc", {"X-Lang": "a-very-long-language"}, ["X-Lang", "longer than 8"]),
    ("/lots/1000?q=abc", {}, ["lot", "greater than the maximum 999"]),
    ("/lots/x1?q=abc", {}, ["lot", "not a number"]),
    ("/lots/7?q=%ZZa", {}, ["q", "invalid percent-encoding"]),
    ("/lots/7?q=a%2", {}, ["q", "invalid percent-encoding"]),
    ("/lots/7?q=%FF%FE", {}, ["q", "not valid UTF-8"]),
])
def test_each_check_refuses(gw, backend, target, headers, words):
    msg = refused(call(gw, target, {**GOOD, **headers}), *words)
    assert msg.startswith("Invalid parameter ")
    assert backend.requests == [], "nothing refused reaches the backend"


@pytest.mark.parametrize("target, headers", [
    ("/lots/7?q=abc&limit=1", {}), ("/lots/7?q=abc&limit=100", {}),
    ("/lots/7?q=abc&limit=2.5e1", {}), ("/lots/7?q=abc&limit=%2B50", {}),
    ("/lots/7?q=%C3%A9t%C3%A9", {}), ("/lots/7?q=a+b", {}), ("/lots/7?%71=abc", {}),
    ("/lots/7?q=abc", {"X-Ratio": "1.0"}), ("/lots/7?q=abc", {"X-Ratio": "0.5"}),
    ("/lots/7?q=ab&sort=desc", {}), ("/lots/0999?q=abc", {}),
])
def test_values_that_pass(gw, target, headers):
    r = call(gw, target, {**GOOD, **headers})
    assert r.status == 200, (target, r.body)


def test_quoted_client_values_are_cut(gw):
    msg = refused(call(gw, "/lots/7?q=abc&limit=" + "x" * 5000), "limit")
    assert len(msg) < 120 and "x" * 32 + "..." in msg


def test_repeated_values_must_all_pass(gw, backend):
    assert call(gw, "/lots/7?q=abc&limit=5&limit=6").status == 200
    refused(call(gw, "/lots/7?q=abc&limit=5&limit=500"), "limit", "'500'")
    refused(call(gw, "/lots/7?q=abc&q=toolong"), "q", "longer than 5")
    raw = (b"GET /lots/7?q=abc HTTP/1.1\r\nHost: gw\r\nX-Tenant: t\r\nX-Ratio: 1\r\n"
           b"X-Ratio: 7\r\n\r\n")
    from tests.support.client import exchange
    responses, _ = exchange(gw.port, raw)
    refused(responses[0], "X-Ratio", "'7'")


def test_defaults_reach_the_backend_through_a_mapping(make_gateway, backend):
    mapping = [{"name": "page_size", "location": "query", "origin": "request", "value": "limit"},
               {"name": "X-Language", "location": "header", "origin": "request",
                "value": "X-Lang"},
               {"name": "X-Lang", "location": "header", "origin": "constant", "value": "zz"}]
    gw = make_gateway(config(backend.address, mapping))
    assert call(gw, "/lots/7?q=abc").status == 200
    record = backend.requests[-1]
    pairs = parse_qsl(urlsplit(record["target"]).query)
    assert pairs == [("q", "abc"), ("page_size", "20")], "mapped: not also under its own name"
    assert header(record, "X-Language") == ["en"]
    assert header(record, "X-Lang") == ["zz"], "a backend parameter of that name wins"
    assert call(gw, "/lots/7?q=abc&limit=3", {**GOOD, "X-Lang": "de"}).status == 200
    record = backend.requests[-1]
    assert parse_qsl(urlsplit(record["target"]).query) == [("q", "abc"), ("page_size", "3")]
    assert header(record, "X-Language") == ["de"]


def test_checks_run_after_authentication(make_gateway, backend):
    gw = make_gateway(config(backend.address, auth="app"))
    r = call(gw, "/lots/7?limit=abc")
    assert r.status == 401, "an unauthenticated caller learns nothing of the parameters"


def test_stages_are_built_only_for_apis_that_use_them():
    import msgspec

    from gateway.config import Document
    from gateway.policy.cors import cors
    from gateway.policy.params import ParamCheck
    from gateway.snapshot import compile_snapshot

    def api(name, **extra):
        return {"name": name, "group": "g", "method": "GET", "path": f"/{name}",
                "backend": {"type": "mock", "mock": {}}, "environments": {"RELEASE": {}},
                **extra}
    snap = compile_snapshot(msgspec.convert({"version": 1, "groups": [{"name": "g"}], "apis": [
        api("plain"), api("declared", params=[{"name": "a", "location": "query"}]),
        api("checked", cors=True, params=[{"name": "a", "location": "query", "required": True}]),
    ]}, Document))
    assert snap.apis[("plain", "RELEASE")].stages == ()
    assert snap.apis[("declared", "RELEASE")].stages == ()
    assert snap.apis[("plain", "RELEASE")].preflight is None
    checked = snap.apis[("checked", "RELEASE")]
    assert checked.stages[0] is cors and isinstance(checked.stages[1], ParamCheck)
    assert checked.preflight.stages == ()


@pytest.mark.parametrize("param, path, message", [
    ({"name": "n", "location": "query", "type": "number", "default": 500, "max": 100},
     "apis[0].params[0].default", "value 500 is above max 100"),
    ({"name": "n", "location": "query", "default": "toolong", "max": 3},
     "apis[0].params[0].default", "length 7 is above max 3"),
    ({"name": "n", "location": "query", "default": "c", "enum": ["a", "b"]},
     "apis[0].params[0].default", "must be one of enum"),
    ({"name": "n", "location": "query", "type": "number", "enum": [1, 50], "min": 2},
     "apis[0].params[0].enum[0]", "value 1 is below min 2"),
    ({"name": "n", "location": "query", "required": True, "default": "x"},
     "apis[0].params[0].default", "a required parameter has no default"),
    ({"name": "id", "location": "path", "default": "x"},
     "apis[0].params[0].default", "a path parameter is always present"),
    ({"name": "Host", "location": "header", "default": "x"},
     "apis[0].params[0].default", "'Host' cannot be set by a default"),
    ({"name": "X-A", "location": "header", "default": "a\nb"},
     "apis[0].params[0].default", "no CR, LF or NUL"),
    ({"name": "n", "location": "query", "type": "number", "enum": [10 ** 400]},
     "apis[0].params[0].enum[0]", "must be a finite number"),
    ({"name": "n", "location": "query", "type": "number", "default": "ten"},
     "apis[0].params[0].default", "expected a number"),
])
def test_bad_definitions_are_refused_at_load(param, path, message):
    import msgspec

    from gateway.config import Document, validate
    doc = {"version": 1, "groups": [{"name": "g"}],
           "apis": [{"name": "a", "group": "g", "method": "GET", "path": "/a/{id}",
                     "params": [param], "backend": {"type": "mock", "mock": {}},
                     "environments": {"RELEASE": {}}}]}
    errors = validate(msgspec.convert(doc, Document))
    assert [e for e in errors if e.startswith(path + ": ") and message in e], errors
