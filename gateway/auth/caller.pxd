# Types for the compiled form of gateway/auth/caller.py (Cython pure-Python mode).
cdef class Caller:
    cdef public str kind
    cdef public str app
    cdef public str app_key
    cdef public str user
    cdef public str account
    cdef public dict frontend
    cdef public dict backend
