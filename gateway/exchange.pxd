# Types for the compiled form of gateway/exchange.py (Cython pure-Python mode).
cimport cython
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.string cimport memcpy
from fastpath._compiled.http1 cimport Head, response_head

cdef bint _COMPILED
cdef dict STATUS_LINES
cdef list _STATUS_BY_CODE
cdef bytes _CHUNKED, _CLOSE, _KEEP_ALIVE, _NOTHING
cdef const char* _HEX

@cython.locals(ts=timespec)
cpdef double monotonic()


cdef class Exchange

cdef class Clock:
    cdef public double now
    cdef public long long second
    cdef public bytes date
    cpdef advance(self, double now)


cdef class Connection:
    cdef public Clock clock
    cdef public str client_ip
    cdef public bytes client_ip_bytes
    cdef public bint reading_paused
    cdef public double deadline
    cdef public int deadline_kind
    cdef public bint draining
    cdef public bint corked
    cdef public bint tls             # the client connection is TLS
    cpdef write(self, bytes data)
    cpdef uncork(self)
    cpdef exchange_finished(self, Exchange ex)
    cpdef abort_exchange(self, Exchange ex)
    cpdef log_error(self, Exchange ex, object error)
    cpdef set_deadline(self, int kind, double seconds)
    cpdef body_backpressure(self, bint paused)


cdef class Handler:
    cdef public double timeout_s
    cpdef on_head(self, Exchange ex)
    cpdef on_body(self, Exchange ex, bytes chunk)
    cpdef on_request_end(self, Exchange ex)
    cpdef on_timeout(self, Exchange ex)
    cpdef on_abort(self, Exchange ex)
    cpdef on_client_paused(self, Exchange ex, bint paused)


cdef class CompiledApi:
    cdef public str name
    cdef public str env
    cdef public str group
    cdef public Handler handler
    cdef public tuple stages
    cdef public object stats
    cdef public str fingerprint
    cdef public CompiledApi preflight


cdef class RequestIds:
    cdef public bytes prefix
    cdef public unsigned long long counter
    @cython.locals(out=bytes, dst="char *", n="unsigned long long", i=int)
    cpdef bytes next(self)


cdef class Exchange:
    cdef public Connection conn
    cdef public Handler handler
    cdef public str method
    cdef public Head head
    cdef public bytes raw_target
    cdef public str path
    cdef public bytes query
    cdef public str host
    cdef public bytes host_bytes
    cdef public bytes rid
    cdef public str version
    cdef public bint keep_alive
    cdef public str client_ip
    cdef public str env
    cdef public object stage
    cdef public CompiledApi api
    cdef public object params
    cdef public str rest
    cdef public long long content_length
    cdef public bint chunked
    cdef public bint expect_continue
    cdef public double started
    cdef public double upstream_started
    cdef public double upstream_elapsed
    cdef public int status
    cdef public long long bytes_sent
    cdef public bint response_started
    cdef public bint done
    cdef public str error_code
    cdef public object handler_state
    cdef public object caller
    cdef public bint request_complete
    cdef public long long body_received
    cdef public str upstream_addr
    cdef public bint resp_chunked
    cdef public bint resp_until_close
    cdef public bint head_request
    cdef public object held
    cdef public object body_digest
    cdef public Py_ssize_t next_stage
    cdef public object waiting
    cdef public bint continued
    cdef public object auth_state
    cdef public bytes resp_lines

    cpdef setup(self, Connection conn, str method, Head head, str version, bint keep_alive,
                double started)
    @cython.locals(status_line=bytes, tail=bytes, bodiless=bint, dated=bint)
    cpdef respond_head(self, int status, Head head, bytes lines, long long content_length, bytes body=*)
    cpdef respond_body(self, bytes chunk)
    cpdef respond_end(self)
    cpdef respond_full(self, int status, bytes lines, bytes body)
    cpdef fail(self, object error)
