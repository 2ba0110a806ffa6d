"""The instances in memory: ordered, indexed by ID and by tag, answers cached.

Stores keep one :class:`State` and persist what changes in it; the RPC layer
reads from it.  Nothing here touches a file.

An instance is held as the two pieces of JSON text it is served as (see
:mod:`._codec_py`); its tags live only in the tag index, and are decoded from
the brief description on the rare paths that need them as a dict.

The classes are those of the twin :mod:`._impl` picks (``_state_c``, compiled,
or ``_state_py``); :class:`StateError` is one class for both.
The Describe answer cache's size is set with :func:`set_cache_bytes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._state_py import StateError

__all__ = ["Record", "State", "StateError", "set_cache_bytes"]

if TYPE_CHECKING:
    from ._state_py import Record, State, _AnswerCache, set_cache_bytes
else:
    from ._impl import state as _twin

    Record = _twin.Record
    State = _twin.State
    _AnswerCache = _twin._AnswerCache
    set_cache_bytes = _twin.set_cache_bytes
