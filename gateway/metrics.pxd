# Types for the compiled form of gateway/metrics.py (Cython pure-Python mode).
cimport cython
from gateway.exchange cimport CompiledApi, Exchange, monotonic

cdef class ApiStats:
    cdef public tuple key
    cdef public bint changed
    # C arrays: a request bumps C integers, not Python ints in lists (sizes: STATUS_CLASSES,
    # BUCKETS + 1; a mismatch fails at import)
    cdef long long counts[6]
    cdef long long duration[15]
    cdef public double duration_sum
    cdef long long upstream[15]
    cdef public double upstream_sum
    cpdef observe(self, int status_index, double duration, double upstream)

# one per BUCKETS entry: a length mismatch fails at import, loudly
cdef double _BOUNDS[14]
cdef Py_ssize_t _NBOUNDS

@cython.locals(i=Py_ssize_t)
cdef Py_ssize_t _bucket(double value)

cdef class WorkerMetrics:
    cdef public dict apis
    cdef public dict errors
    cdef public dict dropped_headers
    cdef public dict auth_failures
    cdef public dict counters
    cdef public long long truncated
    cdef public str implementation
    cdef public ApiStats unrouted
    cdef public object redis
    cdef public list changed
    cdef public set auth_changed
    cdef public dict counters_changed
    cdef public object certificates_sent
    cpdef ApiStats api_stats(self, str api, str env)
    @cython.locals(stats=ApiStats, index=int, status=int, api=CompiledApi)
    cpdef observe(self, Exchange ex, bint aborted)
    cpdef count_error(self, str code)
    cpdef count(self, str family, tuple labels)
    cpdef count_dropped_header(self, str reason)
