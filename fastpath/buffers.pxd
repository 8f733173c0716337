# C-level types for fastpath/buffers.py (Cython pure-Python mode).
import cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy

cdef bint _COMPILED

cpdef bytes concat(object parts)

@cython.locals(total=Py_ssize_t, pos=Py_ssize_t, n=Py_ssize_t, dst="char *", out=bytes, piece=bytes)
cdef bytes _concat_tuple(tuple parts)
