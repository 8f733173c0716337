"""The counters every worker of one gateway node shares: one budget per node, not per worker.

Why shared memory: N workers each granting the whole limit would let N times the limit through;
splitting the limit N ways refuses calls early whenever the kernel hands one worker more
connections than another (the listening queue is shared, not balanced), and a worker-owning
master would put a message round trip on every throttled call.  A table in shared memory,
updated with atomic compare-and-swap by the compiled limiter, is exact, costs a few
nanoseconds, and needs no lock a crashed worker could leave held (see fastpath/limiter.py).

The master creates the segment (a memfd: anonymous, freed with the last process holding it) at
start and hands its descriptor to every worker it starts, so the counters outlive reloads and
worker restarts.  It holds two tables: throttles (windows on the monotonic clock, rolling) and
app quotas (windows on the wall clock, aligned at the quota's reset time).
"""
from __future__ import annotations

import mmap
import os
import struct

from fastpath import IMPLEMENTATION, limiter

THROTTLE_SLOTS = 1 << 18        # 262,144 live caller keys (8 MiB; pages touched as keys arrive)
API_SLOTS = 1 << 16             # 65,536 (policy, API, environment) keys: the configuration's
QUOTA_SLOTS = 1 << 16           # 65,536 (quota, app) pairs

#: the segment's tables, in order: callers' keys (ip, app, user: as many as clients bring),
#: the policies' own keys (api: as many as the configuration binds, so a flood of new callers
#: filling the first table can never leave an API unlimited), quotas (wall clock)
TABLES = ("throttles", "api_throttles", "quotas")


def caller_slots(keys: int) -> int:
    """Slots for ``keys`` live caller keys: the next power of two (at least 1024)."""
    slots = 1024
    while slots < keys:
        slots *= 2
    return slots


def create_segment(throttle_keys: int = THROTTLE_SLOTS) -> int:
    """A new, initialised segment with room for ``throttle_keys`` live caller keys; returns
    its file descriptor (inheritable by pass_fds)."""
    sizes = (caller_slots(throttle_keys), API_SLOTS, QUOTA_SLOTS)
    fd = os.memfd_create("tollgate-counters", 0)
    os.ftruncate(fd, sum(limiter.table_size(slots) for slots in sizes))
    with mmap.mmap(fd, 0) as mm:
        at = 0
        for slots in sizes:
            size = limiter.table_size(slots)
            region = memoryview(mm)[at:at + size]
            limiter.init_table(region, slots)
            region.release()
            at += size
    return fd


class NodeCounters:
    """A worker's view of the node's segment (``fd`` from the master; -1: a segment of its
    own, for a worker running alone): ``throttles`` (callers' keys), ``api_throttles`` (the
    policies' own keys) and ``quotas``.  Each table's size is read from its header."""

    def __init__(self, fd: int = -1):
        if fd < 0:
            fd = create_segment()
        self.fd = fd
        self.map = mmap.mmap(fd, 0)
        # the interpreted form has no atomics: it locks the segment around each update
        lock_fd = fd if IMPLEMENTATION != "compiled" else -1
        at = 0
        for name in TABLES:
            _magic, slots = struct.unpack_from("<QQ", self.map, at)
            size = limiter.table_size(slots)
            setattr(self, name, limiter.CounterTable(memoryview(self.map)[at:at + size],
                                                     lock_fd))
            at += size
