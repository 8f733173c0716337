# Types for the compiled form of gateway/http/tunnel.py (Cython pure-Python mode): the ends'
# callbacks and the forwarding are C calls with C counters, no Python frame per read.
cimport cython
from gateway.exchange cimport Clock

cdef class TunnelStats:
    cdef public long long opened
    cdef public long long open
    cdef public long long to_backend
    cdef public long long to_client
    cdef public dict closed

cdef class Tunnel

cdef class _End:
    cdef public Tunnel tunnel
    cdef public bint from_client

cdef class Tunnel:
    cdef public object worker
    cdef public TunnelStats stats
    cdef public Clock clock
    cdef public object client
    cdef public object backend
    cdef public double idle_s
    cdef public str name
    cdef public tuple api_key
    cdef public str fingerprint
    cdef public str drain_reason
    cdef public double deadline
    cdef public double draining_until
    cdef public list eof_from
    cdef public list plain
    cdef public list gone
    cdef public bint closed
    cdef public bint flushing

    cpdef forward(self, bint from_client, bytes data)
    cpdef hold(self, bint side_is_client, bint paused)
    cdef bint _finish(self, str reason) except -1
    cdef _stop_flushing(self)
