# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""``SDK-HMAC-SHA256`` verification, compiled: the twin of fastpath/sdksign.py.

The canonical URI and query (percent-decoding, UTF-8 checks, re-encoding) are done in C over the
received bytes, which is where the interpreted form spends its time (urllib's quote/unquote per
segment).  Anything unusual -- a non-ASCII byte in the target, percent-escapes that decode to
invalid UTF-8 -- goes to the interpreted form's functions, so both forms give the same bytes by
construction (and tests/fastpath/test_sdksign_differential.py checks it).  Hashing and HMAC are
hashlib's (OpenSSL) in both.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

import hashlib
import hmac

from fastpath import sdksign as _pure
from libc.string cimport memcmp, memcpy

from fastpath._compiled.http1 cimport Head

from fastpath.sdksign import (ALGORITHM, DATE_WINDOW_S, EMPTY_SHA256, UNSIGNED_PAYLOAD,
                              SignatureError, prepare_secret)

_sha256 = hashlib.sha256

__all__ = ["ALGORITHM", "DATE_WINDOW_S", "EMPTY_SHA256", "UNSIGNED_PAYLOAD", "SignatureError",
           "canonical_headers", "canonical_query", "canonical_request", "canonical_uri",
           "check_date", "parse_authorization", "parse_date", "payload_hash", "prepare_secret",
           "signature_of", "verify"]

cdef const char* _HEX = b"0123456789ABCDEF"


cdef inline int _hexval(unsigned char c) noexcept:
    if 48 <= c <= 57:
        return c - 48
    if 65 <= c <= 70:
        return c - 55
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef inline bint _unreserved(unsigned char c) noexcept:
    return ((65 <= c <= 90) or (97 <= c <= 122) or (48 <= c <= 57) or c == 45 or c == 46
            or c == 95 or c == 126)


cdef bint _valid_utf8(const unsigned char* s, Py_ssize_t n) noexcept:
    """Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF), as Python's decoder."""
    cdef Py_ssize_t i = 0
    cdef unsigned char c
    cdef int need, k
    cdef unsigned int cp, low
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            need, cp, low = 1, c & 0x1F, 0x80
        elif 0xE0 <= c <= 0xEF:
            need, cp, low = 2, c & 0x0F, 0x800
        elif 0xF0 <= c <= 0xF4:
            need, cp, low = 3, c & 0x07, 0x10000
        else:
            return False
        for k in range(1, need + 1):
            if i + k >= n or (s[i + k] & 0xC0) != 0x80:
                return False
            cp = (cp << 6) | (s[i + k] & 0x3F)
        if cp < low or cp > 0x10FFFF or (0xD800 <= cp <= 0xDFFF):
            return False
        i += need + 1
    return True


cdef Py_ssize_t _decode(const unsigned char* s, Py_ssize_t n, unsigned char* out) noexcept:
    """Percent-decode s[:n] into out (n bytes at most); a '%' not followed by two hex digits
    stays as it is (as urllib's unquote).  Returns the length."""
    cdef Py_ssize_t i = 0, j = 0
    cdef int hi, lo
    while i < n:
        if s[i] == 37 and i + 2 < n:
            hi = _hexval(s[i + 1])
            lo = _hexval(s[i + 2])
            if hi >= 0 and lo >= 0:
                out[j] = <unsigned char>(hi * 16 + lo)
                j += 1
                i += 3
                continue
        out[j] = s[i]
        j += 1
        i += 1
    return j


cdef Py_ssize_t _encode(const unsigned char* s, Py_ssize_t n, unsigned char* out,
                        bint keep_slash) noexcept:
    """Percent-encode every byte but the unreserved ones (and '/' when ``keep_slash``) into
    out (3n bytes at most).  Returns the length."""
    cdef Py_ssize_t i, j = 0
    cdef unsigned char c
    for i in range(n):
        c = s[i]
        if _unreserved(c) or (keep_slash and c == 47):
            out[j] = c
            j += 1
        else:
            out[j] = 37
            out[j + 1] = _HEX[c >> 4]
            out[j + 2] = _HEX[c & 15]
            j += 3
    return j


cdef bint _ascii(const unsigned char* s, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] >= 0x80:
            return False
    return True


cdef bytes _decoded(bytes raw):
    """raw percent-decoded, or None when the interpreted form must judge it (a non-ASCII byte,
    or escapes that are not UTF-8)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(raw)
    if not _ascii(s, n):
        return None
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef Py_ssize_t m = _decode(s, n, <unsigned char*>PyBytes_AS_STRING(out))
    if not _valid_utf8(<const unsigned char*>PyBytes_AS_STRING(out), m):
        return None
    return out[:m] if m != n else out


cdef bytes _encoded(bytes text, bint keep_slash):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(text)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 3 * n + 1)
    cdef Py_ssize_t m = _encode(<const unsigned char*>PyBytes_AS_STRING(text), n,
                                <unsigned char*>PyBytes_AS_STRING(out), keep_slash)
    return out[:m]


cdef bint _plain(const unsigned char* s, Py_ssize_t n, unsigned char also) noexcept:
    """Only unreserved bytes (and ``also``): decoding and re-encoding would give it back."""
    cdef Py_ssize_t i
    for i in range(n):
        if not _unreserved(s[i]) and s[i] != also:
            return False
    return True


cpdef bytes canonical_uri(bytes raw_path):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw_path)
    if n > 0 and _plain(<const unsigned char*>PyBytes_AS_STRING(raw_path), n, 47):
        # (the common path: nothing to decode or escape)
        return raw_path if raw_path[n - 1] == 47 else raw_path + b"/"
    cdef bytes decoded = _decoded(raw_path)
    if decoded is None:
        return _pure.canonical_uri(raw_path)
    cdef bytes out = _encoded(decoded, True)
    if PyBytes_GET_SIZE(out) == 0 or out[PyBytes_GET_SIZE(out) - 1] != 47:
        out += b"/"
    return out


cdef enum:
    _MAX_PLAIN_PAIRS = 32

ctypedef struct _Pair:
    Py_ssize_t key, key_len, value, value_len


cdef inline int _compare(const unsigned char* s, Py_ssize_t a, Py_ssize_t an,
                         Py_ssize_t b, Py_ssize_t bn) noexcept:
    cdef int c = memcmp(s + a, s + b, an if an < bn else bn)
    if c != 0:
        return c
    return (an > bn) - (an < bn)


cdef bytes _plain_query(bytes raw):
    """The canonical form of a query made only of unreserved bytes, ``=`` (once per pair) and
    ``&`` (nothing to decode or escape: the pairs as they are, sorted), written in C; None for
    any other query (the general path)."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), pos = 0, end, eq, i, j, size = 0
    cdef _Pair pairs[_MAX_PLAIN_PAIRS]
    cdef _Pair item
    cdef int count = 0, c
    cdef unsigned char ch
    while pos <= n:
        end = pos
        eq = -1
        while end < n and s[end] != 38:        # '&'
            ch = s[end]
            if ch == 61:                        # '='
                if eq >= 0:
                    return None                 # a second '=': escaped in the value
                eq = end
            elif not _unreserved(ch):
                return None
            end += 1
        if end > pos:
            if count == _MAX_PLAIN_PAIRS:
                return None
            if eq < 0:
                pairs[count].key, pairs[count].key_len = pos, end - pos
                pairs[count].value, pairs[count].value_len = end, 0
            else:
                pairs[count].key, pairs[count].key_len = pos, eq - pos
                pairs[count].value, pairs[count].value_len = eq + 1, end - eq - 1
            size += pairs[count].key_len + 1 + pairs[count].value_len
            count += 1
        pos = end + 1
    if count == 0:
        return b""
    for i in range(1, count):                   # (insertion sort: queries are short)
        item = pairs[i]
        j = i - 1
        while j >= 0:
            c = _compare(s, pairs[j].key, pairs[j].key_len, item.key, item.key_len)
            if c == 0:
                c = _compare(s, pairs[j].value, pairs[j].value_len, item.value, item.value_len)
            if c <= 0:
                break
            pairs[j + 1] = pairs[j]
            j -= 1
        pairs[j + 1] = item
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size + count - 1)
    cdef char* o = PyBytes_AS_STRING(out)
    for i in range(count):
        if i:
            o[0] = 38
            o += 1
        memcpy(o, s + pairs[i].key, pairs[i].key_len)
        o += pairs[i].key_len
        o[0] = 61
        o += 1
        memcpy(o, s + pairs[i].value, pairs[i].value_len)
        o += pairs[i].value_len
    return out


cpdef bytes canonical_query(bytes raw_query):
    cdef list pairs = []
    cdef bytes item, key, value
    cdef Py_ssize_t eq
    cdef bint plain, all_plain = True
    if not raw_query:
        return b""
    cdef bytes fast = _plain_query(raw_query)
    if fast is not None:
        return fast
    for item in raw_query.split(b"&"):
        if not item:
            continue
        eq = item.find(b"=")
        plain = _plain(<const unsigned char*>PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item), 61)
        if plain and (eq < 0 or item.find(b"=", eq + 1) < 0):
            # nothing to decode or escape: the pair as it is ("k" is "k=")
            pairs.append((item, b"") if eq < 0 else (item[:eq], item[eq + 1:]))
            continue
        all_plain = False
        if eq < 0:
            key, value = _decoded(item), b""
        else:
            key, value = _decoded(item[:eq]), _decoded(item[eq + 1:])
        if key is None or value is None:
            return _pure.canonical_query(raw_query)
        pairs.append((key, value))
    pairs.sort()        # (UTF-8 bytes sort as their code points do)
    if all_plain:
        return b"&".join([k + b"=" + v for k, v in pairs])
    return b"&".join([_encoded(k, False) + b"=" + _encoded(v, False) for k, v in pairs])


cpdef bytes canonical_headers(Head head, list names):
    """See the interpreted form."""
    cdef list lines = []
    cdef bytes name
    cdef list values
    for name in names:
        values = head.get_all(name)
        if not values:
            raise SignatureError(f"signed header {name.decode('latin-1')} is missing")
        if len(values) > 1:
            raise SignatureError(f"signed header {name.decode('latin-1')} is repeated")
        lines.append(name + b":" + (<bytes>values[0]).strip(b" \t") + b"\n")
    return b"".join(lines)


cpdef bytes payload_hash(Head head, body_sha256_hex, bint has_body):
    """See the interpreted form."""
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


cpdef bytes canonical_request(bytes method, bytes raw_path, bytes raw_query, bytes headers,
                              list names, bytes payload):
    return b"\n".join((method.upper(), canonical_uri(raw_path), canonical_query(raw_query),
                       headers, b";".join(names), payload))


cdef inline int _digits(const unsigned char* s, int n) noexcept:
    cdef int v = 0, i
    for i in range(n):
        if not 48 <= s[i] <= 57:
            return -1
        v = v * 10 + (s[i] - 48)
    return v


cpdef long long parse_date(bytes value) except? -1:
    """Seconds since the epoch of an X-Sdk-Date value (see the interpreted form), in C."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef int year, month, day, hour, minute, second
    cdef long long y, era, yoe, doy, doe, days
    if PyBytes_GET_SIZE(value) != 16 or s[8] != 84 or s[15] != 90:
        raise SignatureError("malformed X-Sdk-Date")
    year, month, day = _digits(s, 4), _digits(s + 4, 2), _digits(s + 6, 2)
    hour, minute, second = _digits(s + 9, 2), _digits(s + 11, 2), _digits(s + 13, 2)
    if (year < 0 or not 1 <= month <= 12 or not 1 <= day <= 31 or not 0 <= hour < 24
            or not 0 <= minute < 60 or not 0 <= second < 61):
        raise SignatureError("malformed X-Sdk-Date")
    # days from 1970-01-01 of a proleptic Gregorian date (as calendar.timegm, which also takes
    # a day past the month's end and rolls it over)
    y = year - (1 if month <= 2 else 0)
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hour * 3600 + minute * 60 + second


cpdef check_date(bytes value, double now):
    if abs(parse_date(value) - now) > DATE_WINDOW_S:
        raise SignatureError("X-Sdk-Date is more than 15 minutes from the gateway's clock")


cdef const char* _LOWER_HEX = b"0123456789abcdef"


cdef bytes _hex(bytes digest):
    """Lower-case hex of a digest, in C (no str, no encode)."""
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(digest)
    cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(digest)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 2 * n)
    cdef char* o = PyBytes_AS_STRING(out)
    for i in range(n):
        o[2 * i] = _LOWER_HEX[d[i] >> 4]
        o[2 * i + 1] = _LOWER_HEX[d[i] & 15]
    return out


cpdef bytes signature_of(key, bytes date, bytes canonical):
    mac = key.copy()
    mac.update(b"SDK-HMAC-SHA256\n" + date + b"\n" + _hex(_sha256(canonical).digest()))
    return _hex(mac.digest())


cdef inline bint _blank(unsigned char c) noexcept:
    return c == 32 or c == 9


cpdef tuple parse_authorization(bytes value):
    """(access key, signed header names, signature) of an ``Authorization`` value: the
    interpreted form's checks, in the same order with the same messages, scanned in C."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), pos = 16, end, a, b, eq, k, prev_a = 0, prev_n = -1
    cdef int fields = 0, seen = 0, bit
    cdef bytes access = None, signed = None, signature = None, field
    cdef list names
    cdef const unsigned char* h
    cdef unsigned char c
    if n < 16 or memcmp(s, b"SDK-HMAC-SHA256 ", 16) != 0:
        raise SignatureError("Authorization is not an SDK-HMAC-SHA256 signature")
    while True:
        end = pos
        while end < n and s[end] != 44:        # ','
            end += 1
        a, b = pos, end
        while a < b and _blank(s[a]):
            a += 1
        while b > a and _blank(s[b - 1]):
            b -= 1
        eq = a
        while eq < b and s[eq] != 61:          # '='
            eq += 1
        if eq == b:
            raise SignatureError("malformed Authorization")
        field = PyBytes_FromStringAndSize(<const char*>s + eq + 1, b - eq - 1)
        bit = 0
        if eq - a == 6 and memcmp(s + a, b"Access", 6) == 0:
            bit, access = 1, field
        elif eq - a == 13 and memcmp(s + a, b"SignedHeaders", 13) == 0:
            bit, signed = 2, field
        elif eq - a == 9 and memcmp(s + a, b"Signature", 9) == 0:
            bit, signature = 4, field
        if bit == 0 or seen & bit:              # (an unknown field or one given twice)
            raise SignatureError("malformed Authorization")
        seen |= bit
        fields += 1
        if end == n:
            break
        pos = end + 1
    if not access or not signed or not signature or fields != 3:
        raise SignatureError("malformed Authorization")
    # names: non-empty, lower-case, strictly increasing (sorted and each once)
    names = []
    h = <const unsigned char*>PyBytes_AS_STRING(signed)
    n = PyBytes_GET_SIZE(signed)
    pos = 0
    while True:
        end = pos
        while end < n and h[end] != 59:        # ';'
            end += 1
        if end == pos:
            raise SignatureError("SignedHeaders must be sorted lower-case names, each once")
        for k in range(pos, end):
            c = h[k]
            if 65 <= c <= 90:
                raise SignatureError("SignedHeaders must be sorted lower-case names, each once")
        if prev_n >= 0:
            k = memcmp(h + prev_a, h + pos, prev_n if prev_n < end - pos else end - pos)
            if k > 0 or (k == 0 and prev_n >= end - pos):
                raise SignatureError("SignedHeaders must be sorted lower-case names, each once")
        names.append(PyBytes_FromStringAndSize(<const char*>h + pos, end - pos))
        prev_a, prev_n = pos, end - pos
        if end == n:
            break
        pos = end + 1
    h = <const unsigned char*>PyBytes_AS_STRING(signature)
    if PyBytes_GET_SIZE(signature) != 64:
        raise SignatureError("malformed Signature")
    for k in range(64):
        c = h[k]
        if not (48 <= c <= 57 or 97 <= c <= 102):
            raise SignatureError("malformed Signature")
    return access, names, signature


def verify(Head head, bytes method, bytes raw_path, bytes raw_query, key, tuple signed,
           double now, body_sha256_hex=None, bint has_body=False):
    """See the interpreted form."""
    names = signed[1]
    if b"x-sdk-date" not in names:
        raise SignatureError("X-Sdk-Date must be a signed header")
    date = head.get(b"x-sdk-date")
    if date is None:
        raise SignatureError("X-Sdk-Date is missing")
    check_date(date, now)
    canonical = canonical_request(method, raw_path, raw_query, canonical_headers(head, names),
                                  names, payload_hash(head, body_sha256_hex, has_body))
    if not hmac.compare_digest(signature_of(key, date, canonical), signed[2]):
        raise SignatureError("signature does not match the request")
