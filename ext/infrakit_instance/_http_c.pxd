# cython: language_level=3
"""What other compiled modules reach of ``_http_c`` in C (``_conn_c``: the per-read path)."""


cdef class Request:
    cdef public object method
    cdef public object path
    cdef public object content_type
    cdef public object keep_alive
    cdef public object body
    # Only a TCP listener checks these (the unix socket's mode is its guard).
    cdef public object host
    cdef public object origin
    cdef public object authorization


cdef class HttpParser:
    cdef public Py_ssize_t max_body
    cdef public Py_ssize_t max_header
    cdef bytearray _buf
    cdef bytearray _body
    cdef int _state
    cdef Py_ssize_t _scan  # where the search for the end of the header block resumes
    cdef Py_ssize_t _remaining
    cdef object _method
    cdef object _path
    cdef object _ctype
    cdef object _host
    cdef object _origin
    cdef object _auth
    cdef bint _keep_alive

    cdef bint _idle(self) noexcept
    cdef list _feed(self, object data)
    cdef void _die(self) noexcept
    cdef Py_ssize_t _run(self, const unsigned char* p, Py_ssize_t n, list out) except -1
    cdef Py_ssize_t _find_header_end(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* sep) noexcept
    cdef int _start_request(self, const unsigned char* h, Py_ssize_t hn, Py_ssize_t after, list out) except -1
    cdef int _finish(self, bytes body, list out) except -1


cdef bytes json_ok(bytes body)
