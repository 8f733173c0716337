"""The health of every channel member of one gateway node, in shared memory.

One table per node: the master creates it (a memfd, like the throttle counters) and hands its
descriptor to every worker, so the master's active checker and the workers' passive ejections
write one state per member and every process reads it.  A member is identified by its channel,
host and port (:func:`member_key`): it keeps its slot -- and its state -- across reloads as long
as these stay.

Layout (little-endian)::

    header  magic u64 | slots u64 | generation u64 | reserved u64
    slot i  key u64 (0 empty, TOMBSTONE freed) | state u32 | ejections u32 | passive_until_ns u64

``generation`` is bumped after every change, so a reader polls one number and reads the slots
again only when it moved.  ``passive_until_ns`` is on CLOCK_MONOTONIC (``time.monotonic_ns()``),
the same clock in every process of the machine.

Writers take an ``fcntl`` lock on the segment around each change: the generation is a
read-modify-write, and two processes bumping it at once must not both write the same value
(a reader that saw the first would miss the second change).  Readers take no lock: a change
that lands while a reader reads shows up as one more generation bump.  None of this is on the
request path: workers read the table when its generation moved, a few times a second at most.

Slots are found by linear probing on a 64-bit hash of the key; a freed slot becomes a tombstone
(probing goes on past it; a new key may reuse it), so the slots of live members never move.
"""
from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct

__all__ = ["UNKNOWN", "HEALTHY", "UNHEALTHY", "STATE_NAMES", "create_health_segment",
           "member_key", "HealthTable"]

UNKNOWN, HEALTHY, UNHEALTHY = 0, 1, 2
STATE_NAMES = ("unknown", "healthy", "unhealthy")

MAGIC = 0x544C_4748_4C54_4831          # "TLGHLTH1"
DEFAULT_SLOTS = 4096
TOMBSTONE = 0xFFFF_FFFF_FFFF_FFFF

_HEADER = struct.Struct("<QQQQ")
_SLOT = struct.Struct("<QIIQ")
_GEN_AT = 16
_KEY, _STATE, _EJECTIONS, _UNTIL = 0, 8, 12, 16       # offsets inside a slot


def _size(slots: int) -> int:
    return _HEADER.size + slots * _SLOT.size


def create_health_segment(slots: int = DEFAULT_SLOTS) -> int:
    """A new, zeroed table with ``slots`` slots; returns its file descriptor (for pass_fds)."""
    if slots < 1:
        raise ValueError("a health table needs at least one slot")
    fd = os.memfd_create("tollgate-health", 0)
    os.ftruncate(fd, _size(slots))
    with mmap.mmap(fd, 0) as mm:
        _HEADER.pack_into(mm, 0, MAGIC, slots, 0, 0)
    return fd


def member_key(channel: str, host: str, port: int) -> bytes:
    """A member's identity: its channel, host and port (the port it is served on)."""
    return b"%s\0%s\0%d" % (channel.encode(), host.lower().encode(), port)


def _hash(key: bytes) -> int:
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return 1 if h in (0, TOMBSTONE) else h        # 0 and TOMBSTONE mark empty and freed slots


class HealthTable:
    """A process's view of the node's table (``fd`` from the master), or, with ``fd`` None,
    a private table of ``slots`` slots.  The descriptor stays open (the master passes it on)."""

    def __init__(self, fd: int | None = None, slots: int = DEFAULT_SLOTS):
        if fd is None:
            fd = create_health_segment(slots)
        self.fd = fd
        self.map = mmap.mmap(fd, 0)
        magic, count, _gen, _ = _HEADER.unpack_from(self.map, 0)
        if magic != MAGIC or len(self.map) < _size(count):
            self.map.close()
            raise ValueError("not a health table segment")
        self.slots = count

    # -- locking --------------------------------------------------------------------------------
    def _lock(self):
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def _unlock(self):
        fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _bump(self):
        (gen,) = struct.unpack_from("<Q", self.map, _GEN_AT)
        struct.pack_into("<Q", self.map, _GEN_AT, (gen + 1) & 0xFFFF_FFFF_FFFF_FFFF)

    @staticmethod
    def _at(slot: int) -> int:
        return _HEADER.size + slot * _SLOT.size

    def _check(self, slot: int) -> int:
        if not 0 <= slot < self.slots:
            raise IndexError(f"no slot {slot} in a table of {self.slots}")
        return _HEADER.size + slot * _SLOT.size

    # -- slots ----------------------------------------------------------------------------------
    def _find(self, h: int) -> tuple[int, int]:
        """(slot holding h or -1, first reusable slot on the way or -1)."""
        n = self.slots
        i = h % n
        reusable = -1
        for _ in range(n):
            (k,) = struct.unpack_from("<Q", self.map, self._at(i))
            if k == h:
                return i, reusable
            if k == 0:
                return -1, (i if reusable < 0 else reusable)
            if k == TOMBSTONE and reusable < 0:
                reusable = i
            i = i + 1 if i + 1 < n else 0
        return -1, reusable

    def slot(self, key: bytes, create: bool = True) -> int:
        """The slot of ``key``; with ``create``, a new one (zeroed: UNKNOWN) when it has none.
        -1 when it has none and none was made (the table is full: the member is untracked)."""
        h = _hash(key)
        found, _ = self._find(h)
        if found >= 0 or not create:
            return found
        self._lock()
        try:
            found, free = self._find(h)        # again: another process may have made it
            if found >= 0 or free < 0:
                return found
            at = self._at(free)
            _SLOT.pack_into(self.map, at, 0, UNKNOWN, 0, 0)
            struct.pack_into("<Q", self.map, at + _KEY, h)   # the key last: the slot is ready
            self._bump()
            return free
        finally:
            self._unlock()

    def keys(self):
        """(slot, key hash) of every slot in use (for status pages and tests)."""
        for i in range(self.slots):
            (k,) = struct.unpack_from("<Q", self.map, self._at(i))
            if k not in (0, TOMBSTONE):
                yield i, k

    # -- reading --------------------------------------------------------------------------------
    def generation(self) -> int:
        return struct.unpack_from("<Q", self.map, _GEN_AT)[0]

    def state(self, slot: int) -> int:
        return struct.unpack_from("<I", self.map, self._check(slot) + _STATE)[0]

    def ejections(self, slot: int) -> int:
        return struct.unpack_from("<I", self.map, self._check(slot) + _EJECTIONS)[0]

    def passive_until(self, slot: int) -> int:
        return struct.unpack_from("<Q", self.map, self._check(slot) + _UNTIL)[0]

    # -- writing --------------------------------------------------------------------------------
    def set_state(self, slot: int, state: int) -> bool:
        """Set a member's state; True when it changed (the generation is bumped then)."""
        if state not in (UNKNOWN, HEALTHY, UNHEALTHY):
            raise ValueError(f"invalid health state {state}")
        at = self._check(slot)
        self._lock()
        try:
            if struct.unpack_from("<I", self.map, at + _STATE)[0] == state:
                return False
            struct.pack_into("<I", self.map, at + _STATE, state)
            self._bump()
            return True
        finally:
            self._unlock()

    def eject(self, slot: int, until_ns: int) -> int:
        """A worker's passive ejection: UNHEALTHY until ``until_ns`` (monotonic ns), one more
        ejection counted; returns the member's ejections so far."""
        at = self._check(slot)
        self._lock()
        try:
            count = min(struct.unpack_from("<I", self.map, at + _EJECTIONS)[0] + 1, 0xFFFF_FFFF)
            struct.pack_into("<IIQ", self.map, at + _STATE, UNHEALTHY, count, until_ns)
            self._bump()
            return count
        finally:
            self._unlock()

    def eject_once(self, slot: int, now_ns: int, backoff_ns: int, max_backoff_ns: int) -> int:
        """A worker's passive ejection of a member that is not ejected already (one check and
        write under the lock: two workers failing on it at once eject it once).  UNHEALTHY
        until ``now_ns`` + ``backoff_ns`` doubled for each ejection in a row before (at most
        ``max_backoff_ns``); returns the member's ejections so far, 0 when it was UNHEALTHY."""
        at = self._check(slot)
        self._lock()
        try:
            state, count = struct.unpack_from("<II", self.map, at + _STATE)
            if state == UNHEALTHY:
                return 0
            count = min(count + 1, 0xFFFF_FFFF)
            until = now_ns + min(max_backoff_ns, backoff_ns << min(count - 1, 16))
            struct.pack_into("<IIQ", self.map, at + _STATE, UNHEALTHY, count, until)
            self._bump()
            return count
        finally:
            self._unlock()

    def readmit(self, slot: int) -> None:
        """A passive back-off is over (no active check decides): UNKNOWN again, the back-off
        cleared; the ejections are kept (the next back-off grows) until :meth:`reset_ejections`."""
        at = self._check(slot)
        self._lock()
        try:
            struct.pack_into("<I", self.map, at + _STATE, UNKNOWN)
            struct.pack_into("<Q", self.map, at + _UNTIL, 0)
            self._bump()
        finally:
            self._unlock()

    def reset_ejections(self, slot: int) -> None:
        at = self._check(slot)
        self._lock()
        try:
            if struct.unpack_from("<I", self.map, at + _EJECTIONS)[0]:
                struct.pack_into("<I", self.map, at + _EJECTIONS, 0)
                self._bump()
        finally:
            self._unlock()

    def free(self, live_keys) -> None:
        """Free the slots whose key is not in ``live_keys`` (the master, after a reload)."""
        live = {_hash(k) for k in live_keys}
        self._lock()
        try:
            changed = False
            for i in range(self.slots):
                at = self._at(i)
                (k,) = struct.unpack_from("<Q", self.map, at)
                if k not in (0, TOMBSTONE) and k not in live:
                    _SLOT.pack_into(self.map, at, TOMBSTONE, UNKNOWN, 0, 0)
                    changed = True
            if changed:
                self._bump()
        finally:
            self._unlock()

    def close(self) -> None:
        self.map.close()
