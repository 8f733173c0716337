"""Message heads that arrive in many small reads: collected, then parsed in a few large feeds.

httptools joins the pieces of a header name, value or request target that arrive in separate
``feed_data`` calls by concatenating bytes, so a head trickled in N small reads costs O(N^2)
copying: a peer sending a 128 KB header a byte at a time would stall its worker for seconds.
Once a feed leaves the parser inside a head, the connection therefore stops feeding every read
and collects them here instead, handing the parser the collected bytes when

* they hold the end of the head (``CRLF CRLF``; llhttp's strict mode accepts no other), or
* they have doubled since the last hand-over (at least ``MIN_BATCH``),

so a head is fed in O(log n) pieces and parsed in linear time.  A head that arrives in one
read, the usual case, never comes here.  ``size`` is what the head has grown by here (the bytes
after its end are not head): the connection refuses the head once it exceeds its limit.  A
buffer serves one head; the connection drops it when that head is complete.
"""
from __future__ import annotations

TERMINATOR = b"\r\n\r\n"
MIN_BATCH = 4096


class HeadBuffer:
    __slots__ = ("buf", "skip", "fed", "size")

    def __init__(self, fed_tail: bytes):
        # the last bytes already fed: a terminator may straddle them and the next read
        self.buf = bytearray(fed_tail[-3:])
        self.skip = len(self.buf)   # those bytes are not fed again
        self.fed = 0                # bytes of the head handed over from here so far
        self.size = 0               # bytes of the head collected here (up to its end, if seen)

    def add(self, data: bytes) -> bytes | None:
        """Collect ``data``; return what the parser should be fed now, or None to wait."""
        buf = self.buf
        start = len(buf) - 3 if len(buf) > 3 else 0
        buf += data
        pending = len(buf) - self.skip
        end = buf.find(TERMINATOR, start)
        if end >= 0:
            self.size = self.fed + end + 4 - self.skip
        else:
            self.size = self.fed + pending
            if pending < (self.fed if self.fed > MIN_BATCH else MIN_BATCH):
                return None
        out = bytes(buf[self.skip:])
        self.fed += pending
        del buf[:-3]
        self.skip = len(buf)
        return out
