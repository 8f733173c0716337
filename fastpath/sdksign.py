"""``SDK-HMAC-SHA256`` request signatures, checked the way the vendor's SDK makes them.

The client (``huaweicloudsdkcore``'s ``Signer``, the reference) sends ``X-Sdk-Date`` and
``Authorization: SDK-HMAC-SHA256 Access=<key>, SignedHeaders=<h1;h2>, Signature=<hex>``.  The
gateway rebuilds the canonical request from the request as it received it (see
../shared/spec/roma-apic.md §2a):

    METHOD \\n canonical URI \\n canonical query \\n canonical headers \\n signed headers \\n payload hash

and compares ``hex(HMAC-SHA256(secret, "SDK-HMAC-SHA256\\n" date "\\n" hex(sha256(canonical))))``
with the signature in constant time.  Nothing here does I/O or reads a clock: the request's
parts, the body's hash and the time are passed in.

Every refusal is a :class:`SignatureError` whose ``reason`` says which check failed in words a
client may read; none carries the secret, the canonical request or a signature.
"""
from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote, unquote

try:
    from _hashlib import hmac_new as _openssl_hmac     # (CPython built with OpenSSL)
except ImportError:     # pragma: no cover
    _openssl_hmac = None

ALGORITHM = b"SDK-HMAC-SHA256"
#: hex sha256 of the empty string: the payload hash of every request without a body
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest().encode()
UNSIGNED_PAYLOAD = b"UNSIGNED-PAYLOAD"
#: how far ``X-Sdk-Date`` may be from the gateway's clock, either way
DATE_WINDOW_S = 15 * 60

_DATE_LEN = len("20240101T000000Z")


class SignatureError(ValueError):
    """A signed request refused; ``reason`` names the check that failed."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_authorization(value: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(access key, signed header names, signature) of an ``Authorization`` value."""
    if not value.startswith(ALGORITHM + b" "):
        raise SignatureError("Authorization is not an SDK-HMAC-SHA256 signature")
    fields = {}
    for part in value[len(ALGORITHM) + 1:].split(b","):
        name, sep, field_value = part.strip(b" \t").partition(b"=")
        if not sep or name in fields:
            raise SignatureError("malformed Authorization")
        fields[name] = field_value
    access, signed, signature = (fields.get(b"Access"), fields.get(b"SignedHeaders"),
                                 fields.get(b"Signature"))
    if not access or not signed or not signature or len(fields) != 3:
        raise SignatureError("malformed Authorization")
    names = signed.split(b";")
    if any(not n or n != n.lower() for n in names) or names != sorted(names) \
            or len(set(names)) != len(names):
        raise SignatureError("SignedHeaders must be sorted lower-case names, each once")
    if len(signature) != 64 or signature.strip(b"0123456789abcdef"):
        raise SignatureError("malformed Signature")
    return access, names, signature


def parse_date(value: bytes) -> int:
    """Seconds since the epoch of an ``X-Sdk-Date`` value (``%Y%m%dT%H%M%SZ``, UTC)."""
    import calendar
    if len(value) != _DATE_LEN or value[8:9] != b"T" or value[15:16] != b"Z" \
            or not (value[:8] + value[9:15]).isdigit():
        raise SignatureError("malformed X-Sdk-Date")
    try:
        year, month, day = int(value[0:4]), int(value[4:6]), int(value[6:8])
        hour, minute, second = int(value[9:11]), int(value[11:13]), int(value[13:15])
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60
                and second < 61):
            raise ValueError
        return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except ValueError:
        raise SignatureError("malformed X-Sdk-Date") from None


def check_date(value: bytes, now: float) -> None:
    """``value`` (X-Sdk-Date) lies within DATE_WINDOW_S of ``now`` (epoch seconds)."""
    if abs(parse_date(value) - now) > DATE_WINDOW_S:
        raise SignatureError("X-Sdk-Date is more than 15 minutes from the gateway's clock")


def _encode(text: str) -> str:
    # unreserved characters kept, every other byte of the UTF-8 form %XY upper-case
    return quote(text, safe="~")


def canonical_uri(raw_path: bytes) -> bytes:
    """The path percent-decoded (as UTF-8), split on ``/``, each segment re-encoded, joined,
    ending with ``/``."""
    decoded = unquote(raw_path.decode("latin-1").encode("latin-1").decode("utf-8", "replace"))
    out = "/".join(_encode(segment) for segment in decoded.split("/"))
    if not out.endswith("/"):
        out += "/"
    return out.encode("ascii")


def canonical_query(raw_query: bytes) -> bytes:
    """The query's decoded pairs sorted by key then value (code points of the decoded
    strings), each re-encoded, ``k=`` for an empty value, joined by ``&``."""
    if not raw_query:
        return b""
    pairs = []
    for item in raw_query.decode("latin-1").encode("latin-1").decode("utf-8", "replace").split("&"):
        if not item:
            continue
        key, _, value = item.partition("=")
        pairs.append((unquote(key), unquote(value)))
    pairs.sort()
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in pairs).encode("ascii")


def canonical_headers(head, names: list[bytes]) -> bytes:
    """``name:value`` lines of the signed headers, from ``head`` (a fastpath.http1 Head) as
    received: each must be there once."""
    lines = []
    for name in names:
        values = head.get_all(name)
        if not values:
            raise SignatureError(f"signed header {name.decode('latin-1')} is missing")
        if len(values) > 1:
            raise SignatureError(f"signed header {name.decode('latin-1')} is repeated")
        lines.append(name + b":" + values[0].strip(b" \t") + b"\n")
    return b"".join(lines)


def payload_hash(head, body_sha256_hex: bytes | None, has_body: bool) -> bytes:
    """The canonical request's last line: the empty hash for a request without a body, else
    the value of ``X-Sdk-Content-Sha256`` when sent (``UNSIGNED-PAYLOAD``), else the body's hash
    (``body_sha256_hex``, computed as it streamed)."""
    if not has_body:
        return EMPTY_SHA256
    declared = head.get(b"x-sdk-content-sha256")
    if declared:
        if (body_sha256_hex is not None and declared != UNSIGNED_PAYLOAD
                and declared.lower() != body_sha256_hex):
            # (signed, but not the body that came: the backend would get another body)
            raise SignatureError("X-Sdk-Content-Sha256 does not match the body")
        return declared
    if body_sha256_hex is None:
        raise SignatureError("the body's hash is needed")
    return body_sha256_hex


def canonical_request(method: bytes, raw_path: bytes, raw_query: bytes, headers: bytes,
                      names: list[bytes], payload: bytes) -> bytes:
    return b"\n".join((method.upper(), canonical_uri(raw_path), canonical_query(raw_query),
                       headers, b";".join(names), payload))


def prepare_secret(secret: bytes):
    """An HMAC-SHA256 keyed with ``secret``, to copy per check: keying it is most of an HMAC's
    cost for a short message (made once per app when the configuration is loaded).  OpenSSL's
    HMAC object itself when the interpreter exposes it (its copy is a C call; the ``hmac``
    module's wrapper adds a Python-level copy per check)."""
    if _openssl_hmac is not None:
        return _openssl_hmac(secret, digestmod="sha256")
    return hmac.new(secret, digestmod=hashlib.sha256)


def signature_of(key, date: bytes, canonical: bytes) -> bytes:
    """The hex signature of a canonical request made at ``date`` (X-Sdk-Date's value);
    ``key``: prepare_secret()'s result."""
    mac = key.copy()
    mac.update(ALGORITHM + b"\n" + date + b"\n" + hashlib.sha256(canonical).hexdigest().encode())
    return mac.hexdigest().encode()


def verify(head, method: bytes, raw_path: bytes, raw_query: bytes, key,
           signed: tuple[bytes, list[bytes], bytes], now: float,
           body_sha256_hex: bytes | None = None, has_body: bool = False) -> None:
    """Check a request signed by ``signed`` (parse_authorization's result) with ``key`` (the
    secret's prepare_secret()); raise SignatureError naming the failed check."""
    _access, names, signature = signed
    if b"x-sdk-date" not in names:
        raise SignatureError("X-Sdk-Date must be a signed header")
    date = head.get(b"x-sdk-date")
    if date is None:
        raise SignatureError("X-Sdk-Date is missing")
    check_date(date, now)
    canonical = canonical_request(method, raw_path, raw_query, canonical_headers(head, names),
                                  names, payload_hash(head, body_sha256_hex, has_body))
    if not hmac.compare_digest(signature_of(key, date, canonical), signature):
        raise SignatureError("signature does not match the request")
