# Types for the compiled form of gateway/http/server.py (Cython pure-Python mode).
cimport cython
from gateway.exchange cimport Connection, Exchange, Handler, RequestIds, monotonic
from gateway.metrics cimport WorkerMetrics
from gateway.pipeline cimport Pipeline
from fastpath._compiled.http1 cimport Head, RequestParser

cdef int _E_NEED_DATA, _E_HEAD, _E_BODY, _E_END
cdef bint _valid_host(bytes host)
cdef int _NONE, _HEAD, _IDLE, _BODY, _UPSTREAM, _SEND, _DRAIN, _LINGER, _FLUSH, _WAIT

cdef class ClientConnection(Connection):
    cdef public object worker
    cdef public object limits
    cdef public Pipeline pipeline
    cdef public RequestIds request_ids
    cdef public WorkerMetrics metrics
    cdef public object access_log
    cdef public object transport
    cdef object send_bytes
    cdef public object tls_client
    cdef bytes last_host
    cdef str last_host_str
    cdef public RequestParser parser
    cdef public Exchange current
    cdef public bint running
    cdef public bint peer_eof
    cdef public long long dropped_underscore
    cdef public long long dropped_alias
    cdef public bint writing_paused
    cdef public bint body_paused
    cdef public bint closed
    cdef public long long requests
    cdef public list out
    cdef public bint lingering
    cdef public Py_ssize_t linger_bytes
    cdef public long long max_body
    cdef public double head_timeout
    cdef public double body_timeout
    cdef public double keepalive_timeout

    @cython.locals(parser=RequestParser, ex=Exchange, event=int)
    cdef _run(self)
    @cython.locals(head=Head, ex=Exchange, parser=RequestParser, version=str)
    cdef _on_head(self)
    cdef _count_drops(self)
    @cython.locals(host=bytes, target=bytes, expect=bytes)
    cdef _check_framing(self, Exchange ex, Head head)
    cdef bytes _absolute_form(self, Exchange ex, bytes target, object host)
    @cython.locals(ex=Exchange)
    cdef _on_body(self, bytes chunk)
    @cython.locals(ex=Exchange)
    cdef _on_end(self)
    cdef _start(self, Exchange ex)
    cdef _stage_failed(self, Exchange ex, object exc)
    cdef _release(self, Exchange ex)
    cdef _advance(self, Exchange ex, object pending)
    cdef _continue(self, Exchange ex)
    @cython.locals(handler=Handler)
    cdef _proceed(self, Exchange ex)
    cpdef exchange_finished(self, Exchange ex)
    cpdef abort_exchange(self, Exchange ex)
    cpdef tuple switch_protocols(self, Exchange ex)
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
