"""Stub of the compiled twin of ``_state_py`` (same names, same behaviour)."""

from ._state_py import Record as Record
from ._state_py import State as State
from ._state_py import StateError as StateError
from ._state_py import _AnswerCache as _AnswerCache
from ._state_py import read_elements as read_elements
from ._state_py import set_cache_bytes as set_cache_bytes

__all__ = ["Record", "State", "StateError", "read_elements", "set_cache_bytes"]
