# C-level types for fastpath/pathnorm.py (Cython pure-Python mode).
import cython

cdef bint _COMPILED

@cython.locals(n=Py_ssize_t)
cpdef str normalize_path(path)

@cython.locals(n=Py_ssize_t, seg=Py_ssize_t, i=Py_ssize_t, k=Py_ssize_t, c=Py_UCS4)
cdef bint _is_clean(str path)

@cython.locals(bad=Py_ssize_t, i=Py_ssize_t, c=Py_UCS4)
cdef _check_characters(str path)

cdef int _hex_value(Py_UCS4 c)

cdef bint _is_unreserved(int v)

@cython.locals(k=Py_ssize_t, hi=int, lo=int, v=int, parts=list)
cdef str _decode_segment(str path, Py_ssize_t start, Py_ssize_t end)

@cython.locals(n=Py_ssize_t, start=Py_ssize_t, end=Py_ssize_t, segments=list, seg=str, trailing=bint, out=str)
cdef str _normalize_slow(str path)
