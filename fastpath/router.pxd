# C-level types for fastpath/router.py (Cython pure-Python mode).
# The trie nodes are extension types with typed slots, and the matcher's helpers are C functions
# with typed indices, so that a lookup costs dict probes and slices rather than interpreter work.
import cython
# _next_slash's compiled branch calls the C API directly; the interpreted one uses str.find.
from cpython.unicode cimport PyUnicode_FindChar

cdef bint _COMPILED

cdef class _Route:
    cdef readonly object target
    cdef readonly str template
    cdef readonly bint exact
    cdef readonly tuple names
    cdef readonly object greedy
    cdef readonly bint has_params
    cdef readonly Py_ssize_t plain_len

cdef class _Node:
    cdef public dict children
    cdef public _Node param
    cdef public _Node greedy
    cdef public dict exact
    cdef public dict prefix

cdef class _Tree:
    cdef readonly _Node root
    cdef readonly dict static

cdef class _Env:
    cdef readonly dict by_host
    cdef public _Tree any

cdef class Router:
    cdef dict _envs
    cdef bint _frozen
    cdef Py_ssize_t _count
    cdef readonly dict _templates
    cdef dict _previous

    @cython.locals(env_routes=_Env, n=Py_ssize_t, stop=Py_ssize_t, tree=_Tree, found=object)
    cpdef match(self, str env, str host, str method, str path)

cdef object _find_tree(object env_routes, object key)

cdef object _find_node(_Node node, list segments)

@cython.locals(child=_Node)
cdef _Node _make_node(_Node node, list segments)

@cython.locals(n=Py_ssize_t, end=Py_ssize_t, j=Py_ssize_t, i=Py_ssize_t, c=Py_UCS4, fold=bint, bracket=bint)
cdef str _host_key(str host)

@cython.locals(end=Py_ssize_t)
cdef Py_ssize_t _next_slash(str path, Py_ssize_t start, Py_ssize_t stop) except -2

@cython.locals(route=object)
cdef object _pick(dict routes, str method)

@cython.locals(end=Py_ssize_t, child=_Node, greedy=_Node, route=object)
cdef object _walk(_Node node, str path, Py_ssize_t pos, Py_ssize_t stop, str method)

@cython.locals(routes=dict, route=_Route, params=dict, pos=Py_ssize_t, end=Py_ssize_t,
               k=Py_ssize_t, names=tuple, name=object)
cdef object _lookup(_Tree tree, str method, str path, Py_ssize_t n, Py_ssize_t stop)
