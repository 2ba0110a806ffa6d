"""Picks the compiled hot path or its pure-Python twin, once, at import.

``INFRAKIT_INSTANCE_NO_EXTENSIONS=1`` selects the pure modules;
``INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS=1`` turns a missing compiled module
into an error instead of a silent fallback.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["IMPLEMENTATION", "batch", "codec", "conn", "http", "rpc", "state"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _select() -> tuple[str, ModuleType, ModuleType, ModuleType, ModuleType, ModuleType, ModuleType]:
    if not _flag("INFRAKIT_INSTANCE_NO_EXTENSIONS"):
        try:
            from . import _batch_c, _codec_c, _conn_c, _http_c, _rpc_c, _state_c
        except ImportError:
            if _flag("INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS"):
                raise
        else:
            return "compiled", _batch_c, _codec_c, _conn_c, _http_c, _rpc_c, _state_c
    from . import _batch_py, _codec_py, _conn_py, _http_py, _rpc_py, _state_py

    return "pure", _batch_py, _codec_py, _conn_py, _http_py, _rpc_py, _state_py


if TYPE_CHECKING:
    # Both twins have the same names and types: check callers against the pure ones.
    from . import _batch_py as batch
    from . import _codec_py as codec
    from . import _conn_py as conn
    from . import _http_py as http
    from . import _rpc_py as rpc
    from . import _state_py as state

    IMPLEMENTATION: str
else:
    IMPLEMENTATION, batch, codec, conn, http, rpc, state = _select()
