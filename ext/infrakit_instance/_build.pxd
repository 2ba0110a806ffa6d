# cython: language_level=3
"""Inline helpers shared by the compiled twins for writing bytes directly.

JSON text of a plain string (ASCII, nothing to escape) is the string between
quotes, which is exactly what orjson writes for it: the twins write such
strings themselves and hand anything else to orjson, so outputs stay identical.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    const void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)


cdef extern from "string.h" nogil:
    void* memmem(const void* haystack, size_t haystacklen, const void* needle, size_t needlelen)


cdef inline bint has(bytes b, const char* needle, size_t n) noexcept:
    """``needle`` (``n`` bytes) occurs in the exact ``bytes`` ``b``: ``in`` without a method call."""
    return memmem(PyBytes_AS_STRING(b), <size_t>PyBytes_GET_SIZE(b), needle, n) != NULL


cdef inline Py_ssize_t plain_len(object s) noexcept:
    """Length of an exact ``str`` that JSON writes verbatim, or -1."""
    cdef const unsigned char* p
    cdef Py_ssize_t i, n
    cdef unsigned char c
    if type(s) is not str or not PyUnicode_IS_ASCII(s):
        return -1
    p = <const unsigned char*>PyUnicode_DATA(s)
    n = PyUnicode_GET_LENGTH(s)
    for i in range(n):
        c = p[i]
        if c < 0x20 or c == 34 or c == 92:
            return -1
    return n


cdef inline char* put_plain(char* out, object s, Py_ssize_t n) noexcept:
    """Write a string accepted by ``plain_len`` with its quotes."""
    out[0] = 34
    memcpy(out + 1, PyUnicode_DATA(s), <size_t>n)
    out[n + 1] = 34
    return out + n + 2


cdef inline char* put(char* out, const char* src, Py_ssize_t n) noexcept:
    memcpy(out, src, <size_t>n)
    return out + n


cdef inline bytes wrap2(const char* a, Py_ssize_t na, bytes x, const char* b, Py_ssize_t nb, bytes y):
    """``a + x + b + y + b"}"``, written once into a bytes object of its exact size."""
    cdef Py_ssize_t nx = PyBytes_GET_SIZE(x)
    cdef Py_ssize_t ny = PyBytes_GET_SIZE(y)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, na + nx + nb + ny + 1)
    cdef char* w = PyBytes_AS_STRING(out)
    w = put(w, a, na)
    w = put(w, PyBytes_AS_STRING(x), nx)
    w = put(w, b, nb)
    w = put(w, PyBytes_AS_STRING(y), ny)
    w[0] = 125
    return out


cdef inline Py_ssize_t int_len(long long v) noexcept:
    """Characters in the decimal text of ``v``."""
    cdef Py_ssize_t n = 1
    cdef unsigned long long u
    if v < 0:
        n += 1
        u = <unsigned long long>(-(v + 1)) + 1
    else:
        u = <unsigned long long>v
    while u >= 10:
        u //= 10
        n += 1
    return n


cdef inline char* put_int(char* out, long long v, Py_ssize_t n) noexcept:
    """Write the ``n`` characters (from ``int_len``) of ``v``."""
    cdef unsigned long long u
    cdef char* q = out + n
    if v < 0:
        out[0] = 45
        u = <unsigned long long>(-(v + 1)) + 1
    else:
        u = <unsigned long long>v
    while True:
        q -= 1
        q[0] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    return out + n
