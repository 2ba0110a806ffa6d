"""InfraKit instance plugin: JSON-RPC over HTTP/1.1 on a unix socket, one JSON state file."""

from __future__ import annotations

from ._impl import IMPLEMENTATION

__all__ = ["IMPLEMENTATION", "__version__"]

__version__ = "0.1.0"
