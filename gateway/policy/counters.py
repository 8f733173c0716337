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

from fastpath import IMPLEMENTATION, limiter

THROTTLE_SLOTS = 1 << 18        # 262,144 live keys (8 MiB; pages are touched as keys arrive)
QUOTA_SLOTS = 1 << 16           # 65,536 (quota, app) pairs


def segment_size() -> int:
    return limiter.table_size(THROTTLE_SLOTS) + limiter.table_size(QUOTA_SLOTS)


def create_segment() -> int:
    """A new, initialised segment; returns its file descriptor (inheritable by pass_fds)."""
    fd = os.memfd_create("tollgate-counters", 0)
    size = segment_size()
    os.ftruncate(fd, size)
    with mmap.mmap(fd, size) as mm:
        split = limiter.table_size(THROTTLE_SLOTS)
        limiter.init_table(memoryview(mm)[:split], THROTTLE_SLOTS)
        limiter.init_table(memoryview(mm)[split:], QUOTA_SLOTS)
    return fd


class NodeCounters:
    """A worker's view of the node's segment (``fd`` from the master; -1: a segment of its
    own, for a worker running alone)."""

    def __init__(self, fd: int = -1):
        if fd < 0:
            fd = create_segment()
        self.fd = fd
        self.map = mmap.mmap(fd, segment_size())
        split = limiter.table_size(THROTTLE_SLOTS)
        view = memoryview(self.map)
        # the interpreted form has no atomics: it locks the segment around each update
        lock_fd = fd if IMPLEMENTATION != "compiled" else -1
        self.throttles = limiter.CounterTable(view[:split], lock_fd)
        self.quotas = limiter.CounterTable(view[split:], lock_fd)
