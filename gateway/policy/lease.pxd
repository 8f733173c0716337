# Types for the compiled form of gateway/policy/lease.py (Cython pure-Python mode).
cimport cython

cdef long long _HORIZON

cdef class Lease:
    cdef public str tag
    cdef public long long window
    cdef public long long tokens
    cdef public long long next_tokens
    cdef public long long prev
    cdef public long long cur
    cdef public double rate
    cdef public long long spent
    cdef public long long rate_ns
    cdef public long long low
    cdef public object pending
    cdef public long long waiters
    cdef public bint exhausted
    cdef public long long retry_ns
    cdef public long long limit
    cdef public long long period
    cdef public long long offset
    cdef public bint sliding
    @cython.locals(w="long long", left="long long", horizon="long long")
    cpdef bint spend(self, long long period_ns, long long cost, long long now_ns)
