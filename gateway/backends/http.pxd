# Types for the compiled form of gateway/backends/http.py (Cython pure-Python mode).
cimport cython
# compiled, the fastpath functions are C calls (see gateway/pipeline.pxd)
from fastpath._compiled.http1 cimport Head, request_head
from gateway.exchange cimport Exchange, Handler, monotonic
from gateway.http.upstream cimport UpstreamConnection, UpstreamOwner, UpstreamPool


cdef frozenset IDEMPOTENT
cdef dict _METHODS
cdef bytes _CHUNKED

cdef class ProxyCall

cdef class HttpBackend(Handler):
    cdef public object runtime
    cdef public UpstreamPool pool
    cdef public object key
    cdef public list idle
    cdef public str authority
    cdef public bytes host_header
    cdef public list path_parts
    cdef public bint path_has_params
    cdef public bytes base_query
    cdef public bytes method
    cdef public int retries
    cdef public bint prefix
    cdef public Py_ssize_t replay_limit
    cdef public double websocket_idle_s
    cdef public object rewrite
    cdef public object channel
    cdef public bytes channel_host

    # ``call`` typed: ProxyCall's methods are C calls, not Python method lookups
    @cython.locals(call=ProxyCall)
    cpdef on_head(self, Exchange ex)
    @cython.locals(call=ProxyCall)
    cpdef on_body(self, Exchange ex, bytes chunk)
    @cython.locals(call=ProxyCall)
    cpdef on_request_end(self, Exchange ex)
    @cython.locals(call=ProxyCall, where=str)
    cpdef on_timeout(self, Exchange ex)
    @cython.locals(call=ProxyCall)
    cpdef on_abort(self, Exchange ex)
    @cython.locals(call=ProxyCall)
    cpdef on_client_paused(self, Exchange ex, bint paused)
    @cython.locals(n=Py_ssize_t, path=str, target=bytes, query=bytes, method=bytes, framing=bytes,
                   host=bytes)
    cpdef bytes build_head(self, Exchange ex)


cdef class ProxyCall(UpstreamOwner):
    cdef public HttpBackend backend
    cdef public UpstreamConnection upstream
    cdef public bytes head
    cdef public list queued
    cdef public Py_ssize_t queued_bytes
    cdef public list sent
    cdef public Py_ssize_t replay_bytes
    cdef public bint replayable
    cdef public int retries_left
    cdef public int stale_replays
    cdef public bint idempotent
    cdef public bint connecting
    cdef public bint finished
    cdef public object target
    cdef public list tried

    cpdef setup(self, HttpBackend backend, Exchange ex)
    @cython.locals(backend=HttpBackend, conn=UpstreamConnection)
    cpdef dispatch(self, bint fresh)
    cpdef attach(self, UpstreamConnection conn)
    cpdef send_body(self, bytes data)
    cdef _remember(self, bytes data)
    cdef _retry(self, bint fresh)
    cdef bint _pick(self)
    cdef bint _pick_another(self)
    cdef _settle(self)
    cpdef drop_upstream(self)
    cpdef int upstream_head(self, UpstreamConnection conn, int status, Head head, bytes body) except -1
    cpdef upstream_body(self, bytes chunk)
    cpdef upstream_done(self, UpstreamConnection conn, bint reusable)
    cpdef upstream_bad_response(self, UpstreamConnection conn, str detail)
    cpdef upstream_lost(self, UpstreamConnection conn, object exc)
    cpdef upstream_switched(self, UpstreamConnection conn, Head head, bytes rest)
