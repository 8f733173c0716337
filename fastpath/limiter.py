"""Rate limiting: sliding-window counters in a table every worker of a node shares.

The algorithm: the **sliding window counter**.  Time is cut into windows of the policy's period
``P``; a key keeps the count of the current window (``cur``) and of the one before (``prev``).
At ``e`` nanoseconds into the current window the calls of the last ``P`` are estimated as

    estimate = prev * (P - e) / P + cur

(the previous window's calls taken as spread evenly over it) and a call of cost ``c`` passes
when ``estimate + c <= limit``.  Unlike a fixed window it has no boundary burst: just after a
window starts, the previous window still counts almost fully, so ``limit`` calls at the end of
one window and ``limit`` at the start of the next cannot both pass.  Under steady overload the
calls let through per period converge on ``limit``.  (GCRA was the other candidate: with a
burst of ``limit`` it lets ``2 * limit - 1`` calls through in the first period of a busy key, and
with a smaller burst it refuses calls an "N per period" policy promises.)  With ``sliding``
false the window is fixed (quotas: "N per day, reset at 00:00"): the estimate is ``cur``.

The table: ``slots`` slots of four 64-bit words in a shared buffer (an ``mmap`` of a memfd the
gateway's master creates; every worker maps it, so all workers of a node draw on one budget):

    key     a 64-bit hash of the key (:func:`hash_key`; 0 = empty slot)
    cell0   window index (high 32 bits) | count (low 32 bits) of an even window
    cell1   the same for an odd window
    expiry  when the key's counts no longer matter (now + 2P at the last call; the clock of
            the caller): past it the slot may be given to another key

A key is found by linear probing from its hash over at most ``PROBES`` slots.  The compiled form
updates the words with C atomics (compare-and-swap on the current window's cell: exact, no lock,
a crashed worker cannot leave anything locked); this interpreted twin does the same steps under
an ``fcntl`` lock on the table's file descriptor (``lock_fd``), so both forms share one table
correctly -- the interpreted one slowly.

Approximations, stated: a slot reclaimed from an idle key while another worker updates that
key may lose that one call's count; two workers inserting the same new key at once may create
two slots for it, one of which then goes unused (a few calls counted apart, once).  When a key
finds no slot within ``PROBES`` (the table is full of live keys), it is not limited
(``UNTRACKED``) and the table counts the event: the per-API dimension, whose key is always
present, still holds.

fastpath reads no clock: ``now_ns`` is passed in.  Keys must use one clock per table (the gateway
keeps a table for monotonic throttles and one for wall-clock quotas).
"""
from __future__ import annotations

import fcntl
import struct

try:
    import cython

    _COMPILED = cython.compiled
except ImportError:  # pragma: no cover
    _COMPILED = False

MAGIC = 0x54474C494D495431      # "TGLIMIT1"
HEADER = 64                     # magic, slot count, table-full events, (reserved)
SLOT = 32
PROBES = 16
DENIED = -1                     # take(): the call does not pass
UNTRACKED = -2                  # take(): no slot for the key (table full): not limited

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF
_COUNT = 0xFFFFFFFF

_WORD = struct.Struct("<Q")
_SLOT = struct.Struct("<QQQq")


def table_size(slots: int) -> int:
    """Bytes a table of ``slots`` slots needs (``slots`` a power of two)."""
    if slots < PROBES or slots & (slots - 1):
        raise ValueError("slots must be a power of two >= %d" % PROBES)
    return HEADER + slots * SLOT


def init_table(buffer, slots: int) -> None:
    """Write a new table's header into ``buffer`` (zeroed memory, e.g. a new memfd)."""
    struct.pack_into("<QQ", buffer, 0, MAGIC, slots)


def hash_key(data: bytes, seed: int = _FNV_OFFSET) -> int:
    """FNV-1a (64-bit) of ``data``, continuing from ``seed`` (a previous hash_key result): a
    key's fixed prefix is hashed once at load and only the caller's part per call.  Never 0."""
    h = seed
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK64
    return h if h else 1


def _counts(c0, c1, w):
    """(prev, cur): the counts of windows w - 1 and w in a slot's two cells (a cell holding
    another window counts 0)."""
    cells = (c0, c1)
    cur_word = cells[w & 1]
    prev_word = cells[(w - 1) & 1]
    cur = cur_word & _COUNT if (cur_word >> 32) == (w & _COUNT) else 0
    prev = prev_word & _COUNT if (prev_word >> 32) == ((w - 1) & _COUNT) else 0
    return prev, cur


def _estimate(prev, cur, elapsed, period, sliding):
    # (float steps in the compiled form's order: both forms decide alike at the very edge)
    if sliding and prev:
        return cur + float(prev) * float(period - elapsed) / float(period)
    return float(cur)


class CounterTable:
    """The shared table over ``buffer`` (writable, made by :func:`init_table`); ``lock_fd``: the
    file descriptor to lock around updates in this interpreted form (-1: one process only)."""

    def __init__(self, buffer, lock_fd=-1):
        self.view = memoryview(buffer).cast("B")
        magic, slots = struct.unpack_from("<QQ", self.view, 0)
        if magic != MAGIC or slots < PROBES or slots & (slots - 1) or \
                len(self.view) < HEADER + slots * SLOT:
            raise ValueError("not a limiter table")
        self.slots = slots
        self.mask = slots - 1
        self.lock_fd = lock_fd

    # -- the interface ----------------------------------------------------------------------------
    def take(self, key, limit, period_ns, cost, now_ns, sliding=True):
        """Take ``cost`` calls of ``key`` (limit per ``period_ns``): the calls left after this
        one (>= 0) when it passes, DENIED when it does not (nothing is taken), UNTRACKED when
        the table has no room for the key."""
        self._lock()
        try:
            offset = self._find(key, now_ns)
            if offset < 0:
                self._count_full()
                return UNTRACKED
            w = now_ns // period_ns
            elapsed = now_ns - w * period_ns
            _k, c0, c1, expiry = _SLOT.unpack_from(self.view, offset)
            prev, cur = _counts(c0, c1, w)
            left = limit - _estimate(prev, cur, elapsed, period_ns, sliding) - cost
            if left < 0:
                return DENIED
            _WORD.pack_into(self.view, offset + 8 + 8 * (w & 1),
                            ((w & _COUNT) << 32) | min(cur + cost, _COUNT))
            new_expiry = now_ns + 2 * period_ns
            if new_expiry > expiry:
                struct.pack_into("<q", self.view, offset + 24, new_expiry)
            return int(left)
        finally:
            self._unlock()

    def wait_ns(self, key, limit, period_ns, cost, now_ns, sliding=True):
        """Nanoseconds until a call of ``cost`` could pass (0: it could now); read only."""
        self._lock()
        try:
            offset = self._lookup(key)
            if offset < 0:
                return 0
            w = now_ns // period_ns
            elapsed = now_ns - w * period_ns
            _k, c0, c1, _e = _SLOT.unpack_from(self.view, offset)
            prev, cur = _counts(c0, c1, w)
        finally:
            self._unlock()
        return window_wait(prev, cur, elapsed, limit, period_ns, cost, sliding)

    def refund(self, key, period_ns, cost, now_ns):
        """Give back ``cost`` calls taken in the current window (another check refused the
        call after this one passed)."""
        self._lock()
        try:
            offset = self._lookup(key)
            if offset < 0:
                return
            w = now_ns // period_ns
            at = offset + 8 + 8 * (w & 1)
            (word,) = _WORD.unpack_from(self.view, at)
            if (word >> 32) == (w & _COUNT):
                count = word & _COUNT
                _WORD.pack_into(self.view, at, (word & ~_COUNT & _MASK64) | max(count - cost, 0))
        finally:
            self._unlock()

    @property
    def full_events(self):
        """Calls that found no slot (the table full of live keys) since the table was made."""
        return _WORD.unpack_from(self.view, 16)[0]

    # -- slots -------------------------------------------------------------------------------------
    def _find(self, key, now_ns):
        """The offset of key's slot, claiming an empty or expired one; -1 when none is free."""
        view = self.view
        free = -1
        i = key & self.mask
        for _ in range(PROBES):
            offset = HEADER + i * SLOT
            k, _c0, _c1, expiry = _SLOT.unpack_from(view, offset)
            if k == key:
                return offset
            if k == 0:
                free = offset           # (as the compiled form: an empty slot before an expired one)
                break                   # (slots are never emptied: the key is not further on)
            if free < 0 and expiry < now_ns:
                free = offset
            i = (i + 1) & self.mask
        if free < 0:
            return -1
        _SLOT.pack_into(view, free, key, 0, 0, 0)
        return free

    def _lookup(self, key):
        view = self.view
        i = key & self.mask
        for _ in range(PROBES):
            offset = HEADER + i * SLOT
            (k,) = _WORD.unpack_from(view, offset)
            if k == key:
                return offset
            if k == 0:
                return -1
            i = (i + 1) & self.mask
        return -1

    def _count_full(self):
        (n,) = _WORD.unpack_from(self.view, 16)
        _WORD.pack_into(self.view, 16, n + 1)

    def _lock(self):
        if self.lock_fd >= 0:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_EX)

    def _unlock(self):
        if self.lock_fd >= 0:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_UN)


def window_wait(prev, cur, elapsed, limit, period_ns, cost, sliding=True):
    """Nanoseconds from ``elapsed`` into a window with counts ``prev``/``cur`` until a call of
    ``cost`` passes (the counts staying as they are); 0 when it passes now."""
    if cost > limit:
        return period_ns * 2        # (never: the caller refuses such a call outright)
    if limit - _estimate(prev, cur, elapsed, period_ns, sliding) - cost >= 0:
        return 0
    if not sliding:
        return period_ns - elapsed
    if cur + cost <= limit:
        # this window: prev's share must fall to limit - cur - cost
        at = float(period_ns) - float(limit - cur - cost) * float(period_ns) / float(prev)
        return max(1, int(at - elapsed + 0.999999))
    # the next window, where this one's count is the previous one's
    at = (float(period_ns) - float(limit - cost) * float(period_ns) / float(cur)) if cur else 0.0
    return max(1, int(float(period_ns - elapsed) + max(at, 0.0) + 0.999999))
