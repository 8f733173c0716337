cdef frozenset _connection_tokens(list headers)
cdef list _without(list headers, frozenset drop, frozenset extra)
cpdef tuple filter_request_headers(list headers)
cpdef tuple filter_response_headers(list headers)
