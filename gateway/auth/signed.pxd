# Types for the compiled form of gateway/auth/signed.py (Cython pure-Python mode).
cimport cython
from gateway.exchange cimport Exchange


cdef class SignatureCheck:
    cdef public dict by_key
    cdef public object fail
    cdef public object accept
    cdef public object done
    cdef public object count
    cdef public str unknown
    @cython.locals(signed=tuple, raw=bytes, path=bytes, query=bytes, q=Py_ssize_t, now=double,
                   pending=PendingSignature)
    cpdef object check(self, Exchange ex, bytes value)
    cpdef object failed(self, object exc)


cdef class PendingSignature:
    cdef public SignatureCheck check
    cdef public object credentials
    cdef public tuple signed
    cdef public bytes path
    cdef public bytes query
    cdef public double now
