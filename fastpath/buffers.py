# cython: annotation_typing=False
"""Assembling the bytes the gateway writes: one allocation per message head.

``concat(parts)`` is ``b"".join(parts)`` for a tuple or list of ``bytes``.  The compiled form
adds the lengths, allocates the result once and copies each part in with ``memcpy``; the
built-in join also fills and releases a buffer view per part (and allocates an array of them
past ten parts), which on a 17-part request head cost more than the copying.  Anything that is
not exactly ``bytes`` goes to the built-in join, which accepts every buffer and raises the
usual TypeError for the rest.
"""
from __future__ import annotations

try:
    import cython

    _COMPILED = cython.compiled
except ImportError:  # pragma: no cover - without Cython only the interpreted form exists
    _COMPILED = False

__all__ = ["concat"]


def concat(parts) -> bytes:
    """The parts (a tuple or list of bytes) joined into one bytes object."""
    if _COMPILED:
        if type(parts) is tuple:
            return _concat_tuple(parts)
        if type(parts) is list:
            return _concat_tuple(tuple(parts))
    return b"".join(parts)


def _concat_tuple(parts: tuple) -> bytes:
    # compiled form only: memcpy and the PyBytes_* macros are cimported by buffers.pxd
    total = 0
    for part in parts:
        if type(part) is not bytes:
            return b"".join(parts)
        total += PyBytes_GET_SIZE(part)
    out = PyBytes_FromStringAndSize(cython.NULL, total)
    dst = PyBytes_AS_STRING(out)
    pos = 0
    for piece in parts:         # all exactly bytes: checked above
        n = PyBytes_GET_SIZE(piece)
        memcpy(dst + pos, PyBytes_AS_STRING(piece), n)
        pos += n
    return out
