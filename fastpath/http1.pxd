# C-level declarations of fastpath/http1.pyx (the compiled form of fastpath.http1: llhttp's C API
# called from Cython; the interpreted twin is fastpath/http1.py, over httptools).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t


# (not nogil: the callbacks run with the GIL, which llhttp_execute is called with)
cdef extern from "llhttp.h":
    ctypedef struct llhttp_t:
        int32_t error
        const char* reason
        const char* error_pos
        void* data
        uint64_t content_length
        uint8_t type
        uint8_t method
        uint8_t http_major
        uint8_t http_minor
        uint16_t flags
        uint8_t upgrade
        uint16_t status_code

    ctypedef int (*llhttp_data_cb)(llhttp_t*, const char* at, size_t length) noexcept
    ctypedef int (*llhttp_cb)(llhttp_t*) noexcept

    ctypedef struct llhttp_settings_t:
        llhttp_cb on_message_begin
        llhttp_data_cb on_protocol
        llhttp_data_cb on_url
        llhttp_data_cb on_status
        llhttp_data_cb on_method
        llhttp_data_cb on_version
        llhttp_data_cb on_header_field
        llhttp_data_cb on_header_value
        llhttp_data_cb on_chunk_extension_name
        llhttp_data_cb on_chunk_extension_value
        llhttp_cb on_headers_complete
        llhttp_data_cb on_body
        llhttp_cb on_message_complete
        llhttp_cb on_protocol_complete
        llhttp_cb on_url_complete
        llhttp_cb on_status_complete
        llhttp_cb on_method_complete
        llhttp_cb on_version_complete
        llhttp_cb on_header_field_complete
        llhttp_cb on_header_value_complete
        llhttp_cb on_chunk_extension_name_complete
        llhttp_cb on_chunk_extension_value_complete
        llhttp_cb on_chunk_header
        llhttp_cb on_chunk_complete
        llhttp_cb on_reset

    ctypedef enum llhttp_type_t:
        HTTP_BOTH
        HTTP_REQUEST
        HTTP_RESPONSE

    ctypedef enum llhttp_errno_t:
        HPE_OK
        HPE_INVALID_METHOD
        HPE_PAUSED
        HPE_PAUSED_UPGRADE
        HPE_USER

    enum:
        HTTP_CONNECT
        HTTP_QUERY      # the last of llhttp's methods (they are numbered from 0)
        F_CONNECTION_KEEP_ALIVE
        F_CONNECTION_CLOSE
        F_CHUNKED
        F_UPGRADE
        F_CONTENT_LENGTH
        F_SKIPBODY
        F_TRANSFER_ENCODING

    void llhttp_init(llhttp_t* parser, llhttp_type_t type, const llhttp_settings_t* settings)
    void llhttp_settings_init(llhttp_settings_t* settings)
    llhttp_errno_t llhttp_execute(llhttp_t* parser, const char* data, size_t len)
    int llhttp_should_keep_alive(const llhttp_t* parser)
    void llhttp_resume(llhttp_t* parser)
    void llhttp_resume_after_upgrade(llhttp_t* parser)
    const char* llhttp_get_error_reason(const llhttp_t* parser)
    const char* llhttp_get_error_pos(const llhttp_t* parser)
    const char* llhttp_method_name(uint8_t method)
    void llhttp_set_lenient_version(llhttp_t* parser, int enabled)
    void llhttp_set_lenient_spaces_after_chunk_size(llhttp_t* parser, int enabled)


# One header field of a head: offsets from Head.start (the first byte of the head).
ctypedef struct Field:
    uint32_t name_at
    uint32_t name_len
    uint32_t value_at
    uint32_t value_len
    uint8_t kind

# fields kept inside the Head object before it allocates more
cdef enum:
    INLINE_FIELDS = 24


cdef class Head:
    cdef bytes buffer           # holds the head's bytes: a read of its own or a copy
    cdef const char* start      # the head's first byte, inside buffer
    cdef Py_ssize_t length      # the head's size (start line to the blank line)
    cdef readonly str method
    cdef readonly int status
    cdef readonly int http_major
    cdef readonly int http_minor
    cdef readonly long long content_length
    cdef readonly bint chunked
    cdef readonly bint keep_alive
    cdef readonly bint upgrade
    cdef readonly bint websocket
    cdef readonly bint dated
    cdef readonly bint connection_tokens
    cdef uint32_t target_at
    cdef uint32_t target_len
    cdef int host_index
    cdef int stage_index
    cdef int expect_index
    cdef int te_index
    cdef int count
    cdef int capacity
    cdef Field* fields
    cdef Field inline_fields[INLINE_FIELDS]

    cdef _reset(self)
    cdef Field* _add(self) except NULL
    cpdef bytes name(self, int i)
    cpdef bytes value(self, int i)
    cpdef object get(self, bytes name, object default=*)
    cdef bytes _value_of(self, int index)
    cpdef bytes target(self)
    cpdef object host_value(self)
    cpdef object stage_value(self)
    cpdef object expect_value(self)
    cpdef int drop_prefix(self, bytes prefix)


cdef class _Parser:
    cdef llhttp_t parser
    cdef bytes data
    cdef bytes scratch
    cdef int queued
    cdef bint resumed
    cdef const char* base
    cdef Py_ssize_t size
    cdef Py_ssize_t pos
    cdef int pause_event
    cdef Py_ssize_t body_at
    cdef Py_ssize_t body_len
    cdef Py_ssize_t head_start
    cdef bint head_started
    cdef bytearray carried
    cdef Head building
    cdef Head spare
    cdef readonly Head head
    cdef readonly bytes body
    cdef readonly bint in_message
    cdef readonly bint in_trailers
    cdef readonly str error_message
    cdef readonly str error_detail
    cdef readonly int error_status
    cdef readonly long long dropped_underscore
    cdef readonly long long dropped_alias
    cdef bint underscores
    cdef bint is_request
    cdef bint skip_body
    cdef bint field_done
    cdef uint32_t field_name_at
    cdef uint32_t field_name_len
    cdef uint32_t field_value_at
    cdef uint32_t field_value_len
    cdef Py_ssize_t head_bytes
    cdef Py_ssize_t headers_bytes
    cdef Py_ssize_t trailer_bytes
    cdef int header_count
    cdef Py_ssize_t max_uri
    cdef Py_ssize_t max_header
    cdef Py_ssize_t max_headers
    cdef int max_count
    cdef Py_ssize_t head_guard
    cdef int user_error
    cdef readonly bint switch_expected
    cdef bint stopped

    cdef _init(self)
    cpdef feed(self, bytes data)
    cpdef int next(self) except -1
    cpdef bint has_pending(self)
    cpdef bint leftover(self)
    cpdef bytes detach(self)
    cdef int _head_ready(self) except -1
    cdef int _deliver(self, int event) except -1
    cdef _carry(self)
    cdef int _execute(self) except -1
    cdef _refuse(self, llhttp_errno_t err)
    cdef int _fail(self, int status, str message, str detail) except -1
    cdef int _refuse_both(self, tuple rule) except -1
    cdef int _too_large(self, str what, Py_ssize_t size) noexcept
    cdef int _head_done(self) except -1
    cdef _finish_raw(self)
    cdef int _field_done(self) noexcept
    cdef int _span(self, const char* at, size_t length, int which) noexcept
    cdef const char* _span_ptr(self, uint32_t offset, uint32_t length) noexcept


cdef class RequestParser(_Parser):
    pass


cdef class ResponseParser(_Parser):
    cpdef expect_no_body(self, bint skip)
    cpdef expect_switch(self, bint expected)


cpdef bytes request_head(Head head, bytes method, bytes target, bytes host, bytes client_ip,
                         bytes forwarded_host, bytes request_id, bytes framing, bint https=*)
cpdef bytes response_head(bytes status_line, Head head, bytes lines, bytes request_id,
                          bytes date_line, long long content_length, bytes tail, bytes body)
