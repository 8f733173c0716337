"""Backend parameters and backend signature keys, end to end: what the real backend receives
(values placed and encoded, client values never injected), and a signature the backend
verifies with the vendor SDK's algorithm."""
from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from tests.gateway.test_app_auth import APPS, signed_request
from tests.support.client import request

SIGNING = {"name": "to-backend", "key": "gw-key-000001", "secret": "gw-secret-000001"}


def config(backend_address, params, auth="none", bindings=None, path="/lots/{lot}"):
    binding = {"signature_key": "to-backend"} if bindings is None else bindings
    if auth == "app":
        binding["apps"] = ["shop"]
    return {"version": 1, "groups": [{"name": "main"}], "apps": APPS,
            "signature_keys": [SIGNING],
            "apis": [{"name": "lots", "group": "main", "method": "ANY", "path": path,
                      "auth": auth,
                      "params": [{"name": "X-Lang", "location": "header"},
                                 {"name": "limit", "location": "query"}],
                      "backend": {"type": "http",
                                  "url": f"http://{backend_address}/echo/{{spot}}",
                                  "params": params},
                      "environments": {"RELEASE": binding}}]}


def header(record, name):
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


PARAMS = [
    {"name": "spot", "location": "path", "origin": "request", "value": "lot"},
    {"name": "page_size", "location": "query", "origin": "request", "value": "limit"},
    {"name": "X-Language", "location": "header", "origin": "request", "value": "X-Lang"},
    {"name": "X-Source", "location": "header", "origin": "constant", "value": "gateway"},
    {"name": "X-Client-Ip", "location": "header", "origin": "system", "value": "$context.sourceIp"},
    {"name": "stage", "location": "query", "origin": "system", "value": "$context.stage"},
    {"name": "X-Api", "location": "header", "origin": "system", "value": "$context.apiName"},
    {"name": "X-Rid", "location": "header", "origin": "system", "value": "$context.requestId"},
]


@pytest.fixture
def gw(make_gateway, backend):
    return make_gateway(config(backend.address, PARAMS, bindings={}))


def test_parameters_are_placed_and_renamed(gw, backend):
    r = request(gw.port, "GET", "/lots/a7?limit=20&other=1",
                {"X-Lang": "fr", "X-Source": "forged"})
    assert r.status == 200, r.body
    record = backend.requests[-1]
    target = urlsplit(record["target"])
    assert target.path == "/echo/a7"
    assert parse_qsl(target.query) == [("other", "1"), ("page_size", "20"),
                                        ("stage", "RELEASE")], "limit renamed, other kept"
    assert header(record, "X-Language") == ["fr"] and header(record, "X-Lang") == []
    assert header(record, "X-Source") == ["gateway"], "the client's value is never forwarded"
    assert header(record, "X-Client-Ip") == ["127.0.0.1"]
    assert header(record, "X-Api") == ["lots"]
    assert header(record, "X-Rid") == [r.header("X-Request-Id")]


@pytest.mark.parametrize("target, headers, expect_path, query_injected", [
    # a value that would add a path segment or climb out of the backend path
    ("/lots/..%2Fadmin", {}, "/echo/%2E%2E%2Fadmin", False),
    ("/lots/a%2Fb%3Fx=1", {}, "/echo/a%2Fb%3Fx%3D1", False),
    # a value that would add a query parameter
    ("/lots/x?limit=5%26admin%3D1", {}, "/echo/x", True),
], ids=["dot-segments", "slash-and-query", "query-injection"])
def test_client_values_never_inject(gw, backend, target, headers, expect_path, query_injected):
    r = request(gw.port, "GET", target, headers)
    assert r.status == 200, r.body
    record = backend.requests[-1]
    parts = urlsplit(record["target"])
    assert parts.path == expect_path
    pairs = parse_qsl(parts.query)
    if query_injected:
        assert ("admin", "1") not in pairs
        assert ("page_size", "5&admin=1") in pairs


def test_signed_backend_requests_verify_with_the_sdk_algorithm(make_gateway, backend):
    gw = make_gateway(config(backend.address, PARAMS))
    body = b'{"spot": "a7", "note": "\xc3\xa9t\xc3\xa9"}'
    for method, target, payload in [("GET", "/lots/a7?limit=3&z=%20sp%C3%A9", b""),
                                     ("POST", "/lots/b%20c?limit=4", body)]:
        r = request(gw.port, method, target, {"X-Lang": "de", "Authorization": "Basic forged"},
                    body=payload)
        assert r.status == 200, r.body
        record = backend.requests[-1]
        assert record["body_sha256"] == hashlib.sha256(payload).hexdigest()
        assert_signed_by(record, payload, SIGNING["key"], SIGNING["secret"])
        with pytest.raises(AssertionError):
            assert_signed_by(record, payload, SIGNING["key"], "another-secret")


def assert_signed_by(record, body, key, secret):
    """Re-sign what the backend received with the SDK's signer and compare."""
    parts = urlsplit(record["target"])
    date = header(record, "X-Sdk-Date")[0]
    host = header(record, "Host")[0]
    received = header(record, "Authorization")
    assert len(received) == 1, "only the gateway's Authorization reaches the backend"
    req = SdkRequest(method=record["method"], schema="http", host=host,
                     resource_path=unquote(parts.path),
                     query_params=parse_qsl(parts.query, keep_blank_values=True),
                     header_params={"X-Sdk-Date": date}, body=body)
    expected = Signer(BasicCredentials(key, secret)).sign(req).header_params["Authorization"]
    assert received[0] == expected


def test_app_identity_reaches_the_backend_and_is_signed(make_gateway, backend):
    params = [{"name": "X-App", "location": "header", "origin": "system",
               "value": "$context.appName"},
              {"name": "X-App-Id", "location": "header", "origin": "system",
               "value": "$context.appId"},
              {"name": "spot", "location": "path", "origin": "request", "value": "lot"}]
    gw = make_gateway(config(backend.address, params, auth="app"))
    r = signed_request(gw.port, "POST", "/lots/q1", body=b"payload",
                       headers={"Content-Type": "text/plain"})
    assert r.status == 200, r.body
    record = backend.requests[-1]
    assert header(record, "X-App") == ["shop"] and header(record, "X-App-Id") == ["shop-key-0001"]
    assert_signed_by(record, b"payload", SIGNING["key"], SIGNING["secret"])


def test_app_client_acl(make_gateway, backend):
    doc = config(backend.address, [{"name": "spot", "location": "path", "origin": "request",
                                    "value": "lot"}], auth="app", bindings={})
    doc["apps"] = [dict(APPS[0], acl={"action": "DENY", "values": ["127.0.0.0/8"]}), APPS[1]]
    gw = make_gateway(doc)
    r = signed_request(gw.port, "GET", "/lots/q1")
    assert (r.status, r.json()["error_code"]) == (403, "APIC.0402")
    doc["apps"][0]["acl"] = {"action": "PERMIT", "values": ["10.0.0.1-10.0.0.9", "::1",
                                                           "127.0.0.1"]}
    gw.write_config(doc)
    gw.signal(__import__("signal").SIGHUP)
    import time
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = signed_request(gw.port, "GET", "/lots/q1")
        if r.status == 200:
            break
        time.sleep(0.1)
    assert r.status == 200, r.body
    assert len(backend.requests) == 1


def test_bad_parameters_are_refused_at_load(tmp_path):
    import subprocess
    import sys

    import yaml
    doc = config("127.0.0.1:1", [
        {"name": "Content-Length", "location": "header", "origin": "constant", "value": "1"},
        {"name": "X-A", "location": "header", "origin": "system", "value": "$context.nothing"},
        {"name": "q", "location": "query", "origin": "request", "value": "undeclared"}])
    doc["apis"][0]["params"][1]["required"] = True
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run([sys.executable, "-m", "tollgate", "validate", str(path)],
                         capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "apis[0].backend.params[0].name: 'Content-Length' cannot be set" in text
    assert "apis[0].backend.params[1].value: unknown system value '$context.nothing'" in text
    assert "apis[0].backend.params[2].value: unknown frontend parameter 'undeclared'" in text
    assert "apis[0].params[1].required" not in text, "frontend parameter checks are served"
