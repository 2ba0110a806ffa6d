"""Where the state lives: the :class:`Store` seam (:mod:`.base`) and its
backends side by side (:mod:`.file`: one JSON file changed in place under a
rollback :mod:`.journal`)."""

from .base import Store, StoreError, StoreLocked, UnknownInstance
from .file import FileStore, Loaded, compacted_size, load_state_bytes, load_state_file, parse_state, read_layout

__all__ = [
    "FileStore",
    "Loaded",
    "Store",
    "StoreError",
    "StoreLocked",
    "UnknownInstance",
    "compacted_size",
    "load_state_bytes",
    "load_state_file",
    "parse_state",
    "read_layout",
]
