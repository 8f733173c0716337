"""IAM authentication end to end: JWTs in X-Auth-Token (keys in the document, or a JWK set
served over HTTP and rotated), and AK/SK signatures made with the vendor's SDK."""
from __future__ import annotations

import json
from pathlib import Path
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.gateway.test_app_auth import signed_request
from tests.support.client import request

# (IAM authentication (gateway/auth/iam.py, tokens.py) is Python in either form: CI runs this
# module in the compiled pass only)
pytestmark = pytest.mark.once

ISSUER = "https://iam.test"


def _pem(public) -> str:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(key, alg="RS256", kid=None, **claims):
    now = int(time.time())
    payload = {"sub": "alice", "account": "acme", "iss": ISSUER, "aud": "tollgate",
               "iat": now, "exp": now + 600}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def iam_config(backend_address, jwt_section):
    return {"version": 1, "groups": [{"name": "main"}],
            "iam": {"users": [{"name": "bob", "account": "builders", "access_key": "AK-BOB-0001",
                               "secret_key": "SK-BOB-0001-secret"}],
                    "jwt": jwt_section},
            "apis": [{"name": "iam", "group": "main", "method": "ANY", "path": "/echo/x",
                      "auth": "iam",
                      "backend": {"type": "http", "url": f"http://{backend_address}/echo/x",
                                  "params": [{"name": "X-User", "location": "header",
                                              "origin": "system", "value": "$context.userName"},
                                             {"name": "X-Account", "location": "header",
                                              "origin": "system",
                                              "value": "$context.accountName"}]},
                      "environments": {"RELEASE": {}}}]}


def header(record, name):
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


@pytest.fixture
def gw(make_gateway, backend, rsa_key, tmp_path):
    log = str(tmp_path / "access.log")
    section = {"issuer": ISSUER, "audience": "tollgate", "algorithms": ["RS256"],
               "keys": [_pem(rsa_key.public_key())], "leeway_s": 5}
    gateway = make_gateway(iam_config(backend.address, section), access_log=log)
    gateway.access_log_path = log
    return gateway


def test_a_valid_token_reaches_the_backend_as_its_user(gw, backend, rsa_key):
    r = request(gw.port, "GET", "/echo/x", {"X-Auth-Token": token(rsa_key),
                                            "X-User": "forged"})
    assert r.status == 200, r.body
    record = backend.requests[-1]
    assert (header(record, "X-User"), header(record, "X-Account")) == (["alice"], ["acme"])
    log = Path(gw.access_log_path)
    deadline = time.monotonic() + 5     # (the access log is written on the worker's tick)
    while time.monotonic() < deadline and not log.read_text():
        time.sleep(0.1)
    text = log.read_text()
    record = json.loads(text.splitlines()[-1])
    assert (record["user"], record["account"]) == ("alice", "acme")
    assert "eyJ" not in text, "no token in the access log"


@pytest.mark.parametrize("claims, says", [
    ({"exp": int(time.time()) - 60}, "token expired"),
    ({"nbf": int(time.time()) + 600}, "token not yet valid"),
    ({"iss": "https://evil.test"}, "wrong issuer"),
    ({"aud": "someone-else"}, "wrong audience"),
    ({"sub": None}, "token has no subject"),
], ids=["expired", "not-yet", "issuer", "audience", "no-subject"])
def test_a_bad_token_is_401_saying_why(gw, backend, rsa_key, claims, says):
    bad = token(rsa_key, **claims)
    r = request(gw.port, "GET", "/echo/x", {"X-Auth-Token": bad})
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0301"), r.body
    assert says in r.json()["error_msg"]
    assert bad not in r.body.decode()
    assert backend.requests == []


def test_forged_tokens_are_refused(gw, backend, rsa_key):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pem(rsa_key.public_key())
    forged = [token(other),                                         # another key
              jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, None, algorithm="none"),
              _hs256_with(pem, {"sub": "x", "iss": ISSUER, "aud": "tollgate",
                                "exp": int(time.time()) + 60}),     # algorithm confusion
              token(rsa_key)[:-4] + "AAAA",                         # tampered signature
              "not.a.token", "x" * 20000, ""]
    for value in forged:
        r = request(gw.port, "GET", "/echo/x", {"X-Auth-Token": value})
        assert (r.status, r.json()["error_code"]) == (401, "APIC.0301"), (value[:40], r.body)
    r = request(gw.port, "GET", "/echo/x")
    assert r.status == 401 and "no X-Auth-Token or Authorization" in r.json()["error_msg"]
    assert backend.requests == []
    gw.wait_metric("tollgate_auth_failures_total", 1, api="iam", type="iam", reason="missing")


def _hs256_with(secret: str, claims: dict) -> str:
    """A token signed HS256 with ``secret`` (made by hand: pyjwt refuses a PEM as a secret)."""
    import base64
    import hashlib
    import hmac

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")
    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), signing, hashlib.sha256).digest()
    return (signing + b"." + b64(mac)).decode()


def test_a_repeated_credential_is_refused(gw, backend, rsa_key):
    from tests.support.client import exchange
    good, other = token(rsa_key), token(rsa_key, sub="admin")
    for lines in ([f"X-Auth-Token: {good}", f"X-Auth-Token: {other}"],
                  [f"X-Auth-Token: {good}", "x-auth-token: forged"]):
        raw = ("GET /echo/x HTTP/1.1\r\nHost: gw\r\n" + "\r\n".join(lines)
               + "\r\n\r\n").encode()
        responses, _ = exchange(gw.port, raw)
        assert (responses[0].status, responses[0].json()["error_code"]) == (401, "APIC.0301")
        assert "x-auth-token is repeated" in responses[0].json()["error_msg"]
    r = signed_request(gw.port, path="/echo/x", key="AK-BOB-0001", secret="SK-BOB-0001-secret",
                       tamper=lambda raw: raw.replace(
                           b"\r\n\r\n", b"\r\nAuthorization: SDK-HMAC-SHA256 Access=AK-ADMIN\r\n\r\n"))
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0301")
    assert "authorization is repeated" in r.json()["error_msg"]
    assert backend.requests == []


def test_ak_sk_signatures_of_iam_users(gw, backend):
    r = signed_request(gw.port, path="/echo/x", key="AK-BOB-0001", secret="SK-BOB-0001-secret",
                       query=[("q", "1")])
    assert r.status == 200, r.body
    assert header(backend.requests[-1], "X-User") == ["bob"]
    assert header(backend.requests[-1], "X-Account") == ["builders"]
    r = signed_request(gw.port, "POST", "/echo/x", key="AK-BOB-0001",
                       secret="SK-BOB-0001-secret", body=b'{"a": 1}',
                       headers={"Content-Type": "application/json"},
                       tamper=lambda raw: raw.replace(b'{"a": 1}', b'{"a": 2}'))
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0301")
    assert "signature does not match" in r.json()["error_msg"]
    r = signed_request(gw.port, path="/echo/x", key="AK-NOBODY-01", secret="whatever-secret")
    assert r.status == 401 and "unknown access key" in r.json()["error_msg"]
    assert len(backend.requests) == 1


class JwksServer:
    """A real HTTP server of a JWK set that a test can rotate."""

    def __init__(self):
        self.keys = []
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, private, kid):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
        jwk.update(kid=kid, alg="ES256", use="sig")
        self.keys.append(jwk)


def test_a_jwks_url_is_fetched_and_followed_on_rotation(make_gateway, backend):
    server = JwksServer()
    first = ec.generate_private_key(ec.SECP256R1())
    server.publish(first, "k1")
    gw = make_gateway(iam_config(backend.address, {"issuer": ISSUER, "audience": "tollgate",
                                                   "algorithms": ["ES256"],
                                                   "jwks_url": server.url,
                                                   "jwks_refresh_interval_s": 1}))
    try:
        r = request(gw.port, "GET", "/echo/x",
                    {"X-Auth-Token": token(first, "ES256", "k1", sub="erin")})
        assert r.status == 200, r.body
        assert header(backend.requests[-1], "X-User") == ["erin"]
        fetched = server.fetches
        for _ in range(5):      # known key: no fetch
            assert request(gw.port, "GET", "/echo/x", {"X-Auth-Token": token(
                first, "ES256", "k1", sub="erin", jti=str(time.time()))}).status == 200
        assert server.fetches == fetched
        second = ec.generate_private_key(ec.SECP256R1())
        time.sleep(1.1)                 # (one fetch per jwks_refresh_interval_s at most)
        server.publish(second, "k2")    # the issuer rotates: the gateway learns k2 on first use
        r = request(gw.port, "GET", "/echo/x",
                    {"X-Auth-Token": token(second, "ES256", "k2", sub="frank")})
        assert r.status == 200, r.body
        assert header(backend.requests[-1], "X-User") == ["frank"]
        # an unknown kid right after: the refresh rate is bounded, the token refused
        stranger = ec.generate_private_key(ec.SECP256R1())
        r = request(gw.port, "GET", "/echo/x",
                    {"X-Auth-Token": token(stranger, "ES256", "k3")})
        assert (r.status, r.json()["error_code"]) == (401, "APIC.0301")
        assert server.fetches == fetched + 1, "one fetch for k2, none for k3 right after"
    finally:
        server.server.shutdown()
        server.server.server_close()


def test_an_unreachable_jwks_url_is_401_not_a_hang(make_gateway, backend):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = make_gateway(iam_config(backend.address, {"algorithms": ["ES256"],
                                                   "jwks_url": f"http://127.0.0.1:{port}/k"}))
    key = ec.generate_private_key(ec.SECP256R1())
    began = time.monotonic()
    r = request(gw.port, "GET", "/echo/x", {"X-Auth-Token": token(key, "ES256", "k1")})
    assert (r.status, r.json()["error_code"]) == (401, "APIC.0301")
    assert "signing keys unavailable" in r.json()["error_msg"]
    assert time.monotonic() - began < 4
    assert backend.requests == []
