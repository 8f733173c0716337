# Types for the compiled form of gateway/pipeline.py (Cython pure-Python mode).
from gateway.exchange cimport Exchange

cdef class Pipeline:
    cdef public object worker
    cpdef enter(self, Exchange ex)
