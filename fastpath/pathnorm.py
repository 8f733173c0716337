# cython: annotation_typing=False
"""Normalize the path of an HTTP request target before it is routed.

The gateway routes, authorizes and forwards on the *normalized* path, so that two spellings
of one resource can never take different routes (``/a/%2e%2e/admin`` must not slip past an ACL
written for ``/admin``).  ``normalize_path(path)`` takes the path part of the request target
(everything before ``?``) as a ``str`` (the gateway decodes the raw bytes as latin-1, so every
byte is one character) and returns the normal form or raises :class:`PathError`.

The rules (decisions, all tested in ``tests/fastpath/test_pathnorm.py``):

1. The path starts with ``/``; anything else (``*``, an absolute URI, ``""``) is a PathError.
2. Every character is visible ASCII, 0x21-0x7E.  Space, controls, DEL and non-ASCII are
   PathErrors (a client must percent-encode them).  Two visible characters are refused too:
   a raw ``#`` (fragments are never sent, so it is an attack or a broken client) and a raw
   backslash (some backends treat ``\\`` as a separator: an ACL bypass).
3. ``%XX`` needs two hex digits, else PathError("bad percent-encoding ...").  ``%00`` is a
   PathError.  An escape of an *unreserved* character (``A-Z a-z 0-9 - . _ ~``) is decoded
   (``%41`` -> ``A``, ``%2e`` -> ``.``); every other escape is kept with its hex digits upper-cased
   (``%2f`` -> ``%2F``).  So an encoded slash or backslash stays data inside one segment and never
   becomes a separator, and a double encoding stays encoded: ``%252e`` is the kept escape ``%25``
   followed by the plain characters ``2e``, so it stays ``%252e`` (decoding happens once only).
4. Repeated slashes collapse to one.
5. Dot segments are resolved *after* rule 3, so ``%2e%2e`` is ``..``: ``.`` is dropped, ``..``
   drops the segment before it, and a ``..`` that would climb above the root is a
   PathError("path climbs above the root ...") rather than being clamped, since no honest client
   sends one.
6. A trailing slash is kept, also when the last segment was a dot segment:
   ``/a/b/`` -> ``/a/b/``, ``/a/./`` -> ``/a/``, ``/a/b/..`` -> ``/a/``, ``/a/b/.`` -> ``/a/b/``.

Cost: a path that needs no change (the common case) is checked by one scan and returned as the
very same ``str`` object, with no allocation.  (A normal path that holds a kept escape such as
``%2F`` takes the slow path, and is still handed back as the same object.)  The compiled form
scans with a typed character loop (``for c in path`` with ``c`` a ``Py_UCS4`` is a C loop); the
interpreted form lets one precompiled regular expression do the scan, since a loop over
characters is the slowest thing the interpreter can do.  Both then share the slow path.
"""
from __future__ import annotations

import re

try:
    import cython

    _COMPILED = cython.compiled
except ImportError:  # pragma: no cover - without Cython only the interpreted form exists
    _COMPILED = False

__all__ = ["PathError", "normalize_path"]


class PathError(ValueError):
    """The request path is malformed or hostile; the gateway answers 400 Bad Request."""


# Interpreted form only: anything that keeps a path from being returned as it is, in one scan.
# A raw character outside 0x21-0x7E, '#', '%', '\', an empty segment ('//'), or a '.' / '..'
# segment.  (The compiled form does the same scan in _is_clean.)
_NEEDS_WORK = re.compile(r"[^\x21-\x7e]|[#%\\]|//|/\.\.?(?=/|\Z)")
# Interpreted form only: the first character that rule 2 forbids.
_FORBIDDEN = re.compile(r"[^\x21-\x7e]|[#\\]")

_UPPER_HEX = "0123456789ABCDEF"


def normalize_path(path: str) -> str:
    """Return the normal form of request path ``path`` (see the module docstring).

    Returns ``path`` itself when it is already normal.  Raises PathError when the path is
    malformed, and TypeError when it is not a ``str``.
    """
    if not isinstance(path, str):
        raise TypeError(f"normalize_path() takes a str, not {type(path).__name__}")
    if len(path) == 0 or path[0] != "/":
        raise PathError(f"path must start with '/': {path[:40]!r}")
    if _COMPILED:
        if _is_clean(path):
            return path
    elif _NEEDS_WORK.search(path) is None:
        return path
    return _normalize_slow(path)


def _is_clean(path: str) -> bool:
    """True when ``path`` (which starts with '/') is already normal: one pass over it.

    Anything unusual answers False and leaves the verdict, and the error, to _normalize_slow.
    """
    n = len(path)
    seg = 1  # index of the first character of the current segment
    i = -1
    for c in path:  # Cython turns this into a C loop over the characters
        i += 1
        if i == 0:
            continue  # the leading '/', checked by the caller
        if c == "/":
            k = i - seg
            if k == 0:
                return False  # '//'
            if k <= 2 and path[i - 1] == "." and (k == 1 or path[i - 2] == "."):
                return False  # '/./' or '/../'
            seg = i + 1
        elif c < "!" or c > "~" or c == "%" or c == "#" or c == "\\":
            return False
    k = n - seg
    if 0 < k <= 2 and path[n - 1] == "." and (k == 1 or path[n - 2] == "."):
        return False  # ends in '/.' or '/..'
    return True


def _check_characters(path: str) -> None:
    """Raise PathError for the first character rule 2 forbids."""
    bad = -1
    if _COMPILED:
        i = 0
        for c in path:
            if c < "!" or c > "~" or c == "#" or c == "\\":
                bad = i
                break
            i += 1
    else:
        found = _FORBIDDEN.search(path)
        if found is not None:
            bad = found.start()
    if bad < 0:
        return
    ch = path[bad]
    if ch == "#":
        why = "a raw '#' (fragments are never sent)"
    elif ch == "\\":
        why = "a raw backslash (some backends treat it as a separator)"
    else:
        why = f"character {ch!r}, which must be percent-encoded"
    raise PathError(f"path has {why} at offset {bad}")


def _hex_value(c: str) -> int:
    """The value of hex digit ``c``, or -1."""
    if "0" <= c <= "9":
        return ord(c) - 48
    if "A" <= c <= "F":
        return ord(c) - 55
    if "a" <= c <= "f":
        return ord(c) - 87
    return -1


def _is_unreserved(v: int) -> bool:
    """True for the code of an RFC 3986 unreserved character: A-Z a-z 0-9 - . _ ~"""
    return (65 <= v <= 90 or 97 <= v <= 122 or 48 <= v <= 57
            or v == 45 or v == 46 or v == 95 or v == 126)


def _decode_segment(path: str, start: int, end: int) -> str:
    """Segment ``path[start:end]`` with its percent-escapes handled by rule 3."""
    k = path.find("%", start, end)
    if k < 0:
        return path[start:end]
    parts = []
    while k >= 0:
        if k + 2 >= end:
            raise PathError(f"bad percent-encoding at offset {k}: {path[k:k + 3]!r}")
        hi = _hex_value(path[k + 1])
        lo = _hex_value(path[k + 2])
        if hi < 0 or lo < 0:
            raise PathError(f"bad percent-encoding at offset {k}: {path[k:k + 3]!r}")
        v = hi * 16 + lo
        if v == 0:
            raise PathError(f"path has an encoded NUL (%00) at offset {k}")
        parts.append(path[start:k])
        if _is_unreserved(v):
            parts.append(chr(v))
        else:
            parts.append("%" + _UPPER_HEX[hi] + _UPPER_HEX[lo])
        start = k + 3
        k = path.find("%", start, end)
    parts.append(path[start:end])
    return "".join(parts)


def _normalize_slow(path: str) -> str:
    """Apply every rule to ``path`` (which starts with '/') and build the normal form."""
    _check_characters(path)
    n = len(path)
    segments = []
    trailing = False  # whether the normal form ends with '/'
    start = 1
    while True:
        end = path.find("/", start)
        if end < 0:
            end = n
        seg = _decode_segment(path, start, end)
        if seg == "" or seg == ".":
            trailing = True
        elif seg == "..":
            if len(segments) == 0:
                raise PathError(f"path climbs above the root: {path[:80]!r}")
            segments.pop()
            trailing = True
        else:
            segments.append(seg)
            trailing = False
        if end >= n:
            break
        start = end + 1
    if len(segments) == 0:
        return "/"
    out = "/" + "/".join(segments)
    if trailing:
        out = out + "/"
    if out == path:
        return path  # already normal (it holds kept escapes): hand back the caller's object
    return out
