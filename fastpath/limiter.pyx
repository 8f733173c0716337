# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled form of fastpath/limiter.py (read its docstring: the algorithm, the table, the
approximations).  The table's words are updated with C atomics, so every worker process mapping
the table shares it without a lock: the current window's cell is changed by compare-and-swap
from the value the decision was made on, and a decision retried when another worker got there
first."""
from libc.stdint cimport uint64_t, int64_t, uint8_t

import struct

cdef extern from *:
    """
    #include <stdint.h>
    static inline uint64_t tg_load(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void tg_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int tg_cas(uint64_t *p, uint64_t expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE);
    }
    static inline void tg_add(uint64_t *p, uint64_t v) { __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
    """
    uint64_t tg_load(uint64_t *p) nogil
    void tg_store(uint64_t *p, uint64_t v) nogil
    bint tg_cas(uint64_t *p, uint64_t expected, uint64_t desired) nogil
    void tg_add(uint64_t *p, uint64_t v) nogil

MAGIC = 0x54474C494D495431
HEADER = 64
SLOT = 32
PROBES = 16
DENIED = -1
UNTRACKED = -2

cdef uint64_t _FNV_OFFSET = 0xCBF29CE484222325ULL
cdef uint64_t _FNV_PRIME = 0x100000001B3ULL
cdef uint64_t _COUNT = 0xFFFFFFFFULL
cdef int _PROBES = 16
cdef enum:
    _HEADER = 64
    _SLOTSIZE = 32


def table_size(slots):
    if slots < PROBES or slots & (slots - 1):
        raise ValueError("slots must be a power of two >= %d" % PROBES)
    return HEADER + slots * SLOT


def init_table(buffer, slots):
    struct.pack_into("<QQ", buffer, 0, MAGIC, slots)


cpdef uint64_t hash_key(bytes data, uint64_t seed=0xCBF29CE484222325ULL):
    cdef const unsigned char *p = data
    cdef Py_ssize_t i, n = len(data)
    cdef uint64_t h = seed
    for i in range(n):
        h = (h ^ p[i]) * _FNV_PRIME
    return h if h else 1


cdef inline uint64_t _count(uint64_t word, int64_t w):
    """The count a cell holds for window w (0 when it holds another window)."""
    return word & _COUNT if (word >> 32) == (<uint64_t>w & _COUNT) else 0


cdef inline double _estimate(uint64_t prev, uint64_t cur, int64_t elapsed, int64_t period,
                             bint sliding):
    if sliding and prev:
        return <double>cur + <double>prev * <double>(period - elapsed) / <double>period
    return <double>cur


cdef class CounterTable:
    cdef object view            # keeps the buffer alive while base points into it
    cdef uint8_t *base
    cdef public uint64_t slots
    cdef uint64_t mask
    cdef public int lock_fd

    def __init__(self, buffer, lock_fd=-1):
        cdef uint8_t[::1] view = memoryview(buffer).cast("B")
        magic, slots = struct.unpack_from("<QQ", view, 0)
        if magic != MAGIC or slots < PROBES or slots & (slots - 1) or \
                view.shape[0] < HEADER + slots * SLOT:
            raise ValueError("not a limiter table")
        self.view = view
        self.base = &view[0]
        self.slots = slots
        self.mask = slots - 1
        self.lock_fd = lock_fd      # (unused here: the atomics need no lock)

    cdef inline uint64_t *_slot(self, uint64_t i):
        return <uint64_t *>(self.base + _HEADER + i * _SLOTSIZE)

    cdef uint64_t *_find(self, uint64_t key, int64_t now_ns):
        """key's slot, claiming an empty or expired one; NULL when there is none."""
        cdef uint64_t i = key & self.mask
        cdef uint64_t *s
        cdef uint64_t *free = NULL
        cdef uint64_t k
        cdef int n
        for n in range(_PROBES):
            s = self._slot(i)
            k = tg_load(s)
            if k == key:
                return s
            if k == 0:
                if tg_cas(s, 0, key):
                    return s
                if tg_load(s) == key:       # another worker inserted this very key
                    return s
            elif free == NULL and <int64_t>tg_load(s + 3) < now_ns:
                free = s
            i = (i + 1) & self.mask
        if free != NULL:
            k = tg_load(free)
            if <int64_t>tg_load(free + 3) < now_ns and tg_cas(free, k, key):
                tg_store(free + 1, 0)
                tg_store(free + 2, 0)
                tg_store(free + 3, 0)
                return free
        return NULL

    cdef uint64_t *_lookup(self, uint64_t key):
        cdef uint64_t i = key & self.mask
        cdef uint64_t *s
        cdef uint64_t k
        cdef int n
        for n in range(_PROBES):
            s = self._slot(i)
            k = tg_load(s)
            if k == key:
                return s
            if k == 0:
                return NULL
            i = (i + 1) & self.mask
        return NULL

    cpdef long long take(self, uint64_t key, long long limit, long long period_ns,
                         long long cost, long long now_ns, bint sliding=True):
        cdef uint64_t *s = self._find(key, now_ns)
        cdef int64_t w, elapsed
        cdef uint64_t cur_word, cur, prev, wbits
        cdef uint64_t *cell
        cdef double left
        cdef int64_t expiry
        if s == NULL:
            tg_add(<uint64_t *>(self.base + 16), 1)
            return UNTRACKED
        w = now_ns // period_ns
        elapsed = now_ns - w * period_ns
        wbits = <uint64_t>w & _COUNT
        cell = s + 1 + (w & 1)
        while True:
            cur_word = tg_load(cell)
            cur = _count(cur_word, w)
            prev = _count(tg_load(s + 1 + ((w - 1) & 1)), w - 1)
            left = <double>limit - _estimate(prev, cur, elapsed, period_ns, sliding) - <double>cost
            if left < 0:
                return DENIED
            if tg_cas(cell, cur_word, (wbits << 32) | min(cur + <uint64_t>cost, _COUNT)):
                break
        expiry = now_ns + 2 * period_ns
        if <int64_t>tg_load(s + 3) < expiry:
            tg_store(s + 3, <uint64_t>expiry)
        return <long long>left

    cpdef long long wait_ns(self, uint64_t key, long long limit, long long period_ns,
                            long long cost, long long now_ns, bint sliding=True):
        cdef uint64_t *s = self._lookup(key)
        cdef int64_t w, elapsed
        cdef uint64_t cur, prev
        if s == NULL:
            return 0
        w = now_ns // period_ns
        elapsed = now_ns - w * period_ns
        cur = _count(tg_load(s + 1 + (w & 1)), w)
        prev = _count(tg_load(s + 1 + ((w - 1) & 1)), w - 1)
        return window_wait(prev, cur, elapsed, limit, period_ns, cost, sliding)

    cpdef refund(self, uint64_t key, long long period_ns, long long cost, long long now_ns):
        cdef uint64_t *s = self._lookup(key)
        cdef int64_t w
        cdef uint64_t word, count, wbits
        cdef uint64_t *cell
        if s == NULL:
            return
        w = now_ns // period_ns
        wbits = <uint64_t>w & _COUNT
        cell = s + 1 + (w & 1)
        while True:
            word = tg_load(cell)
            if (word >> 32) != wbits:
                return
            count = word & _COUNT
            count = count - <uint64_t>cost if count > <uint64_t>cost else 0
            if tg_cas(cell, word, (wbits << 32) | count):
                return

    @property
    def full_events(self):
        return tg_load(<uint64_t *>(self.base + 16))


cpdef long long window_wait(long long prev, long long cur, long long elapsed, long long limit,
                            long long period_ns, long long cost, bint sliding=True):
    cdef double at
    if cost > limit:
        return period_ns * 2
    if <double>limit - _estimate(prev, cur, elapsed, period_ns, sliding) - <double>cost >= 0:
        return 0
    if not sliding:
        return period_ns - elapsed
    if cur + cost <= limit:
        at = <double>period_ns - <double>(limit - cur - cost) * <double>period_ns / <double>prev
        return max(1, <long long>(at - <double>elapsed + 0.999999))
    at = (<double>period_ns - <double>(limit - cost) * <double>period_ns / <double>cur) if cur else 0.0
    if at < 0:
        at = 0.0
    return max(1, <long long>(<double>(period_ns - elapsed) + at + 0.999999))
