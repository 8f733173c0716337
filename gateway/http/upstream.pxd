# Types for the compiled form of gateway/http/upstream.py (Cython pure-Python mode).
cimport cython
from gateway.exchange cimport Connection, Exchange
from fastpath._compiled.http1 cimport Head, ResponseParser

cdef int _UNTIL_CLOSE, _CHUNKED
cdef int _E_NEED_DATA, _E_HEAD, _E_BODY, _E_END


cdef class UpstreamConnection


cdef class UpstreamOwner:
    cdef public Exchange ex
    cpdef int upstream_head(self, UpstreamConnection conn, int status, Head head, bytes body) except -1
    cpdef upstream_body(self, bytes chunk)
    cpdef upstream_done(self, UpstreamConnection conn, bint reusable)
    cpdef upstream_bad_response(self, UpstreamConnection conn, str detail)
    cpdef upstream_lost(self, UpstreamConnection conn, object exc)
    cpdef upstream_switched(self, UpstreamConnection conn, Head head, bytes rest)

cdef class UpstreamPool

cdef class UpstreamConnection:
    cdef public UpstreamPool pool
    cdef public object key
    cdef public list idle
    cdef public object transport
    cdef object send_bytes
    cdef public ResponseParser parser
    cdef public UpstreamOwner owner
    cdef public int uses
    cdef public double idle_since
    cdef public bint got_bytes
    cdef public bint closed
    cdef public bint interim
    cdef public bint skip_body
    cdef public bint upgrading
    cdef public bint eof_body
    cdef public bint reading_paused
    cdef public Head waiting

    cpdef close(self)
    cpdef send(self, UpstreamOwner owner, bytes data, bint skip_body, bint upgrading)
    cpdef write(self, bytes data)
    cpdef pause_reading(self, bint paused)
    @cython.locals(parser=ResponseParser, event=int, head=Head, status=int, leftover=bint)
    cdef _run(self, UpstreamOwner owner)
    @cython.locals(framing=int)
    cdef _head(self, UpstreamOwner owner, Head head, bytes body)
    cdef _bad(self, UpstreamOwner owner, str detail)
    cdef _switch(self, UpstreamOwner owner, Head head)


cdef class UpstreamPool:
    cdef public object loop
    cdef public object limits
    cdef public dict idle
    cdef public int opened
    cdef public Py_ssize_t max_idle
    cdef public double idle_timeout
    cdef public Py_ssize_t max_header
    cdef public Py_ssize_t max_headers
    cdef public Py_ssize_t max_count
    cdef public Py_ssize_t head_guard
    cdef public dict distrusted
    cdef public long long desyncs

    cpdef list slot(self, object key)
    cpdef UpstreamConnection take(self, list conns)
    @cython.locals(conns=list)
    cpdef give_back(self, UpstreamConnection conn, double now)
    cpdef distrust(self, object key, str what)
    cpdef forget(self, UpstreamConnection conn)
    cpdef sweep(self, double now)
    cpdef close_all(self)
