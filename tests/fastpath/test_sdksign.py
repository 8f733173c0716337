"""fastpath.sdksign against the vendor's own signer (huaweicloudsdkcore 3.1.219): requests signed
by the SDK, sent as bytes, parsed by fastpath.http1 (both forms) and verified; then each part
tampered with, and the refusal must name the check that failed."""
from __future__ import annotations

import calendar
import hashlib
import time
from urllib.parse import quote

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from fastpath import load
from fastpath.sdksign import SignatureError

KEY, SECRET = "app-key-1", "s3cr3t-of-the-app"
HOST = "127.0.0.1:8080"


def sdk_sign(method="GET", path="/v1/items", query=(), headers=None, body=b"", date=None):
    headers = dict(headers or {})
    if date is not None:
        headers["X-Sdk-Date"] = date
    req = SdkRequest(method=method, schema="http", host=HOST, resource_path=path,
                     query_params=list(query), header_params=headers, body=body)
    return Signer(BasicCredentials(KEY, SECRET)).sign(req)


def wire(signed, method=None, body=None, drop=(), extra=()) -> bytes:
    """The request the SDK's client would send (its path percent-encoded as HTTP clients do)."""
    target = quote(signed.uri, safe="/%?&=~!$'()*+,;:@")
    lines = [f"{method or signed.method} {target} HTTP/1.1"]
    for name, value in signed.header_params.items():
        if name.lower() not in drop:
            lines.append(f"{name}: {value}")
    lines += list(extra)
    data = signed.body if body is None else body
    if data:
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (data or b"")


@pytest.fixture(params=["pure", "compiled"])
def http1(request):
    """The parser and the signature check, both in one form (the same form as the gateway
    runs them together)."""
    try:
        return (load("http1", request.param == "compiled"),
                load("sdksign", request.param == "compiled"))
    except ImportError:
        pytest.skip("the compiled form is not built")


def check(forms, raw: bytes, now=None, secret=SECRET.encode()):
    http1, sdksign = forms
    parser = http1.RequestParser()
    parser.feed(raw)
    assert parser.next() == http1.HEAD, parser.error_message
    head = parser.head
    body = b""
    while True:
        event = parser.next()
        if event == http1.BODY:
            body += parser.body
        elif event == http1.END:
            break
        else:
            raise AssertionError(f"event {event}")
    target = head.target()
    path, _, query = target.partition(b"?")
    signed = sdksign.parse_authorization(head.get(b"authorization"))
    sdksign.verify(head, head.method.encode(), path, query, sdksign.prepare_secret(secret), signed,
                   time.time() if now is None else now,
                   hashlib.sha256(body).hexdigest().encode() if body else None, bool(body))
    return signed


ODD_QUERIES = [
    [("b", "2"), ("a", "1")],
    [("a", "2"), ("a", "1"), ("a", "")],                      # repeated keys, an empty value
    [("q", "a b+c"), ("plus", "+"), ("space", " ")],
    [("unicode", "你好"), ("é", "ü"), ("z", "ß")],             # non-ASCII keys sort decoded
    [("reserved", "!*'();:@&=+$,/?#[]"), ("pct", "%41%")],
    [("k", "v~-._")],
]


@pytest.mark.parametrize("query", ODD_QUERIES, ids=range(len(ODD_QUERIES)))
def test_get_with_odd_queries(http1, query):
    check(http1, wire(sdk_sign(query=query)))


@pytest.mark.parametrize("path", ["/", "/v1/items/42", "/v1/a%20b/c", "/v1/%E4%BD%A0%E5%A5%BD",
                                  "/v1/a~b-c_d.e", "/v1/x%2Fy/z", "/trailing/"])
def test_paths_with_encoded_characters(http1, path):
    check(http1, wire(sdk_sign(path=path)))


def test_post_json_and_non_json_bodies(http1):
    check(http1, wire(sdk_sign("POST", "/v1/orders", headers={"Content-Type": "application/json"},
                               body=b'{"hello": "world"}')))
    signed = sdk_sign("PUT", "/v1/blob", headers={"Content-Type": "application/octet-stream"},
                      body=bytes(range(256)) * 10)
    assert signed.header_params["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    check(http1, wire(signed))


def test_head_and_custom_signed_headers(http1):
    check(http1, wire(sdk_sign("HEAD", "/v1/x", headers={"X-Custom": "  padded  ",
                                                         "X-Other": "v"})))


def test_unsigned_payload_on_an_empty_body_hashes_the_empty_string(http1):
    check(http1, wire(sdk_sign("DELETE", "/v1/x",
                               headers={"Content-Type": "text/plain"})))


# -- tampering ---------------------------------------------------------------------------------------

def refused(http1, raw, **kwargs) -> str:
    with pytest.raises(SignatureError) as error:
        check(http1, raw, **kwargs)
    reason = error.value.reason
    assert SECRET not in reason and "Signature=" not in reason
    return reason


BODY = b'{"n": 1}'


def signed_post():
    return sdk_sign("POST", "/v1/orders", query=[("a", "1")],
                    headers={"Content-Type": "application/json", "X-Tenant": "t1"}, body=BODY)


def test_tampered_parts_are_refused_by_the_signature(http1):
    good = wire(signed_post())
    check(http1, good)
    tampered = {
        "method": good.replace(b"POST ", b"PUT ", 1),
        "path": good.replace(b"/v1/orders", b"/v1/orderz", 1),
        "query": good.replace(b"?a=1", b"?a=2", 1),
        "header": good.replace(b"X-Tenant: t1", b"X-Tenant: t2", 1),
        "body": good[:-len(BODY)] + b'{"n": 2}',
    }
    for part, raw in tampered.items():
        assert refused(http1, raw) == "signature does not match the request", part


def test_other_refusals_say_which_check_failed(http1):
    signed = signed_post()
    good = wire(signed)
    assert "more than 15 minutes" in refused(http1, good, now=time.time() + 16 * 60)
    assert "more than 15 minutes" in refused(http1, good, now=time.time() - 16 * 60)
    assert refused(http1, good, secret=b"another secret") == "signature does not match the request"
    auth = signed.header_params["Authorization"]
    dropped = auth.replace("SignedHeaders=", "SignedHeaders=").replace(";x-tenant", "")
    assert "does not match" in refused(http1, good.replace(auth.encode(), dropped.encode()))
    assert "missing" in refused(http1, wire(signed, drop=("x-tenant",)))
    assert "repeated" in refused(http1, wire(signed, extra=("X-Tenant: t1",)))
    no_date = auth.replace("x-sdk-date;", "")
    assert "X-Sdk-Date must be a signed header" in refused(
        http1, good.replace(auth.encode(), no_date.encode()))
    assert "malformed" in refused(http1, good.replace(auth.encode(), b"SDK-HMAC-SHA256 Access=x"))


def test_the_date_window_is_fifteen_minutes_either_way(http1):
    date = "20260101T120000Z"
    at = calendar.timegm((2026, 1, 1, 12, 0, 0, 0, 0, 0))
    raw = wire(sdk_sign(date=date))
    for offset in (-15 * 60, 0, 15 * 60):
        check(http1, raw, now=at + offset)
    for offset in (-15 * 60 - 1, 15 * 60 + 1):
        assert "15 minutes" in refused(http1, raw, now=at + offset)


@pytest.mark.parametrize("value", [b"", b"HMAC-SHA256 Access=a, SignedHeaders=b, Signature=c",
                                   b"SDK-HMAC-SHA256 Access=a",
                                   b"SDK-HMAC-SHA256 Access=a, SignedHeaders=B;a, Signature=" + b"0" * 64,
                                   b"SDK-HMAC-SHA256 Access=a, SignedHeaders=b;a, Signature=" + b"0" * 64,
                                   b"SDK-HMAC-SHA256 Access=a, SignedHeaders=a, Signature=xyz",
                                   b"SDK-HMAC-SHA256 Access=a, Access=b, SignedHeaders=a, Signature=" + b"0" * 64])
def test_malformed_authorization_values_are_refused(http1, value):
    with pytest.raises(SignatureError):
        http1[1].parse_authorization(value)
