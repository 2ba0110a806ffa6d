# cython: language_level=3
"""What other compiled modules reach of ``_rpc_c`` in C (``_conn_c``: the per-read path)."""


cdef object quick_answer(object body, object entries)


cdef class PendingCore:
    cdef public object done
    cdef public object answer
    cdef public object id_json
    cdef public object method
