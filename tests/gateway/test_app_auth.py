"""APP authentication end to end: clients sign with the vendor's SDK (huaweicloudsdkcore), the
real gateway checks, a real backend records what reached it."""
from __future__ import annotations

import socket
import time
from urllib.parse import quote

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from tests.conftest import proxy_config
from tests.support.client import exchange

SHOP_CODE = "shop-code-" + "c" * 60
APPS = [{"name": "shop", "key": "shop-key-0001", "secret": "shop-secret-0001",
         "app_codes": [SHOP_CODE]},
        {"name": "other", "key": "other-key-0001", "secret": "other-secret-0001",
         "app_codes": ["other-code-" + "o" * 60]}]


def app_config(backend_address, **api_options):
    doc = proxy_config(backend_address)
    doc["apps"] = APPS
    api = doc["apis"][0]
    api["auth"] = "app"
    api.update(api_options)
    api["environments"] = {"RELEASE": {"apps": ["shop"]}}
    return doc


def signed_request(port, method="GET", path="/echo/x", query=(), headers=None, body=b"",
                   key="shop-key-0001", secret="shop-secret-0001", tamper=None):
    req = SdkRequest(method=method, schema="http", host=f"127.0.0.1:{port}", resource_path=path,
                     query_params=list(query), header_params=dict(headers or {}), body=body)
    signed = Signer(BasicCredentials(key, secret)).sign(req)
    lines = [f"{method} {quote(signed.uri, safe='/%?&=~!$()*+,;:@')} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in signed.header_params.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    if tamper is not None:
        raw = tamper(raw)
    responses, _ = exchange(port, raw, timeout=5, check_close=False)
    assert responses, "no answer"
    return responses[0]


@pytest.fixture
def gw(make_gateway, backend):
    return make_gateway(app_config(backend.address))


def test_signed_get_and_post_reach_the_backend(gw, backend):
    r = signed_request(gw.port, query=[("b", "2"), ("a", "x y"), ("u", "你好")])
    assert r.status == 200, r.body
    body = b'{"order": 1}' * 1000
    r = signed_request(gw.port, "POST", "/echo/orders", headers={"Content-Type": "application/json"},
                       body=body)
    assert r.status == 200, r.body
    assert r.json()["body_length"] == len(body)
    r = signed_request(gw.port, "PUT", "/echo/blob", headers={"Content-Type": "application/octet-stream"},
                       body=bytes(range(256)) * 100)
    assert r.status == 200, r.body
    assert len(backend.requests) == 3


@pytest.mark.parametrize("what, tamper, code, says", [
    ("no credentials", lambda raw: raw.replace(b"Authorization:", b"X-Nothing:"), "APIC.0303",
     "no Authorization"),
    ("path", lambda raw: raw.replace(b"/echo/x", b"/echo/y", 1), "APIC.0303", "does not match"),
    ("method", lambda raw: raw.replace(b"GET ", b"DELETE ", 1), "APIC.0303", "does not match"),
    ("a signed header", lambda raw: raw.replace(b"X-Tenant: t1", b"X-Tenant: t2"), "APIC.0303",
     "does not match"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_tampered_request_never_reaches_the_backend(gw, backend, what, tamper, code, says):
    r = signed_request(gw.port, headers={"X-Tenant": "t1"}, tamper=tamper)
    assert (r.status, r.json()["error_code"]) == (401, code), r.body
    assert says in r.json()["error_msg"]
    assert "shop-secret" not in r.body.decode()
    assert backend.requests == []


def test_a_tampered_body_is_held_back_and_refused(gw, backend):
    body = b'{"amount": 100}'
    r = signed_request(gw.port, "POST", "/echo/pay", headers={"Content-Type": "application/json"},
                       body=body, tamper=lambda raw: raw.replace(b'"amount": 100', b'"amount": 900'))
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0303")
    assert backend.requests == [], "a request whose body was tampered with reached the backend"


def test_repeated_credentials_and_a_body_other_than_the_declared_hash_are_refused(gw, backend):
    r = signed_request(gw.port, tamper=lambda raw: raw.replace(
        b"\r\n\r\n", b"\r\nAuthorization: SDK-HMAC-SHA256 Access=other-key-0001\r\n\r\n"))
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0303")
    assert "authorization is repeated" in r.json()["error_msg"]
    # the SDK signs the declared hash; the body that comes must be the one it names
    import hashlib
    declared = hashlib.sha256(b'{"amount": 100}').hexdigest()
    r = signed_request(gw.port, "POST", "/echo/pay", body=b'{"amount": 100}',
                       headers={"Content-Type": "application/json",
                                "X-Sdk-Content-Sha256": declared},
                       tamper=lambda raw: raw.replace(b'"amount": 100', b'"amount": 900'))
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0303")
    assert "X-Sdk-Content-Sha256 does not match the body" in r.json()["error_msg"]
    assert backend.requests == []
    r = signed_request(gw.port, "POST", "/echo/pay", body=b'{"amount": 100}',
                       headers={"Content-Type": "application/json",
                                "X-Sdk-Content-Sha256": declared})
    assert r.status == 200, r.body


def test_unknown_key_wrong_secret_and_unauthorized_app(gw, backend):
    r = signed_request(gw.port, key="nobody-key-01", secret="whatever-secret")
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0303")
    assert "unknown app key" in r.json()["error_msg"]
    r = signed_request(gw.port, secret="shop-secret-9999")
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0303")
    r = signed_request(gw.port, key="other-key-0001", secret="other-secret-0001")
    assert (r.status, r.json()["error_code"]) == (403, "APIC.0304")
    assert backend.requests == []


def test_a_stale_date_is_refused_before_the_body_is_read(gw, backend):
    old = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 20 * 60))
    r = signed_request(gw.port, headers={"X-Sdk-Date": old})
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0303")
    assert "15 minutes" in r.json()["error_msg"]
    # with a body announced and not sent: answered at once, not after the body timeout
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        req = SdkRequest(method="POST", schema="http", host=f"127.0.0.1:{gw.port}",
                         resource_path="/echo/x", query_params=[],
                         header_params={"X-Sdk-Date": old, "Content-Type": "application/json"},
                         body=b"{}")
        signed = Signer(BasicCredentials("shop-key-0001", "shop-secret-0001")).sign(req)
        head = "\r\n".join([f"POST /echo/x HTTP/1.1"] + [f"{k}: {v}" for k, v in signed.header_params.items()]
                           + ["Content-Length: 1000000"]) + "\r\n\r\n"
        sock.sendall(head.encode("latin-1"))
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401 ")
    assert backend.requests == []


def plain(port, headers):
    lines = ["GET /echo/plain HTTP/1.1", "Host: gw.test"] + [f"{k}: {v}" for k, v in headers.items()]
    responses, _ = exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())
    return responses[0]


def test_app_codes_and_key_headers_only_where_enabled(make_gateway, backend):
    off = make_gateway(app_config(backend.address))
    assert plain(off.port, {"X-Apig-AppCode": SHOP_CODE}).status == 401
    assert plain(off.port, {"X-HW-ID": "shop-key-0001", "X-HW-AppKey": "shop-secret-0001"}).status == 401
    assert backend.requests == []
    on = make_gateway(app_config(backend.address, app_code_auth=True, app_api_key=True))
    assert plain(on.port, {"X-Apig-AppCode": SHOP_CODE}).status == 200
    assert plain(on.port, {"X-HW-ID": "shop-key-0001", "X-HW-AppKey": "shop-secret-0001"}).status == 200
    assert len(backend.requests) == 2
    # wrong code, wrong secret, unknown key: 401 saying so; another app's code: 403
    for headers, status, says in [
            ({"X-Apig-AppCode": SHOP_CODE + "x"}, 401, "unknown AppCode"),
            ({"X-HW-ID": "shop-key-0001", "X-HW-AppKey": "shop-secret-0002"}, 401, "wrong app key"),
            ({"X-HW-ID": "nobody-key-01", "X-HW-AppKey": "shop-secret-0001"}, 401, "wrong app key"),
            ({"X-HW-ID": "shop-key-0001"}, 401, "wrong app key"),
            ({"X-Apig-AppCode": "other-code-" + "o" * 60}, 403, "not authorized")]:
        r = plain(on.port, headers)
        assert r.status == status and says in r.json()["error_msg"], (headers, r.body)
        assert "shop-secret" not in r.body.decode() and SHOP_CODE not in r.body.decode()
    assert len(backend.requests) == 2


def test_the_access_log_names_the_app_and_no_credential(make_gateway, backend, tmp_path):
    import json
    log_path = tmp_path / "access.log"
    gw = make_gateway(app_config(backend.address, app_code_auth=True), access_log=str(log_path))
    assert signed_request(gw.port).status == 200
    assert plain(gw.port, {"X-Apig-AppCode": SHOP_CODE}).status == 200
    assert signed_request(gw.port, secret="shop-secret-9999").status == 401
    deadline = time.monotonic() + 5
    while len(log_path.read_text().splitlines() if log_path.exists() else []) < 3:
        assert time.monotonic() < deadline, "the access log did not get three lines"
        time.sleep(0.05)
    text = log_path.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert [(r["status"], r.get("app")) for r in records] == [(200, "shop"), (200, "shop"),
                                                              (401, None)]
    for secret in ("shop-secret", SHOP_CODE, "shop-key-0001", "Signature"):
        assert secret not in text


def test_refusals_are_counted_by_reason(gw, backend):
    signed_request(gw.port, tamper=lambda raw: raw.replace(b"Authorization:", b"X-Nothing:"))
    signed_request(gw.port, key="nobody-key-01", secret="whatever-secret")
    signed_request(gw.port, secret="shop-secret-9999")
    signed_request(gw.port, secret="shop-secret-9999")
    old = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 20 * 60))
    signed_request(gw.port, headers={"X-Sdk-Date": old})
    signed_request(gw.port, key="other-key-0001", secret="other-secret-0001")
    body = b'{"a": 1}'
    signed_request(gw.port, "POST", "/echo/p", headers={"Content-Type": "application/json"},
                   body=body, tamper=lambda raw: raw.replace(b'{"a": 1}', b'{"a": 2}'))
    for reason, n in (("missing", 1), ("unknown_credential", 1), ("signature", 3), ("date", 1),
                      ("not_authorized", 1)):
        gw.wait_metric("tollgate_auth_failures_total", n, api="all", env="RELEASE", type="app",
                       reason=reason)
    assert backend.requests == []
