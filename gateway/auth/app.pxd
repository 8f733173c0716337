# Types for the compiled form of gateway/auth/app.py (Cython pure-Python mode).
cimport cython
from gateway.exchange cimport Exchange
from gateway.auth.signed cimport SignatureCheck
from fastpath._compiled.http1 cimport Head


cdef class AppCredentials:
    cdef public str name
    cdef public str public_key
    cdef public object key
    cdef public bytes secret_digest
    cdef public object acl


cdef class AppIndex:
    cdef public dict by_key
    cdef public dict by_code


cdef class AppAuth:
    cdef public AppIndex apps
    cdef public frozenset allowed
    cdef public str api_name
    cdef public object metrics
    cdef public bint app_code
    cdef public bint key_headers
    cdef public SignatureCheck signature
    cpdef _accept(self, Exchange ex, AppCredentials app)
    @cython.locals(app=AppCredentials, head=Head, value=bytes, code=bytes, key=bytes,
                   secret=bytes)
    cpdef object _check(self, Exchange ex)
