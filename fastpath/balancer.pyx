# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled form of fastpath/balancer.py (read its docstring: the algorithms and what they
guarantee).  The members' state lives in C arrays allocated when the balancer is made; a pick
allocates nothing: the members of ``tried`` are marked with the pick's generation number in an
array instead of being put in a set."""
from libc.stdint cimport uint64_t, int64_t, uint32_t, int32_t, uint8_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset


cdef extern from *:
    """
    #include <stdint.h>
    /* (a1 * wb < b1 * wa) exactly: in flight counts and weights (<= 2**40) overflow 64 bits */
    static inline int tg_wlc_less(int64_t a1, int64_t wb, int64_t b1, int64_t wa) {
        return (unsigned __int128)a1 * (unsigned __int128)wb
             < (unsigned __int128)b1 * (unsigned __int128)wa;
    }
    """
    bint tg_wlc_less(int64_t a1, int64_t wb, int64_t b1, int64_t wa) nogil

# The constants and the building of a balancer (checks, hash rings) are the interpreted twin's:
# they run once per balancer, not per pick, and one text of them keeps both forms alike.
from fastpath.balancer import (KINDS, MAX_MEMBERS, MAX_WEIGHT, NONE, POINTS_PER_MEMBER,
                               SOURCE_HASH, URI_HASH, WLC, WRR, _checked, _ring)

cdef enum:
    _WRR = 0
    _WLC = 1

cdef uint64_t _FNV_OFFSET = 0xCBF29CE484222325ULL
cdef uint64_t _FNV_PRIME = 0x100000001B3ULL
cdef int64_t _CLAMP = (<int64_t>1) << 61


cpdef uint64_t hash_bytes(data) except? 0:
    if type(data) is not bytes:
        raise TypeError(f"hash_bytes() takes bytes, not {type(data).__name__}")
    cdef const unsigned char *p = <bytes>data
    cdef Py_ssize_t i, n = len(<bytes>data)
    cdef uint64_t h = _FNV_OFFSET
    for i in range(n):
        h = (h ^ p[i]) * _FNV_PRIME
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return h


cdef class Balancer:
    cdef readonly int n
    cdef readonly int kind
    cdef int64_t *w
    cdef int64_t *cur
    cdef int64_t *infl
    cdef uint8_t *up
    cdef uint8_t *backup
    cdef uint32_t *stamp            # == gen: in the current pick's tried
    cdef uint32_t gen
    cdef uint64_t rr
    cdef int32_t *tier[2]           # members with weight > 0, by tier, in index order
    cdef int tier_n[2]
    cdef int live[2]                # of them, those up
    cdef uint64_t *ring_p[2]        # hash kinds: sorted points of each tier's ring ...
    cdef int32_t *ring_m[2]         # ... and their owners
    cdef int ring_n[2]

    def __cinit__(self):
        cdef int t
        self.w = self.cur = self.infl = NULL
        self.up = self.backup = NULL
        self.stamp = NULL
        for t in range(2):
            self.tier[t] = NULL
            self.ring_p[t] = NULL
            self.ring_m[t] = NULL
            self.tier_n[t] = self.live[t] = self.ring_n[t] = 0

    def __dealloc__(self):
        self._free()

    cdef void _free(self):
        cdef int t
        free(self.w); free(self.cur); free(self.infl)
        free(self.up); free(self.backup); free(self.stamp)
        self.w = self.cur = self.infl = NULL
        self.up = self.backup = NULL
        self.stamp = NULL
        for t in range(2):
            free(self.tier[t]); free(self.ring_p[t]); free(self.ring_m[t])
            self.tier[t] = NULL
            self.ring_p[t] = NULL
            self.ring_m[t] = NULL

    def __init__(self, int kind, weights, backup, names):
        weights, backup, names = _checked(kind, weights, backup, names)
        cdef int n = len(weights)
        cdef int i, t, k
        self._free()
        self.n = n
        self.kind = kind
        self.gen = 0
        self.rr = 0
        self.w = <int64_t *>calloc(n, sizeof(int64_t))
        self.cur = <int64_t *>calloc(n, sizeof(int64_t))
        self.infl = <int64_t *>calloc(n, sizeof(int64_t))
        self.up = <uint8_t *>calloc(n, sizeof(uint8_t))
        self.backup = <uint8_t *>calloc(n, sizeof(uint8_t))
        self.stamp = <uint32_t *>calloc(n, sizeof(uint32_t))
        if not (self.w and self.cur and self.infl and self.up and self.backup and self.stamp):
            raise MemoryError()
        tiers = ([i for i in range(n) if weights[i] and not backup[i]],
                 [i for i in range(n) if weights[i] and backup[i]])
        for i in range(n):
            self.w[i] = weights[i]
            self.up[i] = 1
            self.backup[i] = backup[i]
        for t in range(2):
            members = tiers[t]
            self.tier_n[t] = self.live[t] = len(members)
            self.tier[t] = <int32_t *>calloc(max(1, len(members)), sizeof(int32_t))
            if not self.tier[t]:
                raise MemoryError()
            for k in range(len(members)):
                self.tier[t][k] = members[k]
            if kind >= 2 and members:
                points, owners = _ring(members, weights, names)
                self.ring_n[t] = len(points)
                self.ring_p[t] = <uint64_t *>calloc(len(points), sizeof(uint64_t))
                self.ring_m[t] = <int32_t *>calloc(len(points), sizeof(int32_t))
                if not (self.ring_p[t] and self.ring_m[t]):
                    raise MemoryError()
                for k in range(len(points)):
                    self.ring_p[t][k] = points[k]
                    self.ring_m[t][k] = owners[k]

    cdef int _member(self, i) except -1:
        cdef Py_ssize_t m = i            # (through __index__, as operator.index)
        if m < 0 or m >= self.n:
            raise IndexError(f"member {m} is not in this balancer (0 to {self.n - 1})")
        return <int>m

    def set_up(self, i, up):
        cdef int m = self._member(i)
        cdef uint8_t u = 1 if up else 0
        if self.up[m] != u:
            self.up[m] = u
            if self.w[m]:
                self.live[self.backup[m]] += 1 if u else -1

    def is_up(self, i):
        return self.up[self._member(i)] != 0

    def inflight(self, i):
        return self.infl[self._member(i)]

    def release(self, i):
        cdef int m = self._member(i)
        if self.infl[m] > 0:
            self.infl[m] -= 1

    def pick(self, uint64_t key_hash, tried):
        cdef list marks
        cdef Py_ssize_t k, t_i
        cdef int tier, size, j, s, i, best = -1
        cdef int32_t *members
        cdef int32_t *owners
        cdef uint64_t *points
        cdef int64_t v, top = 0, total
        cdef int lo, hi, mid
        cdef uint32_t gen
        self.gen += 1
        if self.gen == 0:                   # (after 2**32 picks: old marks must not match)
            memset(self.stamp, 0, self.n * sizeof(uint32_t))
            self.gen = 1
        gen = self.gen
        if tried:
            marks = tried if type(tried) is list else list(tried)
            for k in range(len(marks)):
                t_i = marks[k]
                if t_i < 0 or t_i >= self.n:
                    raise IndexError(f"tried member {marks[k]} is not in this balancer "
                                     f"(0 to {self.n - 1})")
                self.stamp[t_i] = gen
        self.rr += 1
        for tier in range(2):
            if not self.live[tier]:
                continue
            members = self.tier[tier]
            size = self.tier_n[tier]
            if self.kind == _WRR:
                total = 0
                for s in range(size):
                    i = members[s]
                    if self.up[i] and self.stamp[i] != gen:
                        v = self.cur[i] + self.w[i]
                        self.cur[i] = v
                        total += self.w[i]
                        if best < 0 or v > top:
                            best = i
                            top = v
                if best >= 0:
                    self.cur[best] = top - total
                    if top > _CLAMP or top - total < -_CLAMP:
                        memset(self.cur, 0, self.n * sizeof(int64_t))
            elif self.kind == _WLC:
                j = <int>(self.rr % <uint64_t>size)
                for s in range(size):
                    i = members[j]
                    if self.up[i] and self.stamp[i] != gen:
                        if best < 0 or tg_wlc_less(self.infl[i] + 1, self.w[best],
                                                   self.infl[best] + 1, self.w[i]):
                            best = i
                    j += 1
                    if j == size:
                        j = 0
            else:
                points = self.ring_p[tier]
                owners = self.ring_m[tier]
                size = self.ring_n[tier]
                lo = 0                      # the first point >= key_hash (bisect_left)
                hi = size
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if points[mid] < key_hash:
                        lo = mid + 1
                    else:
                        hi = mid
                j = lo
                for s in range(size):
                    if j == size:
                        j = 0
                    i = owners[j]
                    if self.up[i] and self.stamp[i] != gen:
                        best = i
                        break
                    j += 1
            if best >= 0:
                self.infl[best] += 1
                return best
        return NONE
