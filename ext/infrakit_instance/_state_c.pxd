# cython: language_level=3
"""The compiled in-memory state's classes, for other compiled modules to cimport
(typed attribute access and the cdef/cpdef methods in C)."""


cdef class Record:
    cdef public str id
    cdef public bytes brief
    cdef public object spec  # bytes, or None for an instance without Properties
    cdef public Py_ssize_t pos  # sort key of the array order (set by State)
    cdef public Py_ssize_t off  # where the element starts in the state file (store-managed)
    cdef public Py_ssize_t size  # bytes the element occupies there (store-managed)


cdef class _AnswerCache:
    cdef public dict _answers
    cdef public Py_ssize_t size

    cpdef object get(self, object key)
    cpdef clear(self)


cdef class State:
    cdef public dict instances
    cdef public dict nonfunctional
    cdef public object provider
    cdef public dict _index
    cdef public set _unsorted
    cdef public _AnswerCache _cache
    cdef public Py_ssize_t _first
    cdef public Py_ssize_t _last

    cpdef load(self, Record rec, dict tags)
    cpdef bint known(self, object instance_id)
    cpdef append(self, Record rec, dict tags)
    cpdef remove(self, object instance_id)
    cpdef _index_add(self, Record rec, dict tags, bint at_end)
    cpdef _index_remove(self, Record rec)
    cdef void _index_drop(self, Record rec, dict tags) except *
    cdef void _unindex(self, Record rec, object key, object value) except *
    cdef void _unbucket(self, Record rec, dict by_value, object key, object value) except *
    cdef bint _index_drop_brief(self, Record rec) except -1


cdef Record make_record(str instance_id, bytes brief, object spec)
