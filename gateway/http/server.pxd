# Types for the compiled form of gateway/http/server.py (Cython pure-Python mode).
cimport cython
from gateway.exchange cimport Connection, Exchange, RequestIds, monotonic
from gateway.metrics cimport WorkerMetrics
from gateway.pipeline cimport Pipeline
from fastpath._compiled.headers cimport name_code, underscore_kind

cdef class ClientConnection(Connection):
    cdef public object worker
    cdef public object limits
    cdef public Pipeline pipeline
    cdef public RequestIds request_ids
    cdef public WorkerMetrics metrics
    cdef public object access_log
    cdef public object transport
    cdef public object parser
    cdef public str client_ip
    cdef public bytes url
    cdef public list headers
    cdef public bint in_head
    cdef public object head_buffer
    cdef public bint peer_eof
    cdef public Py_ssize_t header_count
    cdef public bint body_seen
    cdef public Py_ssize_t stall_bytes
    cdef public bint underscores
    cdef public Py_ssize_t headers_size
    cdef public object h_host
    cdef public object h_te
    cdef public object h_cl
    cdef public object h_expect
    cdef public object h_stage
    cdef public Exchange parsing
    cdef public Exchange current
    cdef public object pending
    cdef public bint reading_paused
    cdef public bint writing_paused
    cdef public bint closed
    cdef public object deferred_error
    cdef public long long requests
    cdef public list out
    cdef public bint lingering
    cdef public Py_ssize_t linger_bytes
    cdef public Py_ssize_t max_uri
    cdef public Py_ssize_t max_header
    cdef public Py_ssize_t max_headers
    cdef public Py_ssize_t max_count
    cdef public long long max_body
    cdef public Py_ssize_t head_guard
    cdef public double head_timeout
    cdef public double body_timeout
    cdef public double keepalive_timeout

    @cython.locals(size=Py_ssize_t, underscore=int, watched=int)
    cpdef on_header(self, bytes name, bytes value)
    @cython.locals(host=bytes, target=bytes)
    cdef _check_framing(self, Exchange ex)
    cdef bytes _absolute_form(self, Exchange ex, bytes target, object host)
    cdef _start(self, Exchange ex)
    cpdef exchange_finished(self, Exchange ex)
    cpdef abort_exchange(self, Exchange ex)
    cdef _account(self, Exchange ex, bint aborted)
    cpdef reject(self, object error)
    cdef _write_error(self, object error)
    cpdef log_error(self, Exchange ex, object error)
    cpdef write(self, bytes data)
    cpdef uncork(self)
    cpdef linger(self)
    cpdef close(self)
    cpdef hard_close(self)
    cpdef reset(self)
    cpdef pause_reading(self)
    cpdef resume_reading(self)
    cpdef body_backpressure(self, bint paused)
    cpdef set_deadline(self, int kind, double seconds)
    cpdef check_deadline(self, double now)
    cpdef start_drain(self)
