"""IAM token verification (gateway.auth.tokens) with real keys and a real JWK set server.

Tokens are signed by pyjwt with keys made by cryptography; forged ones (alg confusion, alg
"none") are built by hand, since pyjwt rightly refuses to make them.  The JWK set is served by
an asyncio HTTP server on a free local port; each test runs its own event loop (asyncio.run).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.auth.tokens import MAX_TOKEN_BYTES, REASONS, Caller, JwtVerifier, TokenRejected
from gateway.config.model import IamJwt

SECRET = "s3cret-shared-between-iam-and-gw!"          # 33 bytes: enough for HS256
ISSUER = "https://iam.test"


# --------------------------------------------------------------------------------------------------
# Keys and tokens

@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key():
    return ed25519.Ed25519PrivateKey.generate()


def pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def rsa_jwk(private_key, kid=None, **extra) -> dict:
    jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, **({"kid": kid} if kid else {}), **extra}


def ec_jwk(private_key, kid=None, **extra) -> dict:
    jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, **({"kid": kid} if kid else {}), **extra}


def claims(**over):
    now = int(time.time())
    base = {"sub": "alice", "account": "acme", "iss": ISSUER, "iat": now, "exp": now + 3600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(key, alg="RS256", kid=None, **over) -> bytes:
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims(**over), key, algorithm=alg, headers=headers).encode()


def b64(data) -> bytes:
    if not isinstance(data, bytes):
        data = json.dumps(data).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def forge_hs256(secret: bytes, payload: dict) -> bytes:
    """An HS256 token made by hand (pyjwt refuses a PEM key as an HMAC secret)."""
    signing_input = b64({"alg": "HS256", "typ": "JWT"}) + b"." + b64(payload)
    return signing_input + b"." + b64(hmac.new(secret, signing_input, hashlib.sha256).digest())


def verifier(**config) -> JwtVerifier:
    kwargs = {k: config.pop(k) for k in list(config)
              if k in ("base_dir", "fetch_timeout_s", "min_refresh_interval_s", "cache_size",
                       "max_jwks_bytes", "clock")}
    return JwtVerifier(IamJwt(**config), **kwargs)


def rejected(v: JwtVerifier, token, reason: str, now=None) -> str:
    with pytest.raises(TokenRejected) as info:
        v.verify(token, now)
    assert info.value.reason == reason, (info.value.reason, info.value.message)
    assert info.value.reason in REASONS
    return info.value.message


# --------------------------------------------------------------------------------------------------
# Valid tokens

def test_rs256_token_with_a_pem_key_gives_the_caller(rsa_key):
    v = verifier(issuer=ISSUER, keys=(pem(rsa_key),))
    caller = v.verify(sign(rsa_key))
    assert isinstance(caller, Caller)
    assert (caller.user, caller.account) == ("alice", "acme")
    assert caller.claims["iss"] == ISSUER
    with pytest.raises(TypeError):          # shared through the cache: read-only
        caller.claims["sub"] = "mallory"
    assert not v.fetching


@pytest.mark.parametrize("extra, account", [
    ({"account": "acme"}, "acme"),
    ({"account": None, "domain": "dom-1"}, "dom-1"),
    ({"account": None, "domain": {"name": "dom-2", "id": "x"}}, "dom-2"),
    ({"account": 7, "domain": {"id": "x"}}, ""),
    ({"account": None}, ""),
])
def test_account_comes_from_account_then_domain(rsa_key, extra, account):
    v = verifier(keys=(pem(rsa_key),))
    assert v.verify(sign(rsa_key, **extra)).account == account


def test_es256_jwk_with_kid_and_eddsa_pem(ec_key, ed_key):
    v = verifier(algorithms=("ES256", "EdDSA"), keys=(ec_jwk(ec_key, "ec-1"), pem(ed_key)))
    assert v.verify(sign(ec_key, "ES256", kid="ec-1")).user == "alice"
    assert v.verify(sign(ed_key, "EdDSA", sub="bob")).user == "bob"


def test_one_rsa_key_serves_every_configured_rsa_algorithm(rsa_key):
    v = verifier(algorithms=("RS256", "PS256"), keys=(pem(rsa_key),))
    assert v.verify(sign(rsa_key, "PS256")).user == "alice"
    assert v.verify(sign(rsa_key, "RS256", sub="bob")).user == "bob"
    assert rejected(v, sign(rsa_key, "RS512"), "algorithm") == "algorithm not allowed"


def test_hs256_only_when_configured(rsa_key):
    v = verifier(algorithms=("HS256",), keys=(SECRET,))
    assert v.verify(sign(SECRET, "HS256")).user == "alice"
    rs_only = verifier(keys=(pem(rsa_key),))
    rejected(rs_only, sign(SECRET, "HS256"), "algorithm")
    # a plain string is a shared secret only when an HS* algorithm is configured
    with pytest.raises(ValueError) as info:
        verifier(keys=(SECRET,))
    assert info.value.args[0].startswith("iam.jwt.keys[0]: not a PEM public key or JWK (")
    assert SECRET not in str(info.value)


def test_certificate_ssh_and_indented_pem_keys(rsa_key, ec_key, ed_key):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iam.test")])
    start = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(rsa_key.public_key()).serial_number(1).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=1)).sign(rsa_key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    ssh = ed_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    indented = "\n".join("    " + line for line in pem(ec_key).splitlines())
    v = verifier(algorithms=("RS256", "ES256", "EdDSA"), keys=(cert_pem, ssh, indented))
    assert v.verify(sign(rsa_key)).user == "alice"
    assert v.verify(sign(ec_key, "ES256")).user == "alice"
    assert v.verify(sign(ed_key, "EdDSA")).user == "alice"


def test_an_oct_jwk_is_a_shared_secret():
    jwk = {"kty": "oct", "kid": "h1", "k": b64(SECRET.encode()).decode()}
    v = verifier(algorithms=("HS256",), keys=(jwk,))
    assert v.verify(sign(SECRET, "HS256", kid="h1")).user == "alice"


# --------------------------------------------------------------------------------------------------
# Time

def test_expired_with_and_without_leeway(rsa_key):
    t = int(time.time())
    token = sign(rsa_key, exp=t + 60)
    strict = verifier(keys=(pem(rsa_key),))
    assert rejected(strict, token, "expired", now=t + 65) == "token expired"
    lenient = verifier(keys=(pem(rsa_key),), leeway_s=10)
    assert lenient.verify(token, now=t + 65).user == "alice"
    rejected(lenient, token, "expired", now=t + 71)


def test_not_yet_valid_and_issued_in_the_future(rsa_key):
    t = int(time.time())
    v = verifier(keys=(pem(rsa_key),))
    assert rejected(v, sign(rsa_key, nbf=t + 100), "not_yet_valid", now=t) == "token not yet valid"
    rejected(v, sign(rsa_key, iat=t + 100), "not_yet_valid", now=t)
    rejected(v, sign(rsa_key, iat=10 ** 400), "not_yet_valid", now=t)     # (no overflow)
    lenient = verifier(keys=(pem(rsa_key),), leeway_s=200)
    assert lenient.verify(sign(rsa_key, nbf=t + 100, iat=t + 100), now=t).user == "alice"


@pytest.mark.parametrize("over, message", [
    ({"exp": None}, "token has no exp"),
    ({"exp": "4102444800"}, "token has an invalid exp"),
    ({"exp": float("inf")}, "token has an invalid exp"),
    ({"exp": float("nan")}, "token has an invalid exp"),
    ({"nbf": True}, "token has an invalid nbf"),
    ({"sub": None}, "token has no subject"),
    ({"sub": ""}, "token has no subject"),
    ({"sub": 42}, "invalid claims"),
])
def test_required_and_typed_claims(rsa_key, over, message):
    v = verifier(keys=(pem(rsa_key),))
    assert rejected(v, sign(rsa_key, **over), "claims") == message


# --------------------------------------------------------------------------------------------------
# Issuer and audience

def test_issuer(rsa_key):
    v = verifier(issuer=ISSUER, keys=(pem(rsa_key),))
    assert rejected(v, sign(rsa_key, iss="https://evil.test"), "issuer") == "wrong issuer"
    rejected(v, sign(rsa_key, iss=None), "issuer")
    # no issuer configured: any
    assert verifier(keys=(pem(rsa_key),)).verify(sign(rsa_key, iss="x")).user == "alice"


def test_audience(rsa_key):
    v = verifier(audience="gw", keys=(pem(rsa_key),))
    assert v.verify(sign(rsa_key, aud="gw")).user == "alice"
    assert v.verify(sign(rsa_key, aud=["other", "gw"], sub="bob")).user == "bob"
    assert rejected(v, sign(rsa_key, aud="other"), "audience") == "wrong audience"
    rejected(v, sign(rsa_key, aud=["a", "b"]), "audience")
    rejected(v, sign(rsa_key), "audience")                          # none in the token
    several = verifier(audience=("gw", "gw2"), keys=(pem(rsa_key),))
    assert several.verify(sign(rsa_key, aud=["x", "gw2"])).user == "alice"
    # no audience configured: the token's is not checked
    assert verifier(keys=(pem(rsa_key),)).verify(sign(rsa_key, aud="whatever")).user == "alice"


# --------------------------------------------------------------------------------------------------
# Algorithms, keys, signatures

def test_alg_not_allowed_and_alg_none(rsa_key, ec_key):
    v = verifier(keys=(pem(rsa_key),))
    rejected(v, sign(ec_key, "ES256"), "algorithm")
    unsigned = b64({"alg": "none", "typ": "JWT"}) + b"." + b64(claims()) + b"."
    rejected(v, unsigned, "algorithm")
    rejected(v, b64({"alg": "None"}) + b"." + b64(claims()) + b".", "algorithm")
    rejected(v, b64({"typ": "JWT"}) + b"." + b64(claims()) + b".", "algorithm")


def test_rsa_public_key_used_as_hmac_secret_is_refused(rsa_key):
    public_pem = pem(rsa_key)
    forged = forge_hs256(public_pem.encode(), claims())
    # HS256 not configured: refused by algorithm
    rejected(verifier(keys=(public_pem,)), forged, "algorithm")
    # HS256 configured too: the token can only be checked with the configured secret, never
    # with the RSA key, whatever it says
    both = verifier(algorithms=("RS256", "HS256"), keys=(public_pem, SECRET))
    assert rejected(both, forged, "signature") == "bad signature"
    assert both.verify(sign(rsa_key)).user == "alice"
    assert both.verify(sign(SECRET, "HS256", sub="bob")).user == "bob"
    # ... also when the token names the RSA key's kid
    named = verifier(algorithms=("RS256", "HS256"), keys=(rsa_jwk(rsa_key, "r1"), SECRET))
    header = b64({"alg": "HS256", "kid": "r1"})
    signing_input = header + b"." + b64(claims())
    for secret in (public_pem.encode(), json.dumps(rsa_jwk(rsa_key, "r1")).encode()):
        token = signing_input + b"." + b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
        rejected(named, token, "algorithm")


def test_tampered_payload_and_foreign_key(rsa_key, other_rsa_key):
    v = verifier(keys=(pem(rsa_key),))
    header, _, signature = sign(rsa_key).split(b".")
    tampered = header + b"." + b64(claims(sub="root")) + b"." + signature
    assert rejected(v, tampered, "signature") == "bad signature"
    rejected(v, sign(other_rsa_key), "signature")
    rejected(v, sign(rsa_key)[:-4] + b"AAAA", "signature")


def test_unknown_kid(rsa_key, ec_key):
    v = verifier(algorithms=("RS256", "ES256"), keys=(rsa_jwk(rsa_key, "r1"), ec_jwk(ec_key, "e1")))
    assert v.verify(sign(rsa_key, kid="r1")).user == "alice"
    assert rejected(v, sign(rsa_key, kid="r2"), "unknown_key") == "unknown signing key"
    rejected(v, sign(ec_key, "ES256", kid="r1"), "algorithm")     # r1 is an RSA key
    # without a kid the keys of the algorithm's type are tried
    assert v.verify(sign(ec_key, "ES256", sub="bob")).user == "bob"
    # a PEM key has no kid: it still checks tokens that name one
    pem_only = verifier(keys=(pem(rsa_key),))
    assert pem_only.verify(sign(rsa_key, kid="whatever")).user == "alice"


@pytest.mark.parametrize("token", [
    b"", b"abc", b"a.b", b"a.b.c.d", b"!!!.###.$$$", b"..", "tök.en.x",
    b64(b"not json") + b"." + b64(claims()) + b".c2ln",
    b64([1, 2]) + b"." + b64(claims()) + b".c2ln",
    b64({"alg": "RS256", "kid": 5}) + b"." + b64(claims()) + b".c2ln",
    b64({"alg": "RS256", "crit": ["exp"], "exp": 1}) + b"." + b64(claims()) + b".c2ln",
    b"x" * (MAX_TOKEN_BYTES + 1),
], ids=["empty", "1 part", "2 parts", "4 parts", "bad base64", "dots only", "non-ascii",
        "header not json", "header not object", "kid not string", "unknown crit", "huge"])
def test_garbage_is_malformed(rsa_key, token):
    v = verifier(keys=(pem(rsa_key),))
    assert rejected(v, token, "malformed") in ("malformed token", "token too large")


def test_huge_token_is_refused_before_decoding(rsa_key):
    v = verifier(keys=(pem(rsa_key),))
    token = sign(rsa_key, pad="x" * MAX_TOKEN_BYTES)
    assert rejected(v, token, "malformed") == "token too large"


def test_payload_not_an_object_is_malformed(rsa_key):
    v = verifier(keys=(pem(rsa_key),))
    token = jwt.api_jws.encode(b"[1]", rsa_key, algorithm="RS256").encode()
    rejected(v, token, "malformed")


# --------------------------------------------------------------------------------------------------
# The cache

def test_cache_hit_is_the_same_identity_until_exp(rsa_key):
    t = int(time.time())
    v = verifier(keys=(pem(rsa_key),))
    token = sign(rsa_key, exp=t + 60)
    first = v.verify(token, now=t)
    assert v.verify(token, now=t + 30) is first
    rejected(v, token, "expired", now=t + 60)
    # the expired entry was dropped: an earlier ``now`` verifies the token afresh
    assert v.verify(token, now=t + 1) is not first
    # a cached token is re-checked against nbf too
    early = sign(rsa_key, nbf=t, exp=t + 60)
    v.verify(early, now=t)
    rejected(v, early, "not_yet_valid", now=t - 10)


def test_cache_is_bounded_least_recently_used_first(rsa_key):
    v = verifier(keys=(pem(rsa_key),), cache_size=3)
    tokens = [sign(rsa_key, sub=f"user{i}") for i in range(5)]
    callers = [v.verify(tok) for tok in tokens[:3]]
    assert v.verify(tokens[0]) is callers[0]            # token 0 now the most recent
    v.verify(tokens[3])                                 # evicts token 1, the oldest
    assert len(v._cache) == 3
    assert v.verify(tokens[0]) is callers[0]
    assert v.verify(tokens[1]) is not callers[1]        # verified again (evicting token 2)
    assert v.verify(tokens[1]).user == "user1"
    assert v.verify(tokens[2]) is not callers[2]
    assert len(v._cache) == 3


def test_rejections_are_not_cached(rsa_key):
    v = verifier(keys=(pem(rsa_key),))
    header, payload, _ = sign(rsa_key).split(b".")
    rejected(v, header + b"." + payload + b".AAAA", "signature")
    assert len(v._cache) == 0


# --------------------------------------------------------------------------------------------------
# Configuration errors

def test_keys_file_relative_to_base_dir(tmp_path, rsa_key, ec_key):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text(json.dumps({"keys": [
        rsa_jwk(rsa_key, "r1", use="sig", alg="RS256"),
        ec_jwk(ec_key, "e1"),                                       # ES256: not configured
        {**rsa_jwk(rsa_key, "enc-1"), "use": "enc"},                # not for signatures
    ]}))
    v = verifier(keys_file="keys/jwks.json", base_dir=str(tmp_path))
    assert v.verify(sign(rsa_key, kid="r1")).user == "alice"
    # the keys not usable here were skipped, not loaded
    rejected(v, sign(rsa_key, kid="e1"), "unknown_key")
    rejected(v, sign(rsa_key, kid="enc-1"), "unknown_key")


def test_bad_keys_name_their_field(rsa_key):
    private_pem = rsa_key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError) as info:
        verifier(algorithms=("RS256", "HS512"), keys=(
            pem(rsa_key), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            private_pem, SECRET, {"kty": "RSA", "kid": "x"}, pem(weak),
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}, {"n": "x"},
            {**rsa_jwk(rsa_key), "d": "AQAB"}))
    assert info.value.args == (
        "iam.jwt.keys[1]: not a PEM public key or JWK (the PEM cannot be read)",
        "iam.jwt.keys[2]: a private key: give its public key",
        "iam.jwt.keys[3]: a shared secret of 33 bytes is too short for HS512 (at least 64 bytes)",
        "iam.jwt.keys[4]: not a valid RSA JWK",
        "iam.jwt.keys[5]: an RSA key of 1024 bits (at least 2048)",
        "iam.jwt.keys[6]: an EC P-256 key (for ES256), and iam.jwt.algorithms lists none "
        "of these",
        "iam.jwt.keys[7]: not a JWK (no kty)",
        "iam.jwt.keys[8]: a private key: give only the public key",
    )
    assert not any(SECRET in arg or "PRIVATE" in arg for arg in info.value.args)


def test_an_algorithm_without_a_key_is_an_error(rsa_key):
    with pytest.raises(ValueError) as info:
        verifier(algorithms=("RS256", "HS256", "ES256"), keys=(pem(rsa_key),))
    assert info.value.args == (
        "iam.jwt.algorithms: HS256 needs a shared secret in keys or keys_file",
        "iam.jwt.algorithms: ES256 needs an EC P-256 public key in keys or keys_file, "
        "or a jwks_url")
    # asymmetric keys may come from a jwks_url; shared secrets never do
    with pytest.raises(ValueError) as info:
        verifier(algorithms=("RS256", "HS256"), jwks_url="http://127.0.0.1:1/jwks")
    assert info.value.args == (
        "iam.jwt.algorithms: HS256 needs a shared secret in keys or keys_file",)


def test_other_configuration_errors(rsa_key):
    with pytest.raises(ValueError) as info:
        verifier(audience=(), keys=(pem(rsa_key),))
    assert info.value.args == ("iam.jwt.audience: give at least one audience (or none at all)",)
    with pytest.raises(ValueError) as info:
        verifier(jwks_url="ftp://iam.test/jwks")
    assert info.value.args == (
        "iam.jwt.jwks_url: expected a url starting with http:// or https://",)
    with pytest.raises(ValueError) as info:
        verifier(algorithms=("RS256", "none"), keys=(pem(rsa_key),))
    assert info.value.args == ("iam.jwt.algorithms: unsupported algorithm 'none'",)


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("{not json", "is not JSON (Expecting property name"),
    ('[{"kty": "RSA"}]', 'is not a JWK set (expected {"keys": [...]})'),
    ('{"keys": [{"kty": "RSA", "n": "@@", "e": "AQAB"}]}', ": keys[0]: not a valid RSA JWK"),
    ('{"keys": [{"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}]}',
     "holds no key usable with iam.jwt.algorithms (keys[0]: its use is 'enc', not 'sig')"),
])
def test_bad_keys_file_names_the_field(tmp_path, content, message):
    if content is not None:
        (tmp_path / "jwks.json").write_text(content)
    with pytest.raises(ValueError) as info:
        verifier(keys_file="jwks.json", base_dir=str(tmp_path))
    assert info.value.args[0].startswith("iam.jwt.keys_file: ")
    assert message in info.value.args[0]


# --------------------------------------------------------------------------------------------------
# jwks_url: a real HTTP server

class JwksServer:
    """An HTTP/1.1 server on a free local port serving ``body`` with ``status``.

    ``mode``: "normal"; "hang" (reads the request, never answers); "drip" (announces the body,
    then sends it a byte every 0.1 s); "chunked" (no Content-Length)."""

    def __init__(self, jwks: dict):
        self.set(jwks)
        self.status = 200
        self.mode = "normal"
        self.requests = 0
        self.handlers: set[asyncio.Task] = set()

    def set(self, jwks: dict) -> None:
        self.body = json.dumps(jwks).encode()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/jwks.json"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()

    async def serve(self, reader, writer):
        self.handlers.add(asyncio.current_task())
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            if self.mode == "hang":
                await asyncio.sleep(60)
            head = (f"HTTP/1.1 {self.status} Whatever\r\nContent-Type: application/json\r\n"
                    f"Connection: close\r\n")
            if self.mode == "chunked":
                writer.write(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
                for i in range(0, len(self.body), 1000):
                    part = self.body[i:i + 1000]
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(head.encode() + b"Content-Length: %d\r\n\r\n" % len(self.body))
                if self.mode == "drip":
                    for i in range(len(self.body)):
                        writer.write(self.body[i:i + 1])
                        await writer.drain()
                        await asyncio.sleep(0.1)
                else:
                    writer.write(self.body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class Clock:
    """A clock the test moves (for the refresh rate limit)."""

    def __init__(self):
        self.t = time.time()

    def __call__(self):
        return self.t


def jwks_verifier(url, clock=None, **kwargs) -> JwtVerifier:
    return verifier(algorithms=("ES256", "RS256"), jwks_url=url, clock=clock or Clock(), **kwargs)


def test_first_fetch_then_verify(ec_key):
    async def main():
        async with JwksServer({"keys": [ec_jwk(ec_key, "k1")]}) as server:
            v = jwks_verifier(server.url)
            assert v.fetching
            token = sign(ec_key, "ES256", kid="k1")
            assert v.verify(token) is None              # no key set yet: a fetch is due
            await v.refresh()
            assert v.verify(token).user == "alice"
            assert server.requests == 1
            await v.aclose()
    asyncio.run(main())


def test_first_fetch_for_a_token_without_kid(ec_key):
    async def main():
        async with JwksServer({"keys": [ec_jwk(ec_key)]}) as server:
            v = jwks_verifier(server.url)
            token = sign(ec_key, "ES256")
            assert v.verify(token) is None
            await v.refresh()
            assert v.verify(token).user == "alice"
    asyncio.run(main())


def test_kid_rotation_and_rate_limit(ec_key, rsa_key):
    new_key = ec.generate_private_key(ec.SECP256R1())

    async def main():
        async with JwksServer({"keys": [ec_jwk(ec_key, "k1"), rsa_jwk(rsa_key, "r1")]}) as server:
            clock = Clock()
            v = jwks_verifier(server.url, clock)
            await v.refresh()
            old = sign(ec_key, "ES256", kid="k1")
            assert v.verify(old).user == "alice"
            cached_rsa = sign(rsa_key, kid="r1")
            assert v.verify(cached_rsa).user == "alice"
            # the issuer rotates: k2 replaces r1
            server.set({"keys": [ec_jwk(ec_key, "k1"), ec_jwk(new_key, "k2")]})
            rotated = sign(new_key, "ES256", kid="k2", sub="bob")
            # just fetched: a new kid within the interval is unknown (no fetch)
            assert rejected(v, rotated, "unknown_key") == "unknown signing key"
            assert server.requests == 1
            clock.t += 31
            assert v.verify(rotated) is None
            await v.refresh()
            assert v.verify(rotated).user == "bob"
            assert server.requests == 2
            # and again right away: rate limited, whatever the kid
            rejected(v, sign(new_key, "ES256", kid="k3"), "unknown_key")
            await v.refresh()                           # returns at once, nothing fetched
            assert server.requests == 2
            # k1 is still published: its token stays cached; r1 was withdrawn: its cached
            # token is dropped and refused
            assert v.verify(old).user == "alice"
            rejected(v, cached_rsa, "unknown_key")
    asyncio.run(main())


def test_concurrent_refreshes_share_one_fetch(ec_key):
    async def main():
        async with JwksServer({"keys": [ec_jwk(ec_key, "k1")]}) as server:
            v = jwks_verifier(server.url)
            await asyncio.gather(*(v.refresh() for _ in range(5)))
            assert server.requests == 1
            assert v.verify(sign(ec_key, "ES256", kid="k1")).user == "alice"
    asyncio.run(main())


def test_server_down(ec_key):
    with socket.socket() as s:                          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main():
        v = jwks_verifier(f"http://127.0.0.1:{port}/jwks.json", fetch_timeout_s=1.0)
        token = sign(ec_key, "ES256", kid="k1")
        assert v.verify(token) is None
        with pytest.raises(TokenRejected) as info:
            await v.refresh()
        assert (info.value.reason, info.value.message) == ("unknown_key",
                                                           "signing keys unavailable")
        # the failed first fetch counts for the rate limit
        assert rejected(v, token, "unknown_key") == "signing keys unavailable"
    asyncio.run(main())


@pytest.mark.parametrize("mode", ["hang", "drip"])
def test_slow_server_times_out(ec_key, mode):
    async def main():
        async with JwksServer({"keys": [ec_jwk(ec_key, "k1")]}) as server:
            server.mode = mode
            v = jwks_verifier(server.url, fetch_timeout_s=0.3)
            start = time.monotonic()
            with pytest.raises(TokenRejected) as info:
                await v.refresh()
            elapsed = time.monotonic() - start
            assert info.value.reason == "unknown_key"
            assert 0.25 < elapsed < 1.5, elapsed
    asyncio.run(main())


@pytest.mark.parametrize("mode", ["normal", "chunked"])
def test_oversize_body_is_refused(ec_key, mode):
    async def main():
        keys = [ec_jwk(ec_key, f"k{i}") for i in range(50)]     # about 10 KB
        async with JwksServer({"keys": keys}) as server:
            server.mode = mode
            v = jwks_verifier(server.url, max_jwks_bytes=4000)
            with pytest.raises(TokenRejected):
                await v.refresh()
            rejected(v, sign(ec_key, "ES256", kid="k1"), "unknown_key")
            roomy = jwks_verifier(server.url, max_jwks_bytes=100_000)
            await roomy.refresh()
            assert roomy.verify(sign(ec_key, "ES256", kid="k1")).user == "alice"
    asyncio.run(main())


@pytest.mark.parametrize("status", [500, 404, 302, 204])
def test_non_200_is_refused(ec_key, status):
    async def main():
        async with JwksServer({"keys": [ec_jwk(ec_key, "k1")]}) as server:
            server.status = status
            v = jwks_verifier(server.url)
            with pytest.raises(TokenRejected):
                await v.refresh()
    asyncio.run(main())


@pytest.mark.parametrize("body", [
    b"<html>not json</html>",
    b'{"no": "keys"}',
    # shared secrets and private keys are never taken from a url
    json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": b64(SECRET.encode()).decode()}]}).encode(),
], ids=["not json", "not a set", "only a secret"])
def test_unusable_bodies_are_refused(body):
    async def main():
        async with JwksServer({}) as server:
            server.body = body
            v = jwks_verifier(server.url)
            with pytest.raises(TokenRejected):
                await v.refresh()
    asyncio.run(main())


def test_private_jwk_from_the_url_is_skipped(ec_key, caplog):
    private = ECAlgorithm.to_jwk(ec_key, as_dict=True)
    other = ec.generate_private_key(ec.SECP256R1())

    async def main():
        async with JwksServer({"keys": [{**private, "kid": "p"}, ec_jwk(other, "k")]}) as server:
            v = jwks_verifier(server.url)
            with caplog.at_level(logging.WARNING, logger="tollgate.auth"):
                await v.refresh()
            rejected(v, sign(ec_key, "ES256", kid="p"), "unknown_key")
            assert v.verify(sign(other, "ES256", kid="k")).user == "alice"
            assert "keys[0] (kid 'p'): a private key" in caplog.text
            assert private["d"] not in caplog.text
    asyncio.run(main())


def test_keys_are_kept_after_a_failed_refresh_and_failures_are_logged_once(ec_key, caplog):
    async def main():
        async with JwksServer({"keys": [ec_jwk(ec_key, "k1")]}) as server:
            clock = Clock()
            v = jwks_verifier(server.url, clock)
            await v.refresh()
            server.status = 503
            server.body = b"SECRET-BODY-DETAIL"
            with caplog.at_level(logging.INFO, logger="tollgate.auth"):
                for _ in range(3):
                    clock.t += 31
                    with pytest.raises(TokenRejected):
                        await v.refresh()
                assert server.requests == 4
                assert v.verify(sign(ec_key, "ES256", kid="k1", sub="bob")).user == "bob"
                failures = [r for r in caplog.records if "cannot fetch" in r.getMessage()]
                assert len(failures) == 1
                assert "status 503" in failures[0].getMessage()
                server.status = 200
                server.set({"keys": [ec_jwk(ec_key, "k1")]})
                clock.t += 31
                await v.refresh()
                assert "can be fetched again" in caplog.text
                server.status = 500
                clock.t += 31
                with pytest.raises(TokenRejected):
                    await v.refresh()
                failures = [r for r in caplog.records if "cannot fetch" in r.getMessage()]
                assert len(failures) == 2               # a new incident
            assert "SECRET-BODY-DETAIL" not in caplog.text
    asyncio.run(main())


def test_a_waiter_cancelled_does_not_cancel_the_shared_fetch(ec_key):
    async def main():
        async with JwksServer({"keys": [ec_jwk(ec_key, "k1")]}) as server:
            v = jwks_verifier(server.url)
            first = asyncio.create_task(v.refresh())
            second = asyncio.create_task(v.refresh())
            await asyncio.sleep(0)
            first.cancel()
            await second
            assert v.verify(sign(ec_key, "ES256", kid="k1")).user == "alice"
            assert server.requests == 1
    asyncio.run(main())


def test_aclose_cancels_a_fetch_under_way(ec_key):
    async def main():
        async with JwksServer({"keys": [ec_jwk(ec_key, "k1")]}) as server:
            server.mode = "hang"
            v = jwks_verifier(server.url)
            waiter = asyncio.create_task(v.refresh())
            await asyncio.sleep(0.05)
            await v.aclose()
            with pytest.raises((asyncio.CancelledError, TokenRejected)):
                await waiter
            with pytest.raises(TokenRejected):
                await v.refresh()
    asyncio.run(main())
