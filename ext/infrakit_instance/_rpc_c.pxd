# cython: language_level=3
"""What other compiled modules reach of ``_rpc_c`` in C (``_conn_c``: the per-read path)."""


cdef object quick_answer(object body, object entries)
