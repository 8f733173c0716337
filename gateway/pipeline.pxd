# Types for the compiled form of gateway/pipeline.py (Cython pure-Python mode).
# The fastpath functions are cimported: compiled, the gateway calls them as C functions (the
# gateway is compiled only together with a live compiled fastpath; see gateway/__init__.py).
cimport cython
from gateway.exchange cimport Exchange
from fastpath._compiled.pathnorm cimport normalize_path
from fastpath._compiled.router cimport Router

cdef bint _COMPILED

@cython.locals(i=Py_ssize_t, q=Py_ssize_t, c="unsigned char")
cdef Py_ssize_t _query_start(bytes raw)

from gateway.exchange cimport CompiledApi

cdef class Pipeline:
    cdef public object worker
    cdef public Router router
    cdef public object trusted
    @cython.locals(q=Py_ssize_t, raw=bytes, path=str, found=tuple, api=CompiledApi)
    cpdef object enter(self, Exchange ex)
    @cython.locals(stages=tuple, i=Py_ssize_t)
    cpdef object resume(self, Exchange ex)
