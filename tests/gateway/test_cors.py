"""CORS per API, end to end: preflights answered by the gateway before authentication, CORS
fields on every answer of a CORS API (backend's and gateway's errors alike), nothing for the
APIs without it."""
from __future__ import annotations

import pytest

from tests.gateway.test_app_auth import APPS, signed_request
from tests.support.client import exchange, request

ALLOW_HEADERS = ["X-Stage", "X-Sdk-Date", "X-Sdk-Nonce", "X-Sdk-Content-Sha256",
                 "X-Proxy-Signed-Headers", "X-Auth-Token", "X-Apig-AppCode", "Authorization",
                 "Content-Type"]


def api(name, method, path, backend, cors=True, auth="none", envs=("RELEASE",)):
    return {"name": name, "group": "main", "method": method, "path": path, "auth": auth,
            "cors": cors, "backend": backend,
            "environments": {e: ({"apps": ["shop"]} if auth == "app" else {}) for e in envs}}


def config(backend_address):
    http = {"type": "http", "url": f"http://{backend_address}/echo/"}
    mock = {"type": "mock", "mock": {"status": 200, "body": "plain",
                                      "headers": {"Access-Control-Allow-Origin": "https://x.test"}}}
    return {"version": 1, "apps": APPS, "environments": [{"name": "TEST"}],
            "groups": [{"name": "main"}],
            "apis": [api("orders", "GET", "/orders", http, auth="app"),
                     api("create", "POST", "/orders/{id}", http, auth="app"),
                     api("test-only", "PUT", "/staged", http, envs=("TEST",)),
                     api("closed", "GET", "/closed", http, cors=False),
                     api("any", "ANY", "/any", mock),
                     api("explicit", "OPTIONS", "/own", http, cors=False),
                     api("own", "GET", "/own", http)]}


@pytest.fixture(scope="module")
def gateway_m(make_gateway_m, backend_m):
    return make_gateway_m(config(backend_m.address))


@pytest.fixture
def backend(fresh_backend_m):
    return fresh_backend_m


@pytest.fixture
def gw(gateway_m, backend):
    return gateway_m


def preflight(gw, path, method="GET", headers=None, stage=None):
    sent = {"Origin": "https://app.test", "Access-Control-Request-Method": method}
    if stage is not None:
        sent["X-Stage"] = stage
    sent.update(headers or {})
    return request(gw.port, "OPTIONS", path, {k: v for k, v in sent.items() if v is not None})


def headers_of(r, name):
    return [v for k, v in r.headers if k.lower() == name.lower()]


def allowed(r):
    return [h.strip() for h in r.header("Access-Control-Allow-Headers", "").split(",")]


def test_preflight_is_answered_without_credentials(gw, backend):
    r = preflight(gw, "/orders", headers={"Access-Control-Request-Headers": "x-sdk-date, authorization"})
    assert r.status == 200, r
    assert r.body == b"" and r.header("Content-Length") == "0"
    assert headers_of(r, "Access-Control-Allow-Origin") == ["*"]
    assert headers_of(r, "Access-Control-Allow-Methods") == ["GET, HEAD"]
    assert allowed(r) == ALLOW_HEADERS, "names already allowed are not repeated"
    assert headers_of(r, "Access-Control-Max-Age") == ["172800"]
    assert r.header("X-Request-Id")
    assert backend.requests == [], "the backend never sees a preflight"


def test_preflight_echoes_valid_requested_headers_only(gw):
    r = preflight(gw, "/orders", headers={"Access-Control-Request-Headers": "X-Custom, x-trace-id"})
    assert allowed(r) == ALLOW_HEADERS + ["x-custom", "x-trace-id"]
    for bad in ["X-Ok, bad header", "X-Ok, (x)", ", ".join(f"x-h{i}" for i in range(40)),
                "x-" + "a" * 3000]:
        r = preflight(gw, "/orders", headers={"Access-Control-Request-Headers": bad})
        assert r.status == 200
        assert allowed(r) == ALLOW_HEADERS, bad


def test_preflight_for_a_post_api(gw):
    r = preflight(gw, "/orders/17", "POST", {"Access-Control-Request-Headers": "content-type"})
    assert r.status == 200
    assert headers_of(r, "Access-Control-Allow-Methods") == ["POST"]
    assert headers_of(r, "Access-Control-Allow-Origin") == ["*"]
    # no POST API at /orders: not a CORS route
    r = preflight(gw, "/orders", "POST")
    assert r.status == 404 and r.json()["error_code"] == "APIC.0101"
    assert r.header("Access-Control-Allow-Origin") is None


def test_preflight_in_the_environment_x_stage_selects(gw):
    r = preflight(gw, "/staged", "PUT", stage="TEST")
    assert r.status == 200 and headers_of(r, "Access-Control-Allow-Methods") == ["PUT"]
    r = preflight(gw, "/staged", "PUT")            # (RELEASE has no such API)
    assert r.status == 404 and r.header("Access-Control-Allow-Origin") is None


def test_api_without_cors_gets_no_preflight_answer(gw, backend):
    r = preflight(gw, "/closed")
    assert r.status == 404, r
    assert r.json()["error_code"] == "APIC.0101"
    assert not [k for k, _ in r.headers if k.lower().startswith("access-control-")]
    r = request(gw.port, "GET", "/closed")
    assert r.status == 200 and r.header("Access-Control-Allow-Origin") is None


def test_not_a_preflight_is_routed_as_options(gw):
    for headers in [{"Origin": None}, {"Access-Control-Request-Method": None},
                    {"Access-Control-Request-Method": "G E T"},
                    {"Access-Control-Request-Method": "GET, POST"},
                    {"Access-Control-Request-Method": "GET/1"},
                    {"Access-Control-Request-Method": ""},
                    {"Access-Control-Request-Method": "X" * 40}]:
        r = preflight(gw, "/orders", headers=headers)
        assert r.status == 404, headers
        assert r.header("Access-Control-Allow-Origin") is None


def test_head_preflight_and_head_request(gw, backend):
    r = preflight(gw, "/orders", "HEAD")
    assert r.status == 200 and headers_of(r, "Access-Control-Allow-Methods") == ["GET, HEAD"]
    responses, _ = exchange(gw.port, b"HEAD /any HTTP/1.1\r\nHost: gw\r\nOrigin: https://a\r\n\r\n")
    assert responses[0].status == 200 and responses[0].body == b""
    assert headers_of(responses[0], "Access-Control-Allow-Origin") == ["*"]


def test_any_api_preflight_and_mock_cors_fields(gw):
    r = preflight(gw, "/any", "DELETE")
    assert r.status == 200
    assert headers_of(r, "Access-Control-Allow-Methods") == [
        "GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS"]
    r = request(gw.port, "OPTIONS", "/any")             # (not a preflight: the mock answers)
    assert r.status == 200 and r.body == b"plain"
    assert headers_of(r, "Access-Control-Allow-Origin") == ["*"], "the mock's own is replaced"


def test_explicit_options_api_keeps_its_preflights(gw, backend):
    r = preflight(gw, "/own")
    assert r.status == 200
    assert backend.requests[-1]["method"] == "OPTIONS", "the OPTIONS API's backend answered"
    assert r.header("Access-Control-Max-Age") is None


def test_errors_and_backend_answers_carry_cors_fields(gw, backend):
    r = request(gw.port, "GET", "/orders", {"Origin": "https://app.test"})
    assert r.status == 401, r
    assert headers_of(r, "Access-Control-Allow-Origin") == ["*"]
    expose = [h.strip() for h in r.header("Access-Control-Expose-Headers").split(",")]
    assert expose == ["X-Request-Id", "X-Apig-RateLimit-api", "X-Apig-RateLimit-user",
                      "X-Apig-RateLimit-app", "X-Apig-RateLimit-ip", "Retry-After"]
    r = signed_request(gw.port, path="/orders", headers={"Origin": "https://app.test"})
    assert r.status == 200, r
    assert headers_of(r, "Access-Control-Allow-Origin") == ["*"]
    assert len(headers_of(r, "Access-Control-Expose-Headers")) == 1


def test_backend_cors_fields_are_replaced(make_gateway, raw):
    from tests.gateway.test_backend_misbehaviour import serve
    answer = (b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: https://evil.test\r\n"
              b"access-control-allow-credentials: true\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok")
    backend = raw(serve(lambda target: answer))
    http = {"type": "http", "url": f"http://{backend.address}/"}
    gw = make_gateway({"version": 1, "groups": [{"name": "main"}],
                       "apis": [api("a", "GET", "/a", http), api("b", "GET", "/b", http, cors=False)]})
    r = request(gw.port, "GET", "/a", {"Origin": "https://app.test"})
    assert r.status == 200 and r.body == b"ok"
    assert headers_of(r, "Access-Control-Allow-Origin") == ["*"]
    assert headers_of(r, "Access-Control-Allow-Credentials") == []
    assert headers_of(r, "X-Kept") == ["1"]
    r = request(gw.port, "GET", "/b")
    assert headers_of(r, "Access-Control-Allow-Origin") == ["https://evil.test"], "untouched"
    assert headers_of(r, "Access-Control-Allow-Credentials") == ["true"]


def test_a_preflight_from_an_address_the_ip_acl_refuses_is_refused(make_gateway, backend):
    document = config(backend.address)
    document["acls"] = [{"name": "block", "action": "DENY", "entity": "ip",
                         "values": ["127.0.0.2"]}]
    document["apis"][0]["environments"]["RELEASE"]["acl"] = "block"
    gw = make_gateway(document)
    sent = {"Origin": "https://app.test", "Access-Control-Request-Method": "GET"}
    refused = request(gw.port, "OPTIONS", "/orders", sent, source="127.0.0.2")
    assert refused.status == 403 and refused.json()["error_code"] == "APIC.0402"
    assert request(gw.port, "OPTIONS", "/orders", sent, source="127.0.0.3").status == 200
