# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""HTTP/1.1 messages for the data plane, compiled: llhttp's C API driven from Cython.

The interpreted twin is ``fastpath/http1.py`` (over httptools: the same llhttp, with a Python
callback per header); the two are checked against each other by
``tests/fastpath/test_http1_differential.py``.  Policy they share lives in
``fastpath/http1_rules.py``.

Parsing.  A parser is fed one read at a time (``feed``) and asked for events (``next``):
``HEAD`` when a message head is complete (``parser.head``), ``BODY`` for each span of body
(``parser.body``), ``END`` when the message is complete, ``ERROR`` when it is refused
(``error_status``, ``error_message``, ``error_detail``) and ``NEED_DATA`` when the read is used
up.  The parser never runs ahead: it pauses llhttp at the end of each head and message, so a
pipelined request stays unparsed bytes until the caller asks for it, and the bytes after a
response are known exactly (``leftover``).

No Python object is made per header: llhttp's callbacks are C functions that record each field
as offsets into the head.  A head's bytes stay in one bytes object: the read it came in when
that read holds little else (no copy at all), else a copy made when the head is complete (a
head split over reads is carried over in a buffer, each byte copied once); the fields are (offset, length) pairs into it, classified once (Host, framing, hop-by-hop...) by
comparing names in C.  Values are made only when asked for (``Head.get``).

Forwarding.  ``request_head`` and ``response_head`` write the head the gateway sends on by
copying the kept fields of the received head and adding the gateway's own lines, into one bytes
object sized in advance.
"""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.ref cimport Py_REFCNT
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

from fastpath.http1_rules import (
    NEED_DATA as _P_NEED_DATA, HEAD as _P_HEAD, BODY as _P_BODY, END as _P_END,
    ERROR as _P_ERROR, request_error, version_error, connection_tokens, content_length_error,
    response_line_error, refusal, BAD_RESPONSE, TE_TWICE, TE_NOT_CHUNKED, TRAILERS_TOO_LARGE,
    MAX_CONTENT_LENGTH, lists_websocket, websocket_error,
)
from fastpath import http1_rules as _rules
import sys

NEED_DATA, HEAD, BODY, END, ERROR = _P_NEED_DATA, _P_HEAD, _P_BODY, _P_END, _P_ERROR

# C copies of the numbers of http1_rules (checked equal at import below)
cdef uint64_t _MAX_CONTENT_LENGTH = MAX_CONTENT_LENGTH
cdef enum:
    E_NEED_DATA = 0
    E_HEAD = 1
    E_BODY = 2
    E_END = 3
    E_ERROR = 4
    E_CONTINUE = 5   # internal: nothing to report (a chunk ended, an upgrade was passed)

cdef enum:
    # a head keeps the read it came in (instead of a copy) when that read is at most this much
    # larger than the head: a small body or the start of the next request, never a large body
    _ADOPT_SLACK = 1024

cdef enum:
    K_OTHER = 0
    K_STAGE = 1
    K_DATE = 2
    FIRST_DROPPED = 3
    K_DROP = 3
    K_CONNECTION = 4
    K_CONTENT_LENGTH = 5
    K_TRANSFER_ENCODING = 6
    K_FORWARDED_FOR = 7
    K_HOST = 8
    K_EXPECT = 9

assert (NEED_DATA, HEAD, BODY, END, ERROR) == (E_NEED_DATA, E_HEAD, E_BODY, E_END, E_ERROR)
assert (_rules.K_OTHER, _rules.K_STAGE, _rules.K_DATE, _rules.FIRST_DROPPED, _rules.K_DROP,
        _rules.K_CONNECTION, _rules.K_CONTENT_LENGTH, _rules.K_TRANSFER_ENCODING,
        _rules.K_FORWARDED_FOR, _rules.K_HOST, _rules.K_EXPECT) == (
    K_OTHER, K_STAGE, K_DATE, FIRST_DROPPED, K_DROP, K_CONNECTION, K_CONTENT_LENGTH,
    K_TRANSFER_ENCODING, K_FORWARDED_FOR, K_HOST, K_EXPECT)

# which callback a span belongs to
cdef enum:
    S_START = 0      # method / protocol: the first bytes of a head
    S_URL = 1
    S_FIELD = 3
    S_VALUE = 4


# -- header names, compared in C ------------------------------------------------------------------
#
# The names of http1_rules' tables, lower-case, grouped by length: a field name is compared only
# with the names of its own length, byte by byte, folding case with | 0x20 (exact for HTTP token
# characters against lower-case letters and '-': no other token character folds onto them).

ctypedef struct _Name:
    const char* lower
    Py_ssize_t length
    int kind

cdef enum:
    MAX_NAMES = 32
    MAX_NAME_LENGTH = 32

cdef _Name _REQUEST_NAMES[MAX_NAMES]
cdef _Name _RESPONSE_NAMES[MAX_NAMES]
cdef int _REQUEST_FIRST[MAX_NAME_LENGTH + 2]
cdef int _RESPONSE_FIRST[MAX_NAME_LENGTH + 2]
cdef int _REQUEST_COUNT = 0
cdef int _RESPONSE_COUNT = 0
cdef list _KEEP_NAMES = []      # owns the bytes the C tables point into


cdef int _fill(_Name* names, int* first, dict table) except -1:
    """Fill a C table from ``table`` (sorted by length) and ``first``: first[n] is the index of
    the first name of length n or more (names longer than MAX_NAME_LENGTH are refused)."""
    cdef int i = 0
    cdef int n
    for name, kind in sorted(table.items(), key=lambda item: len(item[0])):
        encoded = name.encode()
        _KEEP_NAMES.append(encoded)
        if i == MAX_NAMES or len(encoded) > MAX_NAME_LENGTH:
            raise RuntimeError("header name table too large for its C form")
        names[i].lower = PyBytes_AS_STRING(encoded)
        names[i].length = len(encoded)
        names[i].kind = kind
        i += 1
    for n in range(MAX_NAME_LENGTH + 2):
        first[n] = i
    for n in range(i - 1, -1, -1):
        first[names[n].length] = n
    for n in range(MAX_NAME_LENGTH, -1, -1):
        if first[n] > first[n + 1]:
            first[n] = first[n + 1]
    return i


_REQUEST_COUNT = _fill(_REQUEST_NAMES, _REQUEST_FIRST, _rules.REQUEST_KINDS)
_RESPONSE_COUNT = _fill(_RESPONSE_NAMES, _RESPONSE_FIRST, _rules.RESPONSE_KINDS)


cdef inline bint _same_name(const char* a, const char* lower, Py_ssize_t n) noexcept:
    """``a`` equals ``lower`` (lower-cased with bytes.lower) ignoring ASCII case: only A-Z
    fold, so any token character ('_', '^', '~'...) compares exactly."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char>a[i]
        if 65 <= c <= 90:
            c |= 0x20
        if c != <unsigned char>lower[i]:
            return False
    return True


cdef inline bint _same(const char* a, const char* lower, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if (<unsigned char>a[i] | 0x20) != <unsigned char>lower[i]:
            return False
    return True


cdef int _kind(const char* name, Py_ssize_t n, const _Name* names, const int* first,
               int count) noexcept:
    """The kind of field ``name`` in a C table, or K_OTHER: only names of its length compared."""
    cdef int i
    if n > MAX_NAME_LENGTH:
        return K_OTHER
    for i in range(first[n], count):
        if names[i].length != n:
            break
        if _same(name, names[i].lower, n):
            return names[i].kind
    return K_OTHER


cdef bint _has_underscore(const char* name, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if name[i] == 95:
            return True
    return False


cdef bint _value_is_chunked(const char* v, Py_ssize_t n) noexcept:
    """A value of exactly 'chunked' (any case) as llhttp reads one: spaces and tabs before it,
    spaces only after it (after a tab, llhttp does not take the body as chunked)."""
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t end = n
    while start < end and (v[start] == 32 or v[start] == 9):
        start += 1
    while end > start and v[end - 1] == 32:
        end -= 1
    return end - start == 7 and _same(v + start, b"chunked", 7)


cdef bint _value_is_plain_connection(const char* v, Py_ssize_t n) noexcept:
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t end = n
    while start < end and (v[start] == 32 or v[start] == 9):
        start += 1
    while end > start and (v[end - 1] == 32 or v[end - 1] == 9):
        end -= 1
    if end - start == 10:
        return _same(v + start, b"keep-alive", 10)
    if end - start == 5:
        return _same(v + start, b"close", 5)
    return False


def _method_names():
    """llhttp's method names, by its method number, as interned str."""
    cdef const char* name
    names = []
    for i in range(HTTP_QUERY + 1):     # (llhttp_method_name aborts on any other number)
        name = llhttp_method_name(<uint8_t>i)
        names.append(sys.intern(name.decode("ascii")))
    names.extend("<unknown>" for _ in range(256 - len(names)))
    return names


cdef list _METHOD_NAMES = _method_names()


# -- the head of a message -----------------------------------------------------------------------

@cython.no_gc           # (only bytes, a str and C fields: it cannot be part of a cycle)
cdef class Head:
    """A request or response head: the start line's parts and the header fields, as offsets into
    the head's bytes.  Made by the parsers; read by the gateway's stages through the methods below, which
    allocate only what they return."""

    def __cinit__(self):
        self.fields = self.inline_fields
        self.capacity = INLINE_FIELDS
        self.count = 0
        self.host_index = -1
        self.stage_index = -1
        self.expect_index = -1
        self.te_index = -1
        self.content_length = -1
        self.method = ""

    def __dealloc__(self):
        if self.fields != self.inline_fields:
            free(self.fields)

    cdef _reset(self):
        """Empty, for the next message (a head nobody holds any more is reused)."""
        self.count = 0
        self.host_index = self.stage_index = self.expect_index = self.te_index = -1
        self.content_length = -1
        self.chunked = self.keep_alive = self.upgrade = self.websocket = self.dated = False
        self.connection_tokens = False
        self.target_at = self.target_len = 0
        self.buffer = None
        self.start = NULL
        self.length = 0
        self.method = ""
        self.status = 0

    cdef Field* _add(self) except NULL:
        cdef Field* grown
        if self.count == self.capacity:
            grown = <Field*>malloc(2 * self.capacity * sizeof(Field))
            if grown == NULL:
                raise MemoryError()
            memcpy(grown, self.fields, self.count * sizeof(Field))
            if self.fields != self.inline_fields:
                free(self.fields)
            self.fields = grown
            self.capacity *= 2
        self.count += 1
        return &self.fields[self.count - 1]

    @property
    def field_count(self):
        """The number of header fields the gateway kept (fields it dropped are not counted)."""
        return self.count

    @property
    def version(self):
        return f"{self.http_major}.{self.http_minor}"

    cpdef bytes name(self, int i):
        """The name of field ``i`` as received."""
        if not 0 <= i < self.count:
            raise IndexError(i)
        return PyBytes_FromStringAndSize(self.start + self.fields[i].name_at,
                                         self.fields[i].name_len)

    cpdef bytes value(self, int i):
        """The value of field ``i``: without leading spaces and tabs (llhttp keeps trailing ones)."""
        if not 0 <= i < self.count:
            raise IndexError(i)
        return self._value_of(i)

    cdef bytes _value_of(self, int index):
        if index < 0:
            return None
        return PyBytes_FromStringAndSize(self.start + self.fields[index].value_at,
                                         self.fields[index].value_len)

    cpdef object get(self, bytes name, object default=None):
        """The value of the first field called ``name`` (any case), or ``default``."""
        cdef int i
        cdef Py_ssize_t n = len(name)
        cdef bytes lower = name.lower()
        cdef const char* raw = self.start
        for i in range(self.count):
            if self.fields[i].name_len == n and _same_name(raw + self.fields[i].name_at,
                                                           PyBytes_AS_STRING(lower), n):
                return self._value_of(i)
        return default

    def get_all(self, bytes name):
        """The values of every field called ``name`` (any case), in order."""
        cdef int i
        cdef Py_ssize_t n = len(name)
        cdef bytes lower = name.lower()
        cdef const char* raw = self.start
        out = []
        for i in range(self.count):
            if self.fields[i].name_len == n and _same_name(raw + self.fields[i].name_at,
                                                           PyBytes_AS_STRING(lower), n):
                out.append(self._value_of(i))
        return out

    def get_last(self, bytes name, default=None):
        values = self.get_all(name)
        return values[len(values) - 1] if values else default

    def items(self):
        """Every kept field as (name, value), in order."""
        return [(self.name(i), self._value_of(i)) for i in range(self.count)]

    cpdef bytes target(self):
        """The request target as received (origin form, absolute form...)."""
        return PyBytes_FromStringAndSize(self.start + self.target_at, self.target_len)

    cpdef object host_value(self):
        """The Host field's value (it is never repeated), or None."""
        return self._value_of(self.host_index)

    cpdef object stage_value(self):
        """The first X-Stage value without surrounding spaces, or None."""
        if self.stage_index < 0:
            return None
        return self._value_of(self.stage_index).strip()

    cpdef object expect_value(self):
        return self._value_of(self.expect_index)

    cpdef int drop_prefix(self, bytes prefix):
        """Leave out of what is forwarded every field whose name starts with ``prefix``
        (lower-case; any case matches): a policy that sets those fields itself (CORS).
        Returns how many were dropped."""
        cdef int i
        cdef int dropped = 0
        cdef Py_ssize_t n = len(prefix)
        for i in range(self.count):
            if (self.fields[i].name_len >= n and self.fields[i].kind < FIRST_DROPPED
                    and _same_name(self.start + self.fields[i].name_at,
                                   PyBytes_AS_STRING(prefix), n)):
                self.fields[i].kind = K_DROP
                dropped += 1
        return dropped


# -- the parsers ---------------------------------------------------------------------------------

cdef llhttp_settings_t _SETTINGS


cdef inline _Parser _owner(llhttp_t* p):
    return <_Parser>p.data


cdef int _on_message_begin(llhttp_t* p) noexcept:
    cdef _Parser self = _owner(p)
    self.in_message = True
    self.in_trailers = False
    self.head_started = False
    self.field_done = True
    self.field_name_len = self.field_value_len = 0
    self.head_bytes = self.headers_bytes = self.trailer_bytes = 0
    self.header_count = 0
    if self.spare is not None:
        self.building = self.spare      # the last head but one, which nobody holds any more
        self.spare = None
        self.building._reset()
        return 0
    try:
        self.building = Head.__new__(Head)
    except MemoryError:
        return -1
    return 0


cdef int _on_start(llhttp_t* p, const char* at, size_t length) noexcept:
    return _owner(p)._span(at, length, S_START)


cdef int _on_url(llhttp_t* p, const char* at, size_t length) noexcept:
    return _owner(p)._span(at, length, S_URL)


cdef int _on_field(llhttp_t* p, const char* at, size_t length) noexcept:
    return _owner(p)._span(at, length, S_FIELD)


cdef int _on_value(llhttp_t* p, const char* at, size_t length) noexcept:
    return _owner(p)._span(at, length, S_VALUE)


cdef int _on_value_complete(llhttp_t* p) noexcept:
    return _owner(p)._field_done()


cdef int _on_headers_complete(llhttp_t* p) noexcept:
    cdef _Parser self = _owner(p)
    if self.skip_body and p.status_code >= 200:
        # a response to HEAD has no body whatever its framing says (an interim 1xx before it
        # is a message of its own)
        p.flags |= F_SKIPBODY
    try:
        if self._head_done() != 0:
            return -1
    except BaseException as exc:
        self._fail(500, "Internal error", f"parser: {exc!r}")
        return -1
    if self.is_request:
        # the gateway switches no protocol: an upgrade request is a plain request whose body,
        # if it has one, is read by its framing, and what follows it is the next request
        # (llhttp would skip to "the other protocol" right after the head)
        p.upgrade = 0
    self.pause_event = E_HEAD
    return HPE_PAUSED


cdef int _on_body(llhttp_t* p, const char* at, size_t length) noexcept:
    cdef _Parser self = _owner(p)
    cdef Py_ssize_t offset = at - self.base
    if self.body_len and self.body_at + self.body_len == offset:
        self.body_len += length         # llhttp split one span: still one
    elif self.body_len:
        self.user_error = 500           # cannot happen: a chunk's end pauses before the next
        return HPE_USER
    else:
        self.body_at = offset
        self.body_len = length
    return 0


cdef int _on_chunk_header(llhttp_t* p) noexcept:
    if p.content_length == 0:
        _owner(p).in_trailers = True    # the last chunk: trailer fields follow
    return 0


cdef int _on_chunk_complete(llhttp_t* p) noexcept:
    cdef _Parser self = _owner(p)
    if self.body_len == 0:
        return 0                        # nothing to hand over: go on
    self.pause_event = E_CONTINUE
    return HPE_PAUSED


cdef int _on_message_complete(llhttp_t* p) noexcept:
    cdef _Parser self = _owner(p)
    cdef Head head = self.head
    if head is not None and head.keep_alive and not llhttp_should_keep_alive(p):
        head.keep_alive = False         # 'Connection: close' in the trailer fields
    if head is not None and head.websocket:
        self.stopped = True             # what follows a WebSocket upgrade request is not HTTP
    self.in_message = False
    self.in_trailers = False
    self.pause_event = E_END
    return HPE_PAUSED


llhttp_settings_init(&_SETTINGS)
_SETTINGS.on_message_begin = _on_message_begin
_SETTINGS.on_method = _on_start
_SETTINGS.on_protocol = _on_start
_SETTINGS.on_url = _on_url
# (no callback for the version and the reason phrase: nothing is kept of them, and a head that
# grows without a callback is bounded when it is carried over to the next read)
_SETTINGS.on_header_field = _on_field
_SETTINGS.on_header_value = _on_value
_SETTINGS.on_header_value_complete = _on_value_complete
_SETTINGS.on_headers_complete = _on_headers_complete
_SETTINGS.on_body = _on_body
_SETTINGS.on_chunk_header = _on_chunk_header
_SETTINGS.on_chunk_complete = _on_chunk_complete
_SETTINGS.on_message_complete = _on_message_complete


cdef class _Parser:
    """What request and response parsers share (see the module's docstring)."""

    def __init__(self, Py_ssize_t max_uri=32768, Py_ssize_t max_header=32768,
                 Py_ssize_t max_headers=131072, int max_count=256, Py_ssize_t head_guard=167936,
                 bint underscores=False):
        self.max_uri = max_uri
        self.max_header = max_header
        self.max_headers = max_headers
        self.max_count = max_count
        self.head_guard = head_guard
        self.underscores = underscores
        self._init()
        self.data = b""
        self.base = PyBytes_AS_STRING(self.data)
        self.size = self.pos = 0

    cdef _init(self):
        llhttp_init(&self.parser, HTTP_REQUEST if self.is_request else HTTP_RESPONSE, &_SETTINGS)
        self.parser.data = <void*>self
        if self.is_request:
            # RFC 9112 asks these of a recipient: any HTTP/1.x version (§2.6; others are
            # refused with 505 after the head) and whitespace before a chunk extension (§7.1.1)
            llhttp_set_lenient_version(&self.parser, 1)
            llhttp_set_lenient_spaces_after_chunk_size(&self.parser, 1)

    cpdef feed(self, bytes data):
        """Hand over the next read (after what is left of the previous one, if anything)."""
        if data is None:
            raise TypeError("feed() takes bytes, not None")
        if self.pos < self.size:
            data = self.data[self.pos:] + data      # rare: the caller reads on while it waits
            if self.head_started and self.head_start >= self.pos:
                self.head_start -= self.pos
            if self.body_len:
                self.body_at -= self.pos
        self.data = data
        self.base = PyBytes_AS_STRING(data)
        self.size = PyBytes_GET_SIZE(data)
        self.pos = 0
        if self.head_started:
            self.head_start = 0     # the head goes on in this read

    cpdef bint has_pending(self):
        """Bytes of the current read are not parsed yet (or an event is waiting)."""
        return self.pos < self.size or self.queued != 0

    cpdef bytes detach(self):
        """After a protocol switch (a WebSocket upgrade request, or the 101 answering one when
        ``expect_switch`` was set), nothing more is parsed: the bytes read after the message,
        for the tunnel.  Later reads fed to a stopped parser are kept with them."""
        cdef bytes rest = self.data[self.pos:self.size]
        self.pos = self.size
        return rest

    cpdef bint leftover(self):
        """After END: the current read goes on with something other than empty lines."""
        cdef Py_ssize_t i
        for i in range(self.pos, self.size):
            if self.base[i] != 13 and self.base[i] != 10:
                return True
        return False

    cpdef int next(self) except -1:
        """The next event (see the module's docstring)."""
        cdef int event
        if self.queued:
            event = self.queued
            self.queued = 0
            return self._deliver(event)
        if self.error_status:
            return E_ERROR
        if self.stopped:
            return E_NEED_DATA      # a protocol switch: what follows is not HTTP
        while True:
            if self.pos >= self.size and not self.resumed:
                event = E_NEED_DATA
            else:
                # (after a pause llhttp may have steps left that need no byte: the end of a
                # message without a body follows the end of its head)
                event = self._execute()
            if self.body_len:
                self.body = PyBytes_FromStringAndSize(self.base + self.body_at, self.body_len)
                self.body_len = 0
                if event != E_NEED_DATA and event != E_CONTINUE:
                    self.queued = event
                return E_BODY
            if event != E_CONTINUE:
                return self._deliver(event)

    cdef int _deliver(self, int event) except -1:
        cdef Head previous
        if event == E_HEAD:
            previous = self.head
            self.head = self.building
            self.building = None
            if previous is not None and Py_REFCNT(previous) == 1:
                self.spare = previous       # only this function holds it: reuse it
        elif event == E_NEED_DATA and self.head_started:
            self._carry()
            if self.error_status:
                return E_ERROR
        return event

    cdef _carry(self):
        """Keep the part of a head that is in this read: the next read continues it."""
        cdef Py_ssize_t n = self.size - self.head_start
        cdef Py_ssize_t had
        if n <= 0:
            return
        if self.carried is None:
            self.carried = bytearray()
        had = PyByteArray_GET_SIZE(self.carried)
        if had + n > self.head_guard:
            # a head that grows without a field to bound it (endless whitespace...)
            self._too_large("head", had + n)
            return
        PyByteArray_Resize(self.carried, had + n)
        memcpy(PyByteArray_AS_STRING(self.carried) + had, self.base + self.head_start, n)
        self.head_start = self.size

    cdef int _execute(self) except -1:
        cdef llhttp_errno_t err
        cdef const char* stop
        self.pause_event = 0
        err = llhttp_execute(&self.parser, self.base + self.pos, <size_t>(self.size - self.pos))
        self.resumed = False
        if err == HPE_OK:
            self.pos = self.size
            return E_NEED_DATA
        stop = llhttp_get_error_pos(&self.parser)
        if err == HPE_PAUSED:
            self.pos = stop - self.base
            llhttp_resume(&self.parser)
            self.resumed = True
            if self.pause_event == E_HEAD and self.building is not None:
                self._finish_raw()
                if (self.building.upgrade or self.switch_expected) and self._head_ready() != 0:
                    self.pos = self.size
                    return E_ERROR
            return self.pause_event
        if err == HPE_PAUSED_UPGRADE:
            # an upgrade or CONNECT request, answered as a plain one: what follows it is the
            # next request (as with httptools, the twin)
            self.pos = stop - self.base
            self._init()
            return self.pause_event if self.pause_event else E_CONTINUE
        # refused
        if self.user_error == 0:
            self._refuse(err)
        self.pos = self.size
        return E_ERROR

    cdef int _head_ready(self) except -1:
        """A complete head that may switch protocols (see http1_rules: WebSocket upgrades):
        1 when refused."""
        cdef Head head = self.building
        if self.is_request:
            if head.upgrade and lists_websocket(head.get_all(b"upgrade")):
                refused = websocket_error(head.method, head.http_minor, head.chunked,
                                          head.content_length)
                if refused is not None:
                    self._fail(refused[0], refused[1], refused[2])
                    return 1
                head.websocket = True       # the parser stops at the end of this request
        elif self.switch_expected and head.status == 101:
            self.stopped = True             # the rest is the tunnel's
            self.in_message = False
        return 0

    cdef _refuse(self, llhttp_errno_t err):
        reason = (llhttp_get_error_reason(&self.parser) or b"").decode("latin-1", "replace")
        if self.is_request:
            seen = self.data[self.pos:]     # the message's bytes as far as they were read
            if self.head_started and self.carried is not None:
                seen = bytes(self.carried) + seen
            status, message = request_error(reason, err == HPE_INVALID_METHOD, seen)
            self._fail(status, message, f"parser: {reason}")
        else:
            self._fail(502, BAD_RESPONSE, f"invalid response: {reason}")

    cdef int _fail(self, int status, str message, str detail) except -1:
        if self.error_status == 0:
            self.error_status = status
            self.error_message = message
            self.error_detail = detail
        self.user_error = status
        return 0

    # -- building the head (called from llhttp's callbacks) ---------------------------------------
    cdef int _span(self, const char* at, size_t length, int which) noexcept:
        cdef Py_ssize_t offset
        cdef Py_ssize_t total
        cdef Py_ssize_t carried = 0
        if self.in_trailers or self.building is None:
            # a trailer field of a chunked body: bounded, never recorded nor forwarded
            if which == S_FIELD or which == S_VALUE:
                self.trailer_bytes += length
                if self.trailer_bytes > self.max_header:
                    self._refuse_both(TRAILERS_TOO_LARGE)
                    return HPE_USER
            return 0
        if not self.head_started:
            self.head_started = True
            self.head_start = at - self.base
            if self.carried is not None:
                PyByteArray_Resize(self.carried, 0)
        if self.carried is not None:
            carried = PyByteArray_GET_SIZE(self.carried)
        offset = carried + (at - self.base) - self.head_start
        total = offset + <Py_ssize_t>length
        if total > self.head_guard:
            return self._too_large("head", total)
        if which == S_FIELD:
            if self.field_done:
                self.field_done = False
                self.field_name_at = <uint32_t>offset
                self.field_name_len = 0
                self.field_value_len = 0
            self.field_name_len += length
            if self.field_name_len > self.max_header:
                return self._too_large("header", self.field_name_len)
        elif which == S_VALUE:
            if self.field_value_len == 0:
                self.field_value_at = <uint32_t>offset
            self.field_value_len += length
            if self.field_name_len + self.field_value_len > self.max_header:
                return self._too_large("header", self.field_name_len + self.field_value_len)
        elif which == S_URL:
            if self.building.target_len == 0:
                self.building.target_at = <uint32_t>offset
            self.building.target_len += length
            if self.building.target_len > self.max_uri:
                self._fail(414, "Request URI too large", f"{self.building.target_len} bytes")
                return HPE_USER
        return 0

    cdef int _refuse_both(self, tuple rule) except -1:
        """Fail with a refusal of both sides (http1_rules: TE_TWICE...), as this side says it."""
        refused = refusal(self.is_request, *rule)
        return self._fail(refused[0], refused[1], refused[2])

    cdef int _too_large(self, str what, Py_ssize_t size) noexcept:
        if self.is_request:
            self._fail(494, "Request header too large" if what == "header" else
                       "Request headers too large", f"{what}: {size} bytes")
        else:
            self._fail(502, BAD_RESPONSE, "response head too large")
        return HPE_USER

    cdef int _field_done(self) noexcept:
        cdef Head head = self.building
        cdef Field* field
        cdef const char* name
        cdef const char* value
        cdef int kind
        cdef Py_ssize_t size
        if self.in_trailers or head is None:
            self.field_done = True
            return 0
        self.field_done = True
        if self.field_value_len == 0:
            self.field_value_at = self.field_name_at + self.field_name_len
        size = self.field_name_len + self.field_value_len
        self.headers_bytes += size
        self.header_count += 1
        if self.headers_bytes > self.max_headers or self.header_count > self.max_count:
            return self._too_large("headers", self.headers_bytes)
        name = self._span_ptr(self.field_name_at, self.field_name_len)
        if name == NULL:
            return -1
        if self.is_request:
            kind = _kind(name, self.field_name_len, _REQUEST_NAMES, _REQUEST_FIRST,
                         _REQUEST_COUNT)
            if kind == K_OTHER and _has_underscore(name, self.field_name_len):
                # CGI and WSGI backends read X_Foo as X-Foo: dropped unless kept by the operator,
                # and never when it reads as a framing, hop-by-hop or gateway-set field
                try:
                    alias = _rules.underscore_alias(PyBytes_FromStringAndSize(name, self.field_name_len))
                except BaseException:
                    self.user_error = 500
                    return HPE_USER
                if alias:
                    self.dropped_alias += 1
                    return 0
                if not self.underscores:
                    self.dropped_underscore += 1
                    return 0
        else:
            kind = _kind(name, self.field_name_len, _RESPONSE_NAMES, _RESPONSE_FIRST,
                         _RESPONSE_COUNT)
        try:
            field = head._add()
        except MemoryError:
            return -1
        field.name_at = self.field_name_at
        field.name_len = self.field_name_len
        field.value_at = self.field_value_at
        field.value_len = self.field_value_len
        field.kind = <uint8_t>kind
        if kind == K_OTHER:
            return 0
        if kind == K_HOST:
            if head.host_index >= 0:
                self._fail(400, "Repeated Host header", "Host twice")
                return HPE_USER
            head.host_index = head.count - 1
        elif kind == K_TRANSFER_ENCODING:
            if head.te_index >= 0:
                self._refuse_both(TE_TWICE)
                return HPE_USER
            head.te_index = head.count - 1
        elif kind == K_STAGE:
            if head.stage_index < 0:
                head.stage_index = head.count - 1
        elif kind == K_EXPECT:
            if head.expect_index < 0:
                head.expect_index = head.count - 1
        elif kind == K_DATE:
            head.dated = True
        elif kind == K_CONNECTION:
            value = self._span_ptr(self.field_value_at, self.field_value_len)
            if value == NULL:
                return -1
            if not _value_is_plain_connection(value, self.field_value_len):
                head.connection_tokens = True
        return 0

    cdef const char* _span_ptr(self, uint32_t offset, uint32_t length) noexcept:
        """Where the head's bytes [offset, offset + length) are now, contiguous: in the carried
        part, in the current read, or (a span across the two) in a scratch copy.  NULL when
        out of memory."""
        cdef Py_ssize_t carried = 0
        cdef Py_ssize_t first
        if self.carried is not None:
            carried = PyByteArray_GET_SIZE(self.carried)
        if offset + length <= carried:
            return PyByteArray_AS_STRING(self.carried) + offset
        if offset >= carried:
            return self.base + self.head_start + (offset - carried)
        first = carried - offset
        try:
            self.scratch = PyBytes_FromStringAndSize(NULL, length)
        except MemoryError:
            return NULL
        memcpy(PyBytes_AS_STRING(self.scratch), PyByteArray_AS_STRING(self.carried) + offset, first)
        memcpy(PyBytes_AS_STRING(self.scratch) + first, self.base + self.head_start, length - first)
        return PyBytes_AS_STRING(self.scratch)

    cdef int _head_done(self) except -1:
        """Policy checks of a complete head (both forms alike): 0, or 1 when the head is
        refused (the error is set)."""
        cdef Head head = self.building
        cdef llhttp_t* p = &self.parser
        cdef const char* te
        head.http_major = p.http_major
        head.http_minor = p.http_minor
        # (llhttp keeps an HTTP/1.0 message that says both keep-alive and close alive; close
        # wins, RFC 9112 §9.3)
        head.keep_alive = llhttp_should_keep_alive(p) and not (p.flags & F_CONNECTION_CLOSE)
        head.upgrade = p.upgrade
        head.chunked = (p.flags & F_CHUNKED) != 0
        if self.is_request:
            head.method = <str>_METHOD_NAMES[p.method]
            if p.http_major != 1:
                refused = version_error(p.http_major, p.http_minor)
                self._fail(refused[0], refused[1], refused[2])
                return 1
            if p.method == HTTP_CONNECT:
                self._fail(400, "CONNECT is not supported", "CONNECT request")
                return 1
        else:
            head.status = p.status_code
            if p.http_major != 1 or p.status_code > 599:
                refused = response_line_error(p.http_major, p.http_minor, p.status_code)
                self._fail(refused[0], refused[1], refused[2])
                return 1
        # (after the start line's checks, in the order the interpreted form refuses them: a
        # CONNECT with a length too large is refused as a CONNECT in both)
        if p.flags & F_CONTENT_LENGTH:
            if p.content_length > _MAX_CONTENT_LENGTH:
                # (llhttp reads it as an unsigned 64-bit number; as a long long it would turn
                # negative, which reads as "no length": the body would follow as a request)
                refused = content_length_error(self.is_request, p.content_length)
                self._fail(refused[0], refused[1], refused[2])
                return 1
            head.content_length = <long long>p.content_length
        else:
            head.content_length = -1
        if head.te_index >= 0:
            te = self._span_ptr(head.fields[head.te_index].value_at,
                                head.fields[head.te_index].value_len)
            if te == NULL:
                raise MemoryError()
            # (and llhttp must agree: a body it would not read as chunked is never forwarded)
            if not _value_is_chunked(te, head.fields[head.te_index].value_len) or not head.chunked:
                self._refuse_both(TE_NOT_CHUNKED)
                return 1
            if self.is_request and head.http_major == 1 and head.http_minor == 0:
                # RFC 9112 §6.1: faulty framing from an HTTP/1.0 client
                self._fail(400, "Transfer-Encoding in an HTTP/1.0 request", "HTTP/1.0 chunked")
                return 1
        if (not self.is_request and 100 <= head.status < 200 and head.status != 101
                and (head.chunked or head.content_length > 0)):    # (http1_rules.interim_with_body)
            self._fail(502, BAD_RESPONSE, "interim response with a body")
            return 1
        return 0

    cdef _finish_raw(self):
        """The head is complete at self.pos: give it its bytes.  A head read whole in a read
        not much larger than itself keeps that read (the common case: no copy); otherwise the
        head is copied (carried bytes + this read's part), so that a head never pins a large
        read (a body that came with it) for as long as the exchange lasts."""
        cdef Head head = self.building
        cdef Py_ssize_t carried = 0
        cdef Py_ssize_t here = self.pos - self.head_start
        cdef bytes raw
        if self.carried is not None:
            carried = PyByteArray_GET_SIZE(self.carried)
        if carried == 0 and self.size <= here + _ADOPT_SLACK:
            head.buffer = self.data
            head.start = self.base + self.head_start
            head.length = here
            self.head_started = False
            return
        raw = PyBytes_FromStringAndSize(NULL, carried + here)
        if carried:
            memcpy(PyBytes_AS_STRING(raw), PyByteArray_AS_STRING(self.carried), carried)
            self.carried = None         # a buffer of a split head is not kept once done
        memcpy(PyBytes_AS_STRING(raw) + carried, self.base + self.head_start, here)
        head.buffer = raw
        head.start = PyBytes_AS_STRING(raw)
        head.length = carried + here
        self.head_started = False


cdef class RequestParser(_Parser):
    """Parses requests (see the module's docstring)."""

    def __cinit__(self):
        self.is_request = True


cdef class ResponseParser(_Parser):
    """Parses the responses of a backend connection (see the module's docstring)."""

    def __cinit__(self):
        self.is_request = False

    cpdef expect_no_body(self, bint skip):
        """The next response answers a HEAD request: it has no body whatever its head says."""
        self.skip_body = skip

    cpdef expect_switch(self, bint expected):
        """The next response answers a WebSocket upgrade request: a 101 ends the HTTP
        conversation at its head (``detach`` gives the bytes after it)."""
        self.switch_expected = expected


# -- forwarding heads ----------------------------------------------------------------------------

cdef frozenset _tokens(Head head):
    """The field names a Connection field lists (lower-case), for the rare heads that have any."""
    return connection_tokens([head._value_of(i) for i in range(head.count)
                              if head.fields[i].kind == K_CONNECTION])


cdef inline bint _kept(Head head, int i, frozenset tokens):
    if head.fields[i].kind >= FIRST_DROPPED:
        return False
    if tokens is not None and head.name(i).lower() in tokens:
        return False
    return True


cdef inline char* _put(char* dst, const char* src, Py_ssize_t n) noexcept:
    memcpy(dst, src, n)
    return dst + n


cdef inline char* _put_bytes(char* dst, bytes src) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(src)
    memcpy(dst, PyBytes_AS_STRING(src), n)
    return dst + n


cdef Py_ssize_t _kept_size(Head head, frozenset tokens):
    cdef Py_ssize_t total = 0
    cdef int i
    for i in range(head.count):
        if _kept(head, i, tokens):
            total += head.fields[i].name_len + head.fields[i].value_len + 4
    return total


cdef char* _put_kept(char* dst, Head head, frozenset tokens):
    cdef const char* raw = head.start
    cdef int i
    for i in range(head.count):
        if _kept(head, i, tokens):
            dst = _put(dst, raw + head.fields[i].name_at, head.fields[i].name_len)
            dst = _put(dst, b": ", 2)
            dst = _put(dst, raw + head.fields[i].value_at, head.fields[i].value_len)
            dst = _put(dst, b"\r\n", 2)
    return dst


cpdef bytes request_head(Head head, bytes method, bytes target, bytes host, bytes client_ip,
                         bytes forwarded_host, bytes request_id, bytes framing, bint https=False,
                         bint chain=True):
    """The head sent to a backend: ``METHOD target HTTP/1.1``, ``Host``, the client's end-to-end
    fields as received (hop-by-hop, framing and gateway-set ones left out, and any a Connection
    field names), then X-Forwarded-For (the client's chain unless ``chain`` is false, then
    ``client_ip``), X-Forwarded-Proto, X-Forwarded-Host, X-Request-Id and ``framing`` (whole
    lines)."""
    cdef frozenset tokens
    cdef const char* raw
    cdef Py_ssize_t chain_size = 0
    cdef Py_ssize_t size
    cdef Py_ssize_t n
    cdef int i
    cdef bytes out
    cdef char* dst
    if (head is None or method is None or target is None or host is None or client_ip is None
            or forwarded_host is None or request_id is None or framing is None):
        raise TypeError("request_head() takes a Head and bytes, not None")
    tokens = _tokens(head) if head.connection_tokens else None
    raw = head.start
    for i in range(head.count if chain else 0):
        if head.fields[i].kind == K_FORWARDED_FOR:
            n = _trimmed(raw + head.fields[i].value_at, head.fields[i].value_len)
            if n:       # an empty element is never sent on (RFC 9110 5.6.1)
                chain_size += n + 2
    size = (len(method) + 1 + len(target) + 17 + len(host) + 2 + _kept_size(head, tokens)
            + 17 + chain_size + len(client_ip) + 2 + (26 if https else 25) + 18 + len(forwarded_host) + 2
            + 14 + len(request_id) + 2 + len(framing) + 2)
    out = PyBytes_FromStringAndSize(NULL, size)
    dst = PyBytes_AS_STRING(out)
    dst = _put_bytes(dst, method)
    dst = _put(dst, b" ", 1)
    dst = _put_bytes(dst, target)
    dst = _put(dst, b" HTTP/1.1\r\nHost: ", 17)
    dst = _put_bytes(dst, host)
    dst = _put(dst, b"\r\n", 2)
    dst = _put_kept(dst, head, tokens)
    dst = _put(dst, b"X-Forwarded-For: ", 17)
    for i in range(head.count if chain else 0):
        if head.fields[i].kind == K_FORWARDED_FOR:
            n = _trimmed(raw + head.fields[i].value_at, head.fields[i].value_len)
            if n:
                dst = _put(dst, raw + head.fields[i].value_at, n)
                dst = _put(dst, b", ", 2)
    dst = _put_bytes(dst, client_ip)
    if https:
        dst = _put(dst, b"\r\nX-Forwarded-Proto: https\r\n", 28)
    else:
        dst = _put(dst, b"\r\nX-Forwarded-Proto: http\r\n", 27)
    dst = _put(dst, b"X-Forwarded-Host: ", 18)
    dst = _put_bytes(dst, forwarded_host)
    dst = _put(dst, b"\r\nX-Request-Id: ", 16)
    dst = _put_bytes(dst, request_id)
    dst = _put(dst, b"\r\n", 2)
    dst = _put_bytes(dst, framing)
    dst = _put(dst, b"\r\n", 2)
    if dst - PyBytes_AS_STRING(out) != size:
        raise RuntimeError("request head outgrew its computed size")
    return out


cdef Py_ssize_t _trimmed(const char* v, Py_ssize_t n) noexcept:
    """The length of X-Forwarded-For value ``v`` without trailing spaces, tabs and commas (so
    that the element the gateway appends never follows an empty one; llhttp drops leading
    spaces)."""
    while n > 0 and (v[n - 1] == 32 or v[n - 1] == 9 or v[n - 1] == 44):
        n -= 1
    return n


cdef Py_ssize_t _digits(long long n) noexcept:
    cdef Py_ssize_t d = 1
    while n >= 10:
        n //= 10
        d += 1
    return d


cpdef bytes response_head(bytes status_line, Head head, bytes lines, bytes request_id,
                          bytes date_line, long long content_length, bytes tail, bytes body):
    """The head sent to a client (and ``body``, when it is whole, in the same bytes object):
    ``status_line``, the backend's end-to-end fields as received when ``head`` is given
    (hop-by-hop and framing ones left out, and any a Connection field names), ``lines``,
    X-Request-Id, ``date_line``, ``Content-Length`` unless ``content_length`` is -1, ``tail``
    (other framing and Connection lines), CRLF."""
    cdef frozenset tokens = None
    cdef Py_ssize_t size
    cdef Py_ssize_t digits = 0
    cdef Py_ssize_t i
    cdef long long n
    cdef bytes out
    cdef char* dst
    if (status_line is None or lines is None or request_id is None or date_line is None
            or tail is None or body is None):
        raise TypeError("response_head() takes bytes, not None (head may be None)")
    if content_length >= 0:
        digits = _digits(content_length)
    size = (len(status_line) + len(lines) + 14 + len(request_id) + 2 + len(date_line) + len(tail)
            + 2 + len(body) + (18 + digits if content_length >= 0 else 0))
    if head is not None:
        if head.connection_tokens:
            tokens = _tokens(head)
        size += _kept_size(head, tokens)
    out = PyBytes_FromStringAndSize(NULL, size)
    dst = PyBytes_AS_STRING(out)
    dst = _put_bytes(dst, status_line)
    if head is not None:
        dst = _put_kept(dst, head, tokens)
    dst = _put_bytes(dst, lines)
    dst = _put(dst, b"X-Request-Id: ", 14)
    dst = _put_bytes(dst, request_id)
    dst = _put(dst, b"\r\n", 2)
    dst = _put_bytes(dst, date_line)
    if content_length >= 0:
        dst = _put(dst, b"Content-Length: ", 16)
        n = content_length
        for i in range(digits - 1, -1, -1):
            dst[i] = <char>(48 + n % 10)
            n //= 10
        dst += digits
        dst = _put(dst, b"\r\n", 2)
    dst = _put_bytes(dst, tail)
    dst = _put(dst, b"\r\n", 2)
    dst = _put_bytes(dst, body)
    if dst - PyBytes_AS_STRING(out) != size:
        raise RuntimeError("response head outgrew its computed size")
    return out
