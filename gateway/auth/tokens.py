"""IAM token authentication: ``X-Auth-Token`` JWTs checked against configured or fetched keys.

A :class:`JwtVerifier` is built once per configuration (``iam.jwt``) and answers one question per
request, synchronously and without I/O: who is this token's caller (a :class:`Caller`), or why is
it refused (a :class:`TokenRejected`, whose ``reason`` is a short class for metrics and whose
``message`` is safe to send to the client: it never repeats the token, a key or a secret).

Security decisions, and why:

* **Keys are typed.**  Every key is turned, when it is loaded, into one pyjwt ``PyJWK`` per
  algorithm it may verify (an RSA key: RS*/PS*; an EC key: the one ES* of its curve; an OKP key:
  EdDSA; a shared secret: HS*), restricted to ``iam.jwt.algorithms`` and to the JWK's own ``alg``.
  A token's ``alg`` only ever selects among those, so a public key can never be used as an HMAC
  secret (the classic RS256 -> HS256 confusion), whatever the token's header says.
* **The allowed algorithms are the configured ones**, never the token's: ``none`` and anything
  not listed is refused before a key is looked at.  Keys embedded in or pointed at by the token
  (``jwk``, ``jku``, ``x5u``, ``x5c``) are ignored.
* **Shared secrets only come from the configuration** (``keys`` or ``keys_file``), never from
  ``jwks_url``: a secret published at a URL is no secret, and accepting one would let whoever
  controls that URL mint tokens with a key of their choosing.
* **Weak keys are refused at load**: RSA under 2048 bits, HMAC secrets shorter than the hash
  (RFC 7518 section 3.2), private keys (a gateway needs only public keys; one in its
  configuration is a leak waiting to happen).
* **Time is checked here, not by pyjwt**, so that ``now`` can be given (the cache re-checks it)
  and so that ``exp`` is required, and must be a finite number (JSON ``Infinity`` would make a
  token eternal).

Costs: a token's first check is one signature verification (RSA-2048 some tens of microseconds,
ECDSA P-256 about a hundred), later checks of the same token are a dict lookup in a bounded LRU
cache.  Only verified tokens enter the cache, so it cannot be filled by an attacker without
valid tokens; its memory is about ``cache_size`` times (token + its claims).

Key fetching (``jwks_url``) is the only I/O, done by :meth:`JwtVerifier.refresh` on the event
loop.  The stage calls ``verify``; on ``None`` it awaits ``refresh()`` and calls ``verify`` once
more (a second ``None`` is to be treated as an unknown key).  Fetches are shared between
concurrent callers and rate limited, so unknown ``kid`` values sent by anybody cost at most one
fetch per ``min_refresh_interval_s``.

Not thread-safe: one verifier belongs to one event loop (the worker's), like the rest of a
snapshot.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import logging
import math
import os
import ssl
import time
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

__all__ = ["TokenRejected", "Caller", "JwtVerifier", "REASONS", "MAX_TOKEN_BYTES"]

log = logging.getLogger("tollgate.auth")
# httpx logs every request's URL at INFO: a key server's URL may carry credentials
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

#: every ``TokenRejected.reason`` (for metrics that are declared up front)
REASONS = ("malformed", "expired", "not_yet_valid", "issuer", "audience", "algorithm",
           "unknown_key", "signature", "claims")

#: a token longer than this is refused before anything is decoded (real ones are 1-2 KB; the
#: bound caps the work and memory an unauthenticated request can cost)
MAX_TOKEN_BYTES = 16 * 1024

#: a token without ``kid`` is tried against at most this many keys of its algorithm's type:
#: every try is a signature verification an unauthenticated client can make us do
MAX_KEYS_TRIED = 4

_RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_HMAC_ALGS = ("HS256", "HS384", "HS512")
_EC_CURVE_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES = ("Ed25519", "Ed448")
_KNOWN_ALGS = frozenset(_RSA_ALGS + _HMAC_ALGS + tuple(_EC_CURVE_ALG.values()) + ("EdDSA",))
#: RFC 7518 section 3.2: an HMAC key at least as long as the hash output
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA_MIN_BITS = 2048
#: what each algorithm needs, for the error naming an algorithm no key serves
_NEEDS = {**{a: "an RSA public key" for a in _RSA_ALGS},
          **{alg: f"an EC {crv} public key" for crv, alg in _EC_CURVE_ALG.items()},
          "EdDSA": "an Ed25519 (or Ed448) public key"}


class TokenRejected(Exception):
    """A token refused: ``reason`` (one of :data:`REASONS`) for metrics, ``message`` for the
    client.  Neither ever contains the token, a key or a secret."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"TokenRejected({self.reason!r}, {self.message!r})"


class Caller:
    """A verified identity: ``user`` (the ``sub`` claim), ``account`` (``account``, else
    ``domain`` or ``domain.name``, else ``""``) and the token's ``claims``.

    ``claims`` is a read-only mapping: one Caller is shared by every request that presents the
    same token (the cache), so nobody may edit it for the others."""

    __slots__ = ("user", "account", "claims")

    def __init__(self, user: str, account: str, claims):
        self.user = user
        self.account = account
        self.claims = claims

    def __repr__(self) -> str:
        return f"Caller(user={self.user!r}, account={self.account!r})"


# --------------------------------------------------------------------------------------------------
# Keys

class _KeyProblem(Exception):
    """A key that is wrong (malformed, weak, private): an error in configuration."""


class _Unusable(Exception):
    """A sound key that serves none of the configured algorithms (or is not for signatures):
    an error when written in ``keys``, skipped when found in a JWK set, where keys for other
    uses and other consumers are normal."""


class _Key:
    """One verification key: its ``kid`` (None for PEM keys and JWKs without one) and one pyjwt
    PyJWK per algorithm it may verify -- the typing that makes algorithm confusion impossible."""

    __slots__ = ("kid", "verifiers", "fingerprint")

    def __init__(self, kid: str | None, verifiers: dict[str, jwt.PyJWK], fingerprint: bytes):
        self.kid = kid
        self.verifiers = verifiers
        self.fingerprint = fingerprint


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _key_from_jwk(jwk: dict, algorithms: tuple[str, ...], allow_secret: bool) -> _Key:
    """Type one JWK: raise _KeyProblem or _Unusable (messages never quote key material: pyjwt's
    own errors can print the whole JWK, private parts included, so they are not passed on)."""
    kty = jwk.get("kty")
    if not isinstance(kty, str):
        raise _KeyProblem("not a JWK (no kty)")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _KeyProblem("its kid is not a string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise _Unusable(f"its use is {use!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if isinstance(ops, list) and "verify" not in ops:
        raise _Unusable("its key_ops do not include 'verify'")
    if kty == "RSA":
        family, what = _RSA_ALGS, "an RSA key"
    elif kty == "EC":
        crv = jwk.get("crv")
        if crv not in _EC_CURVE_ALG:
            raise _Unusable(f"an EC key on curve {crv!r} (supported: P-256, P-384, P-521)")
        family, what = (_EC_CURVE_ALG[crv],), f"an EC {crv} key"
    elif kty == "OKP":
        crv = jwk.get("crv")
        if crv not in _OKP_CURVES:
            raise _Unusable(f"an OKP key on curve {crv!r} (supported: Ed25519, Ed448)")
        family, what = ("EdDSA",), f"an {crv} key"
    elif kty == "oct":
        if not allow_secret:
            raise _Unusable("a shared secret (oct), never taken from a JWK set url")
        family, what = _HMAC_ALGS, "a shared secret"
    else:
        raise _Unusable(f"a key of type {kty!r} (supported: RSA, EC, OKP, oct)")
    if kty != "oct" and "d" in jwk:
        raise _KeyProblem("a private key: give only the public key")
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in family:
            raise _Unusable(f"{what} for alg {alg!r}, not a signature algorithm of its type")
        family = (alg,)
    algs = [a for a in family if a in algorithms]
    if not algs:
        raise _Unusable(f"{what} (for {', '.join(family)}), and iam.jwt.algorithms lists "
                        f"none of these")
    verifiers = {}
    for a in algs:
        try:
            verifier = jwt.PyJWK(jwk, algorithm=a)
            # prepared once now, so that a key pyjwt would refuse at verification (an EC point
            # off its curve, a "secret" that is really a PEM key) is refused at load instead
            verifier.Algorithm.prepare_key(verifier.key)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
            raise _KeyProblem(f"not a valid {kty} JWK") from None
        verifiers[a] = verifier
    key = next(iter(verifiers.values())).key
    if kty == "oct":
        for a in algs:
            if len(key) < _HMAC_MIN_BYTES[a]:
                raise _KeyProblem(f"a shared secret of {len(key)} bytes is too short for {a} "
                                  f"(at least {_HMAC_MIN_BYTES[a]} bytes)")
        material = hashlib.sha256(b"oct:" + key).digest()
    else:
        if kty == "RSA" and key.key_size < _RSA_MIN_BITS:
            raise _KeyProblem(f"an RSA key of {key.key_size} bits (at least {_RSA_MIN_BITS})")
        material = key.public_bytes(serialization.Encoding.DER,
                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = hashlib.sha256(
        json.dumps([kid, sorted(verifiers)]).encode() + material).digest()
    return _Key(kid, verifiers, fingerprint)


def _public_jwk(public_key) -> dict:
    """A cryptography public key as a JWK dict (so that PEM keys are typed like JWKs)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(public_key, as_dict=True)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise _KeyProblem(f"not a PEM public key or JWK (unsupported EC curve "
                              f"{public_key.curve.name})")
        return ECAlgorithm.to_jwk(public_key, as_dict=True)
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return OKPAlgorithm.to_jwk(public_key, as_dict=True)
    raise _KeyProblem(f"not a PEM public key or JWK (unsupported key type "
                      f"{type(public_key).__name__})")


def _key_from_text(text: str, algorithms: tuple[str, ...]) -> _Key:
    """A ``keys`` string: a PEM public key or certificate, an OpenSSH public key, or (only when
    an HS* algorithm is configured) a shared secret."""
    # (PEM lines indented in a YAML block would not parse: each line is taken stripped)
    stripped = "\n".join(line.strip() for line in text.strip().splitlines())
    if stripped.startswith("-----BEGIN"):
        if "PRIVATE KEY-----" in stripped:
            raise _KeyProblem("a private key: give its public key")
        data = stripped.encode("ascii", "replace")
        try:
            if "CERTIFICATE-----" in stripped:
                public_key = x509.load_pem_x509_certificate(data).public_key()
            else:
                public_key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise _KeyProblem("not a PEM public key or JWK (the PEM cannot be read)") from None
        return _key_from_jwk(_public_jwk(public_key), algorithms, allow_secret=False)
    if stripped.startswith(("ssh-", "ecdsa-sha2-")):
        try:
            public_key = serialization.load_ssh_public_key(stripped.encode("ascii", "replace"))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise _KeyProblem("not a PEM public key or JWK (an OpenSSH public key that cannot "
                              "be read)") from None
        return _key_from_jwk(_public_jwk(public_key), algorithms, allow_secret=False)
    if not any(a in algorithms for a in _HMAC_ALGS):
        raise _KeyProblem("not a PEM public key or JWK (a plain string is a shared secret, "
                          "used only when iam.jwt.algorithms lists HS256, HS384 or HS512)")
    return _key_from_jwk({"kty": "oct", "k": _b64url(text.encode("utf-8"))}, algorithms,
                         allow_secret=True)


def _key_set(document: Any, algorithms: tuple[str, ...], allow_secret: bool):
    """The keys of a JWK set document: (keys, problems, skipped), the last two lists of
    (index, message)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise _KeyProblem('not a JWK set (expected {"keys": [...]})')
    keys, problems, skipped = [], [], []
    for i, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            problems.append((i, "not a JWK (not an object)"))
            continue
        try:
            keys.append(_key_from_jwk(jwk, algorithms, allow_secret))
        except _Unusable as exc:
            skipped.append((i, str(exc)))
        except _KeyProblem as exc:
            problems.append((i, str(exc)))
    return keys, problems, skipped


def _is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode text (no lone surrogate): encodable as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _account(claims: dict) -> str:
    account = claims.get("account")
    if isinstance(account, str):
        return account
    domain = claims.get("domain")
    if isinstance(domain, str):
        return domain
    if isinstance(domain, dict) and isinstance(domain.get("name"), str):
        return domain["name"]
    return ""


def _numeric_date(claims: dict, name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenRejected("claims", f"token has no {name}")
        return None
    # a JSON number only (not a string, not a boolean), and finite: json accepts Infinity/NaN
    # (ints are exact, however large: math.isfinite would overflow on a huge one)
    if type(value) is not int and (type(value) is not float or not math.isfinite(value)):
        raise TokenRejected("claims", f"token has an invalid {name}")
    return value


class _Entry:
    __slots__ = ("caller", "exp", "nbf", "iat", "key")

    def __init__(self, caller, exp, nbf, iat, key):
        self.caller = caller
        self.exp = exp
        self.nbf = nbf
        self.iat = iat
        self.key = key          # the fingerprint of the key that verified it


class _FetchFailed(Exception):
    """Why a fetch of the JWK set failed, for the log (never the body)."""


# pyjwt checks the signature, then iss and aud (and the types of sub and jti); the times are
# checked by the verifier against its ``now``
_PYJWT_OPTIONS = {"verify_signature": True, "verify_exp": False, "verify_nbf": False,
                  "verify_iat": False, "verify_iss": True, "verify_sub": True,
                  "verify_jti": True, "require": [], "enforce_minimum_key_length": True}


class JwtVerifier:
    """Checks tokens for one ``iam.jwt`` configuration; see the module's documentation."""

    def __init__(self, config, base_dir: str = ".", *, fetch_timeout_s: float = 3.0,
                 min_refresh_interval_s: float = 30.0, cache_size: int = 10000,
                 max_jwks_bytes: int = 1_000_000, clock=time.time):
        errors: list[str] = []
        algorithms = tuple(dict.fromkeys(config.algorithms))
        for alg in algorithms:
            if alg not in _KNOWN_ALGS:      # ("none" included: the model cannot hold it, but)
                errors.append(f"iam.jwt.algorithms: unsupported algorithm {alg!r}")
        self._algorithms = frozenset(a for a in algorithms if a in _KNOWN_ALGS)
        algorithms = tuple(a for a in algorithms if a in _KNOWN_ALGS)
        self._issuer = config.issuer
        audience = config.audience
        if isinstance(audience, tuple):
            if not audience:
                errors.append("iam.jwt.audience: give at least one audience (or none at all)")
            audience = list(audience)
        self._audience = audience
        self._options = dict(_PYJWT_OPTIONS, verify_aud=audience is not None)
        self._leeway = config.leeway_s
        self._clock = clock

        static: list[_Key] = []
        key_errors = len(errors)
        for i, value in enumerate(config.keys):
            where = f"iam.jwt.keys[{i}]"
            try:
                if isinstance(value, str):
                    static.append(_key_from_text(value, algorithms))
                elif isinstance(value, dict):
                    static.append(_key_from_jwk(value, algorithms, allow_secret=True))
                else:
                    errors.append(f"{where}: not a PEM public key or JWK")
            except (_KeyProblem, _Unusable) as exc:
                errors.append(f"{where}: {exc}")
        if config.keys_file is not None:
            static.extend(self._load_keys_file(config.keys_file, base_dir, algorithms, errors))

        self._jwks_url = config.jwks_url
        if self._jwks_url is not None and urlsplit(self._jwks_url).scheme not in ("http", "https"):
            errors.append("iam.jwt.jwks_url: expected a url starting with http:// or https://")
        if len(errors) == key_errors:
            # every configured algorithm needs a key (asymmetric ones may come from jwks_url):
            # listing one that nothing can verify is a mistake better reported now
            for alg in algorithms:
                if any(alg in key.verifiers for key in static):
                    continue
                if alg in _HMAC_ALGS:
                    errors.append(f"iam.jwt.algorithms: {alg} needs a shared secret in keys "
                                  f"or keys_file")
                elif self._jwks_url is None:
                    errors.append(f"iam.jwt.algorithms: {alg} needs {_NEEDS[alg]} in keys or "
                                  f"keys_file, or a jwks_url")
        if errors:
            raise ValueError(*errors)

        self._static = static
        self._fetched: list[_Key] = []
        self._index()
        self._cache: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()
        self._cache_size = max(0, cache_size)

        self._fetch_timeout = fetch_timeout_s
        self._min_interval = min_refresh_interval_s
        self._max_jwks_bytes = max_jwks_bytes
        self._ever_fetched = False
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task | None = None
        self._failing = False           # inside a failure incident (logged once)
        self._last_body_digest = b""
        self._closed = False
        self._ssl = None
        if self._jwks_url is not None:
            # built once, off the event loop: httpx would otherwise load a CA bundle (tens of
            # milliseconds, blocking the loop) for every client it makes; an http url gets an
            # unused context without certificates (no redirects are followed)
            self._ssl = (ssl.create_default_context()
                         if urlsplit(self._jwks_url).scheme == "https"
                         else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))

    @staticmethod
    def _load_keys_file(value: str, base_dir: str, algorithms, errors: list) -> list[_Key]:
        path = value if os.path.isabs(value) else os.path.join(base_dir, value)
        where = "iam.jwt.keys_file"
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            errors.append(f"{where}: cannot read {path}: {exc.strerror or exc}")
            return []
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            detail = ""
            if isinstance(exc, json.JSONDecodeError):
                detail = f" ({exc.msg}, line {exc.lineno})"
            errors.append(f"{where}: {path} is not JSON{detail}")
            return []
        try:
            keys, problems, skipped = _key_set(document, algorithms, allow_secret=True)
        except _KeyProblem as exc:
            errors.append(f"{where}: {path} is {exc}")
            return []
        errors.extend(f"{where}: {path}: keys[{i}]: {message}" for i, message in problems)
        if not keys and not problems:
            errors.append(f"{where}: {path} holds no key usable with iam.jwt.algorithms ("
                          + "; ".join(f"keys[{i}]: {m}" for i, m in skipped) + ")")
        return keys

    def _index(self) -> None:
        """The lookups verify uses, rebuilt whenever the fetched keys change: by kid, and by
        algorithm (all keys / keys without kid), configured keys first."""
        by_kid: dict[str, list[_Key]] = {}
        by_alg: dict[str, list[_Key]] = {}
        unnamed: dict[str, list[_Key]] = {}
        for key in self._static + self._fetched:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
            for alg in key.verifiers:
                by_alg.setdefault(alg, []).append(key)
                if key.kid is None:
                    unnamed.setdefault(alg, []).append(key)
        self._by_kid, self._by_alg, self._unnamed = by_kid, by_alg, unnamed

    # ----------------------------------------------------------------------------------------------
    # Verification

    @property
    def fetching(self) -> bool:
        """True when keys are fetched from ``jwks_url`` (verify may then return None)."""
        return self._jwks_url is not None

    def verify(self, token: bytes, now: float | None = None) -> Caller | None:
        """The caller of ``token``; raise TokenRejected; or None when the token's key may be in
        the JWK set at ``jwks_url`` and a fetch is due: await :meth:`refresh`, then call again.

        Synchronous, no I/O.  ``now`` (seconds since the epoch) defaults to the clock."""
        if now is None:
            now = self._clock()
        if type(token) is not bytes:
            try:
                token = token.encode("ascii") if isinstance(token, str) else bytes(token)
            except (UnicodeError, TypeError):
                raise TokenRejected("malformed", "malformed token") from None
        entry = self._cache.get(token)
        if entry is not None:
            try:
                self._check_times(entry.exp, entry.nbf, entry.iat, now)
            except TokenRejected as exc:
                if exc.reason == "expired":         # never to be valid again
                    del self._cache[token]
                raise
            self._cache.move_to_end(token)
            return entry.caller

        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected("malformed", "token too large")
        if token.count(b".") != 2:
            raise TokenRejected("malformed", "malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise TokenRejected("malformed", "malformed token") from None
        if "crit" in header:
            # RFC 7515 4.1.11: extensions listed as critical must be understood; none are here
            # (pyjwt's only one, b64, needs a detached payload, which tokens never have)
            raise TokenRejected("malformed", "malformed token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise TokenRejected("algorithm", "algorithm not allowed")
        keys = self._candidates(alg, header.get("kid"))
        if keys is None:
            return None

        claims = key = None
        for key in keys:
            try:
                claims = jwt.decode(token, key=key.verifiers[alg], algorithms=[alg],
                                    options=self._options, audience=self._audience,
                                    issuer=self._issuer)
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise _rejection(exc) from None
            except (ValueError, TypeError, OverflowError, RecursionError):
                raise TokenRejected("malformed", "malformed token") from None
        if claims is None:
            raise TokenRejected("signature", "bad signature")

        exp = _numeric_date(claims, "exp", True)
        nbf = _numeric_date(claims, "nbf", False)
        iat = _numeric_date(claims, "iat", False)
        self._check_times(exp, nbf, iat, now)
        user = claims.get("sub")
        if not isinstance(user, str) or not user:
            raise TokenRejected("claims", "token has no subject")
        account = _account(claims)
        if not (_is_text(user) and _is_text(account)):
            # (JSON may escape a lone surrogate: such a name cannot be keyed, logged or sent)
            raise TokenRejected("claims", "token subject or account is not valid text")
        caller = Caller(user, account, MappingProxyType(claims))
        if self._cache_size:
            self._cache[token] = _Entry(caller, exp, nbf, iat, key.fingerprint)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return caller

    def _check_times(self, exp: float, nbf: float | None, iat: float | None, now: float) -> None:
        leeway = self._leeway
        if exp <= now - leeway:
            raise TokenRejected("expired", "token expired")
        if nbf is not None and nbf > now + leeway:
            raise TokenRejected("not_yet_valid", "token not yet valid")
        # (iat is whole seconds, often rounded by the issuer: a second of grace, so a token
        # issued "now" by a clock a fraction ahead is not refused)
        if iat is not None and iat > now + leeway + 1:
            raise TokenRejected("not_yet_valid", "token issued in the future")

    def _candidates(self, alg: str, kid: str | None) -> list[_Key] | None:
        """The keys to try for a token (at most MAX_KEYS_TRIED), or None if a fetch is due."""
        if kid is not None:
            named = self._by_kid.get(kid)
            if named:
                fitting = [key for key in named if alg in key.verifiers]
                if not fitting:
                    raise TokenRejected("algorithm", "algorithm does not fit the signing key")
                return fitting[:MAX_KEYS_TRIED]
            if self._fetch_due(alg):
                return None
            # keys without a kid (PEM keys cannot carry one) still verify tokens that name one
            pool = self._unnamed.get(alg)
        else:
            pool = self._by_alg.get(alg)
            if not pool and self._fetch_due(alg):
                return None
        if not pool:
            if self._jwks_url is not None and not self._ever_fetched and alg not in _HMAC_ALGS:
                raise TokenRejected("unknown_key", "signing keys unavailable")
            raise TokenRejected("unknown_key", "unknown signing key")
        return pool[:MAX_KEYS_TRIED]

    def _fetch_due(self, alg: str) -> bool:
        # shared secrets never come from the url: fetching would not help an HS* token
        return (self._jwks_url is not None and alg not in _HMAC_ALGS and not self._closed
                and (self._inflight is not None or self._refresh_allowed()))

    def _refresh_allowed(self) -> bool:
        if self._last_attempt is None:
            return True                         # the first fetch is always allowed
        elapsed = self._clock() - self._last_attempt
        return elapsed >= self._min_interval or elapsed < 0     # (< 0: the clock went back)

    # ----------------------------------------------------------------------------------------------
    # Fetching

    async def refresh(self) -> None:
        """Fetch ``jwks_url`` (or join the fetch under way) and replace the fetched keys.

        Raises TokenRejected("unknown_key", "signing keys unavailable") when the fetch fails;
        the keys fetched before are kept.  Rate limited: when a fetch was made less than
        ``min_refresh_interval_s`` ago this returns at once, the keys being as fresh as allowed.
        A caller cancelled while waiting does not cancel the fetch the others share."""
        if self._jwks_url is None:
            return
        if self._closed:
            raise TokenRejected("unknown_key", "signing keys unavailable")
        task = self._inflight
        if task is None:
            if not self._refresh_allowed():
                return
            self._last_attempt = self._clock()
            task = asyncio.get_running_loop().create_task(self._fetch())
            self._inflight = task
            task.add_done_callback(self._fetch_done)
        await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()        # (retrieved: its waiters may all have been cancelled)

    async def _fetch(self) -> None:
        try:
            try:
                # one bound for the whole exchange: httpx's timeouts are per operation, and a
                # server dripping a byte at a time would never trip them
                async with asyncio.timeout(self._fetch_timeout):
                    body = await self._get()
            except TimeoutError:
                raise _FetchFailed(f"no complete answer within {self._fetch_timeout:g} s") from None
            except _FetchFailed:
                raise
            except Exception as exc:     # httpx's errors, OSError, a url httpx refuses...
                raise _FetchFailed(f"{type(exc).__name__}: {exc}") from None
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):
                raise _FetchFailed("the body is not JSON") from None
            try:
                keys, problems, skipped = _key_set(document, tuple(self._algorithms),
                                                   allow_secret=False)
            except _KeyProblem as exc:
                raise _FetchFailed(f"the body is {exc}") from None
            if not keys:
                raise _FetchFailed("the JWK set holds no key usable with iam.jwt.algorithms")
        except _FetchFailed as exc:
            if not self._failing:
                self._failing = True
                log.warning("iam.jwt: cannot fetch the JWK set from %s: %s (keeping the %d "
                            "keys fetched before)", _safe_url(self._jwks_url), exc,
                            len(self._fetched))
            raise TokenRejected("unknown_key", "signing keys unavailable") from None
        if self._failing:
            self._failing = False
            log.info("iam.jwt: the JWK set at %s can be fetched again",
                        _safe_url(self._jwks_url))
        digest = hashlib.sha256(body).digest()
        if (problems or skipped) and digest != self._last_body_digest:
            # told once per content of the set, not at every fetch
            log.warning("iam.jwt: JWK set from %s: keys not used: %s", _safe_url(self._jwks_url),
                        "; ".join(f"keys[{i}] ({_kid_of(document, i)}): {m}"
                                  for i, m in problems + skipped))
        self._last_body_digest = digest
        self._install(keys)

    async def _get(self) -> bytes:
        """The body of a 200 answer from jwks_url, at most max_jwks_bytes, read as it streams.

        A client per fetch: fetches are at least ``min_refresh_interval_s`` apart, longer than
        servers keep idle connections, so a pool would hold nothing worth keeping, and a client
        that outlives a fetch would be tied to one event loop."""
        limit = self._max_jwks_bytes
        async with httpx.AsyncClient(timeout=httpx.Timeout(self._fetch_timeout),
                                     verify=self._ssl, follow_redirects=False,
                                     trust_env=False) as client:
            # identity only: a compressed body would be inflated before it could be bounded
            headers = {"Accept": "application/json, application/jwk-set+json",
                       "Accept-Encoding": "identity"}
            async with client.stream("GET", self._jwks_url, headers=headers) as response:
                if response.status_code != 200:
                    raise _FetchFailed(f"status {response.status_code}")
                encoding = response.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise _FetchFailed(f"a compressed body ({encoding}) though identity was asked")
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > limit:
                    raise _FetchFailed(f"a body of {length} bytes (at most {limit})")
                chunks, size = [], 0
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > limit:
                        raise _FetchFailed(f"a body over {limit} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)

    def _install(self, keys: list[_Key]) -> None:
        """Replace the fetched keys; tokens cached under a key no longer published are dropped
        (the issuer withdrew it: perhaps compromised), the others stay cached."""
        self._fetched = keys
        self._ever_fetched = True
        self._index()
        current = {key.fingerprint for key in self._static + self._fetched}
        for token in [t for t, e in self._cache.items() if e.key not in current]:
            del self._cache[token]

    def close(self) -> None:
        """Stop fetching: a fetch under way is cancelled.  (No client outlives a fetch, so
        there is nothing else to release.)"""
        self._closed = True
        if self._inflight is not None:
            self._inflight.cancel()

    async def aclose(self) -> None:
        """As close(), and wait for a cancelled fetch to have finished."""
        task = self._inflight
        self.close()
        if task is not None:
            try:
                await task
            except (asyncio.CancelledError, TokenRejected):
                pass


def _rejection(exc: jwt.PyJWTError) -> TokenRejected:
    """pyjwt's errors after the signature was checked, as client-safe rejections."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        if exc.claim == "aud":
            return TokenRejected("audience", "token has no audience")
        if exc.claim == "iss":
            return TokenRejected("issuer", "token has no issuer")
        return TokenRejected("claims", f"token has no {exc.claim}")
    if isinstance(exc, jwt.InvalidAudienceError):
        return TokenRejected("audience", "wrong audience")
    if isinstance(exc, jwt.InvalidIssuerError):
        return TokenRejected("issuer", "wrong issuer")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return TokenRejected("algorithm", "algorithm not allowed")
    if isinstance(exc, jwt.InvalidKeyError):        # (weak keys are refused at load)
        return TokenRejected("unknown_key", "unknown signing key")
    if isinstance(exc, jwt.DecodeError):            # the payload is not a JSON object
        return TokenRejected("malformed", "malformed token")
    if isinstance(exc, jwt.InvalidTokenError):      # sub or jti not strings, and the like
        return TokenRejected("claims", "invalid claims")
    return TokenRejected("malformed", "malformed token")


def _safe_url(url: str) -> str:
    """The url for a log line: without credentials or query (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _kid_of(document: dict, index: int) -> str:
    jwk = document["keys"][index]
    kid = jwk.get("kid") if isinstance(jwk, dict) else None
    return f"kid {kid!r}" if isinstance(kid, str) else "no kid"
