# C-level types for fastpath/headers.py (Cython pure-Python mode).
import cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.string cimport memcpy

cdef bint _COMPILED
cdef int _KEEP, _DATE, _DROP, _CONNECTION, _CONTENT_LENGTH, _TRANSFER_ENCODING, _FORWARDED_FOR
cdef frozenset REQUEST_DROP, RESPONSE_DROP, _PLAIN_CONNECTION
cdef object _MAX_LENGTH
cdef dict _REQUEST_CODES, _RESPONSE_CODES
cdef list _REQUEST_BY_LENGTH, _RESPONSE_BY_LENGTH

@cython.locals(a="const unsigned char *", b="const unsigned char *", i=Py_ssize_t)
cdef bint _same_at(bytes value, Py_ssize_t start, bytes lower)

@cython.locals(out=bytes, dst="char *", src="const char *", pos=Py_ssize_t, n=Py_ssize_t, name=bytes, value=bytes)
cdef bytes _kept_lines(list headers, list by_length, dict codes, Py_ssize_t total)

@cython.locals(n=Py_ssize_t, known=bytes, code=int)
cpdef int name_code(bytes name, list by_length, dict codes)

@cython.locals(p="const unsigned char *", start=Py_ssize_t)
cdef Py_ssize_t _ows_start(bytes value)

@cython.locals(p="const unsigned char *", end=Py_ssize_t)
cdef Py_ssize_t _ows_end(bytes value, Py_ssize_t start)

@cython.locals(start=Py_ssize_t, end=Py_ssize_t)
cdef bint _is_plain_connection(bytes value)

@cython.locals(start=Py_ssize_t, end=Py_ssize_t)
cdef bint _is_chunked(bytes value) except -1

@cython.locals(p="const unsigned char *", i=Py_ssize_t, found=bint, alias=bytes)
cpdef int underscore_kind(bytes name) except -1

@cython.locals(p="const unsigned char *", n="long long", start=Py_ssize_t, end=Py_ssize_t, i=Py_ssize_t, c="unsigned char")
cdef long long _content_length(bytes value) except? -1

cdef long long _length_by_int(bytes value) except? -1

cdef frozenset _connection_tokens(list headers)
cdef list _without(list headers, frozenset drop, frozenset extra)

@cython.locals(name=bytes, value=bytes, code=int, total=Py_ssize_t)
cpdef tuple filter_request_headers(list headers)

@cython.locals(name=bytes, value=bytes, code=int, total=Py_ssize_t, length="long long", framed=bint, chunked=bint, dated=bint)
cpdef tuple filter_response_headers(list headers)
